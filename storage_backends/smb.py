"""SMB storage: partials in ``<share>/<path>/.partial/``, finals in ``<share>/<path>``.

The same contract as the local backend, over smbprotocol's ``smbclient``:
positional writes (so a resumed upload overwrites stale bytes), finalize by
one rename on the share that never replaces a file, concat by server-side
copy, streaming reads. Every call runs through ``SMBCalls``: a worker thread
of this backend's own limiter, a connection of its own, a watchdog bound
and errors translated into builtin ``OSError`` subclasses.

Throughput (measured on a loopback Samba, see README's "SMB throughput"):
CPU per byte decides the speed, not round trips. A PATCH therefore keeps
its partial open on one connection while it runs (no open and close per
block) and sends each block as writes of ``_WRITE_SIZE``, up to
``_WRITES_IN_FLIGHT`` of them on the wire at once (pipelined on that
connection, each at its own offset, so no byte can land out of place
whatever order the server completes them in). Each WRITE is framed and
signed by ``smb_wire`` straight from the received body's pieces, without
the copies smbprotocol's own framing makes; one connection with writes in
flight beats the same writes spread over several threads contending for
the interpreter lock.
"""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator, Sequence

import anyio

from storage_backends.base import Block, FileStat
from storage_backends.names import (
    NOTE_SUFFIX,
    STAGING_DIR,
    check_upload_id,
    safe_relative,
)
from storage_backends.registry import StorageSettingError, StorageSettings
from storage_backends.smb_calls import Server, Slot, SMBCalls
from storage_backends.smb_files import (
    check_share,
    concat_files,
    create_file,
    finalize_file,
    flush_file,
    read_at,
    remove_all,
    stale_partials,
    stat_file,
)
from storage_backends.smb_location import SMBLocation
from storage_backends.smb_writes import close_handle, write_block

# Reads (GET) go out in blocks of this size, each in a worker thread.
_READ_BLOCK = 1024 * 1024
# The only source of the password: argv is visible to every local user, and
# a URL ends up in logs and process listings.
PASSWORD_ENV = "TUSSERVER_SMB_PASSWORD"


def open_storage(url: str, settings: StorageSettings) -> SMBStorage:
    """The registry's opener for ``smb://`` URLs; the password from ``PASSWORD_ENV``.

    Files get the share's permissions: ``settings.file_mode`` does not apply.
    """
    try:
        location = SMBLocation.parse(url)
    except ValueError as exc:
        # Not the URL itself: it may carry a password by mistake.
        raise StorageSettingError(f"storage URL is not usable: {str(exc).rstrip('.')}.") from None
    password = os.environ.get(PASSWORD_ENV)
    if password is None:
        raise StorageSettingError(f"SMB storage needs the password in {PASSWORD_ENV}.")
    return SMBStorage(location, password)


class SMBStorage:
    # Large blocks: each goes out as several pipelined 1 MiB WRITE requests
    # (storage_backends/smb_writes.py), and a block's last reply is awaited
    # before the next block, so smaller blocks would leave the server idle.
    preferred_block_size = 4 * 1024 * 1024

    def __init__(
        self,
        location: SMBLocation,
        password: str | None,
    ) -> None:
        self.location = location
        self._calls = SMBCalls(
            Server(location.host, location.port, location.username, password),
            connections=location.options.connections,
            timeout=location.options.timeout,
        )

    async def check(self) -> None:
        """Connect, log in, create the folders and prove the share takes writes."""
        location = self.location
        await self._calls.run(
            check_share,
            location.host,
            location.share,
            self._staging(),
            self._staging(".write-check"),
        )

    async def create(self, upload_id: str) -> None:
        await self._calls.run(create_file, self._partial(upload_id))

    async def write(self, upload_id: str, offset: int, blocks: AsyncIterator[Block]) -> int:
        path = self._partial(upload_id)
        # This write's handles, kept open on the slots that opened them
        # until the last block is written.
        owner = object()
        used: set[Slot] = set()
        slot: Slot | None = None
        written = 0
        try:
            async for block in blocks:
                size = sum(len(piece) for piece in block)
                if not size:
                    continue
                # Near, not on: if another upload's call holds this slot, any
                # free one will do (it opens the file there once).
                slot = await self._calls.run_near(
                    slot, write_block, owner, path, offset + written, block
                )
                used.add(slot)
                written += size
        finally:
            # Shielded: a handle left open would keep the partial open on
            # the server (a rename or delete of it would stay pending).
            with anyio.CancelScope(shield=True):
                for opened in used:
                    await self._calls.run_on(opened, close_handle, owner)
        return written

    async def flush(self, upload_id: str) -> None:
        await self._calls.run(flush_file, self._partial(upload_id))

    async def finalize(self, upload_id: str, final_name: str, length: int) -> str:
        relative = safe_relative(final_name)
        return await self._calls.run(
            finalize_file,
            self._partial(upload_id),
            self._partial(upload_id) + NOTE_SUFFIX,
            self.location.unc(),
            relative,
            length,
        )

    async def delete(self, upload_id: str, location: str | None = None) -> None:
        paths = [self._partial(upload_id), self._partial(upload_id) + NOTE_SUFFIX]
        if location is not None:
            paths.append(self._final(location))
        await self._calls.run(remove_all, paths)

    async def concat(self, upload_id: str, parts: Sequence[tuple[str, int]]) -> None:
        target = self._partial(upload_id)
        sources = [(self._partial(part), length) for part, length in parts]
        await self._calls.run(concat_files, target, sources)

    async def stat(self, upload_id: str, location: str | None) -> FileStat:
        path = self._partial(upload_id) if location is None else self._final(location)
        return await self._calls.run(stat_file, path)

    async def read(
        self, upload_id: str, location: str | None, start: int, end: int
    ) -> AsyncIterator[bytes]:
        path = self._partial(upload_id) if location is None else self._final(location)
        position = start
        while position < end:
            data = await self._calls.run(read_at, path, position, min(_READ_BLOCK, end - position))
            if not data:
                # Fewer bytes than asked would pass for a whole range.
                raise OSError(errno.EIO, f"file ends at {position}, before {end}")
            yield data
            position += len(data)

    async def stale_partials(self, older_than: float) -> list[str]:
        return await self._calls.run(stale_partials, self._staging(), older_than)

    async def aclose(self) -> None:
        await self._calls.aclose()

    def _staging(self, *parts: str) -> str:
        return self.location.unc(STAGING_DIR, *parts)

    def _partial(self, upload_id: str) -> str:
        return self._staging(check_upload_id(upload_id))

    def _final(self, location: str) -> str:
        return self.location.unc(*safe_relative(location).parts)

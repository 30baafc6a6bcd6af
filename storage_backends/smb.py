"""SMB storage: partials in ``<share>/<path>/.partial/``, finals in ``<share>/<path>``.

The same contract as the local backend, over smbprotocol's ``smbclient``:
positional writes (so a resumed upload overwrites stale bytes), finalize by
one rename on the share that never replaces a file, concat by server-side
copy, streaming reads. Every call runs through ``SMBCalls``: a worker thread
of this backend's own limiter, a connection of its own, a watchdog bound
and errors translated into builtin ``OSError`` subclasses.

Throughput (measured on a loopback Samba, see README's "SMB throughput"):
smbprotocol copies every written byte several times in Python and signs
it, so CPU per byte decides the speed, not round trips. A PATCH therefore
keeps its partial open on one connection while it runs (no open and close
per block) and sends each block as writes of ``_WRITE_SIZE``, up to
``_WRITES_IN_FLIGHT`` of them on the wire at once (pipelined on that
connection, each at its own offset, so no byte can land out of place
whatever order the server completes them in). Messages of 1 MiB cost less
CPU per byte than larger ones, and one connection with writes in flight
beats the same writes spread over several threads contending for the
interpreter lock.
"""

from __future__ import annotations

import errno
import ntpath
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

import anyio
import smbclient
from smbclient._io import SMBFileTransaction, SMBRawIO, ioctl_request
from smbprotocol.exceptions import BadNetworkName, SMBException, SMBOSError
from smbprotocol.ioctl import (
    CtlCode,
    IOCTLFlags,
    SMB2SrvCopyChunk,
    SMB2SrvCopyChunkCopy,
    SMB2SrvCopyChunkResponse,
    SMB2SrvRequestResumeKey,
)
from smbprotocol.tree import TreeConnect

from storage_backends.base import Block, FileStat
from storage_backends.names import (
    STAGING_DIR,
    UPLOAD_ID,
    check_upload_id,
    name_variants,
    safe_relative,
)
from storage_backends.smb_calls import Call, Server, Slot, SMBCalls

# Where a finalize records the name it is publishing under, before the rename
# (see finalize): ``<staging>/<id>.final``. Ids never contain a dot.
_MARKER_SUFFIX = ".final"
# Size of one SMB WRITE request, and how many a PATCH keeps in flight on its
# connection. Larger messages cost more CPU per byte in smbprotocol (each is
# copied whole several times, and a send the socket takes only partly
# copies the rest again); fewer in flight leave the server idle between them.
_WRITE_SIZE = 1024 * 1024
_WRITES_IN_FLIGHT = 4
# One SMB2 credit pays for 64 KiB of a request (MS-SMB2 3.1.5.2).
_CREDIT_BYTES = 65536
# Reads (GET) go out in blocks of this size, each in a worker thread.
_READ_BLOCK = 1024 * 1024
# Server-side copy limits (MS-SMB2 3.3.3): 1 MiB per chunk, 16 chunks per request.
_COPY_CHUNK = 1024 * 1024
_COPY_CHUNKS_PER_REQUEST = 16
# Every handle shares read, write and delete: the pieces of one block are
# open on several connections at once, and a rename or delete must not be
# refused because a read is in progress.
_SHARE = "rwd"


@dataclass(frozen=True)
class SMBLocation:
    """Where ``smb://USER@HOST[:PORT]/SHARE[/PATH]`` points."""

    host: str
    port: int
    share: str
    path: tuple[str, ...]
    username: str

    @classmethod
    def parse(cls, url: str) -> SMBLocation:
        """Raises ``ValueError`` with a sentence naming what is wrong (never the password)."""
        parsed = urlsplit(url)
        if parsed.scheme != "smb":
            raise ValueError("an SMB storage URL starts with smb://")
        if parsed.password is not None:
            raise ValueError(
                "the SMB URL must not carry a password; set TUSSERVER_SMB_PASSWORD instead"
            )
        if not parsed.username:
            raise ValueError("the SMB URL needs a user, as in smb://USER@HOST/SHARE/PATH")
        if not parsed.hostname:
            raise ValueError("the SMB URL needs a host, as in smb://USER@HOST/SHARE/PATH")
        try:
            port = parsed.port or 445
        except ValueError:
            raise ValueError("the SMB URL's port is not a number from 1 to 65535") from None
        segments = [unquote(part) for part in parsed.path.split("/") if part]
        if not segments:
            raise ValueError("the SMB URL needs a share, as in smb://USER@HOST/SHARE/PATH")
        for segment in segments:
            if segment in (".", "..") or any(c in segment for c in '\\:*?"<>|\x00'):
                raise ValueError(f"the SMB URL's path segment {segment!r} is not a valid name")
        user = unquote(parsed.username)
        return cls(parsed.hostname, port, segments[0], tuple(segments[1:]), user)

    def unc(self, *parts: str) -> str:
        return "\\\\" + "\\".join((self.host, self.share, *self.path, *parts))


class SMBStorage:
    def __init__(
        self,
        location: SMBLocation,
        password: str | None,
        *,
        connections: int = 8,
        timeout: float = 30.0,
    ) -> None:
        self.location = location
        self._calls = SMBCalls(
            Server(location.host, location.port, location.username, password),
            connections=connections,
            timeout=timeout,
        )

    async def check(self) -> None:
        """Connect, log in, create the folders and prove the share takes writes."""
        location = self.location
        await self._calls.run(
            _check, location.host, location.share, self._staging(), self._staging(".write-check")
        )

    async def create(self, upload_id: str) -> None:
        await self._calls.run(_create, self._partial(upload_id))

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
                    slot, _write_block, owner, path, offset + written, block
                )
                used.add(slot)
                written += size
        finally:
            # Shielded: a handle left open would keep the partial open on
            # the server (a rename or delete of it would stay pending).
            with anyio.CancelScope(shield=True):
                for opened in used:
                    await self._calls.run_on(opened, _close_handle, owner)
        return written

    async def finalize(self, upload_id: str, final_name: str, length: int) -> str:
        relative = safe_relative(final_name)
        return await self._calls.run(
            _finalize,
            self._partial(upload_id),
            self._partial(upload_id) + _MARKER_SUFFIX,
            self.location.unc(),
            relative,
            length,
        )

    async def delete(self, upload_id: str, location: str | None = None) -> None:
        paths = [self._partial(upload_id), self._partial(upload_id) + _MARKER_SUFFIX]
        if location is not None:
            paths.append(self._final(location))
        await self._calls.run(_remove_all, paths)

    async def concat(self, upload_id: str, parts: Sequence[str]) -> None:
        target = self._partial(upload_id)
        sources = [self._partial(part) for part in parts]
        await self._calls.run(_concat, target, sources)

    async def stat(self, upload_id: str, location: str | None) -> FileStat:
        path = self._partial(upload_id) if location is None else self._final(location)
        return await self._calls.run(_stat, path)

    async def read(
        self, upload_id: str, location: str | None, start: int, end: int
    ) -> AsyncIterator[bytes]:
        path = self._partial(upload_id) if location is None else self._final(location)
        position = start
        while position < end:
            data = await self._calls.run(_read_at, path, position, min(_READ_BLOCK, end - position))
            if not data:
                # Fewer bytes than asked would pass for a whole range.
                raise OSError(errno.EIO, f"file ends at {position}, before {end}")
            yield data
            position += len(data)

    async def stale_partials(self, older_than: float) -> list[str]:
        return await self._calls.run(_stale_partials, self._staging(), older_than)

    async def aclose(self) -> None:
        await self._calls.aclose()

    def _staging(self, *parts: str) -> str:
        return self.location.unc(STAGING_DIR, *parts)

    def _partial(self, upload_id: str) -> str:
        return self._staging(check_upload_id(upload_id))

    def _final(self, location: str) -> str:
        return self.location.unc(*safe_relative(location).parts)


# --- blocking functions, each run in a worker thread by SMBCalls -------------


def _check(call: Call, host: str, share: str, staging: str, probe: str) -> None:
    # The share first, on its own: for a missing share smbclient would go on
    # to ask for DFS referrals, and against Samba it keeps asking.
    session = smbclient.register_session(host, **call.kwargs)
    tree = TreeConnect(session, rf"\\{host}\{share}")
    try:
        tree.connect()
    except BadNetworkName:
        raise FileNotFoundError(
            errno.ENOENT, f"the SMB server has no share named {share!r}"
        ) from None
    tree.disconnect()
    smbclient.makedirs(staging, exist_ok=True, **call.kwargs)
    with _open(call, probe, "wb") as f:
        _write_all(call, f, b"ok")
    smbclient.remove(probe, **call.kwargs)


def _create(call: Call, path: str) -> None:
    # "a": open or create, never truncate, so a repeated create keeps the bytes.
    with _open(call, path, "ab"):
        pass


def _write_block(call: Call, owner: object, path: str, offset: int, block: Block) -> Slot:
    """Write ``block`` at ``offset`` through ``owner``'s handle on this slot; the slot."""
    handle: SMBRawIO | None = call.slot.handles.get(owner)
    if handle is None:
        # "r+": the partial must exist. One that vanished (expired, deleted)
        # must fail loudly, not be recreated full of holes.
        handle = _open(call, path, "r+b")
        call.slot.handles[owner] = handle
    _write_pipelined(call, handle, deque(_messages(block, offset)))
    return call.slot


def _messages(block: Block, offset: int) -> Iterator[tuple[int, bytes]]:
    """(file offset, bytes) of up to _WRITE_SIZE each, covering ``block`` in order.

    One join per message: smbprotocol needs each message's bytes in one
    buffer, and passing ``bytes`` (not a view) spares it another copy.
    """
    gathered: list[memoryview] = []
    size = 0
    for piece in block:
        view = memoryview(piece)
        while view:
            take = min(len(view), _WRITE_SIZE - size)
            gathered.append(view[:take])
            size += take
            view = view[take:]
            if size == _WRITE_SIZE:
                yield offset, b"".join(gathered)
                offset += size
                gathered, size = [], 0
    if size:
        yield offset, b"".join(gathered)


def _write_pipelined(call: Call, handle: SMBRawIO, todo: deque[tuple[int, bytes]]) -> None:
    """Send every (offset, bytes) of ``todo`` as SMB2 WRITEs, several in flight.

    Returns once the server confirmed every byte. A write the server took
    only partly is sent again for its rest; each lands at its own offset,
    so completion order does not matter.
    """
    file = handle.fd
    connection = file.connection
    session_id = file.tree_connect.session.session_id
    tree_id = file.tree_connect.tree_connect_id
    largest = min(_WRITE_SIZE, connection.max_write_size)
    in_flight: deque[tuple[Any, Callable[[Any], int], int, bytes]] = deque()

    def confirm_oldest() -> None:
        request, receive, at, data = in_flight.popleft()
        count = receive(request)
        if not count:
            raise OSError(errno.EIO, "the SMB server wrote nothing")
        if count < len(data):
            todo.appendleft((at + count, data[count:]))
        call.touch()

    try:
        while todo or in_flight:
            if not todo or len(in_flight) >= _WRITES_IN_FLIGHT:
                confirm_oldest()
                continue
            at, data = todo[0]
            window = connection.sequence_window
            available = window["high"] - window["low"]
            credits = (min(len(data), largest) - 1) // _CREDIT_BYTES + 1
            if credits > available and in_flight:
                confirm_oldest()  # its response grants credits
                continue
            todo.popleft()
            size = min(len(data), largest, max(1, available) * _CREDIT_BYTES)
            if size < len(data):
                todo.appendleft((at + size, data[size:]))
                data = data[:size]
            credits = (size - 1) // _CREDIT_BYTES + 1
            message, receive = file.write(data, offset=at, send=False)
            # Ask for enough credits to keep the pipeline full (MS-SMB2 3.2.4.1.5).
            wanted = credits + max(0, _WRITES_IN_FLIGHT * credits - (available - credits))
            request = connection.send(message, sid=session_id, tid=tree_id, credit_request=wanted)
            in_flight.append((request, receive, at, data))
    finally:
        # Collect the answers to writes already sent, so none is left
        # behind on the connection; the first failure is what counts.
        while in_flight:
            request, receive = in_flight.popleft()[:2]
            try:
                receive(request)
            except (SMBException, OSError):
                pass  # on a lost connection each fails at once


def _close_handle(call: Call, owner: object) -> None:
    """Close ``owner``'s handle on this slot, if it has one. Never raises."""
    handle: SMBRawIO | None = call.slot.handles.pop(owner, None)
    if handle is None:
        return
    try:
        handle.close()
    except (SMBException, OSError, ValueError):
        # The server drops a connection's handles with it.
        call.slot.forget()


def _write_all(call: Call, f: SMBRawIO, data: bytes | memoryview) -> None:
    """SMB writes may be partial (credits, the server's maximum write size): loop."""
    view = memoryview(data)
    while view:
        count = f.write(view)
        if not count:
            raise OSError(errno.EIO, "the SMB server wrote nothing")
        view = view[count:]
        call.touch()


def _finalize(
    call: Call, partial: str, marker: str, root: str, relative: PurePosixPath, length: int
) -> str:
    """Trim, flush, then rename the partial to the first free variant of ``relative``.

    Before each rename attempt the chosen name is written to ``marker``: if
    the process dies after the rename but before the caller recorded the
    location, the partial is gone and the marker says where it went, so
    finalizing again returns that location instead of failing.
    """
    kwargs = call.kwargs
    try:
        f = _open(call, partial, "r+b")
    except SMBOSError as exc:
        if exc.errno != errno.ENOENT:
            raise
        return _published_location(call, marker, root, length, exc)
    with f:
        size = f.seek(0, smbclient.SEEK_END)
        if size < length:
            # Truncating up would pad with zeros: refuse rather than publish a hole.
            raise OSError(errno.EIO, f"partial holds {size} of {length} bytes", partial)
        if size > length:
            f.truncate(length)  # storage may hold more than the offset
        f.flush()  # SMB2 FLUSH: the bytes are durable before the final name appears
    if relative.parent.parts:
        smbclient.makedirs(_join(root, *relative.parent.parts), exist_ok=True, **kwargs)
    for candidate in name_variants(relative):
        target = _join(root, *candidate.parts)
        with _open(call, marker, "wb") as m:
            _write_all(call, m, candidate.as_posix().encode())
        if _rename_without_overwrite(call, partial, target):
            return candidate.as_posix()
    raise FileExistsError(errno.EEXIST, "no free final name", relative.as_posix())


def _published_location(call: Call, marker: str, root: str, length: int, missing: OSError) -> str:
    """The location an earlier, interrupted finalize renamed the partial to."""
    try:
        with _open(call, marker, "rb") as m:
            location: str = m.readall().decode()
        published = smbclient.stat(_join(root, *PurePosixPath(location).parts), **call.kwargs)
    except SMBOSError as exc:
        if exc.errno == errno.ENOENT:
            raise missing from None
        raise
    if published.st_size != length:
        raise missing
    return location


def _rename_without_overwrite(call: Call, source: str, target: str) -> bool:
    """Rename ``source`` to ``target`` unless a file has that name; False if one does.

    smbclient renames without replace-if-exists, so the server refuses to
    overwrite atomically (STATUS_OBJECT_NAME_COLLISION). smbclient first
    opens an existing target for execute access, which a server may deny
    on a non-executable file: that also means the name is taken.
    """
    try:
        smbclient.rename(source, target, **call.kwargs)
    except SMBOSError as exc:
        if exc.errno == errno.EEXIST:
            return False
        if _exists(call, target):
            return False
        raise
    return True


def _exists(call: Call, path: str) -> bool:
    try:
        smbclient.stat(path, **call.kwargs)
    except SMBOSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def _remove_all(call: Call, paths: list[str]) -> None:
    for path in paths:
        try:
            smbclient.remove(path, **call.kwargs)
        except SMBOSError as exc:
            if exc.errno != errno.ENOENT:
                raise


def _concat(call: Call, target: str, sources: list[str]) -> None:
    """Fill ``target`` from offset 0 with ``sources`` in order, copied by the server.

    smbclient.copyfile's server-side copy (FSCTL_SRV_COPYCHUNK_WRITE), with
    the target offset of each part instead of 0: the bytes never travel
    through this process.
    """
    with _open(call, target, "r+b") as dst:
        offset = 0
        for source in sources:
            with _open(call, source, "rb") as src:
                size = src.seek(0, smbclient.SEEK_END)
                if size:
                    _copy_chunks(call, src, dst, offset, size)
            offset += size
        dst.truncate(offset)  # stale bytes of an earlier attempt past the end
        dst.flush()


def _copy_chunks(call: Call, src: SMBRawIO, dst: SMBRawIO, target_offset: int, size: int) -> None:
    with SMBFileTransaction(src) as transaction:
        ioctl_request(
            transaction,
            CtlCode.FSCTL_SRV_REQUEST_RESUME_KEY,
            flags=IOCTLFlags.SMB2_0_IOCTL_IS_FSCTL,
            output_size=32,
        )
    resume = SMB2SrvRequestResumeKey()
    resume.unpack(transaction.results[0])
    resume_key = resume["resume_key"].get_value()
    position = 0
    while position < size:
        batch: list[SMB2SrvCopyChunk] = []
        while position < size and len(batch) < _COPY_CHUNKS_PER_REQUEST:
            chunk = SMB2SrvCopyChunk()
            chunk["source_offset"] = position
            chunk["target_offset"] = target_offset + position
            chunk["length"] = min(_COPY_CHUNK, size - position)
            batch.append(chunk)
            position += _COPY_CHUNK
        request = SMB2SrvCopyChunkCopy()
        request["source_key"] = resume_key
        request["chunks"] = batch
        with SMBFileTransaction(dst) as transaction:
            ioctl_request(
                transaction,
                CtlCode.FSCTL_SRV_COPYCHUNK_WRITE,
                flags=IOCTLFlags.SMB2_0_IOCTL_IS_FSCTL,
                output_size=12,
                input_buffer=request,
            )
        response = SMB2SrvCopyChunkResponse()
        response.unpack(transaction.results[0])
        if response["chunks_written"].get_value() != len(batch):
            raise OSError(errno.EIO, "the SMB server copied only part of a chunk batch")
        call.touch()


def _stat(call: Call, path: str) -> FileStat:
    result = smbclient.stat(path, **call.kwargs)
    return FileStat(size=result.st_size, modified=result.st_mtime)


def _read_at(call: Call, path: str, offset: int, length: int) -> bytes:
    """Up to ``length`` bytes from ``offset``; fewer only at the end of the file."""
    parts: list[bytes] = []
    remaining = length
    with _open(call, path, "rb") as f:
        f.seek(offset)
        while remaining:
            data = f.read(remaining)
            if not data:
                break
            parts.append(data)
            remaining -= len(data)
            call.touch()
    return b"".join(parts)


def _stale_partials(call: Call, staging: str, older_than: float) -> list[str]:
    found: set[str] = set()
    for entry in smbclient.scandir(staging, **call.kwargs):
        name = entry.name
        upload_id = name.removesuffix(_MARKER_SUFFIX)
        if UPLOAD_ID.fullmatch(upload_id) is None or not entry.is_file():
            continue
        if entry.smb_info.last_write_time.timestamp() < older_than:
            found.add(upload_id)
    return sorted(found)


def _open(call: Call, path: str, mode: str) -> SMBRawIO:
    """An unbuffered handle: every write is one positional SMB write of ours."""
    return smbclient.open_file(path, mode=mode, buffering=0, share_access=_SHARE, **call.kwargs)


def _join(root: str, *parts: str) -> str:
    return ntpath.join(root, *parts)

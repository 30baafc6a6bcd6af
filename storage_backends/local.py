"""Local-disk storage: partials in ``<root>/.partial/``, finals in ``<root>``.

A partial is created and its blocks written on the event loop while those
calls stay quick, as a memory copy into the page cache is, and in worker
threads for a while after one stalled (``storage_backends/inline_calls.py``).
Every other file call runs in a worker thread bounded by this backend's own
limiter, so a slow disk neither blocks the event loop nor takes every thread
of the process. Blocks are written with one ``pwritev`` each: positional, so
a resumed upload overwrites stale bytes past the committed offset instead of
appending after them, and vectored, so the pieces received from the network
are never joined in memory. Concatenation copies inside the kernel
(``copy_file_range``), so the bytes of a final upload never pass through
Python.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio
import anyio.lowlevel

from storage_backends.base import Block, FileStat
from storage_backends.file_io import copy_into, pwritev_all
from storage_backends.finalizing import finalize
from storage_backends.inline_calls import STALL, InlineWhileQuick
from storage_backends.names import (
    NOTE_SUFFIX,
    STAGING_DIR,
    check_upload_id,
    safe_relative,
    staged_upload_id,
)
from storage_backends.registry import StorageSettings
from storage_backends.writeback import start_writeback

# One read per thread hop: large enough that the hop costs little, small
# enough that a download holds about one block in memory.
_READ_BLOCK = 1024 * 1024


def open_storage(url: str, settings: StorageSettings) -> LocalStorage:
    """The registry's opener: a folder path, or a ``file://`` URL of one."""
    parsed = urlsplit(url)
    root = parsed.path if parsed.scheme == "file" else url
    return LocalStorage(Path(root), file_mode=settings.file_mode)


T = TypeVar("T")


class LocalStorage:
    # Blocks of half a MiB: a body's blocks in flight (one gathering, one
    # queued, one written) then stay within a core's L2 cache, and the
    # kernel copies each into the page cache from cache, not from memory.
    # With 4 MiB blocks a PATCH cost three times the CPU per GiB in a fresh
    # process or beside other work, and a 2 GiB PATCH grew the process by
    # 10-13 MiB instead of 2-3 (bench/README.md, "Block size").
    preferred_block_size = 512 * 1024
    # Blocks go into the page cache from the event loop (``_quickly``), so
    # the server receives and writes them in turn: handing each to a writer
    # task beside the receiving cost about 5 % more CPU per GiB and three
    # times the page faults (bench/README.md, "Received and written in
    # turn"). After a stall, writes go to threads for a while and are then
    # not overlapped with receiving: the disk is the bottleneck then.
    writes_on_loop = True

    def __init__(
        self,
        root: Path,
        *,
        file_mode: int = 0o644,
        max_threads: int = 8,
        inline_stall: float = STALL,
    ) -> None:
        """``inline_stall``: seconds past which a call made on the event loop
        counts as stalled (``InlineWhileQuick``)."""
        self.root = root.resolve()
        self.staging = self.root / STAGING_DIR
        self.file_mode = file_mode
        # Threads this storage's calls may occupy at once (of the loop's default pool).
        self._slots = asyncio.Semaphore(max_threads)
        self._inline = InlineWhileQuick(inline_stall)

    async def _in_thread(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` in a worker thread, awaited to its end even
        when the caller is cancelled meanwhile (as ``anyio.to_thread`` does
        by default), so that a write's count is never lost.

        Not ``anyio.to_thread``: its checkpoint and its capacity limiter's
        are two turns of the event loop per call besides the thread's own,
        in every PATCH; an asyncio semaphore with a free slot takes none,
        and a check for a pending cancellation takes none unless there is one.
        """
        # A cancellation already pending lands here, as at anyio's
        # checkpoint: without it, a writer whose blocks keep coming would
        # never be cancelled (every other wait of it is shielded or none).
        await anyio.lowlevel.checkpoint_if_cancelled()
        async with self._slots:
            future = asyncio.get_running_loop().run_in_executor(None, function, *args)
            with anyio.CancelScope(shield=True):
                result = await future
        return result

    async def _quickly(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` on the event loop while such calls are quick,
        else as ``_in_thread``. A call on the loop cannot be cancelled
        half-way, so a write's count is never lost there either."""
        if not self._inline.allowed():
            return await self._in_thread(function, *args)
        started = time.perf_counter()
        try:
            return function(*args)
        finally:
            self._inline.took(time.perf_counter() - started)

    async def check(self) -> None:
        """Create the folders and prove they are writable (start-up check)."""
        await self._in_thread(self._check)

    def _check(self) -> None:
        self.staging.mkdir(parents=True, exist_ok=True, mode=0o700)
        probe = self.staging / ".write-check"
        probe.write_bytes(b"ok")
        probe.unlink()

    def _partial(self, upload_id: str) -> Path:
        return self.staging / check_upload_id(upload_id)

    async def create(self, upload_id: str) -> None:
        path = self._partial(upload_id)
        await self._quickly(_create_empty, path)

    async def write(self, upload_id: str, offset: int, blocks: AsyncIterator[Block]) -> int:
        path = self._partial(upload_id)
        # One call per block, which opens, writes and closes: nothing is left
        # to do once the last block is written, while the client waits. The
        # writer waits for each next block from the receiver, so a pending
        # cancellation lands there between blocks written on the loop.
        written = 0
        any_block = False
        async for block in blocks:
            any_block = True
            written += await self._quickly(_write_at, path, block, offset + written)
        if not any_block:
            # No bytes came: a vanished partial still fails loudly.
            await self._quickly(_write_at, path, [], offset)
        return written

    async def flush(self, upload_id: str) -> None:
        path = self._partial(upload_id)
        await self._in_thread(_fsync, path, os.fdatasync)

    async def finalize(self, upload_id: str, final_name: str, length: int) -> str:
        staged = _DiskUpload(self, self._partial(upload_id))
        relative = safe_relative(final_name)
        return await self._in_thread(finalize, staged, relative, length)

    async def delete(self, upload_id: str, location: str | None = None) -> None:
        partial = self._partial(upload_id)
        paths = [partial, _note(partial)]
        if location is not None:
            paths.append(self.root.joinpath(*safe_relative(location).parts))
        await self._in_thread(_unlink_all, paths)

    async def aclose(self) -> None:
        """Nothing to release: files are opened per call."""

    async def concat(self, upload_id: str, parts: Sequence[tuple[str, int]]) -> None:
        target = self._partial(upload_id)
        sources = [(self._partial(part), length) for part, length in parts]
        # Without O_CREAT, like write(): the final's partial must exist.
        fd = await self._in_thread(os.open, target, os.O_WRONLY)
        total = 0
        try:
            # One thread hop per part: other requests get the limiter between parts.
            for source, length in sources:
                await self._in_thread(copy_into, source, fd, total, length)
                total += length
            await self._in_thread(os.ftruncate, fd, total)
        finally:
            with anyio.CancelScope(shield=True):
                await self._in_thread(os.close, fd)

    async def stat(self, upload_id: str, location: str | None) -> FileStat:
        path = self._existing(upload_id, location)
        result = await self._in_thread(os.stat, path)
        return FileStat(size=result.st_size, modified=result.st_mtime)

    def read(
        self, upload_id: str, location: str | None, start: int, end: int
    ) -> AsyncIterator[bytes]:
        # Not itself a generator, so a bad name or range fails at the call.
        path = self._existing(upload_id, location)
        if not 0 <= start <= end:
            raise ValueError(f"invalid byte range [{start}, {end})")
        return self._read_blocks(path, start, end)

    async def _read_blocks(self, path: Path, start: int, end: int) -> AsyncIterator[bytes]:
        fd = await self._in_thread(os.open, path, os.O_RDONLY)
        try:
            position = start
            while position < end:
                size = min(_READ_BLOCK, end - position)
                block = await self._in_thread(os.pread, fd, size, position)
                if not block:
                    raise OSError(errno.EIO, f"file ends at {position}, before {end}", str(path))
                position += len(block)
                yield block
        finally:
            # Shielded: a download cancelled by a client disconnect must
            # still close its descriptor.
            with anyio.CancelScope(shield=True):
                await self._in_thread(os.close, fd)

    def _existing(self, upload_id: str, location: str | None) -> Path:
        """The partial, or the finished file at ``location``: never a path outside."""
        if location is None:
            return self._partial(upload_id)
        return self.root.joinpath(*safe_relative(location).parts)

    async def stale_partials(self, older_than: float) -> list[str]:
        return await self._in_thread(self._stale_partials, older_than)

    def _stale_partials(self, older_than: float) -> list[str]:
        stale = set()
        with os.scandir(self.staging) as entries:
            for entry in entries:
                upload_id = staged_upload_id(entry.name)
                if upload_id is None:
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed while listing (finished, terminated)
                if stat.S_ISREG(info.st_mode) and info.st_mtime < older_than:
                    stale.add(upload_id)
        return sorted(stale)


class _DiskUpload:
    """An upload's partial and note on local disk, for the shared finalize
    (storage_backends/finalizing.py). Runs in a worker thread."""

    def __init__(self, storage: LocalStorage, partial: Path) -> None:
        self._root = storage.root
        self._file_mode = storage.file_mode
        self._partial = partial
        self._note = _note(partial)

    def seal(self, length: int) -> None:
        size = os.stat(self._partial).st_size
        if size < length:
            # truncate() would pad with zeros: refuse rather than publish a hole.
            raise OSError(errno.EIO, f"partial holds {size} of {length} bytes")
        os.truncate(self._partial, length)  # storage may hold more than the offset
        os.chmod(self._partial, self._file_mode)
        _fsync(self._partial)  # the bytes are durable before the final name appears

    def make_folders(self, relative: PurePosixPath) -> None:
        self._target(relative).parent.mkdir(parents=True, exist_ok=True)

    def write_note(self, location: str) -> None:
        fd = os.open(self._note, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, location.encode())
            os.fsync(fd)  # on disk before the move it describes
        finally:
            os.close(fd)

    def read_note(self) -> str:
        return self._note.read_text()

    def size_of(self, relative: PurePosixPath) -> int:
        return os.stat(self._target(relative)).st_size

    def move_to(self, relative: PurePosixPath) -> bool:
        return _move_without_overwrite(self._partial, self._target(relative))

    def _target(self, relative: PurePosixPath) -> Path:
        return self._root.joinpath(*relative.parts)


def _note(partial: Path) -> Path:
    return partial.with_name(partial.name + NOTE_SUFFIX)


def _write_at(path: Path, block: Block, offset: int) -> int:
    """Write ``block`` into the partial at ``offset``: the bytes written.
    O_WRONLY without O_CREAT: a partial that vanished (expired, deleted)
    must fail loudly, not be recreated full of holes."""
    fd = os.open(path, os.O_WRONLY)
    try:
        written = pwritev_all(fd, block, offset)
        start_writeback(fd, offset, offset + written)
        return written
    finally:
        os.close(fd)


def _create_empty(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)


def _move_without_overwrite(source: Path, target: Path) -> bool:
    """Rename ``source`` to ``target`` unless another file has that name; False if one does.

    A hard link fails atomically with EEXIST, so a finished file can never
    replace another one, and the final name appears with its whole content;
    then the partial's name goes. A target that already is ``source`` was
    linked by a move that was interrupted before the unlink: the move
    completes. Filesystems without hard links fall back to a checked rename.
    """
    try:
        os.link(source, target)
    except FileExistsError:
        if not os.path.samefile(source, target):
            return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if target.exists():
            return False
        os.rename(source, target)
        return True
    os.unlink(source)
    return True


def _fsync(path: Path, sync: Callable[[int], None] = os.fsync) -> None:
    # Any descriptor will do: the kernel flushes the file, not the descriptor.
    fd = os.open(path, os.O_RDONLY)
    try:
        sync(fd)
    finally:
        os.close(fd)


def _unlink_all(paths: list[Path]) -> None:
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            pass

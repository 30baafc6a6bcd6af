"""Local-disk storage: partials in ``<root>/.partial/``, finals in ``<root>``.

Every file call runs in a worker thread bounded by this backend's own
limiter, so a slow disk neither blocks the event loop nor takes every thread
of the process. Blocks are written with one ``pwritev`` each: positional, so
a resumed upload overwrites stale bytes past the committed offset instead of
appending after them, and vectored, so the pieces received from the network
are never joined in memory.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path, PurePosixPath

import anyio
import anyio.to_thread

from storage_backends.base import Block

STAGING_DIR = ".partial"
# pwritev takes at most IOV_MAX buffers per call (1024 on Linux).
_IOV_MAX = getattr(os, "IOV_MAX", 1024)
# Upload ids are opaque tokens; anything else must never become a path.
_UPLOAD_ID = re.compile(r"[0-9A-Za-z_-]{1,128}")
# Bounded so that a name collision storm cannot loop forever.
_MAX_NAME_VARIANTS = 1000


class LocalStorage:
    def __init__(self, root: Path, *, file_mode: int = 0o644, max_threads: int = 8) -> None:
        self.root = root.resolve()
        self.staging = self.root / STAGING_DIR
        self.file_mode = file_mode
        self._limiter = anyio.CapacityLimiter(max_threads)

    async def check(self) -> None:
        """Create the folders and prove they are writable (start-up check)."""
        await anyio.to_thread.run_sync(self._check, limiter=self._limiter)

    def _check(self) -> None:
        self.staging.mkdir(parents=True, exist_ok=True, mode=0o700)
        probe = self.staging / ".write-check"
        probe.write_bytes(b"ok")
        probe.unlink()

    def _partial(self, upload_id: str) -> Path:
        if _UPLOAD_ID.fullmatch(upload_id) is None:
            raise ValueError("invalid upload id")
        return self.staging / upload_id

    async def create(self, upload_id: str) -> None:
        path = self._partial(upload_id)
        await anyio.to_thread.run_sync(_create_empty, path, limiter=self._limiter)

    async def write(self, upload_id: str, offset: int, blocks: AsyncIterator[Block]) -> int:
        path = self._partial(upload_id)
        # O_WRONLY without O_CREAT: a partial that vanished (expired, deleted)
        # must fail loudly, not be recreated full of holes.
        fd = await anyio.to_thread.run_sync(os.open, path, os.O_WRONLY, limiter=self._limiter)
        written = 0
        try:
            async for block in blocks:
                written += await anyio.to_thread.run_sync(
                    _pwritev_all, fd, block, offset + written, limiter=self._limiter
                )
        finally:
            # Shielded: under cancellation (shutdown) an unshielded hop would
            # never run, leaking the descriptor.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(os.close, fd, limiter=self._limiter)
        return written

    async def finalize(self, upload_id: str, final_name: str, length: int) -> str:
        source = self._partial(upload_id)
        relative = self._safe_relative(final_name)
        return await anyio.to_thread.run_sync(
            self._finalize, source, relative, length, limiter=self._limiter
        )

    def _finalize(self, source: Path, relative: PurePosixPath, length: int) -> str:
        size = os.stat(source).st_size
        if size < length:
            # truncate() would pad with zeros: refuse rather than publish a hole.
            raise OSError(errno.EIO, f"partial holds {size} of {length} bytes", str(source))
        os.truncate(source, length)  # storage may hold more than the offset
        os.chmod(source, self.file_mode)
        _fsync(source)  # the bytes are durable before the final name appears
        target_dir = self.root.joinpath(*relative.parent.parts)
        target_dir.mkdir(parents=True, exist_ok=True)
        for candidate in _name_variants(relative):
            target = self.root.joinpath(*candidate.parts)
            if _publish_without_overwrite(source, target):
                return candidate.as_posix()
        raise FileExistsError(errno.EEXIST, "no free final name", relative.as_posix())

    async def delete(self, upload_id: str, location: str | None = None) -> None:
        paths = [self._partial(upload_id)]
        if location is not None:
            paths.append(self.root.joinpath(*self._safe_relative(location).parts))
        await anyio.to_thread.run_sync(_unlink_all, paths, limiter=self._limiter)

    async def aclose(self) -> None:
        """Nothing to release: files are opened per call."""

    def _safe_relative(self, name: str) -> PurePosixPath:
        """A relative path that stays inside the root and outside staging."""
        relative = PurePosixPath(name)
        parts = relative.parts
        if (
            not parts
            or relative.is_absolute()
            or any(part in ("", ".", "..") for part in parts)
            or parts[0] == STAGING_DIR
            or "\\" in name
            or "\x00" in name
        ):
            raise PermissionError(errno.EACCES, "name escapes the storage root", name)
        return relative

    async def stale_partials(self, older_than: float) -> list[str]:
        return await anyio.to_thread.run_sync(
            self._stale_partials, older_than, limiter=self._limiter
        )

    def _stale_partials(self, older_than: float) -> list[str]:
        stale = []
        with os.scandir(self.staging) as entries:
            for entry in entries:
                if _UPLOAD_ID.fullmatch(entry.name) is None:
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed while listing (finished, terminated)
                if stat.S_ISREG(info.st_mode) and info.st_mtime < older_than:
                    stale.append(entry.name)
        return stale


def _create_empty(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)


def _pwritev_all(fd: int, block: Block, offset: int) -> int:
    """Write every byte of ``block`` at ``offset``; pwritev may write less."""
    total = 0
    for group in _iov_groups(block):
        pending: Sequence[bytes | memoryview] = group
        while pending:
            n = os.pwritev(fd, pending, offset + total)
            if n == 0:
                raise OSError(errno.EIO, "pwritev wrote nothing")
            total += n
            pending = _drop_prefix(pending, n)
    return total


def _iov_groups(block: Block) -> Iterator[Sequence[bytes]]:
    for start in range(0, len(block), _IOV_MAX):
        yield block[start : start + _IOV_MAX]


def _drop_prefix(buffers: Sequence[bytes | memoryview], count: int) -> list[bytes | memoryview]:
    rest: list[bytes | memoryview] = []
    for buffer in buffers:
        size = len(buffer)
        if count >= size:
            count -= size
            continue
        rest.append(memoryview(buffer)[count:] if count else buffer)
        count = 0
    return rest


def _name_variants(relative: PurePosixPath) -> Iterator[PurePosixPath]:
    """``name.ext``, then ``name (1).ext``, ``name (2).ext``, ..."""
    yield relative
    suffix = "".join(relative.suffixes[-1:])
    stem = relative.name[: len(relative.name) - len(suffix)] if suffix else relative.name
    for number in range(1, _MAX_NAME_VARIANTS):
        yield relative.with_name(f"{stem} ({number}){suffix}")


def _publish_without_overwrite(source: Path, target: Path) -> bool:
    """Give ``source`` the name ``target`` unless another file has it; False if one does.

    A hard link fails atomically with EEXIST, so a finished file can never
    replace another one, and the final name appears with its whole content.
    ``source`` keeps its name (the caller removes it once the location is
    recorded); a target that already is ``source`` was published by an
    earlier, interrupted finalize and is reused. Filesystems without hard
    links fall back to a checked rename.
    """
    try:
        os.link(source, target)
    except FileExistsError:
        return os.path.samefile(source, target)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if target.exists():
            return False
        os.rename(source, target)
    return True


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_all(paths: list[Path]) -> None:
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            pass

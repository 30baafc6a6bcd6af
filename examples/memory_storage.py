"""Uploads kept in the server's memory: a whole storage backend in one module.

Not for production (a restart loses every file, and each worker process has
its own); it shows what a backend must do, without a file system, and runs
through the same contract suite as the built-in backends
(tests/test_storage_contract.py). docs/storage.md walks through it.
"""

from __future__ import annotations

import errno
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from storage_backends.base import Block, FileStat
from storage_backends.names import check_upload_id, name_variants, safe_relative
from storage_backends.registry import StorageSettings

_READ_BLOCK = 1024 * 1024  # the contract's "blocks of at most 1 MiB"


def open_storage(url: str, settings: StorageSettings) -> MemoryStorage:
    """The opener the registry calls for ``memory://`` URLs."""
    return MemoryStorage()


@dataclass
class _File:
    data: bytearray = field(default_factory=bytearray)
    modified: float = field(default_factory=time.time)


class MemoryStorage:
    def __init__(self) -> None:
        self._partials: dict[str, _File] = {}
        self._finals: dict[str, _File] = {}
        # upload id -> (location, when): where finalize put the partial, kept
        # until delete(upload_id), so that finalizing again finds it.
        self._notes: dict[str, tuple[str, float]] = {}

    async def check(self) -> None:
        """Nothing to reach or prepare."""

    async def create(self, upload_id: str) -> None:
        self._partials.setdefault(check_upload_id(upload_id), _File())

    async def write(self, upload_id: str, offset: int, blocks: AsyncIterator[Block]) -> int:
        partial = self._partial(upload_id)
        written = 0
        async for block in blocks:
            for piece in block:
                at = offset + written
                partial.data[at : at + len(piece)] = piece  # overwrites, never shifts
                written += len(piece)
            partial.modified = time.time()
        return written

    async def finalize(self, upload_id: str, final_name: str, length: int) -> str:
        relative = safe_relative(final_name)
        partial = self._partials.get(check_upload_id(upload_id))
        if partial is None:
            return self._published_earlier(upload_id, length)
        if len(partial.data) < length:
            raise OSError(errno.EIO, f"partial holds {len(partial.data)} of {length} bytes")
        for candidate in name_variants(relative):
            location = candidate.as_posix()
            if location not in self._finals:  # never replace a file
                self._finals[location] = _File(partial.data[:length])
                self._notes[upload_id] = (location, time.time())
                del self._partials[upload_id]
                return location
        raise FileExistsError(errno.EEXIST, "no free final name")

    def _published_earlier(self, upload_id: str, length: int) -> str:
        location, _ = self._notes.get(upload_id, ("", 0.0))
        final = self._finals.get(location)
        if final is None or len(final.data) != length:
            raise FileNotFoundError(errno.ENOENT, "no such partial")
        return location

    async def delete(self, upload_id: str, location: str | None = None) -> None:
        check_upload_id(upload_id)
        final = None if location is None else safe_relative(location).as_posix()
        self._partials.pop(upload_id, None)
        self._notes.pop(upload_id, None)
        if final is not None:
            self._finals.pop(final, None)

    async def aclose(self) -> None:
        """Nothing to release."""

    async def concat(self, upload_id: str, parts: Sequence[tuple[str, int]]) -> None:
        target = self._partial(upload_id)
        joined = bytearray()
        for part_id, length in parts:
            part = self._partial(part_id).data
            if len(part) < length:
                raise OSError(errno.EIO, f"part holds {len(part)} bytes, not {length}")
            joined += part[:length]
        target.data, target.modified = joined, time.time()

    async def stat(self, upload_id: str, location: str | None) -> FileStat:
        file = self._file(upload_id, location)
        return FileStat(size=len(file.data), modified=file.modified)

    def read(
        self, upload_id: str, location: str | None, start: int, end: int
    ) -> AsyncIterator[bytes]:
        # Names are checked here, at the call; the file is looked up when
        # iteration starts, as the contract says.
        check_upload_id(upload_id)
        if location is not None:
            safe_relative(location)
        if not 0 <= start <= end:
            raise ValueError(f"invalid byte range [{start}, {end})")
        return self._blocks(upload_id, location, start, end)

    async def _blocks(
        self, upload_id: str, location: str | None, start: int, end: int
    ) -> AsyncIterator[bytes]:
        data = self._file(upload_id, location).data
        if len(data) < end:
            raise OSError(errno.EIO, f"file ends at {len(data)}, before {end}")
        for at in range(start, end, _READ_BLOCK):
            yield bytes(data[at : min(at + _READ_BLOCK, end)])

    async def stale_partials(self, older_than: float) -> list[str]:
        touched = {upload_id: file.modified for upload_id, file in self._partials.items()}
        for upload_id, (_, when) in self._notes.items():
            touched[upload_id] = max(when, touched.get(upload_id, when))
        return sorted(upload_id for upload_id, when in touched.items() if when < older_than)

    def _partial(self, upload_id: str) -> _File:
        partial = self._partials.get(check_upload_id(upload_id))
        if partial is None:
            raise FileNotFoundError(errno.ENOENT, "no such partial")
        return partial

    def _file(self, upload_id: str, location: str | None) -> _File:
        if location is None:
            return self._partial(upload_id)
        final = self._finals.get(safe_relative(location).as_posix())
        if final is None:
            check_upload_id(upload_id)
            raise FileNotFoundError(errno.ENOENT, "no such file")
        return final

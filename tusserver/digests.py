"""Digests of the bytes as they stream in: per chunk (Upload-Checksum) and
per file (the SHA-256 recorded with every finished upload, and the digest a
client may declare in its ``checksum`` metadata).

Hashing runs on the event loop, one body message at a time as the
receiver takes it (64 KiB from uvicorn, up to about 400 KiB from granian:
a quarter of a millisecond of SHA-256 at most): the bytes are
still in the core's cache, and nothing is handed to a thread. Hashing each
block in a worker thread beside its write, as this did before, cost a task,
an event and a thread hop per block and read the block back from memory:
a PATCH took 15 to 18 % more CPU that way (bench/README.md, "Where
the digest is computed").

A file digest spans many PATCHes. Its running state lives in the process
that received the bytes (``RunningDigests``), keyed by upload id and offset;
hash objects cannot be serialised into Redis. When an upload's PATCHes are
spread over processes, the state found does not match the offset and the
finished file is read back once instead (``digest_stored_bytes``).
"""

from __future__ import annotations

import hashlib
import zlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
from typing import Protocol

import anyio.to_thread

from tusserver.protocol import Checksum

# The digest every finished upload records, unless Config.file_digest is
# NO_FILE_DIGEST (then only a client-declared digest is computed).
FILE_DIGEST = "sha256"
NO_FILE_DIGEST = "none"


class Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...

    def digest(self) -> bytes: ...

    def copy(self) -> Hasher: ...


class Crc32:
    """zlib.crc32 with a hashlib-like face; the digest is big-endian, as tusd sends it."""

    def __init__(self, value: int = 0) -> None:
        self.value = value

    def update(self, data: bytes, /) -> None:
        self.value = zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")

    def copy(self) -> Crc32:
        return Crc32(self.value)


def new_hasher(algorithm: str) -> Hasher:
    if algorithm == "crc32":
        return Crc32()
    return hashlib.new(algorithm)


class Digests:
    """The hashers one request feeds: the file's (by algorithm) and the chunk's."""

    def __init__(self, file: dict[str, Hasher] | None, chunk: Checksum | None) -> None:
        self.file = file  # None: the file's state is unknown here (other process)
        self.chunk = chunk
        self._chunk_hasher = new_hasher(chunk.algorithm) if chunk else None
        self.fed = 0  # bytes every hasher has consumed
        # Every piece goes to each: the file's hashers, then the chunk's.
        self._hashers: list[Hasher] = [*(file or {}).values()]
        if self._chunk_hasher is not None:
            self._hashers.append(self._chunk_hasher)

    @property
    def active(self) -> bool:
        return self.file is not None or self._chunk_hasher is not None

    def chunk_matches(self) -> bool:
        assert self.chunk is not None and self._chunk_hasher is not None
        return self._chunk_hasher.digest() == self.chunk.digest

    def feed(self, piece: bytes) -> None:
        """Hash ``piece`` into every hasher (the file's and the chunk's)."""
        for hasher in self._hashers:
            hasher.update(piece)
        self.fed += len(piece)


class RunningDigests:
    """File digests in progress in this process, by upload id.

    ``resume`` hands out copies, so a PATCH whose bytes do not count (460,
    refused commit) leaves the state at the offset it started from, and a
    retry resumes from there. Bounded: the least recently used entries go
    first, and their uploads fall back to reading the file at finalize.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[str, tuple[int, dict[str, Hasher]]] = OrderedDict()

    def resume(
        self, upload_id: str, offset: int, algorithms: Iterable[str]
    ) -> dict[str, Hasher] | None:
        """Hashers holding the digest of bytes [0, offset), or None if unknown here."""
        if offset == 0:
            return {algorithm: new_hasher(algorithm) for algorithm in algorithms}
        entry = self._entries.get(upload_id)
        if entry is None or entry[0] != offset:
            return None
        self._entries.move_to_end(upload_id)
        return {algorithm: hasher.copy() for algorithm, hasher in entry[1].items()}

    def keep(self, upload_id: str, offset: int, hashers: dict[str, Hasher]) -> None:
        self._entries[upload_id] = (offset, hashers)
        self._entries.move_to_end(upload_id)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def forget(self, upload_id: str) -> None:
        self._entries.pop(upload_id, None)


async def digest_stored_bytes(
    blocks: AsyncIterator[bytes], algorithms: Iterable[str]
) -> dict[str, bytes]:
    """Digest bytes read back from storage (the fallback path), hashing off the loop."""
    hashers = {algorithm: new_hasher(algorithm) for algorithm in algorithms}

    def update(data: bytes) -> None:
        for hasher in hashers.values():
            hasher.update(data)

    async for data in blocks:
        await anyio.to_thread.run_sync(update, data)
    return {algorithm: hasher.digest() for algorithm, hasher in hashers.items()}

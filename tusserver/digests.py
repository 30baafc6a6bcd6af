"""Digests of the bytes as they stream in: per chunk (Upload-Checksum) and
per file (the SHA-256 recorded with every finished upload, and the digest a
client may declare in its ``checksum`` metadata).

Hashing runs in worker threads, one hop per block (megabytes), beside the
storage write of the same block: hashlib and zlib release the GIL on large
buffers, so neither the event loop nor the write waits for the hash.

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
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Protocol

import anyio.to_thread

from tusserver.protocol import Checksum

# The digest every finished upload records, unless Config.file_digest is
# NO_FILE_DIGEST (then only a client-declared digest is computed).
FILE_DIGEST = "sha256"
NO_FILE_DIGEST = "none"
# Hashing a block smaller than this costs less than the thread hop.
_INLINE_LIMIT = 128 * 1024


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

    @property
    def active(self) -> bool:
        return self.file is not None or self._chunk_hasher is not None

    def chunk_matches(self) -> bool:
        assert self.chunk is not None and self._chunk_hasher is not None
        return self._chunk_hasher.digest() == self.chunk.digest

    async def feed(self, block: Sequence[bytes]) -> None:
        """Hash one block, in a worker thread unless it is small."""
        if sum(len(piece) for piece in block) < _INLINE_LIMIT:
            self._update(block)
        else:
            await anyio.to_thread.run_sync(self._update, block)

    def _update(self, block: Sequence[bytes]) -> None:
        hashers: list[Hasher] = list(self.file.values()) if self.file is not None else []
        if self._chunk_hasher is not None:
            hashers.append(self._chunk_hasher)
        for piece in block:
            for hasher in hashers:
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

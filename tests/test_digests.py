"""Running file digests: resumable per process, exact, and bounded; and which
algorithms a whole file is hashed with (``--file-digest``)."""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import anyio

from storage_backends.local import LocalStorage
from tusserver.digests import Digests, RunningDigests, digest_stored_bytes, new_hasher
from tusserver.integrity import file_algorithms, file_digests
from tusserver.protocol import Checksum
from tusserver.record import Upload


def test_crc32_digest_is_big_endian_like_tusd() -> None:
    hasher = new_hasher("crc32")
    hasher.update(b"hello ")
    hasher.update(b"world")
    assert hasher.digest() == zlib.crc32(b"hello world").to_bytes(4, "big")


def test_running_digest_resumes_only_at_the_offset_it_was_kept_at() -> None:
    running = RunningDigests()
    hashers = running.resume("a", 0, ["sha256"])
    assert hashers is not None
    hashers["sha256"].update(b"abc")
    running.keep("a", 3, hashers)
    assert running.resume("a", 2, ["sha256"]) is None
    assert running.resume("b", 3, ["sha256"]) is None
    resumed = running.resume("a", 3, ["sha256"])
    assert resumed is not None
    resumed["sha256"].update(b"def")
    assert resumed["sha256"].digest() == hashlib.sha256(b"abcdef").digest()


def test_resumed_hashers_are_copies_so_discarded_chunks_leave_no_trace() -> None:
    running = RunningDigests()
    running.keep("a", 3, {"sha256": hashlib.sha256(b"abc")})
    discarded = running.resume("a", 3, ["sha256"])
    assert discarded is not None
    discarded["sha256"].update(b"garbage")
    again = running.resume("a", 3, ["sha256"])
    assert again is not None
    assert again["sha256"].digest() == hashlib.sha256(b"abc").digest()


def test_running_digests_forget_the_least_recently_used_beyond_capacity() -> None:
    running = RunningDigests(capacity=2)
    for upload_id in ("a", "b"):
        running.keep(upload_id, 1, {"sha256": hashlib.sha256(b"x")})
    assert running.resume("a", 1, ["sha256"]) is not None  # "a" is now the most recent
    running.keep("c", 1, {"sha256": hashlib.sha256(b"x")})
    assert running.resume("b", 1, ["sha256"]) is None
    assert running.resume("a", 1, ["sha256"]) is not None
    assert running.resume("c", 1, ["sha256"]) is not None


def test_digests_feed_file_and_chunk_hashers_alike() -> None:
    small, large = b"s" * 100, b"L" * (512 * 1024)
    expected = hashlib.sha1(small + large).digest()
    digests = Digests({"sha256": hashlib.sha256()}, Checksum("sha1", expected))

    for piece in (small, large[:1000], large[1000:]):
        digests.feed(piece)

    assert digests.fed == len(small) + len(large)
    assert digests.chunk_matches()
    assert digests.file is not None
    assert digests.file["sha256"].digest() == hashlib.sha256(small + large).digest()


def test_digest_of_stored_bytes_reads_every_block() -> None:
    async def blocks() -> AsyncIterator[bytes]:
        for piece in (b"ab", b"", b"cd" * 1000):
            yield piece

    result = anyio.run(digest_stored_bytes, blocks(), ("sha256", "md5"))
    data = b"ab" + b"cd" * 1000
    assert result == {
        "sha256": hashlib.sha256(data).digest(),
        "md5": hashlib.md5(data).digest(),
    }


def test_file_algorithms_are_the_file_digest_and_the_declared_one_or_nothing() -> None:
    sha256 = Checksum("sha256", bytes(32))
    md5 = Checksum("md5", bytes(16))
    assert file_algorithms(None, "sha256") == ("sha256",)
    assert file_algorithms(sha256, "sha256") == ("sha256",)
    assert file_algorithms(md5, "sha256") == ("sha256", "md5")
    assert file_algorithms(None, "none") == ()
    assert file_algorithms(md5, "none") == ("md5",)
    assert file_algorithms(sha256, "none") == ("sha256",)


def test_with_nothing_to_hash_the_file_is_not_read_back(tmp_path: Path) -> None:
    # No partial exists: reading it back would fail.
    storage = LocalStorage(tmp_path)
    upload = Upload(id="never-stored", length=10, offset=10)

    digests = anyio.run(file_digests, storage, RunningDigests(), upload, ())

    assert digests == {}

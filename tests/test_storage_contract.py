"""The storage contract (storage_backends/base.py), pinned for every backend alike.

Each spec runs against the local backend and against the SMB backend on a
real Samba; the resulting files are read back from disk (for SMB: the
folder Samba serves), so a spec sees what a person browsing the storage
would see.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from storage_backends.base import FileStat, Storage
from storage_backends.local import LocalStorage
from storage_backends.smb import SMBStorage
from storage_backends.smb_location import SMBLocation
from tests.samba_fixtures import SambaServer

UPLOAD_ID = "0123456789abcdef0123456789abcdef"
OTHER_ID = "fedcba9876543210fedcba9876543210"
MiB = 1024 * 1024

pytestmark = pytest.mark.anyio


@dataclass
class Backend:
    storage: Storage
    root: Path  # where finished files land, on this machine's disk

    @property
    def staging(self) -> Path:
        return self.root / ".partial"

    def partial(self, upload_id: str = UPLOAD_ID) -> Path:
        return self.staging / upload_id

    def entries(self) -> list[str]:
        """What someone browsing the storage root sees."""
        return sorted(path.name for path in self.root.iterdir())


@pytest.fixture(params=["local", "smb"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "local":
        root = tmp_path / "root"
        storage: Storage = LocalStorage(root)
    else:
        samba: SambaServer = request.getfixturevalue("samba")
        folder = f"contract-{uuid.uuid4().hex[:12]}"
        root = samba.share_dir / folder
        location = SMBLocation.parse(samba.url(folder))
        storage = SMBStorage(location, samba.password, timeout=10)
    await storage.check()
    try:
        yield Backend(storage, root)
    finally:
        await storage.aclose()


async def blocks(*items: Sequence[bytes]) -> AsyncIterator[Sequence[bytes]]:
    for item in items:
        yield item


def pattern(size: int, seed: int = 0) -> bytes:
    """Bytes whose every 32-byte run differs from its neighbours', so shifts show."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


# --- create and write ---------------------------------------------------------


async def test_check_creates_an_empty_staging_folder(backend: Backend) -> None:
    assert backend.staging.is_dir()
    assert list(backend.staging.iterdir()) == []
    assert backend.entries() == [".partial"]


async def test_create_makes_an_empty_partial_and_again_keeps_its_bytes(backend: Backend) -> None:
    await backend.storage.create(UPLOAD_ID)
    assert backend.partial().read_bytes() == b""

    await backend.storage.write(UPLOAD_ID, 0, blocks([b"kept"]))
    await backend.storage.create(UPLOAD_ID)

    assert backend.partial().read_bytes() == b"kept"
    assert backend.entries() == [".partial"]


@pytest.mark.parametrize("bad_id", ["../x", "a/b", "a\\b", "", ".", "x" * 129, "a\x00b"])
async def test_ids_that_are_not_opaque_tokens_never_become_paths(
    backend: Backend, bad_id: str
) -> None:
    with pytest.raises(ValueError):
        await backend.storage.create(bad_id)
    with pytest.raises(ValueError):
        await backend.storage.write(bad_id, 0, blocks([b"x"]))
    with pytest.raises(ValueError):
        await backend.storage.delete(bad_id)

    assert backend.entries() == [".partial"]
    assert list(backend.staging.iterdir()) == []


async def test_write_stores_blocks_contiguously_at_the_offset(backend: Backend) -> None:
    await backend.storage.create(UPLOAD_ID)

    first = await backend.storage.write(UPLOAD_ID, 0, blocks([b"ab", b"cd"], [b"ef"]))
    second = await backend.storage.write(UPLOAD_ID, 6, blocks([b"gh"], [], [b"", b"ij"]))

    assert (first, second) == (6, 4)
    assert backend.partial().read_bytes() == b"abcdefghij"


async def test_write_at_an_offset_overwrites_stale_bytes_and_leaves_the_rest(
    backend: Backend,
) -> None:
    await backend.storage.create(UPLOAD_ID)
    await backend.storage.write(UPLOAD_ID, 0, blocks([b"0123456789"]))

    written = await backend.storage.write(UPLOAD_ID, 4, blocks([b"X", b"Y"]))

    assert written == 2
    assert backend.partial().read_bytes() == b"0123XY6789"


async def test_large_blocks_of_many_pieces_land_byte_for_byte_in_place(
    backend: Backend,
) -> None:
    # Blocks of several MiB in 64 KiB pieces, as the network delivers them;
    # the SMB backend sends each block as several writes in flight at once,
    # which must not move a byte.
    data = pattern(13 * MiB + 12345)
    block_size = 4 * MiB + 7

    async def network_blocks() -> AsyncIterator[Sequence[bytes]]:
        for start in range(0, len(data), block_size):
            block = data[start : start + block_size]
            yield [block[i : i + 65536] for i in range(0, len(block), 65536)]

    await backend.storage.create(UPLOAD_ID)
    written = await backend.storage.write(UPLOAD_ID, 0, network_blocks())

    assert written == len(data)
    assert backend.partial().read_bytes() == data


async def test_a_write_that_ends_early_is_resumed_from_its_count(backend: Backend) -> None:
    # A body that breaks off after two blocks (a dropped connection): the
    # count says what is stored, and the next write continues there.
    data = pattern(3 * MiB + 100, seed=1)

    async def broken_off() -> AsyncIterator[Sequence[bytes]]:
        yield [data[:MiB]]
        yield [data[MiB : 2 * MiB + 50]]

    await backend.storage.create(UPLOAD_ID)
    stored = await backend.storage.write(UPLOAD_ID, 0, broken_off())
    assert stored == 2 * MiB + 50

    rest = await backend.storage.write(UPLOAD_ID, stored, blocks([data[stored:]]))

    assert stored + rest == len(data)
    assert backend.partial().read_bytes() == data


async def test_write_to_a_missing_partial_raises_file_not_found_and_creates_nothing(
    backend: Backend,
) -> None:
    with pytest.raises(FileNotFoundError):
        await backend.storage.write(UPLOAD_ID, 0, blocks([b"data"]))

    assert not backend.partial().exists()


async def test_write_asks_for_the_next_block_only_after_the_previous_is_stored(
    backend: Backend,
) -> None:
    await backend.storage.create(UPLOAD_ID)
    sizes_seen: list[int] = []

    async def observed() -> AsyncIterator[Sequence[bytes]]:
        for index in range(3):
            sizes_seen.append(backend.partial().stat().st_size)
            yield [bytes([65 + index]) * (MiB + 1000)]
        sizes_seen.append(backend.partial().stat().st_size)

    assert await backend.storage.write(UPLOAD_ID, 0, observed()) == 3 * (MiB + 1000)

    assert sizes_seen == [0, MiB + 1000, 2 * (MiB + 1000), 3 * (MiB + 1000)]


async def test_a_write_broken_off_by_its_body_leaves_the_partial_closed_and_deletable(
    backend: Backend,
) -> None:
    # The SMB backend keeps the partial open while a write runs; a handle
    # left open would keep a deleted partial on the share (delete pending).
    await backend.storage.create(UPLOAD_ID)

    async def failing_body() -> AsyncIterator[Sequence[bytes]]:
        yield [pattern(2 * MiB)]
        raise ConnectionResetError("the client went away")

    with pytest.raises(ConnectionResetError):
        await backend.storage.write(UPLOAD_ID, 0, failing_body())
    assert backend.partial().read_bytes() == pattern(2 * MiB)

    await backend.storage.delete(UPLOAD_ID)

    assert not backend.partial().exists()
    assert list(backend.staging.iterdir()) == []


# --- finalize -----------------------------------------------------------------


async def test_finalize_trims_to_length_and_publishes_and_delete_then_clears_staging(
    backend: Backend,
) -> None:
    await backend.storage.create(UPLOAD_ID)
    await backend.storage.write(UPLOAD_ID, 0, blocks([b"0123456789"]))

    location = await backend.storage.finalize(UPLOAD_ID, "out.bin", 6)

    assert location == "out.bin"
    assert (backend.root / "out.bin").read_bytes() == b"012345"
    assert backend.entries() == [".partial", "out.bin"]
    await backend.storage.delete(UPLOAD_ID)
    assert list(backend.staging.iterdir()) == []
    assert (backend.root / "out.bin").read_bytes() == b"012345"


async def test_finalize_again_before_delete_returns_the_same_location_and_no_copy(
    backend: Backend,
) -> None:
    # A crash after publishing but before the location was recorded: the
    # repair finalizes again and must find the file it already published.
    (backend.root / "out.bin").write_bytes(b"someone else's")
    await backend.storage.create(UPLOAD_ID)
    await backend.storage.write(UPLOAD_ID, 0, blocks([b"0123456789"]))

    first = await backend.storage.finalize(UPLOAD_ID, "out.bin", 10)
    again = await backend.storage.finalize(UPLOAD_ID, "out.bin", 10)

    assert first == again == "out (1).bin"
    assert backend.entries() == [".partial", "out (1).bin", "out.bin"]
    assert (backend.root / "out (1).bin").read_bytes() == b"0123456789"
    assert (backend.root / "out.bin").read_bytes() == b"someone else's"


async def test_finalize_into_a_subfolder_creates_it(backend: Backend) -> None:
    await backend.storage.create(UPLOAD_ID)
    await backend.storage.write(UPLOAD_ID, 0, blocks([b"abc"]))

    location = await backend.storage.finalize(UPLOAD_ID, "2024/06/f.txt", 3)

    assert location == "2024/06/f.txt"
    assert (backend.root / "2024" / "06" / "f.txt").read_bytes() == b"abc"


@pytest.mark.parametrize(
    ("name", "taken", "expected"),
    [
        ("a.txt", ["a.txt"], "a (1).txt"),
        ("a.txt", ["a.txt", "a (1).txt"], "a (2).txt"),
        ("plain", ["plain"], "plain (1)"),
        ("a.txt", ["a (1).txt"], "a.txt"),
    ],
)
async def test_finalize_never_overwrites_and_picks_a_numbered_variant(
    backend: Backend, name: str, taken: list[str], expected: str
) -> None:
    for existing in taken:
        (backend.root / existing).write_bytes(b"old " + existing.encode())
    await backend.storage.create(UPLOAD_ID)
    await backend.storage.write(UPLOAD_ID, 0, blocks([b"new"]))

    location = await backend.storage.finalize(UPLOAD_ID, name, 3)

    assert location == expected
    assert (backend.root / expected).read_bytes() == b"new"
    for existing in taken:
        assert (backend.root / existing).read_bytes() == b"old " + existing.encode()


@pytest.mark.parametrize(
    "name",
    ["../x", "/etc/x", ".partial/x", ".partial", "./.partial/x", "a/../../x", "..", "", "a\\..\\x"],
)
async def test_finalize_names_escaping_the_root_raise_permission_error_and_keep_the_partial(
    backend: Backend, name: str
) -> None:
    await backend.storage.create(UPLOAD_ID)
    await backend.storage.write(UPLOAD_ID, 0, blocks([b"keep"]))

    with pytest.raises(PermissionError):
        await backend.storage.finalize(UPLOAD_ID, name, 4)

    assert backend.partial().read_bytes() == b"keep"
    assert backend.entries() == [".partial"]
    assert sorted(p.name for p in backend.staging.iterdir()) == [UPLOAD_ID]


async def test_finalize_of_a_missing_partial_raises_file_not_found(backend: Backend) -> None:
    with pytest.raises(FileNotFoundError):
        await backend.storage.finalize(UPLOAD_ID, "x", 0)

    assert backend.entries() == [".partial"]


async def test_finalize_refuses_a_partial_shorter_than_the_length_and_publishes_nothing(
    backend: Backend,
) -> None:
    await backend.storage.create(UPLOAD_ID)
    await backend.storage.write(UPLOAD_ID, 0, blocks([b"only "]))

    with pytest.raises(OSError):
        await backend.storage.finalize(UPLOAD_ID, "short.bin", 10)

    assert backend.partial().read_bytes() == b"only "
    assert backend.entries() == [".partial"]


# --- delete -------------------------------------------------------------------


async def test_delete_removes_the_partial_and_is_idempotent(backend: Backend) -> None:
    await backend.storage.create(UPLOAD_ID)
    await backend.storage.write(UPLOAD_ID, 0, blocks([b"abc"]))

    await backend.storage.delete(UPLOAD_ID)
    await backend.storage.delete(UPLOAD_ID)

    assert not backend.partial().exists()


async def test_delete_with_a_location_removes_that_final_file_only(backend: Backend) -> None:
    for upload_id, name in ((UPLOAD_ID, "mine.txt"), (OTHER_ID, "theirs.txt")):
        await backend.storage.create(upload_id)
        await backend.storage.write(upload_id, 0, blocks([name.encode()]))
        await backend.storage.finalize(upload_id, name, len(name))

    await backend.storage.delete(UPLOAD_ID, "mine.txt")
    await backend.storage.delete(UPLOAD_ID, "mine.txt")

    assert backend.entries() == [".partial", "theirs.txt"]
    assert (backend.root / "theirs.txt").read_bytes() == b"theirs.txt"


@pytest.mark.parametrize("location", ["../outside", "/etc/passwd", ".partial/" + UPLOAD_ID])
async def test_delete_with_a_location_escaping_the_root_raises_permission_error(
    backend: Backend, location: str
) -> None:
    outside = backend.root.parent / "outside"
    outside.write_bytes(b"precious")
    await backend.storage.create(UPLOAD_ID)

    with pytest.raises(PermissionError):
        await backend.storage.delete(UPLOAD_ID, location)

    assert outside.read_bytes() == b"precious"
    assert backend.partial().exists()
    outside.unlink()


# --- concat, stat, read, stale partials ----------------------------------------


async def test_concat_fills_the_partial_with_the_parts_in_order(backend: Backend) -> None:
    parts = {f"part{n}": pattern(size, seed=n) for n, size in enumerate([MiB + 3, 0, 17, 2 * MiB])}
    for part_id, content in parts.items():
        await backend.storage.create(part_id)
        await backend.storage.write(part_id, 0, blocks([content]))
    await backend.storage.create(UPLOAD_ID)
    # Stale bytes from an earlier attempt, longer than the result.
    await backend.storage.write(UPLOAD_ID, 0, blocks([b"\xff" * (4 * MiB)]))

    await backend.storage.concat(UPLOAD_ID, [(part, len(data)) for part, data in parts.items()])

    assert backend.partial().read_bytes() == b"".join(parts.values())
    for part_id, content in parts.items():
        assert backend.partial(part_id).read_bytes() == content


async def test_concat_copies_each_part_up_to_its_length_never_its_stale_tail(
    backend: Backend,
) -> None:
    # A partial may hold bytes past its committed length (a discarded chunk);
    # they must neither land in the final nor shift the parts after it.
    await backend.storage.create("first")
    await backend.storage.write("first", 0, blocks([b"A" * 100 + b"X" * 300]))
    await backend.storage.create("second")
    await backend.storage.write("second", 0, blocks([b"BBBBB"]))
    await backend.storage.create(UPLOAD_ID)

    await backend.storage.concat(UPLOAD_ID, [("first", 100), ("second", 5)])

    assert backend.partial().read_bytes() == b"A" * 100 + b"BBBBB"


async def test_concat_of_a_part_shorter_than_its_length_raises(backend: Backend) -> None:
    await backend.storage.create("short")
    await backend.storage.write("short", 0, blocks([b"abc"]))
    await backend.storage.create(UPLOAD_ID)

    with pytest.raises(OSError):
        await backend.storage.concat(UPLOAD_ID, [("short", 10)])


async def test_concat_with_a_missing_part_raises_file_not_found(backend: Backend) -> None:
    await backend.storage.create("present")
    await backend.storage.write("present", 0, blocks([b"abc"]))
    await backend.storage.create(UPLOAD_ID)

    with pytest.raises(FileNotFoundError):
        await backend.storage.concat(UPLOAD_ID, [("present", 3), ("missing", 1)])


async def test_stat_reports_size_and_time_of_the_partial_and_of_the_final_file(
    backend: Backend,
) -> None:
    before = time.time() - 5
    await backend.storage.create(UPLOAD_ID)
    await backend.storage.write(UPLOAD_ID, 0, blocks([b"0123456789"]))

    partial = await backend.storage.stat(UPLOAD_ID, None)
    location = await backend.storage.finalize(UPLOAD_ID, "done.bin", 7)
    final = await backend.storage.stat(UPLOAD_ID, location)

    assert partial.size == 10
    assert final == FileStat(size=7, modified=final.modified)
    assert before <= final.modified <= time.time() + 5
    with pytest.raises(FileNotFoundError):
        await backend.storage.stat(OTHER_ID, None)
    with pytest.raises(PermissionError):
        await backend.storage.stat(UPLOAD_ID, "../outside")


@pytest.mark.parametrize(
    ("start", "end"),
    [(0, 3 * MiB + 5), (0, 1), (MiB - 1, MiB + 1), (2 * MiB + 100, 3 * MiB + 5), (10, 10)],
)
async def test_read_streams_the_range_in_blocks_of_at_most_about_1_mib(
    backend: Backend, start: int, end: int
) -> None:
    data = pattern(3 * MiB + 5, seed=7)
    await backend.storage.create(UPLOAD_ID)
    await backend.storage.write(UPLOAD_ID, 0, blocks([data]))
    location = await backend.storage.finalize(UPLOAD_ID, "r.bin", len(data))

    pieces = [piece async for piece in backend.storage.read(UPLOAD_ID, location, start, end)]

    assert b"".join(pieces) == data[start:end]
    assert all(0 < len(piece) <= MiB + 64 * 1024 for piece in pieces)


async def test_read_of_the_partial_and_of_a_missing_file(backend: Backend) -> None:
    await backend.storage.create(UPLOAD_ID)
    await backend.storage.write(UPLOAD_ID, 0, blocks([b"partial bytes"]))

    partial = [piece async for piece in backend.storage.read(UPLOAD_ID, None, 8, 13)]

    assert b"".join(partial) == b"bytes"
    with pytest.raises(FileNotFoundError):
        async for _ in backend.storage.read(UPLOAD_ID, "missing.bin", 0, 1):
            pass


async def test_read_past_the_end_of_the_file_raises_rather_than_yield_fewer_bytes(
    backend: Backend,
) -> None:
    await backend.storage.create(UPLOAD_ID)
    await backend.storage.write(UPLOAD_ID, 0, blocks([b"ten bytes!"]))

    with pytest.raises(OSError):
        async for _ in backend.storage.read(UPLOAD_ID, None, 0, 11):
            pass


async def test_stale_partials_lists_upload_ids_last_modified_before_the_time(
    backend: Backend,
) -> None:
    for upload_id in (UPLOAD_ID, OTHER_ID):
        await backend.storage.create(upload_id)
    await backend.storage.write(UPLOAD_ID, 0, blocks([b"x"]))

    assert await backend.storage.stale_partials(time.time() - 3600) == []
    stale = await backend.storage.stale_partials(time.time() + 3600)

    assert sorted(stale) == sorted([UPLOAD_ID, OTHER_ID])
    os.utime(backend.partial(OTHER_ID), (time.time() - 7200, time.time() - 7200))
    assert await backend.storage.stale_partials(time.time() - 3600) == [OTHER_ID]

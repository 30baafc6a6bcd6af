"""The storage contract (storage_backends/base.py), pinned for every backend alike.

Each spec runs against the local backend, the SMB backend on a real Samba,
and the in-memory backend of examples/memory_storage.py (the walk-through
of docs/storage.md, which has no file system at all). Results are read
back through the backend itself (``stat``, ``read``, ``stale_partials``),
never from a disk, so any backend can join by adding itself to the
``storage`` fixture.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import anyio
import pytest

from storage_backends.base import Concatenator, FileStat, Storage
from storage_backends.local import LocalStorage
from storage_backends.registry import StorageSettings
from storage_backends.smb import SMBStorage
from storage_backends.smb_location import SMBLocation
from tests.samba_fixtures import SambaServer

UPLOAD_ID = "0123456789abcdef0123456789abcdef"
OTHER_ID = "fedcba9876543210fedcba9876543210"
MiB = 1024 * 1024
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "memory_storage.py"
# Later than any file of a test is modified: stale_partials(FUTURE) lists
# everything in staging.
FUTURE = time.time() + 10 * 365 * 86400

pytestmark = pytest.mark.anyio


def memory_storage() -> Storage:
    """The example's backend, loaded from its file as a module of its own."""
    module = sys.modules.get("memory_storage")
    if module is None:
        spec = importlib.util.spec_from_file_location("memory_storage", EXAMPLE)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # as an import would: its dataclasses look it up
        spec.loader.exec_module(module)
    storage: Storage = module.open_storage("memory://", StorageSettings())
    return storage


@pytest.fixture(params=["local", "smb", "memory"])
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    backend: Storage
    if request.param == "local":
        backend = LocalStorage(tmp_path / "root")
    elif request.param == "memory":
        backend = memory_storage()
    else:
        samba: SambaServer = request.getfixturevalue("samba")
        folder = f"contract-{uuid.uuid4().hex[:12]}"
        backend = SMBStorage(SMBLocation.parse(samba.url(folder) + "?timeout=10s"), samba.password)
    await backend.check()
    try:
        yield backend
    finally:
        await backend.aclose()


async def contents(
    storage: Storage, upload_id: str = UPLOAD_ID, location: str | None = None
) -> bytes:
    """The whole file, as the backend reads it: the partial, or the final at ``location``."""
    size = (await storage.stat(upload_id, location)).size
    return b"".join([piece async for piece in storage.read(upload_id, location, 0, size)])


async def exists(storage: Storage, upload_id: str = UPLOAD_ID, location: str | None = None) -> bool:
    try:
        await storage.stat(upload_id, location)
    except FileNotFoundError:
        return False
    return True


async def staged(storage: Storage) -> list[str]:
    """The uploads with anything left in staging (a partial, a finalize's note)."""
    return sorted(await storage.stale_partials(FUTURE))


async def publish(storage: Storage, upload_id: str, name: str, content: bytes) -> str:
    """A finished file of another upload, published and recorded as the server would."""
    await storage.create(upload_id)
    await storage.write(upload_id, 0, blocks([content]))
    location = await storage.finalize(upload_id, name, len(content))
    await storage.delete(upload_id)
    return location


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


async def test_check_prepares_an_empty_staging_area_and_may_run_again(storage: Storage) -> None:
    assert await staged(storage) == []

    await storage.check()

    assert await staged(storage) == []


async def test_create_makes_an_empty_partial_and_again_keeps_its_bytes(storage: Storage) -> None:
    await storage.create(UPLOAD_ID)
    assert await contents(storage) == b""

    await storage.write(UPLOAD_ID, 0, blocks([b"kept"]))
    await storage.create(UPLOAD_ID)

    assert await contents(storage) == b"kept"
    assert await staged(storage) == [UPLOAD_ID]


@pytest.mark.parametrize("bad_id", ["../x", "a/b", "a\\b", "", ".", "x" * 129, "a\x00b"])
async def test_ids_that_are_not_opaque_tokens_never_become_paths(
    storage: Storage, bad_id: str
) -> None:
    with pytest.raises(ValueError):
        await storage.create(bad_id)
    with pytest.raises(ValueError):
        await storage.write(bad_id, 0, blocks([b"x"]))
    with pytest.raises(ValueError):
        await storage.delete(bad_id)
    with pytest.raises(ValueError):
        await storage.stat(bad_id, None)

    assert await staged(storage) == []


async def test_write_stores_blocks_contiguously_at_the_offset(storage: Storage) -> None:
    await storage.create(UPLOAD_ID)

    first = await storage.write(UPLOAD_ID, 0, blocks([b"ab", b"cd"], [b"ef"]))
    second = await storage.write(UPLOAD_ID, 6, blocks([b"gh"], [], [b"", b"ij"]))

    assert (first, second) == (6, 4)
    assert await contents(storage) == b"abcdefghij"


async def test_write_at_an_offset_overwrites_stale_bytes_and_leaves_the_rest(
    storage: Storage,
) -> None:
    await storage.create(UPLOAD_ID)
    await storage.write(UPLOAD_ID, 0, blocks([b"0123456789"]))

    written = await storage.write(UPLOAD_ID, 4, blocks([b"X", b"Y"]))

    assert written == 2
    assert await contents(storage) == b"0123XY6789"


async def test_large_blocks_of_many_pieces_land_byte_for_byte_in_place(storage: Storage) -> None:
    # Blocks of several MiB in 64 KiB pieces, as the network delivers them;
    # the SMB backend sends each block as several writes in flight at once,
    # which must not move a byte.
    data = pattern(13 * MiB + 12345)
    block_size = 4 * MiB + 7

    async def network_blocks() -> AsyncIterator[Sequence[bytes]]:
        for start in range(0, len(data), block_size):
            block = data[start : start + block_size]
            yield [block[i : i + 65536] for i in range(0, len(block), 65536)]

    await storage.create(UPLOAD_ID)
    written = await storage.write(UPLOAD_ID, 0, network_blocks())

    assert written == len(data)
    assert await contents(storage) == data


async def test_a_write_that_ends_early_is_resumed_from_its_count(storage: Storage) -> None:
    # A body that breaks off after two blocks (a dropped connection): the
    # count says what is stored, and the next write continues there.
    data = pattern(3 * MiB + 100, seed=1)

    async def broken_off() -> AsyncIterator[Sequence[bytes]]:
        yield [data[:MiB]]
        yield [data[MiB : 2 * MiB + 50]]

    await storage.create(UPLOAD_ID)
    stored = await storage.write(UPLOAD_ID, 0, broken_off())
    assert stored == 2 * MiB + 50

    rest = await storage.write(UPLOAD_ID, stored, blocks([data[stored:]]))

    assert stored + rest == len(data)
    assert await contents(storage) == data


async def test_write_to_a_missing_partial_raises_file_not_found_and_creates_nothing(
    storage: Storage,
) -> None:
    with pytest.raises(FileNotFoundError):
        await storage.write(UPLOAD_ID, 0, blocks([b"data"]))

    assert not await exists(storage)
    assert await staged(storage) == []


async def test_write_asks_for_the_next_block_only_after_the_previous_is_stored(
    storage: Storage,
) -> None:
    await storage.create(UPLOAD_ID)
    sizes_seen: list[int] = []

    async def observed() -> AsyncIterator[Sequence[bytes]]:
        for index in range(3):
            sizes_seen.append((await storage.stat(UPLOAD_ID, None)).size)
            yield [bytes([65 + index]) * (MiB + 1000)]
        sizes_seen.append((await storage.stat(UPLOAD_ID, None)).size)

    assert await storage.write(UPLOAD_ID, 0, observed()) == 3 * (MiB + 1000)

    assert sizes_seen == [0, MiB + 1000, 2 * (MiB + 1000), 3 * (MiB + 1000)]


async def test_a_write_broken_off_by_its_body_leaves_the_partial_closed_and_deletable(
    storage: Storage,
) -> None:
    # The SMB backend keeps the partial open while a write runs; a handle
    # left open would keep a deleted partial on the share (delete pending).
    await storage.create(UPLOAD_ID)

    async def failing_body() -> AsyncIterator[Sequence[bytes]]:
        yield [pattern(2 * MiB)]
        raise ConnectionResetError("the client went away")

    with pytest.raises(ConnectionResetError):
        await storage.write(UPLOAD_ID, 0, failing_body())
    assert await contents(storage) == pattern(2 * MiB)

    await storage.delete(UPLOAD_ID)

    assert not await exists(storage)
    assert await staged(storage) == []


# --- finalize -----------------------------------------------------------------


async def test_finalize_trims_to_length_and_publishes_and_delete_then_clears_staging(
    storage: Storage,
) -> None:
    await storage.create(UPLOAD_ID)
    await storage.write(UPLOAD_ID, 0, blocks([b"0123456789"]))

    location = await storage.finalize(UPLOAD_ID, "out.bin", 6)

    assert location == "out.bin"
    assert await contents(storage, location=location) == b"012345"
    await storage.delete(UPLOAD_ID)
    assert await staged(storage) == []
    assert not await exists(storage)
    assert await contents(storage, location=location) == b"012345"


async def test_finalize_again_before_delete_returns_the_same_location_and_no_copy(
    storage: Storage,
) -> None:
    # A crash after publishing but before the location was recorded: the
    # repair finalizes again and must find the file it already published.
    await publish(storage, OTHER_ID, "out.bin", b"someone else's")
    await storage.create(UPLOAD_ID)
    await storage.write(UPLOAD_ID, 0, blocks([b"0123456789"]))

    first = await storage.finalize(UPLOAD_ID, "out.bin", 10)
    again = await storage.finalize(UPLOAD_ID, "out.bin", 10)

    assert first == again == "out (1).bin"
    assert not await exists(storage, location="out (2).bin")
    assert await contents(storage, location="out (1).bin") == b"0123456789"
    assert await contents(storage, location="out.bin") == b"someone else's"


async def test_finalize_into_a_subfolder_creates_it(storage: Storage) -> None:
    await storage.create(UPLOAD_ID)
    await storage.write(UPLOAD_ID, 0, blocks([b"abc"]))

    location = await storage.finalize(UPLOAD_ID, "2024/06/f.txt", 3)

    assert location == "2024/06/f.txt"
    assert await contents(storage, location="2024/06/f.txt") == b"abc"


@pytest.mark.parametrize(
    ("name", "taken", "expected"),
    [
        ("a.txt", ["a.txt"], "a (1).txt"),
        ("a.txt", ["a.txt", "a (1).txt"], "a (2).txt"),
        ("plain", ["plain"], "plain (1)"),
        ("a.txt", ["a (1).txt"], "a.txt"),
        # The number goes before the last suffix only: the dots before it
        # are the name's own.
        ("notes v1.2.txt", ["notes v1.2.txt"], "notes v1.2 (1).txt"),
    ],
)
async def test_finalize_never_overwrites_and_picks_a_numbered_variant(
    storage: Storage, name: str, taken: list[str], expected: str
) -> None:
    for number, existing in enumerate(taken):
        owner = f"{number:032x}"
        assert await publish(storage, owner, existing, b"old " + existing.encode()) == existing
    await storage.create(UPLOAD_ID)
    await storage.write(UPLOAD_ID, 0, blocks([b"new"]))

    location = await storage.finalize(UPLOAD_ID, name, 3)

    assert location == expected
    assert await contents(storage, location=expected) == b"new"
    for existing in taken:
        assert await contents(storage, location=existing) == b"old " + existing.encode()


@pytest.mark.parametrize(
    "name",
    ["../x", "/etc/x", ".partial/x", ".partial", "./.partial/x", "a/../../x", "..", "", "a\\..\\x"],
)
async def test_finalize_names_escaping_the_root_raise_permission_error_and_keep_the_partial(
    storage: Storage, name: str
) -> None:
    await storage.create(UPLOAD_ID)
    await storage.write(UPLOAD_ID, 0, blocks([b"keep"]))

    with pytest.raises(PermissionError):
        await storage.finalize(UPLOAD_ID, name, 4)

    assert await contents(storage) == b"keep"
    # Nothing else in staging (no note of a move that never happened), and
    # the partial is still there to finalize under a proper name.
    assert await staged(storage) == [UPLOAD_ID]
    assert await storage.finalize(UPLOAD_ID, "x", 4) == "x"


async def test_finalize_of_a_missing_partial_raises_file_not_found(storage: Storage) -> None:
    with pytest.raises(FileNotFoundError):
        await storage.finalize(UPLOAD_ID, "x", 0)

    assert not await exists(storage, location="x")
    assert await staged(storage) == []


async def test_finalize_refuses_a_partial_shorter_than_the_length_and_publishes_nothing(
    storage: Storage,
) -> None:
    await storage.create(UPLOAD_ID)
    await storage.write(UPLOAD_ID, 0, blocks([b"only "]))

    with pytest.raises(OSError):
        await storage.finalize(UPLOAD_ID, "short.bin", 10)

    assert await contents(storage) == b"only "
    assert not await exists(storage, location="short.bin")


async def test_finalize_after_the_published_file_was_removed_raises_file_not_found(
    storage: Storage,
) -> None:
    # The repair returns an earlier location only while that file is there.
    await storage.create(UPLOAD_ID)
    await storage.write(UPLOAD_ID, 0, blocks([b"abc"]))
    location = await storage.finalize(UPLOAD_ID, "gone.bin", 3)
    await publish(storage, OTHER_ID, "elsewhere", b"x")
    await storage.delete(OTHER_ID, location)  # another upload's DELETE with this location

    with pytest.raises(FileNotFoundError):
        await storage.finalize(UPLOAD_ID, "gone.bin", 3)


# --- delete -------------------------------------------------------------------


async def test_delete_removes_the_partial_and_is_idempotent(storage: Storage) -> None:
    await storage.create(UPLOAD_ID)
    await storage.write(UPLOAD_ID, 0, blocks([b"abc"]))

    await storage.delete(UPLOAD_ID)
    await storage.delete(UPLOAD_ID)

    assert not await exists(storage)
    assert await staged(storage) == []


async def test_delete_with_a_location_removes_that_final_file_only(storage: Storage) -> None:
    for upload_id, name in ((UPLOAD_ID, "mine.txt"), (OTHER_ID, "theirs.txt")):
        await storage.create(upload_id)
        await storage.write(upload_id, 0, blocks([name.encode()]))
        await storage.finalize(upload_id, name, len(name))

    await storage.delete(UPLOAD_ID, "mine.txt")
    await storage.delete(UPLOAD_ID, "mine.txt")

    assert not await exists(storage, location="mine.txt")
    assert await contents(storage, location="theirs.txt") == b"theirs.txt"
    assert await staged(storage) == [OTHER_ID]  # its note stays until its own delete


@pytest.mark.parametrize("location", ["../outside", "/etc/passwd", ".partial/" + UPLOAD_ID])
async def test_delete_with_a_location_escaping_the_root_raises_permission_error(
    storage: Storage, location: str
) -> None:
    await storage.create(UPLOAD_ID)
    await storage.write(UPLOAD_ID, 0, blocks([b"still here"]))

    with pytest.raises(PermissionError):
        await storage.delete(UPLOAD_ID, location)

    assert await contents(storage) == b"still here"


# --- concat, stat, read, stale partials ----------------------------------------


async def test_concat_fills_the_partial_with_the_parts_in_order(storage: Storage) -> None:
    assert isinstance(storage, Concatenator)
    parts = {f"part{n}": pattern(size, seed=n) for n, size in enumerate([MiB + 3, 0, 17, 2 * MiB])}
    for part_id, content in parts.items():
        await storage.create(part_id)
        await storage.write(part_id, 0, blocks([content]))
    await storage.create(UPLOAD_ID)
    # Stale bytes from an earlier attempt, longer than the result.
    await storage.write(UPLOAD_ID, 0, blocks([b"\xff" * (4 * MiB)]))

    await storage.concat(UPLOAD_ID, [(part, len(data)) for part, data in parts.items()])

    assert await contents(storage) == b"".join(parts.values())
    for part_id, content in parts.items():
        assert await contents(storage, part_id) == content


async def test_concat_copies_each_part_up_to_its_length_never_its_stale_tail(
    storage: Storage,
) -> None:
    # A partial may hold bytes past its committed length (a discarded chunk);
    # they must neither land in the final nor shift the parts after it.
    assert isinstance(storage, Concatenator)
    await storage.create("first")
    await storage.write("first", 0, blocks([b"A" * 100 + b"X" * 300]))
    await storage.create("second")
    await storage.write("second", 0, blocks([b"BBBBB"]))
    await storage.create(UPLOAD_ID)

    await storage.concat(UPLOAD_ID, [("first", 100), ("second", 5)])

    assert await contents(storage) == b"A" * 100 + b"BBBBB"


async def test_concat_of_a_part_shorter_than_its_length_raises(storage: Storage) -> None:
    assert isinstance(storage, Concatenator)
    await storage.create("short")
    await storage.write("short", 0, blocks([b"abc"]))
    await storage.create(UPLOAD_ID)

    with pytest.raises(OSError):
        await storage.concat(UPLOAD_ID, [("short", 10)])


async def test_concat_with_a_missing_part_raises_file_not_found(storage: Storage) -> None:
    assert isinstance(storage, Concatenator)
    await storage.create("present")
    await storage.write("present", 0, blocks([b"abc"]))
    await storage.create(UPLOAD_ID)

    with pytest.raises(FileNotFoundError):
        await storage.concat(UPLOAD_ID, [("present", 3), ("missing", 1)])


async def test_stat_reports_size_and_time_of_the_partial_and_of_the_final_file(
    storage: Storage,
) -> None:
    before = time.time() - 5
    await storage.create(UPLOAD_ID)
    await storage.write(UPLOAD_ID, 0, blocks([b"0123456789"]))

    partial = await storage.stat(UPLOAD_ID, None)
    location = await storage.finalize(UPLOAD_ID, "done.bin", 7)
    final = await storage.stat(UPLOAD_ID, location)

    assert partial.size == 10
    assert final == FileStat(size=7, modified=final.modified)
    assert before <= final.modified <= time.time() + 5
    with pytest.raises(FileNotFoundError):
        await storage.stat(OTHER_ID, None)
    with pytest.raises(PermissionError):
        await storage.stat(UPLOAD_ID, "../outside")


@pytest.mark.parametrize(
    ("start", "end"),
    [(0, 3 * MiB + 5), (0, 1), (MiB - 1, MiB + 1), (2 * MiB + 100, 3 * MiB + 5), (10, 10)],
)
async def test_read_streams_the_range_in_blocks_of_at_most_about_1_mib(
    storage: Storage, start: int, end: int
) -> None:
    data = pattern(3 * MiB + 5, seed=7)
    await storage.create(UPLOAD_ID)
    await storage.write(UPLOAD_ID, 0, blocks([data]))
    location = await storage.finalize(UPLOAD_ID, "r.bin", len(data))

    pieces = [piece async for piece in storage.read(UPLOAD_ID, location, start, end)]

    assert b"".join(pieces) == data[start:end]
    assert all(0 < len(piece) <= MiB + 64 * 1024 for piece in pieces)


async def test_read_of_the_partial_and_of_a_missing_file(storage: Storage) -> None:
    await storage.create(UPLOAD_ID)
    await storage.write(UPLOAD_ID, 0, blocks([b"partial bytes"]))

    partial = [piece async for piece in storage.read(UPLOAD_ID, None, 8, 13)]

    assert b"".join(partial) == b"bytes"
    with pytest.raises(FileNotFoundError):
        async for _ in storage.read(UPLOAD_ID, "missing.bin", 0, 1):
            pass


async def test_read_past_the_end_of_the_file_raises_rather_than_yield_fewer_bytes(
    storage: Storage,
) -> None:
    await storage.create(UPLOAD_ID)
    await storage.write(UPLOAD_ID, 0, blocks([b"ten bytes!"]))

    with pytest.raises(OSError):
        async for _ in storage.read(UPLOAD_ID, None, 0, 11):
            pass


async def test_stale_partials_lists_upload_ids_last_modified_before_the_time(
    storage: Storage,
) -> None:
    await storage.create(OTHER_ID)
    # Modification times are a clock tick coarse: leave a margin either side.
    await anyio.sleep(0.2)
    between = time.time()
    await anyio.sleep(0.2)
    await storage.create(UPLOAD_ID)
    await storage.write(UPLOAD_ID, 0, blocks([b"x"]))

    assert await storage.stale_partials(time.time() - 3600) == []
    assert sorted(await storage.stale_partials(time.time() + 3600)) == [UPLOAD_ID, OTHER_ID]
    assert await storage.stale_partials(between) == [OTHER_ID]

    await storage.write(OTHER_ID, 0, blocks([b"y"]))  # a write makes it fresh again
    assert await storage.stale_partials(between) == []

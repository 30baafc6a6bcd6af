"""LocalStorage on its own: partials in .partial/, positional writes, safe finalize."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from storage_backends.local import LocalStorage

UPLOAD_ID = "0123456789abcdef0123456789abcdef"

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[LocalStorage]:
    backend = LocalStorage(tmp_path / "root")
    await backend.check()
    yield backend
    await backend.aclose()


async def blocks(*items: Sequence[bytes]) -> AsyncIterator[Sequence[bytes]]:
    for item in items:
        yield item


def partial(storage: LocalStorage, upload_id: str = UPLOAD_ID) -> Path:
    return storage.root / ".partial" / upload_id


def root_entries(storage: LocalStorage) -> list[str]:
    return sorted(path.name for path in storage.root.iterdir())


async def test_check_creates_the_root_and_staging_folders(tmp_path: Path) -> None:
    backend = LocalStorage(tmp_path / "new" / "root")

    await backend.check()

    assert (tmp_path / "new" / "root" / ".partial").is_dir()
    assert list((tmp_path / "new" / "root" / ".partial").iterdir()) == []


async def test_create_makes_an_empty_partial_and_is_idempotent(storage: LocalStorage) -> None:
    await storage.create(UPLOAD_ID)
    await storage.create(UPLOAD_ID)

    assert partial(storage).read_bytes() == b""
    assert root_entries(storage) == [".partial"]


@pytest.mark.parametrize("bad_id", ["../x", "a/b", "", ".", "x" * 129, "a\x00b"])
async def test_ids_that_are_not_opaque_tokens_never_become_paths(
    storage: LocalStorage, bad_id: str
) -> None:
    with pytest.raises(ValueError):
        await storage.create(bad_id)
    with pytest.raises(ValueError):
        await storage.write(bad_id, 0, blocks([b"x"]))
    with pytest.raises(ValueError):
        await storage.delete(bad_id)

    assert root_entries(storage) == [".partial"]
    assert list(partial(storage).parent.iterdir()) == []
    assert sorted(p.name for p in storage.root.parent.iterdir()) == ["root"]


async def test_write_stores_blocks_contiguously_at_the_offset(storage: LocalStorage) -> None:
    await storage.create(UPLOAD_ID)

    first = await storage.write(UPLOAD_ID, 0, blocks([b"ab", b"cd"], [b"ef"]))
    second = await storage.write(UPLOAD_ID, 6, blocks([b"gh"], [], [b"", b"ij"]))

    assert (first, second) == (6, 4)
    assert partial(storage).read_bytes() == b"abcdefghij"


async def test_write_of_no_blocks_stores_nothing(storage: LocalStorage) -> None:
    await storage.create(UPLOAD_ID)

    assert await storage.write(UPLOAD_ID, 0, blocks()) == 0

    assert partial(storage).read_bytes() == b""


async def test_write_at_an_offset_overwrites_stale_bytes_and_leaves_the_rest(
    storage: LocalStorage,
) -> None:
    await storage.create(UPLOAD_ID)
    await storage.write(UPLOAD_ID, 0, blocks([b"0123456789"]))

    written = await storage.write(UPLOAD_ID, 4, blocks([b"X", b"Y"]))

    assert written == 2
    assert partial(storage).read_bytes() == b"0123XY6789"


async def test_write_to_a_missing_partial_raises_file_not_found_and_creates_nothing(
    storage: LocalStorage,
) -> None:
    with pytest.raises(FileNotFoundError):
        await storage.write(UPLOAD_ID, 0, blocks([b"data"]))

    assert not partial(storage).exists()


async def test_write_asks_for_the_next_block_only_after_the_previous_is_on_disk(
    storage: LocalStorage,
) -> None:
    await storage.create(UPLOAD_ID)
    sizes_seen: list[int] = []

    async def observed() -> AsyncIterator[Sequence[bytes]]:
        for index in range(3):
            sizes_seen.append(partial(storage).stat().st_size)
            yield [bytes([65 + index]) * 1000]
        sizes_seen.append(partial(storage).stat().st_size)

    assert await storage.write(UPLOAD_ID, 0, observed()) == 3000

    assert sizes_seen == [0, 1000, 2000, 3000]


async def test_a_block_of_more_than_1024_buffers_is_written_fully(
    storage: LocalStorage,
) -> None:
    await storage.create(UPLOAD_ID)
    buffers = [bytes([index % 251]) * (1 + index % 7) for index in range(3000)]
    expected = b"".join(buffers)

    written = await storage.write(UPLOAD_ID, 5, blocks(buffers))

    assert written == len(expected)
    assert partial(storage).read_bytes() == b"\0" * 5 + expected


async def test_finalize_trims_to_length_and_publishes_and_delete_then_drops_the_partial(
    storage: LocalStorage,
) -> None:
    await storage.create(UPLOAD_ID)
    await storage.write(UPLOAD_ID, 0, blocks([b"0123456789"]))

    location = await storage.finalize(UPLOAD_ID, "out.bin", 6)

    assert location == "out.bin"
    assert (storage.root / "out.bin").read_bytes() == b"012345"
    assert root_entries(storage) == [".partial", "out.bin"]
    assert stat.S_IMODE((storage.root / "out.bin").stat().st_mode) == 0o644
    await storage.delete(UPLOAD_ID)
    assert not partial(storage).exists()
    assert (storage.root / "out.bin").read_bytes() == b"012345"


async def test_finalize_again_after_an_interruption_reuses_its_name_and_publishes_no_copy(
    storage: LocalStorage,
) -> None:
    # A crash after publishing but before the location was recorded: the
    # repair finalizes again and must find the file it already published.
    (storage.root / "out.bin").write_bytes(b"someone else's")
    await storage.create(UPLOAD_ID)
    await storage.write(UPLOAD_ID, 0, blocks([b"0123456789"]))

    first = await storage.finalize(UPLOAD_ID, "out.bin", 10)
    again = await storage.finalize(UPLOAD_ID, "out.bin", 10)

    assert first == again == "out (1).bin"
    assert root_entries(storage) == [".partial", "out (1).bin", "out.bin"]
    assert (storage.root / "out.bin").read_bytes() == b"someone else's"


async def test_finalize_applies_the_configured_file_mode(tmp_path: Path) -> None:
    backend = LocalStorage(tmp_path / "root", file_mode=0o600)
    await backend.check()
    await backend.create(UPLOAD_ID)

    await backend.finalize(UPLOAD_ID, "private", 0)

    assert stat.S_IMODE((tmp_path / "root" / "private").stat().st_mode) == 0o600


async def test_finalize_into_a_subfolder_creates_it(storage: LocalStorage) -> None:
    await storage.create(UPLOAD_ID)
    await storage.write(UPLOAD_ID, 0, blocks([b"abc"]))

    location = await storage.finalize(UPLOAD_ID, "2024/06/f.txt", 3)

    assert location == "2024/06/f.txt"
    assert (storage.root / "2024" / "06" / "f.txt").read_bytes() == b"abc"


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
    storage: LocalStorage, name: str, taken: list[str], expected: str
) -> None:
    for existing in taken:
        (storage.root / existing).write_bytes(b"old " + existing.encode())
    await storage.create(UPLOAD_ID)
    await storage.write(UPLOAD_ID, 0, blocks([b"new"]))

    location = await storage.finalize(UPLOAD_ID, name, 3)

    assert location == expected
    assert (storage.root / expected).read_bytes() == b"new"
    for existing in taken:
        assert (storage.root / existing).read_bytes() == b"old " + existing.encode()
    await storage.delete(UPLOAD_ID)
    assert not partial(storage).exists()
    assert (storage.root / expected).read_bytes() == b"new"


@pytest.mark.parametrize(
    "name",
    [
        "../x",
        "/etc/x",
        ".partial/x",
        ".partial",
        "./.partial/x",
        "a/../../x",
        "..",
        "",
        "a\\..\\x",
        "x\x00y",
    ],
)
async def test_finalize_names_escaping_the_root_raise_permission_error_and_keep_the_partial(
    storage: LocalStorage, name: str
) -> None:
    await storage.create(UPLOAD_ID)
    await storage.write(UPLOAD_ID, 0, blocks([b"keep"]))

    with pytest.raises(PermissionError):
        await storage.finalize(UPLOAD_ID, name, 4)

    assert partial(storage).read_bytes() == b"keep"
    assert root_entries(storage) == [".partial"]
    assert sorted(p.name for p in partial(storage).parent.iterdir()) == [UPLOAD_ID]
    assert sorted(p.name for p in storage.root.parent.iterdir()) == ["root"]


async def test_finalize_of_a_missing_partial_raises_file_not_found(
    storage: LocalStorage,
) -> None:
    with pytest.raises(FileNotFoundError):
        await storage.finalize(UPLOAD_ID, "x", 0)

    assert root_entries(storage) == [".partial"]


async def test_delete_removes_the_partial_and_is_idempotent(storage: LocalStorage) -> None:
    await storage.create(UPLOAD_ID)
    await storage.write(UPLOAD_ID, 0, blocks([b"abc"]))

    await storage.delete(UPLOAD_ID)
    await storage.delete(UPLOAD_ID)

    assert not partial(storage).exists()


async def test_delete_with_a_location_removes_the_final_file_only(
    storage: LocalStorage,
) -> None:
    other = "fedcba9876543210fedcba9876543210"
    for upload_id, name in ((UPLOAD_ID, "mine.txt"), (other, "theirs.txt")):
        await storage.create(upload_id)
        await storage.write(upload_id, 0, blocks([name.encode()]))
        await storage.finalize(upload_id, name, len(name))

    await storage.delete(UPLOAD_ID, "mine.txt")
    await storage.delete(UPLOAD_ID, "mine.txt")

    assert root_entries(storage) == [".partial", "theirs.txt"]
    assert (storage.root / "theirs.txt").read_bytes() == b"theirs.txt"


@pytest.mark.parametrize("location", ["../outside", "/etc/passwd", ".partial/" + UPLOAD_ID])
async def test_delete_with_a_location_escaping_the_root_raises_permission_error(
    storage: LocalStorage, location: str
) -> None:
    outside = storage.root.parent / "outside"
    outside.write_bytes(b"precious")
    await storage.create(UPLOAD_ID)

    with pytest.raises(PermissionError):
        await storage.delete(UPLOAD_ID, location)

    assert outside.read_bytes() == b"precious"
    assert partial(storage).exists()


async def test_staging_folder_and_partials_are_private_to_the_service(
    storage: LocalStorage,
) -> None:
    await storage.create(UPLOAD_ID)

    staging_mode = stat.S_IMODE(partial(storage).parent.stat().st_mode)
    partial_mode = stat.S_IMODE(partial(storage).stat().st_mode)

    assert staging_mode & 0o077 == 0
    assert partial_mode & 0o077 == 0


async def test_finalize_refuses_a_partial_shorter_than_the_length_and_publishes_nothing(
    storage: LocalStorage,
) -> None:
    await storage.create(UPLOAD_ID)
    await storage.write(UPLOAD_ID, 0, blocks([b"only five"[:5]]))

    with pytest.raises(OSError):
        await storage.finalize(UPLOAD_ID, "short.bin", 10)

    assert partial(storage).read_bytes() == b"only "
    assert root_entries(storage) == [".partial"]


async def test_stale_partials_lists_only_partials_untouched_since_the_given_time(
    storage: LocalStorage,
) -> None:
    finished, stale = "fedcba9876543210fedcba9876543210", UPLOAD_ID
    for upload_id in (finished, stale):
        await storage.create(upload_id)
    await storage.finalize(finished, "published", 0)
    await storage.delete(finished)  # the partial's name goes; the final file stays
    (storage.staging / "not an id").write_bytes(b"")
    cutoff = time.time() - 60
    for path in (
        partial(storage, stale),
        storage.staging / "not an id",
        storage.root / "published",
    ):
        os.utime(path, (cutoff - 1, cutoff - 1))

    assert await storage.stale_partials(cutoff) == [stale]

    await storage.write(stale, 0, blocks([b"new bytes"]))  # a write makes it fresh again
    assert await storage.stale_partials(cutoff) == []

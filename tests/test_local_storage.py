"""LocalStorage beyond the storage contract (tests/test_storage_contract.py runs
that against it too): file modes, vectored writes, kernel copies, crash repair."""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import platform
import stat
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import pytest

from storage_backends.base import FileStat
from storage_backends.local import LocalStorage
from storage_backends.writeback import WINDOW, completed_windows
from tests.helpers import descriptors_of

UPLOAD_ID = "0123456789abcdef0123456789abcdef"
MIB = 1024 * 1024

pytestmark = pytest.mark.anyio


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


async def test_write_of_no_blocks_stores_nothing(storage: LocalStorage) -> None:
    await storage.create(UPLOAD_ID)

    assert await storage.write(UPLOAD_ID, 0, blocks()) == 0

    assert partial(storage).read_bytes() == b""


async def test_write_of_no_blocks_to_a_vanished_partial_raises_file_not_found(
    storage: LocalStorage,
) -> None:
    # An empty body (chunked, or read for its Upload-Checksum) still finds
    # out that the partial is gone (expired, deleted): no silent 204.
    with pytest.raises(FileNotFoundError):
        await storage.write(UPLOAD_ID, 0, blocks())

    assert not partial(storage).exists()


async def test_write_touches_the_partial_no_more_once_its_last_block_is_written(
    storage: LocalStorage,
) -> None:
    # Nothing is left to do after the last block: a partial removed then (a
    # DELETE racing the end of a PATCH) does not turn the bytes written into
    # an error.
    await storage.create(UPLOAD_ID)

    async def then_removed() -> AsyncIterator[Sequence[bytes]]:
        yield [b"abc"]
        yield [b"defg"]
        partial(storage).unlink()

    assert await storage.write(UPLOAD_ID, 0, then_removed()) == 7


async def test_flush_of_a_vanished_partial_raises_file_not_found(storage: LocalStorage) -> None:
    # Durability is never claimed for bytes that are gone (the Flusher
    # protocol, storage_backends/base.py): the commit after it is not made.
    with pytest.raises(FileNotFoundError):
        await storage.flush(UPLOAD_ID)


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


class CacheStat(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in ("cache", "dirty", "writeback", "evicted", "recently_evicted")
    ]


def dirty_pages(path: Path, start: int, length: int) -> int:
    """Pages of the file's range the kernel holds dirty (Linux's cachestat,
    6.5 and later), written by nobody yet."""
    span = (ctypes.c_uint64 * 2)(start, length)
    stat = CacheStat()
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.syscall(_CACHESTAT, fd, ctypes.byref(span), ctypes.byref(stat), 0) != 0:
            pytest.skip(f"no cachestat here ({os.strerror(ctypes.get_errno())})")
    finally:
        os.close(fd)
    return int(stat.dirty)


_CACHESTAT = 451  # the system call's number on x86-64 and arm64


@pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"), reason="cachestat's number")
async def test_each_whole_window_written_is_on_its_way_to_disk_before_the_fsync(
    storage: LocalStorage,
) -> None:
    # So that the fsync before publishing has only the last window left to
    # write while the client waits (storage_backends/writeback.py). Windows
    # are counted from the file's start: here one write of a window and a
    # half, then one that completes the second window.
    await storage.create(UPLOAD_ID)
    piece = os.urandom(MIB)
    first = WINDOW + WINDOW // 2
    assert await storage.write(UPLOAD_ID, 0, blocks([piece] * (first // MIB))) == first

    tail_dirty = dirty_pages(partial(storage), WINDOW, WINDOW)
    if tail_dirty == 0:
        pytest.skip("this file system wrote the pages back at once, or keeps none dirty")
    assert dirty_pages(partial(storage), 0, WINDOW) == 0

    rest = 2 * WINDOW - first
    assert await storage.write(UPLOAD_ID, first, blocks([piece] * (rest // MIB))) == rest
    assert dirty_pages(partial(storage), WINDOW, WINDOW) == 0
    assert partial(storage).read_bytes() == piece * (2 * WINDOW // MIB)


def test_the_windows_a_write_completes_are_those_whose_end_it_reached() -> None:
    # As (offset, length).
    assert completed_windows(0, 7, window=8) is None
    assert completed_windows(0, 8, window=8) == (0, 8)
    assert completed_windows(3, 9, window=8) == (0, 8)
    assert completed_windows(8, 16, window=8) == (8, 8)
    assert completed_windows(9, 15, window=8) is None
    assert completed_windows(7, 25, window=8) == (0, 24)
    assert completed_windows(17, 40, window=8) == (16, 24)


async def test_a_block_of_more_than_1024_buffers_is_written_fully(
    storage: LocalStorage,
) -> None:
    await storage.create(UPLOAD_ID)
    buffers = [bytes([index % 251]) * (1 + index % 7) for index in range(3000)]
    expected = b"".join(buffers)

    written = await storage.write(UPLOAD_ID, 5, blocks(buffers))

    assert written == len(expected)
    assert partial(storage).read_bytes() == b"\0" * 5 + expected


async def test_finalize_publishes_with_the_file_mode_and_leaves_only_staging_beside_it(
    storage: LocalStorage,
) -> None:
    # What the contract cannot see: the mode a published file gets on disk,
    # and that nothing but the staging folder is left beside it.
    await storage.create(UPLOAD_ID)
    await storage.write(UPLOAD_ID, 0, blocks([b"0123456789"]))

    await storage.finalize(UPLOAD_ID, "out.bin", 6)

    assert root_entries(storage) == [".partial", "out.bin"]
    assert stat.S_IMODE((storage.root / "out.bin").stat().st_mode) == 0o644
    await storage.delete(UPLOAD_ID)
    assert not partial(storage).exists()


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


async def test_finalize_again_after_the_published_file_was_replaced_finds_no_partial(
    storage: LocalStorage,
) -> None:
    # The note names a file that is no longer this upload's (another length):
    # the repair must not claim it.
    await storage.create(UPLOAD_ID)
    await storage.write(UPLOAD_ID, 0, blocks([b"0123456789"]))
    assert await storage.finalize(UPLOAD_ID, "out.bin", 10) == "out.bin"
    (storage.root / "out.bin").write_bytes(b"replaced")

    with pytest.raises(FileNotFoundError):
        await storage.finalize(UPLOAD_ID, "out.bin", 10)

    assert (storage.root / "out.bin").read_bytes() == b"replaced"


async def test_finalize_tries_the_name_and_999_variants_then_refuses_and_keeps_the_partial(
    storage: LocalStorage,
) -> None:
    (storage.root / "out.bin").write_bytes(b"")
    for number in range(1, 999):
        (storage.root / f"out ({number}).bin").write_bytes(b"")
    await storage.create(UPLOAD_ID)
    await storage.write(UPLOAD_ID, 0, blocks([b"0123456789"]))
    other = "f" * 32
    await storage.create(other)
    await storage.write(other, 0, blocks([b"abc"]))

    assert await storage.finalize(UPLOAD_ID, "out.bin", 10) == "out (999).bin"
    with pytest.raises(FileExistsError):
        await storage.finalize(other, "out.bin", 3)

    assert partial(storage, other).read_bytes() == b"abc"
    assert len(list(storage.root.iterdir())) == 1000 + 1  # and .partial


async def test_finalize_completes_a_move_interrupted_between_link_and_unlink(
    storage: LocalStorage,
) -> None:
    # The move is a hard link and then the partial's unlink: a crash between
    # the two leaves one file under both names, which is this upload's own.
    await storage.create(UPLOAD_ID)
    await storage.write(UPLOAD_ID, 0, blocks([b"0123456789"]))
    os.link(partial(storage), storage.root / "out.bin")

    location = await storage.finalize(UPLOAD_ID, "out.bin", 10)

    assert location == "out.bin"
    assert root_entries(storage) == [".partial", "out.bin"]
    assert not partial(storage).exists()
    assert (storage.root / "out.bin").read_bytes() == b"0123456789"


@pytest.mark.parametrize("error", [errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK])
async def test_finalize_without_hard_links_renames_and_still_never_overwrites(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch, error: int
) -> None:
    # A filesystem without hard links (some network shares): a checked
    # rename instead, which takes a free name only.
    (storage.root / "out.bin").write_bytes(b"another's")
    await storage.create(UPLOAD_ID)
    await storage.write(UPLOAD_ID, 0, blocks([b"0123456789"]))
    monkeypatch.setattr(os, "link", unsupported(error))

    location = await storage.finalize(UPLOAD_ID, "out.bin", 10)

    assert location == "out (1).bin"
    assert (storage.root / "out.bin").read_bytes() == b"another's"
    assert (storage.root / "out (1).bin").read_bytes() == b"0123456789"
    assert not partial(storage).exists()


async def test_finalize_does_not_hide_a_real_link_failure(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    await storage.create(UPLOAD_ID)
    await storage.write(UPLOAD_ID, 0, blocks([b"0123456789"]))
    monkeypatch.setattr(os, "link", unsupported(errno.EIO))

    with pytest.raises(OSError) as raised:
        await storage.finalize(UPLOAD_ID, "out.bin", 10)

    assert raised.value.errno == errno.EIO
    assert root_entries(storage) == [".partial"]
    assert partial(storage).read_bytes() == b"0123456789"


async def test_the_note_of_an_unrecorded_finalize_is_stale_and_goes_with_delete(
    storage: LocalStorage,
) -> None:
    # Published, then the process died before recording: only the note is
    # left in staging, and the sweeper must see it to remove it.
    await storage.create(UPLOAD_ID)
    await storage.finalize(UPLOAD_ID, "kept", 0)
    note = storage.staging / (UPLOAD_ID + ".final")
    assert sorted(p.name for p in storage.staging.iterdir()) == [note.name]
    os.utime(note, (time.time() - 7200, time.time() - 7200))

    assert await storage.stale_partials(time.time() - 3600) == [UPLOAD_ID]
    await storage.delete(UPLOAD_ID)

    assert list(storage.staging.iterdir()) == []
    assert (storage.root / "kept").exists()


async def test_finalize_applies_the_configured_file_mode(tmp_path: Path) -> None:
    backend = LocalStorage(tmp_path / "root", file_mode=0o600)
    await backend.check()
    await backend.create(UPLOAD_ID)

    await backend.finalize(UPLOAD_ID, "private", 0)

    assert stat.S_IMODE((tmp_path / "root" / "private").stat().st_mode) == 0o600


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


async def test_staging_folder_partials_and_notes_are_private_to_the_service(
    storage: LocalStorage,
) -> None:
    published = "fedcba9876543210fedcba9876543210"
    await storage.create(UPLOAD_ID)
    await storage.create(published)
    await storage.finalize(published, "out.bin", 0)  # leaves its note until recorded

    staging_mode = stat.S_IMODE(partial(storage).parent.stat().st_mode)
    partial_mode = stat.S_IMODE(partial(storage).stat().st_mode)
    note_mode = stat.S_IMODE((storage.staging / (published + ".final")).stat().st_mode)

    assert staging_mode & 0o077 == 0
    assert partial_mode & 0o077 == 0
    assert note_mode & 0o077 == 0


# --- concat ------------------------------------------------------------------

PART_IDS = ("a" * 32, "b" * 32, "c" * 32)


async def staged_parts(storage: LocalStorage, *contents: bytes) -> list[tuple[str, int]]:
    """Complete parts holding ``contents``, as the (id, length) pairs concat takes."""
    for upload_id, content in zip(PART_IDS, contents, strict=False):
        await storage.create(upload_id)
        if content:
            await storage.write(upload_id, 0, blocks([content]))
    return [
        (upload_id, len(content)) for upload_id, content in zip(PART_IDS, contents, strict=False)
    ]


def varied(size: int, seed: int) -> bytes:
    return bytes((index * 7 + seed) % 251 for index in range(size))


def unsupported(error: int) -> Callable[..., int]:
    def fail(*args: object) -> int:
        raise OSError(error, os.strerror(error))

    return fail


async def test_concat_fills_the_partial_with_the_parts_in_order_and_leaves_them_alone(
    storage: LocalStorage,
) -> None:
    contents = (varied(3 * 1024 * 1024 + 17, 1), b"", varied(1000, 2))
    parts = await staged_parts(storage, *contents)
    await storage.create(UPLOAD_ID)

    await storage.concat(UPLOAD_ID, [parts[2], *parts, parts[2]])

    expected = contents[2] + b"".join(contents) + contents[2]
    assert partial(storage).read_bytes() == expected
    for (upload_id, _), content in zip(parts, contents, strict=True):
        assert partial(storage, upload_id).read_bytes() == content
    assert root_entries(storage) == [".partial"]


async def test_concat_replaces_what_the_partial_held_so_it_can_be_repeated(
    storage: LocalStorage,
) -> None:
    parts = await staged_parts(storage, b"short")
    await storage.create(UPLOAD_ID)
    await storage.write(UPLOAD_ID, 0, blocks([b"a much longer leftover"]))

    await storage.concat(UPLOAD_ID, parts)
    await storage.concat(UPLOAD_ID, parts)

    assert partial(storage).read_bytes() == b"short"


async def test_concat_copies_inside_the_kernel_without_reading_into_python(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    contents = (varied(2 * 1024 * 1024 + 3, 3), varied(5, 4))
    parts = await staged_parts(storage, *contents)
    await storage.create(UPLOAD_ID)
    monkeypatch.setattr(os, "pread", unsupported(errno.EIO))
    monkeypatch.setattr(os, "read", unsupported(errno.EIO))

    await storage.concat(UPLOAD_ID, parts)

    assert partial(storage).read_bytes() == b"".join(contents)


@pytest.mark.parametrize(
    "disabled",
    [
        pytest.param({"copy_file_range": errno.EXDEV}, id="no copy_file_range: sendfile"),
        pytest.param(
            {"copy_file_range": errno.ENOSYS, "sendfile": errno.EINVAL},
            id="neither: buffered copy",
        ),
    ],
)
async def test_concat_falls_back_when_the_kernel_cannot_copy(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch, disabled: dict[str, int]
) -> None:
    contents = (varied(2 * 1024 * 1024 + 99, 5), varied(3, 6), varied(70_000, 7))
    parts = await staged_parts(storage, *contents)
    await storage.create(UPLOAD_ID)
    for name, error in disabled.items():
        monkeypatch.setattr(os, name, unsupported(error))

    await storage.concat(UPLOAD_ID, parts)

    assert partial(storage).read_bytes() == b"".join(contents)


async def test_concat_does_not_hide_a_real_copy_failure(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = await staged_parts(storage, b"data")
    await storage.create(UPLOAD_ID)
    monkeypatch.setattr(os, "copy_file_range", unsupported(errno.EIO))

    with pytest.raises(OSError) as raised:
        await storage.concat(UPLOAD_ID, parts)

    assert raised.value.errno == errno.EIO


async def test_concat_with_a_missing_part_or_partial_raises_file_not_found(
    storage: LocalStorage,
) -> None:
    parts = await staged_parts(storage, b"here")

    with pytest.raises(FileNotFoundError):
        await storage.concat(UPLOAD_ID, parts)
    assert not partial(storage).exists()

    await storage.create(UPLOAD_ID)
    with pytest.raises(FileNotFoundError):
        await storage.concat(UPLOAD_ID, [parts[0], (PART_IDS[1], 1)])


async def test_concat_closes_the_partial_it_fills(storage: LocalStorage) -> None:
    parts = await staged_parts(storage, b"one", b"two")
    await storage.create(UPLOAD_ID)

    await storage.concat(UPLOAD_ID, parts)

    assert partial(storage).read_bytes() == b"onetwo"
    assert descriptors_of(partial(storage)) == 0


async def opened_for_writing(fifo: Path) -> int:
    """The writing end of ``fifo``, once a reader (a storage call's thread,
    held in its ``open``) is at the other."""
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # no reader yet
                raise
        await anyio.sleep(0.001)


async def test_concat_cut_while_a_part_copies_closes_the_partial_it_fills(
    storage: LocalStorage,
) -> None:
    # A part that is a FIFO holds the copy's thread until the spec lets it
    # go: the cut lands while the final's partial is open, and the close
    # after the copy is shielded from it.
    await storage.create(UPLOAD_ID)
    os.mkfifo(partial(storage, PART_IDS[0]))

    async def concat() -> None:
        with pytest.raises(OSError):  # nothing to copy from a FIFO at an offset
            await storage.concat(UPLOAD_ID, [(PART_IDS[0], 10)])

    async with anyio.create_task_group() as group:
        group.start_soon(concat)
        writer = await opened_for_writing(partial(storage, PART_IDS[0]))
        group.cancel_scope.cancel()
        os.close(writer)

    assert descriptors_of(partial(storage)) == 0


async def test_concat_refuses_ids_that_are_not_opaque_tokens(storage: LocalStorage) -> None:
    await storage.create(UPLOAD_ID)

    with pytest.raises(ValueError):
        await storage.concat(UPLOAD_ID, [("../outside", 1)])

    assert partial(storage).read_bytes() == b""


async def read_all(chunks: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in chunks]


async def test_stat_reports_size_and_mtime_of_the_partial_and_of_the_finished_file(
    storage: LocalStorage,
) -> None:
    await storage.create(UPLOAD_ID)
    await storage.write(UPLOAD_ID, 0, blocks([b"0123456789"]))
    os.utime(partial(storage), (1_600_000_000.5, 1_600_000_000.5))

    of_partial = await storage.stat(UPLOAD_ID, None)
    location = await storage.finalize(UPLOAD_ID, "out.bin", 6)
    of_final = await storage.stat(UPLOAD_ID, location)

    assert of_partial == FileStat(size=10, modified=1_600_000_000.5)
    assert of_final.size == 6
    assert of_final.modified == (storage.root / "out.bin").stat().st_mtime


async def test_stat_of_a_missing_file_raises_file_not_found(storage: LocalStorage) -> None:
    with pytest.raises(FileNotFoundError):
        await storage.stat(UPLOAD_ID, None)
    with pytest.raises(FileNotFoundError):
        await storage.stat(UPLOAD_ID, "nothing.bin")


@pytest.mark.parametrize("location", ["../outside", "/etc/passwd", ".partial/" + UPLOAD_ID])
async def test_stat_and_read_of_a_location_escaping_the_root_raise_permission_error(
    storage: LocalStorage, location: str
) -> None:
    (storage.root.parent / "outside").write_bytes(b"precious")
    await storage.create(UPLOAD_ID)

    with pytest.raises(PermissionError):
        await storage.stat(UPLOAD_ID, location)
    with pytest.raises(PermissionError):
        storage.read(UPLOAD_ID, location, 0, 1)


@pytest.mark.parametrize("bad_id", ["../x", "a/b", "", "a\x00b"])
async def test_stat_and_read_of_an_id_that_is_not_a_token_raise_value_error(
    storage: LocalStorage, bad_id: str
) -> None:
    with pytest.raises(ValueError):
        await storage.stat(bad_id, None)
    with pytest.raises(ValueError):
        storage.read(bad_id, None, 0, 1)


@pytest.mark.parametrize(("start", "end"), [(0, 0), (0, 10), (3, 7), (9, 10), (10, 10)])
async def test_read_returns_exactly_the_bytes_of_the_range(
    storage: LocalStorage, start: int, end: int
) -> None:
    (storage.root / "f.bin").write_bytes(b"0123456789")

    chunks = await read_all(storage.read(UPLOAD_ID, "f.bin", start, end))

    assert b"".join(chunks) == b"0123456789"[start:end]
    assert all(chunks)


async def test_read_of_the_partial_leaves_bytes_past_the_range_alone(
    storage: LocalStorage,
) -> None:
    await storage.create(UPLOAD_ID)
    await storage.write(UPLOAD_ID, 0, blocks([b"committed|stale"]))

    chunks = await read_all(storage.read(UPLOAD_ID, None, 0, 9))

    assert b"".join(chunks) == b"committed"
    assert partial(storage).read_bytes() == b"committed|stale"


async def test_read_hands_out_blocks_of_at_most_1_mib(storage: LocalStorage) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    (storage.root / "big.bin").write_bytes(data)

    chunks = await read_all(storage.read(UPLOAD_ID, "big.bin", 7, len(data)))

    assert b"".join(chunks) == data[7:]
    assert max(len(chunk) for chunk in chunks) <= 1024 * 1024
    assert len(chunks) == 3  # 3 MiB - 2 bytes


async def test_read_of_a_missing_file_raises_file_not_found_when_iterated(
    storage: LocalStorage,
) -> None:
    chunks = storage.read(UPLOAD_ID, "nothing.bin", 0, 5)

    with pytest.raises(FileNotFoundError):
        await read_all(chunks)


async def test_read_past_the_end_of_the_file_raises_instead_of_returning_less(
    storage: LocalStorage,
) -> None:
    (storage.root / "f.bin").write_bytes(b"short")

    with pytest.raises(OSError):
        await read_all(storage.read(UPLOAD_ID, "f.bin", 0, 6))
    assert descriptors_of(storage.root / "f.bin") == 0


@pytest.mark.parametrize(("start", "end"), [(-1, 3), (5, 4)])
async def test_read_of_an_inverted_or_negative_range_raises_value_error_at_the_call(
    storage: LocalStorage, start: int, end: int
) -> None:
    (storage.root / "f.bin").write_bytes(b"0123456789")

    with pytest.raises(ValueError):
        storage.read(UPLOAD_ID, "f.bin", start, end)


async def test_read_closes_its_file_when_the_caller_stops_early(storage: LocalStorage) -> None:
    path = storage.root / "big.bin"
    path.write_bytes(os.urandom(3 * 1024 * 1024))
    chunks = storage.read(UPLOAD_ID, "big.bin", 0, 3 * 1024 * 1024)
    assert isinstance(chunks, AsyncGenerator)

    first = await anext(chunks)
    open_while_reading = descriptors_of(path)
    await chunks.aclose()

    assert len(first) == 1024 * 1024
    assert open_while_reading == 1
    assert descriptors_of(path) == 0


async def test_read_closes_its_file_when_cancelled_mid_read(storage: LocalStorage) -> None:
    path = storage.root / "big.bin"
    path.write_bytes(os.urandom(8 * 1024 * 1024))

    chunks = storage.read(UPLOAD_ID, "big.bin", 0, 8 * 1024 * 1024)

    with anyio.CancelScope() as scope:
        await anext(chunks)
        scope.cancel()
        await anext(chunks)  # cancelled inside the generator, with the file open

    assert scope.cancelled_caught
    assert descriptors_of(path) == 0


async def test_a_read_cancelled_while_its_thread_opens_the_file_still_closes_it(
    storage: LocalStorage,
) -> None:
    # A call cancelled while its thread runs waits for the thread: the
    # descriptor it opened is closed, not lost with the cancellation. A FIFO
    # holds the thread in its open until the spec lets it go.
    fifo = storage.root / "held"
    os.mkfifo(fifo)
    chunks = storage.read(UPLOAD_ID, "held", 0, 10)

    async def read() -> None:
        await anext(chunks)

    async with anyio.create_task_group() as group:
        group.start_soon(read)
        writer = await opened_for_writing(fifo)
        group.cancel_scope.cancel()  # before the thread's result is in
    os.close(writer)

    assert descriptors_of(fifo) == 0


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


async def test_a_partial_last_written_at_the_given_time_itself_is_not_stale(
    storage: LocalStorage,
) -> None:
    cutoff = float(int(time.time()) - 60)  # whole seconds: st_mtime holds it exactly
    await storage.create(UPLOAD_ID)
    os.utime(partial(storage), (cutoff, cutoff))

    assert await storage.stale_partials(cutoff) == []
    assert await storage.stale_partials(cutoff + 1) == [UPLOAD_ID]


async def test_stale_partials_lists_no_symlink_even_to_an_old_file(
    storage: LocalStorage, tmp_path: Path
) -> None:
    # Only a regular file is a partial; its own time counts, not a target's.
    old = tmp_path / "old"
    old.write_bytes(b"")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    partial(storage).symlink_to(old)

    assert await storage.stale_partials(time.time() - 3600) == []


def threads_waiting_for_a_fifo_partner() -> int:
    """Threads of this process blocked in the ``open`` of a FIFO with no
    other end yet (Linux: ``wait_for_partner`` in each thread's wchan)."""
    waiting = 0
    for task in Path("/proc/self/task").iterdir():
        try:
            waiting += (task / "wchan").read_text() == "wait_for_partner"
        except OSError:
            pass  # the thread ended meanwhile
    return waiting


def test_a_storage_occupies_at_most_eight_threads_at_once(tmp_path: Path) -> None:
    # One storage's calls take at most 8 of the loop's worker threads (the
    # default pool holds min(32, CPUs + 4)): a stalled disk or share cannot
    # take every thread from the rest of the process. On a pool larger than
    # the limit, with nine calls each held in its thread's `open` of a FIFO,
    # eight are in threads and the ninth waits for a slot until one ends.
    probe = tmp_path / "probe"
    os.mkfifo(probe)
    opener = threading.Thread(target=lambda: os.close(os.open(probe, os.O_RDONLY)))
    opener.start()
    time.sleep(0.2)
    seen = threads_waiting_for_a_fifo_partner()
    os.close(os.open(probe, os.O_WRONLY | os.O_NONBLOCK))
    opener.join()
    if seen != 1:
        pytest.skip("this kernel does not show where a thread waits (/proc/*/wchan)")

    async def scenario() -> None:
        storage = LocalStorage(tmp_path / "root")
        await storage.check()
        fifos = [storage.root / f"held-{n}" for n in range(9)]
        for fifo in fifos:
            os.mkfifo(fifo)

        async def read(name: str) -> None:
            with pytest.raises(OSError):  # a FIFO cannot be read at an offset
                await anext(storage.read(UPLOAD_ID, name, 0, 10))

        # Once the spec has looked (or failed), every FIFO gets a writer as
        # soon as it has a reader, so that no thread stays held in its open.
        stop = threading.Event()

        def let_go() -> None:
            while not stop.is_set():
                for fifo in fifos:
                    try:
                        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                    except OSError:
                        pass  # no reader at it now
                time.sleep(0.01)

        releaser = threading.Thread(target=let_go)
        try:
            async with anyio.create_task_group() as group:
                try:
                    for fifo in fifos:
                        group.start_soon(read, fifo.name)
                    for _ in range(500):  # until eight are held, at most 5 s
                        if threads_waiting_for_a_fifo_partner() >= 8:
                            break
                        await anyio.sleep(0.01)
                    await anyio.sleep(0.3)
                    assert threads_waiting_for_a_fifo_partner() == 8
                finally:
                    # The eight end, and the ninth call takes a slot and ends too.
                    releaser.start()
        finally:
            stop.set()
            releaser.join()
        await storage.aclose()

    async def main() -> None:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=16))
        await scenario()

    asyncio.run(main())

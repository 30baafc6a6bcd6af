"""Faults inside a transfer's own tasks (``tusserver/transfer.py``).

The receiving, the watchdog and the checkpoints run beside the request as
tasks of the transfer. A fault in one of them (not a refusal, not the end of
a body: a bug, or a server's receive() failing) must end the transfer and
come out of ``receive_into_storage`` as itself, after the bytes the writer
confirmed are counted; nothing may hang waiting for a task that died.

Straight on local storage, with a scripted ASGI ``receive``: these faults
cannot be caused from outside a real server. Every spec runs twice: with
blocks received and written in turn (a storage that writes on the event
loop, as local storage does) and with the next block received beside each
write (any other storage).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import pytest
from starlette.types import Message

from storage_backends.base import Block
from storage_backends.local import LocalStorage
from tests.helpers import AnsweredAsCancelled
from tests.test_patch import BlockLog
from tusserver.locking import Lease
from tusserver.transfer import Checkpoints, End, Transfer, receive_into_storage

UPLOAD_ID = "f" * 32
PIECE = b"0123456789"
# Never reached: the transfer must end long before (a guard against a hang,
# not a limit on how fast it ends).
HANG_GUARD_SECONDS = 60


@pytest.fixture(autouse=True, params=[True, False], ids=["in-turn", "beside"])
def writes_on_loop(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Local storage as it is (writes on the loop), and as a storage whose
    writes wait (the transfer then receives beside them)."""
    monkeypatch.setattr(LocalStorage, "writes_on_loop", request.param)
    return bool(request.param)


async def _kept(key: str, token: str, ttl_ms: int) -> bool:
    return True


async def _storage(root: Path) -> LocalStorage:
    storage = LocalStorage(root)
    await storage.check()
    await storage.create(UPLOAD_ID)
    return storage


def _lease() -> Lease:
    return Lease(UPLOAD_ID, "token", ttl=30.0, extend=_kept)


async def _receive(
    transfer: Transfer,
    receive: Callable[[], Awaitable[Message]],
    storage: LocalStorage,
    lease: Lease,
    *,
    checkpoints: Checkpoints | None = None,
    takeover_after: float = 3600.0,
    block_size: int = len(PIECE),
    idle_timeout: float = 3600.0,
    body_length: int | None = None,
) -> None:
    """A body into the upload from its first byte, with no limit; by
    default in blocks of one piece, with an hour before it counts as idle."""
    await receive_into_storage(
        transfer,
        receive,
        storage,
        lease,
        0,
        limit=None,
        block_size=block_size,
        idle_timeout=idle_timeout,
        takeover_after=takeover_after,
        checkpoints=checkpoints,
        body_length=body_length,
    )


def _transfer(
    root: Path, receive_body: list[bytes], *, fault: Exception | None, checkpoints: bool
) -> tuple[Transfer, LocalStorage]:
    """Receive ``receive_body`` piece by piece, then fail with ``fault`` (or stall
    for good when it is None); blocks of one piece each."""

    async def run() -> tuple[Transfer, LocalStorage]:
        storage = await _storage(root)
        pieces = list(receive_body)

        async def receive() -> Message:
            if pieces:
                await anyio.sleep(0.01)
                return {"type": "http.request", "body": pieces.pop(0), "more_body": True}
            if fault is not None:
                raise fault
            await anyio.sleep(3600)  # the client stalls
            raise AssertionError("the reading was never stopped")

        async def commit(stored: int) -> bool:
            raise RuntimeError("the checkpoint's commit failed")

        transfer = Transfer()
        with anyio.fail_after(HANG_GUARD_SECONDS):
            await _receive(
                transfer,
                receive,
                storage,
                _lease(),
                checkpoints=Checkpoints(commit, every_bytes=1, every_seconds=3600.0)
                if checkpoints
                else None,
            )
        return transfer, storage

    return anyio.run(run)


def test_a_receive_that_fails_ends_the_transfer_with_its_own_error_after_storing_what_came(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConnectionResetError, match="the server's receive failed"):
        _transfer(
            tmp_path,
            [PIECE] * 3,
            fault=ConnectionResetError("the server's receive failed"),
            checkpoints=False,
        )
    # What arrived before the fault was handed on and written all the same.
    assert (tmp_path / ".partial" / UPLOAD_ID).read_bytes() == PIECE * 3


def test_a_checkpoint_that_fails_stops_a_stalled_body_and_its_error_comes_out_as_itself(
    tmp_path: Path,
) -> None:
    # The client stalls after two pieces; the idle timeout is an hour away, so
    # only the failed checkpoint can end the reading.
    with pytest.raises(RuntimeError, match="the checkpoint's commit failed"):
        _transfer(tmp_path, [PIECE] * 2, fault=None, checkpoints=True)


def test_a_transfer_cancelled_while_a_checkpoint_commits_ends_only_once_that_commit_did(
    tmp_path: Path,
) -> None:
    """A request cancelled from outside (an embedding application's timeout,
    a server's shutdown) while a checkpoint's commit is in flight: the
    transfer waits for that commit, since Redis may have applied it, and the
    request's closing commit must start from the offset it set."""

    async def run() -> tuple[list[int], int]:
        storage = await _storage(tmp_path)
        committing = anyio.Event()
        commits: list[int] = []
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": PIECE, "more_body": True}
            await anyio.sleep(3600)  # the client stalls
            raise AssertionError("the reading was never stopped")

        async def commit(stored: int) -> bool:
            committing.set()
            await anyio.sleep(0.2)  # a slow Redis
            commits.append(stored)
            return True

        checkpoints = Checkpoints(commit, every_bytes=1, every_seconds=3600.0)
        with anyio.fail_after(HANG_GUARD_SECONDS):
            async with anyio.create_task_group() as tasks:

                async def cancel_the_request() -> None:
                    await committing.wait()
                    tasks.cancel_scope.cancel()

                tasks.start_soon(cancel_the_request)
                await _receive(
                    Transfer(),
                    receive,
                    storage,
                    _lease(),
                    checkpoints=checkpoints,
                )
        return commits, checkpoints.committed

    commits, committed = anyio.run(run)
    assert commits == [len(PIECE)], "the transfer ended before the commit in flight"
    assert committed == len(PIECE)


class SlowDisk(LocalStorage):
    """Local storage that takes 0.3 s before writing each block: a write
    that waits, so the next block is received beside it."""

    writes_on_loop = False

    async def write(self, upload_id: str, offset: int, blocks: AsyncIterator[Block]) -> int:
        async def slowly() -> AsyncIterator[Block]:
            async for block in blocks:
                await anyio.sleep(0.3)
                yield block

        return await super().write(upload_id, offset, slowly())


def test_a_stop_while_the_receiver_waits_for_the_writer_still_stores_the_block_in_its_hands(
    tmp_path: Path,
) -> None:
    """The process stops (``Lease.let_go``) while the writer is slow and the
    receiver waits to hand over its third block: that block arrived, so it
    is stored and counted before the reading ends, not dropped."""

    async def run() -> Transfer:
        storage = SlowDisk(tmp_path)
        await storage.check()
        await storage.create(UPLOAD_ID)
        pieces = [PIECE] * 3

        async def receive() -> Message:
            if pieces:
                return {"type": "http.request", "body": pieces.pop(0), "more_body": True}
            await anyio.sleep(3600)  # the client stalls
            raise AssertionError("the reading was never stopped")

        lease = _lease()
        transfer = Transfer()
        with anyio.fail_after(HANG_GUARD_SECONDS):
            async with anyio.create_task_group() as tasks:

                async def stop_the_process() -> None:
                    # The first block is being written, the second queued, the
                    # third waits in the receiver's hands.
                    await anyio.sleep(0.2)
                    lease.let_go()

                tasks.start_soon(stop_the_process)
                # The watchdog's first tick 0.1 s in.
                await _receive(transfer, receive, storage, lease, takeover_after=0.1)
        return transfer

    transfer = anyio.run(run)
    assert transfer.end is End.SHUTDOWN
    assert transfer.received == transfer.stored == 3 * len(PIECE)
    assert (tmp_path / ".partial" / UPLOAD_ID).read_bytes() == PIECE * 3


def _blocks_stored(
    root: Path, pieces: list[bytes], block_size: int, body_length: int | None
) -> list[int]:
    """The sizes of the blocks the storage is handed for a body sent in
    ``pieces``, one body message each."""

    async def run() -> list[int]:
        storage = BlockLog(root)
        await storage.check()
        await storage.create(UPLOAD_ID)
        left = list(pieces)

        async def receive() -> Message:
            piece = left.pop(0)
            if left:
                return {"type": "http.request", "body": piece, "more_body": True}
            return {"type": "http.request", "body": piece}  # ASGI: more_body defaults to False

        with anyio.fail_after(HANG_GUARD_SECONDS):
            await _receive(
                Transfer(),
                receive,
                storage,
                _lease(),
                block_size=block_size,
                body_length=body_length,
            )
        return storage.block_sizes

    sizes = anyio.run(run)
    assert (root / ".partial" / UPLOAD_ID).read_bytes() == b"".join(pieces)
    return sizes


def test_a_body_of_unknown_length_goes_to_storage_in_whole_blocks_from_its_first_byte(
    tmp_path: Path,
) -> None:
    # A block is handed on once it holds block_size bytes, counted from the
    # body's first byte; whatever is left at the end goes as the last block.
    pieces = [bytes([n]) for n in range(25)]
    assert _blocks_stored(tmp_path, pieces, 10, None) == [10, 10, 5]


KIB = 1024


@pytest.mark.parametrize(
    ("block", "piece", "body", "blocks"),
    [
        # A quarter of 512 KiB: 128 KiB.
        (512 * KIB, 64 * KIB, 768 * KIB, [512 * KIB, 128 * KIB, 128 * KIB]),
        # A quarter of 128 KiB is less than the 64 KiB a final block holds at least.
        (128 * KIB, 32 * KIB, 256 * KIB, [128 * KIB, 64 * KIB, 64 * KIB]),
    ],
    ids=["quarter", "at-least-64-kib"],
)
def test_the_last_quarter_block_of_a_body_of_known_length_goes_on_its_own(
    tmp_path: Path, block: int, piece: int, body: int, blocks: list[int]
) -> None:
    # The last quarter block of the body (at least 64 KiB) is a block of
    # its own, and so are the bytes that arrived before it once they reach
    # that size: the block written after the body ended is never larger.
    pieces = [bytes([n]) * piece for n in range(body // piece)]
    assert _blocks_stored(tmp_path, pieces, block, body) == blocks


def test_the_watchdog_of_a_stalled_body_looks_about_once_a_second_not_in_a_loop(
    tmp_path: Path,
) -> None:
    # The watchdog's tick: a second at most (here, with an idle timeout an
    # hour away), so a stalled body costs the event loop one look a second,
    # not a loop that never sleeps. Told to let go after 2.5 s, it stops
    # the body at its next look.
    looks: list[float] = []

    class CountedLease(Lease):
        async def keep_alive(self) -> bool:
            looks.append(time.monotonic())
            return await super().keep_alive()

    async def run() -> Transfer:
        storage = await _storage(tmp_path)
        lease = CountedLease(UPLOAD_ID, "token", ttl=30.0, extend=_kept)

        async def receive() -> Message:
            await anyio.sleep(3600)  # the client stalls
            raise AssertionError("the reading was never stopped")

        def let_go() -> None:
            lease.must_let_go = True

        asyncio.get_running_loop().call_later(2.5, let_go)
        transfer = Transfer()
        with anyio.fail_after(HANG_GUARD_SECONDS):
            await _receive(transfer, receive, storage, lease)
        return transfer

    assert anyio.run(run).end is End.SHUTDOWN
    assert 1 <= len(looks) <= 4, len(looks)


def _flowing(
    root: Path,
    gaps: list[float],
    *,
    idle_timeout: float,
    takeover_after: float = 3600.0,
    meanwhile: Callable[[Lease], None] | None = None,
) -> tuple[Transfer, int]:
    """A body of one 100-byte piece after each of ``gaps`` (seconds), in
    blocks of one piece; ``meanwhile(lease)`` is called half a second in.
    The transfer, and how many bytes were sent."""
    piece = b"x" * 100

    async def run() -> Transfer:
        storage = await _storage(root)
        lease = _lease()
        left = list(gaps)

        async def receive() -> Message:
            await anyio.sleep(left.pop(0))
            return {"type": "http.request", "body": piece, "more_body": bool(left)}

        if meanwhile is not None:
            asyncio.get_running_loop().call_later(0.5, meanwhile, lease)
        transfer = Transfer()
        with anyio.fail_after(HANG_GUARD_SECONDS):
            await _receive(
                transfer,
                receive,
                storage,
                lease,
                block_size=len(piece),
                idle_timeout=idle_timeout,
                takeover_after=takeover_after,
            )
        return transfer

    return anyio.run(run), len(piece) * len(gaps)


def test_a_body_that_pauses_for_less_than_the_idle_timeout_goes_on(tmp_path: Path) -> None:
    # Idle means no byte taken and none stored for idle_timeout (1 s here,
    # the watchdog looking every quarter second): a body that flows for
    # 1.5 s, pauses for half a second and flows again is read to its end.
    transfer, sent = _flowing(tmp_path, [0.05] * 30 + [0.5] + [0.05] * 10, idle_timeout=1.0)
    assert transfer.end is not End.IDLE
    assert transfer.whole_body
    assert transfer.stored == sent


def test_a_watchdog_whose_extension_drops_the_cancellation_ends_with_the_body(
    tmp_path: Path,
) -> None:
    # The body ends while the watchdog extends the lock, and the extension's
    # answer comes in the turn the transfer cancels the watchdog, which
    # Python 3.11's asyncio.wait_for (redis-py's every command) then drops
    # (tusserver/task_ends.py). The watchdog stops all the same: it does not
    # go on extending and, once the lock reads as lost, mark a finished body
    # as cut off.
    extend = AnsweredAsCancelled()

    async def run() -> Transfer:
        storage = await _storage(tmp_path)
        lease = Lease(UPLOAD_ID, "token", ttl=0.09, extend=extend)
        pieces = [PIECE]

        async def receive() -> Message:
            if pieces:
                return {"type": "http.request", "body": pieces.pop(), "more_body": True}
            await extend.in_call.wait()  # the watchdog's first tick extends the lock
            return {"type": "http.request", "body": PIECE, "more_body": False}

        transfer = Transfer()
        with anyio.fail_after(HANG_GUARD_SECONDS):
            await _receive(transfer, receive, storage, lease, takeover_after=0.05, idle_timeout=0.4)
            # What a watchdog that went on would do next: tick (0.1 s) and extend.
            await anyio.sleep(0.5)
        return transfer

    transfer = anyio.run(run)
    assert extend.calls == 1
    assert transfer.whole_body
    assert transfer.end is End.COMPLETE
    assert transfer.stored == 2 * len(PIECE)


def test_a_release_request_while_bytes_arrive_is_declined(tmp_path: Path) -> None:
    # Another request asks this writer to let go (it waits for the lock):
    # bytes arrived less than takeover_after ago, so the writer keeps the
    # upload and reads its body to the end; the asker asks again meanwhile.
    def ask(lease: Lease) -> None:
        lease.release_requested.set()

    transfer, sent = _flowing(
        tmp_path, [0.05] * 30, idle_timeout=3600.0, takeover_after=1.0, meanwhile=ask
    )
    assert transfer.end is not End.RELEASED
    assert transfer.whole_body
    assert transfer.stored == sent

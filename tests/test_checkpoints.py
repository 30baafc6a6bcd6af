"""Commits while a body streams (``transfer.Checkpoints``), on a real Redis.

Both the writer of a PATCH (after each block it stores) and its watchdog (on
its tick) ask for a checkpoint. Two checkpoints running at once would both
compare-and-set from the offset the request knows; the one that lost was
refused as MOVED, read as a lost lock, and the PATCH, the upload's only
writer, stopped reading and answered 423 (before that, a 204 short of its
body). It happened when both asked within one turn of the event loop: one
PATCH in a few hundred under load, behind nginx.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio
import pytest
import redis.asyncio as aioredis

from tusserver import errors, transfer
from tusserver.held import HeldUpload
from tusserver.locking import Locker
from tusserver.record import Upload
from tusserver.release_requests import BroadcastReleases
from tusserver.state import UploadStore, info_key
from tusserver.transfer import Checkpoints

UPLOAD_ID = "c" * 32
TOKEN = "writer"


def with_held_upload(
    redis_url: str, scenario: Callable[[HeldUpload, aioredis.Redis], Awaitable[None]]
) -> None:
    """Run ``scenario`` with an upload of 100 bytes whose lock it holds, as
    the request that created it does."""

    async def run() -> None:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            store = UploadStore(client)
            locker = Locker(BroadcastReleases(client), store, ttl=10.0, wait=1.0)
            upload = Upload(UPLOAD_ID, 0, 100)
            await store.create(upload, lock_token=TOKEN, lock_ttl_ms=10_000)
            await scenario(locker.adopt(upload, TOKEN), client)
        finally:
            await client.aclose()

    anyio.run(run)


def checkpoints_of(held: HeldUpload, committed: list[int]) -> Checkpoints:
    """Checkpoints as a PATCH has them (``receiving``): each commit keeps the
    lock, and one that is refused says the upload is no longer ours."""

    async def commit(stored: int) -> bool:
        try:
            await held.checkpoint(stored, expires=time.time() + 3600)
        except errors.TusError:
            return False
        committed.append(stored)
        return True

    # Due at every new byte, whatever the time.
    return Checkpoints(commit, every_bytes=1, every_seconds=3600.0)


def test_checkpoints_asked_for_in_one_turn_of_the_event_loop_commit_one_at_a_time(
    redis_url: str,
) -> None:
    async def scenario(held: HeldUpload, client: aioredis.Redis) -> None:
        committed: list[int] = []
        stops: list[int] = []
        checkpoints = checkpoints_of(held, committed)

        # The watchdog asks at 30 bytes stored, then the writer, having
        # stored 30 more, before the first checkpoint's task has run.
        checkpoints.start_if_due(30, lambda: stops.append(30))
        checkpoints.start_if_due(60, lambda: stops.append(60))
        await checkpoints.finished()
        assert stops == [], "a checkpoint was refused: the request would stop as if taken over"
        assert committed == [30]
        assert await client.hget(info_key(UPLOAD_ID), "offset") == "30"

        # Once it is done, the next one is due.
        checkpoints.start_if_due(60, lambda: stops.append(60))
        await checkpoints.finished()
        assert stops == []
        assert committed == [30, 60]
        assert held.upload.offset == 60
        assert await client.hget(info_key(UPLOAD_ID), "offset") == "60"

    with_held_upload(redis_url, scenario)


def test_no_checkpoint_is_due_while_nothing_was_stored_since_the_last_one() -> None:
    """A body that stalls after a checkpoint: however long it stalls, there
    is nothing new to commit (a commit of the same offset would be a Redis
    round trip per watchdog tick for nothing)."""

    async def commit(stored: int) -> bool:
        return True

    checkpoints = Checkpoints(commit, every_bytes=1, every_seconds=0.0)
    checkpoints.committed = 30
    assert not checkpoints.due(30)
    assert checkpoints.due(31)


def test_the_first_checkpoint_is_due_once_every_bytes_are_stored_and_not_a_byte_before() -> None:
    """A body's first checkpoint counts from its first byte: with blocks of
    ``checkpoint_bytes`` (as a PATCH of 64 KiB blocks every 64 KiB has), the
    first block stored is committed, not the second."""

    async def commit(stored: int) -> bool:
        return True

    checkpoints = Checkpoints(commit, every_bytes=10, every_seconds=3600.0)
    assert not checkpoints.due(9)
    assert checkpoints.due(10)


def test_a_checkpoint_is_due_every_bytes_after_the_last_one_or_every_seconds_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Counted from the last checkpoint: the bytes stored since it, and the
    time since it ended (on a clock the spec sets, ``transfer``'s ``time``)."""

    class Clock:
        now = 100.0

        def monotonic(self) -> float:
            return self.now

    clock = Clock()
    monkeypatch.setattr(transfer, "time", clock)

    async def commit(stored: int) -> bool:
        return True

    checkpoints = Checkpoints(commit, every_bytes=10, every_seconds=2.0, _at=100.0)
    checkpoints.committed = 10
    assert not checkpoints.due(19)
    assert checkpoints.due(20)
    clock.now = 101.5
    assert not checkpoints.due(11)
    clock.now = 102.0
    assert checkpoints.due(11)

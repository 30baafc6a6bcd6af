"""The sweep lock: a pass keeps it for as long as it runs, and stops once
another instance holds it.

The lock's TTL is shortened and the storage's deletes slowed, so that one
pass outlasts several TTLs without the test waiting half a minute.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import anyio
import pytest
import redis
import redis.asyncio as aioredis

from storage_backends.local import LocalStorage
from tests.helpers import upload_id_of
from tests.server_fixtures import RunningServer
from tusserver import sweeper
from tusserver.state import SWEEP_LOCK, UploadStore
from tusserver.sweeper import SweepReport, sweep_once

# Seconds. The pass below takes three TTLs; a keep-alive every third of a TTL
# leaves a loaded machine half a second of slack before the lock would lapse.
LOCK_TTL = 0.8
DELETE_SECONDS = 0.4
UPLOADS = 6  # deleted one after the other: UPLOADS * DELETE_SECONDS = 3 * LOCK_TTL
LATER = 10 * 24 * 3600.0


class SlowDeletes(LocalStorage):
    """Local storage whose deletes take DELETE_SECONDS, like a slow share's."""

    def __init__(self, server: RunningServer, on_delete: Callable[[], None]) -> None:
        super().__init__(server.storage)
        self.on_delete = on_delete

    async def delete(self, upload_id: str) -> None:
        self.on_delete()
        await anyio.sleep(DELETE_SECONDS)
        await super().delete(upload_id)


def sweep_slowly(
    server: RunningServer, redis_url: str, on_delete: Callable[[], None]
) -> SweepReport:
    async def run() -> SweepReport:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            storage = SlowDeletes(server, on_delete)
            store = UploadStore(client)
            return await sweep_once(store, storage, server.config, now=time.time() + LATER)
        finally:
            await client.aclose()

    return anyio.run(run)


@pytest.fixture(autouse=True)
def short_sweep_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sweeper, "SWEEP_LOCK_TTL", LOCK_TTL)


def test_a_pass_longer_than_the_lock_ttl_holds_the_sweep_lock_to_its_end(
    tus_server: Callable[..., RunningServer], state: redis.Redis, redis_url: str
) -> None:
    server = tus_server(expire_after=1, sweep_interval=3600)
    ids = [upload_id_of(server.create(10)) for _ in range(UPLOADS)]
    seen: list[tuple[float, str | None]] = []  # (when, who holds the sweep lock)
    done = threading.Event()

    def watch_lock() -> None:
        while not done.is_set():
            seen.append((time.monotonic(), state.get(SWEEP_LOCK)))  # type: ignore[arg-type]
            time.sleep(0.02)

    watcher = threading.Thread(target=watch_lock)
    watcher.start()
    try:
        report = sweep_slowly(server, redis_url, lambda: None)
    finally:
        done.set()
        watcher.join()

    assert sorted(report.expired) == sorted(ids)
    held = [i for i, (_, holder) in enumerate(seen) if holder is not None]
    during = seen[held[0] : held[-1] + 1]
    assert during[-1][0] - during[0][0] >= (UPLOADS - 1) * DELETE_SECONDS > 2 * LOCK_TTL, (
        "the lock lapsed before the pass ended"
    )
    assert all(holder is not None for _, holder in during), "the sweep lock lapsed mid-pass"
    assert len({holder for _, holder in during}) == 1
    assert state.get(SWEEP_LOCK) is None, "the pass did not let go of the lock"


def test_a_pass_that_loses_the_sweep_lock_stops_after_the_upload_in_hand(
    tus_server: Callable[..., RunningServer], state: redis.Redis, redis_url: str
) -> None:
    server = tus_server(expire_after=1, sweep_interval=3600)
    ids = [upload_id_of(server.create(10)) for _ in range(4)]

    def taken_over() -> None:
        # Another instance, finding the lock lapsed, takes it.
        state.set(SWEEP_LOCK, "token-of-another-instance", px=60_000)

    report = sweep_slowly(server, redis_url, taken_over)

    assert len(report.expired) == 1
    assert sorted(p.name for p in server.partials.iterdir()) == sorted(
        set(ids) - set(report.expired)
    )
    assert state.get(SWEEP_LOCK) == "token-of-another-instance"

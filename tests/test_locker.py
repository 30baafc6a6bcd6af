"""``locking.Locker`` on a real Redis: the TTL of the locks it takes, how
its leases let go at the end of a shutdown's grace and after it, that a
lock is given back even by a cancelled request and only once, that the
drain waits for the last lease, and what a refused release request is.

Straight on the locker (one Redis server, the store's scripts); the
requests that use it are specified through HTTP elsewhere
(tests/test_patch.py, tests/test_shutdown.py, tests/test_admin.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from tusserver import errors, locking
from tusserver.locking import Locker
from tusserver.record import Upload
from tusserver.release_requests import BroadcastReleases, OnRequest
from tusserver.state import Claim, StateUnavailable, UploadStore, lock_key

UPLOAD_ID = "c" * 32
TTL = 60.0  # seconds: 60,000 ms, so that a thousandth more or less is 60 ms


class CountedReleases(UploadStore):
    """The store, counting the compare-and-delete calls of the lock and
    recording the TTL each claim or seize asks for."""

    def __init__(self, client: aioredis.Redis) -> None:
        super().__init__(client)
        self.releases = 0
        self.ttls: list[int] = []

    async def claim(self, upload_id: str, token: str, ttl_ms: int) -> Claim:
        self.ttls.append(ttl_ms)
        return await super().claim(upload_id, token, ttl_ms)

    async def seize(self, upload_id: str, token: str, ttl_ms: int) -> Claim:
        self.ttls.append(ttl_ms)
        return await super().seize(upload_id, token, ttl_ms)

    async def release(self, upload_id: str, token: str) -> None:
        self.releases += 1
        await super().release(upload_id, token)


class RefusedPublish:
    """Release requests Redis refuses to publish (its connection dropped)."""

    async def publish(self, upload_id: str) -> None:
        raise RedisConnectionError("Connection reset by peer")

    async def listen(self, on_request: OnRequest) -> None:
        await anyio.sleep_forever()


class Clock:
    """``time`` for ``tusserver.locking``: its ``monotonic`` is what the spec sets."""

    def __init__(self, now: float) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


class SteppingStore(UploadStore):
    """Each claim takes ``step`` seconds of ``clock`` (binary fractions, so
    that the sums are exact)."""

    def __init__(self, client: aioredis.Redis, clock: Clock, step: float) -> None:
        super().__init__(client)
        self.clock, self.step = clock, step
        self.claims = 0

    async def claim(self, upload_id: str, token: str, ttl_ms: int) -> Claim:
        self.claims += 1
        claim = await super().claim(upload_id, token, ttl_ms)
        self.clock.now += self.step
        return claim


class Asked(Exception):
    pass


class RecordedPublish:
    """Release requests, recorded at the clock's time; ``refuse``: each one
    raises ``Asked`` once recorded."""

    def __init__(self, clock: Clock, *, refuse: bool) -> None:
        self.clock, self.refuse = clock, refuse
        self.at: list[float] = []

    async def publish(self, upload_id: str) -> None:
        self.at.append(self.clock.now)
        if self.refuse:
            raise Asked

    async def listen(self, on_request: OnRequest) -> None:
        await anyio.sleep_forever()


def with_locker(
    redis_url: str, scenario: Callable[[Locker, CountedReleases, aioredis.Redis], Awaitable[None]]
) -> None:
    """Run ``scenario`` with a locker (TTL 60 s, lock wait 0.2 s) and an
    upload ``UPLOAD_ID`` that nobody holds."""

    async def run() -> None:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            store = CountedReleases(client)
            await store.create(Upload(UPLOAD_ID, 0, 100), lock_token="creator", lock_ttl_ms=60_000)
            await client.delete(lock_key(UPLOAD_ID))
            locker = Locker(BroadcastReleases(client), store, ttl=TTL, wait=0.2)
            await scenario(locker, store, client)
        finally:
            await client.aclose()

    anyio.run(run)


def test_a_claimed_or_seized_lock_is_asked_for_exactly_the_lock_ttl(redis_url: str) -> None:
    # The lock's TTL is the configured one, in milliseconds: a writer that
    # hangs lets the upload go after exactly that, no sooner (the scripts
    # set what they are asked for: tests/test_state.py).
    async def scenario(locker: Locker, store: CountedReleases, client: aioredis.Redis) -> None:
        async with locker.hold(UPLOAD_ID):
            assert 59_000 < await client.pttl(lock_key(UPLOAD_ID)) <= 60_000
        async with locker.seize(UPLOAD_ID):
            assert 59_000 < await client.pttl(lock_key(UPLOAD_ID)) <= 60_000
        assert store.ttls == [60_000, 60_000]

    with_locker(redis_url, scenario)


def test_at_the_end_of_the_grace_every_lease_lets_go_at_once_and_so_does_one_taken_after(
    redis_url: str,
) -> None:
    # A request holding an upload stops reading even while bytes arrive;
    # one that was waiting for its lock and gets it afterwards too.
    async def scenario(locker: Locker, store: CountedReleases, client: aioredis.Redis) -> None:
        async with locker.hold(UPLOAD_ID) as before:
            assert not before.lease.must_let_go and not before.lease.release_requested.is_set()
            locker.let_all_go()
            assert before.lease.must_let_go and before.lease.release_requested.is_set()
        async with locker.hold(UPLOAD_ID) as after:
            assert after.lease.must_let_go and after.lease.release_requested.is_set()

    with_locker(redis_url, scenario)


def test_the_locks_left_at_the_end_of_a_shutdown_are_given_back_once(redis_url: str) -> None:
    # The request that still holds the upload when the process releases
    # every lock ends later: the lock is free at once, and its own
    # release does not ask Redis a second time.
    async def scenario(locker: Locker, store: CountedReleases, client: aioredis.Redis) -> None:
        async with locker.hold(UPLOAD_ID):
            await locker.release_all()
            assert await client.exists(lock_key(UPLOAD_ID)) == 0
        assert store.releases == 1

    with_locker(redis_url, scenario)


def test_a_request_cancelled_while_it_holds_an_upload_still_lets_go_of_its_lock(
    redis_url: str,
) -> None:
    # A shutdown or an embedding application's timeout cancels the request:
    # the upload is free at once, not after the lock's TTL (60 s here). The
    # release must open a connection first (the pooled ones were closed, as
    # after Redis dropped them): a cancelled call would stop there, before
    # its command was sent.
    async def scenario(locker: Locker, store: CountedReleases, client: aioredis.Redis) -> None:
        with anyio.CancelScope() as scope:
            async with locker.hold(UPLOAD_ID):
                assert await client.exists(lock_key(UPLOAD_ID)) == 1
                await client.connection_pool.disconnect()
                scope.cancel()
                await anyio.sleep_forever()
        assert scope.cancelled_caught
        assert await client.exists(lock_key(UPLOAD_ID)) == 0
        assert store.releases == 1

    with_locker(redis_url, scenario)


def test_the_drain_ends_once_no_request_holds_a_lock_and_not_before(redis_url: str) -> None:
    async def scenario(locker: Locker, store: CountedReleases, client: aioredis.Redis) -> None:
        drained = anyio.Event()

        async def drain() -> None:
            await locker.drain()
            drained.set()

        with anyio.fail_after(10):  # a guard against a drain that never ends
            await locker.drain()  # nothing held: at once
            async with anyio.create_task_group() as tasks:
                async with locker.hold(UPLOAD_ID):
                    tasks.start_soon(drain)
                    await anyio.sleep(0.2)  # four of the drain's polls
                    assert not drained.is_set(), "the drain ended while a lock was held"
                await drained.wait()

    with_locker(redis_url, scenario)


def test_a_release_request_redis_refuses_is_a_state_failure_not_a_wait(redis_url: str) -> None:
    # The holder cannot be asked to let go: the request fails as Redis
    # trouble (retryable), instead of waiting for a holder that will not hear.
    async def run() -> None:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            store = UploadStore(client)
            await store.create(Upload(UPLOAD_ID, 0, 100), lock_token="another", lock_ttl_ms=60_000)
            locker = Locker(RefusedPublish(), store, ttl=TTL, wait=0.2)
            with pytest.raises(StateUnavailable, match="Connection reset by peer"):
                async with locker.hold(UPLOAD_ID):
                    pass
            assert await client.get(lock_key(UPLOAD_ID)) == "another"
        finally:
            await client.aclose()

    anyio.run(run)


@pytest.mark.parametrize(
    ("wait", "step", "claims", "asked_at"),
    [(1.0, 0.25, 4, [100.25, 100.75]), (0.0, 0.0, 1, [])],
    ids=["waiting", "not waiting"],
)
def test_a_request_waiting_for_a_lock_asks_every_half_second_until_its_wait_is_up(
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    wait: float,
    step: float,
    claims: int,
    asked_at: list[float],
) -> None:
    # On a clock the spec moves (each attempt takes ``step``): the holder is
    # asked at the first refusal and again once half a second has passed,
    # and the request answers 423 at the first refusal at or past its wait.
    # Without a wait (an operator's termination) it answers 423 at once and
    # asks nothing, even on a clock too coarse to have moved meanwhile.
    clock = Clock(100.0)
    monkeypatch.setattr(locking, "time", clock)

    async def run() -> None:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            store = SteppingStore(client, clock, step)
            await store.create(Upload(UPLOAD_ID, 0, 100), lock_token="another", lock_ttl_ms=60_000)
            releases = RecordedPublish(clock, refuse=not wait)
            locker = Locker(releases, store, ttl=TTL, wait=wait)
            with pytest.raises(errors.TusError) as refused:
                async with locker.hold(UPLOAD_ID, wait=bool(wait)):
                    pass
            assert refused.value.status == 423
            assert store.claims == claims
            assert releases.at == asked_at
        finally:
            await client.aclose()

    anyio.run(run)


def test_a_holder_asked_to_let_go_is_told_to_at_once_only_while_its_process_drains(
    redis_url: str,
) -> None:
    # Two instances: B's request waits for the upload A's request holds, and
    # asks. A's request hears it (then it lets go only if no byte arrived
    # for takeover_after: tusserver/transfer.py); while A's process drains,
    # it is told to let go at once, bytes arriving or not.
    async def run() -> list[bool]:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        told: list[bool] = []
        try:
            store = UploadStore(client)
            await store.create(Upload(UPLOAD_ID, 0, 100), lock_token="creator", lock_ttl_ms=60_000)
            await client.delete(lock_key(UPLOAD_ID))
            a = Locker(BroadcastReleases(client), store, ttl=TTL, wait=5)
            b = Locker(BroadcastReleases(client), store, ttl=TTL, wait=5)

            async def b_takes_over(done: anyio.Event) -> None:
                async with b.hold(UPLOAD_ID):
                    pass
                done.set()

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(a.listen_for_release_requests)
                for draining in (False, True):
                    if draining:
                        a.draining = True  # as the process's stop sets it
                    done = anyio.Event()
                    with anyio.fail_after(10):  # guards: B asks every half second
                        async with a.hold(UPLOAD_ID) as held:
                            tasks.start_soon(b_takes_over, done)
                            await held.lease.release_requested.wait()
                            told.append(held.lease.must_let_go)
                        await done.wait()
                tasks.cancel_scope.cancel()
        finally:
            await client.aclose()
        return told

    assert anyio.run(run) == [False, True]

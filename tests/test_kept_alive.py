"""``locking.kept_alive``: a lock kept alive through long work with no bytes
arriving (a finalize, a concatenation's copy, a sweep pass).

It starts extending only once the first extension is due, extends about
once per third of the TTL, and when the work ends it stops the extending
task and waits for it, so that the caller, which then releases or commits,
never races an extension still in flight.

Straight on a lease whose ``extend`` is scripted here: what is pinned is the
schedule and the hand-over at the end, not Redis.
"""

from __future__ import annotations

import time

import anyio
import anyio.lowlevel

from tusserver.locking import Lease, kept_alive

TTL = 0.09  # an extension due every 0.03 s


class CountedLease(Lease):
    """A lease that counts the calls of ``keep_alive``."""

    def __init__(self, extend: object) -> None:
        super().__init__("k" * 32, "token", ttl=TTL, extend=extend)  # type: ignore[arg-type]
        self.calls = 0

    async def keep_alive(self) -> bool:
        self.calls += 1
        return await super().keep_alive()


class StuckExtensions(Lease):
    """A lease whose extension Redis never answers: it records when one is
    sent and when it is over (cut off by ``kept_alive``'s end)."""

    def __init__(self) -> None:
        super().__init__("k" * 32, "token", ttl=TTL, extend=self._extend)
        self.events: list[str] = []
        self.sent = anyio.Event()

    async def _extend(self, key: str, token: str, ttl_ms: int) -> bool:
        self.events.append("extension sent")
        self.sent.set()
        try:
            await anyio.sleep(3600)  # Redis does not answer
        finally:
            # Cut off, the call drops its connection, as the state's script
            # calls do, shielded: a few turns of the event loop.
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.05)
            self.events.append("extension over")
        return True


def test_work_longer_than_the_ttl_is_extended_at_most_once_per_third_of_the_ttl() -> None:
    extensions: list[float] = []

    async def extend(key: str, token: str, ttl_ms: int) -> bool:
        extensions.append(time.monotonic())
        await anyio.lowlevel.checkpoint()  # a Redis call: a turn of the event loop
        return True

    async def run() -> tuple[CountedLease, float]:
        lease = CountedLease(extend)
        started = time.monotonic()
        async with kept_alive(lease):
            await anyio.sleep(0.5)  # work of several TTLs
        return lease, time.monotonic() - started

    lease, elapsed = anyio.run(run)
    assert extensions, "the lock was not extended during work of several TTLs"
    # The extending task waits a third of the TTL between two calls: it never
    # asks in a loop (which would hold the event loop between extensions).
    assert lease.calls <= elapsed / lease.keep_alive_interval + 1


def test_an_extension_in_flight_when_the_work_ends_is_over_before_the_caller_goes_on() -> None:
    async def run() -> list[str]:
        lease = StuckExtensions()
        events, sent = lease.events, lease.sent
        async with kept_alive(lease):
            await sent.wait()
        events.append("caller goes on")  # and would release the lock now
        return events

    assert anyio.run(run) == ["extension sent", "extension over", "caller goes on"]


def test_work_cancelled_while_an_extension_is_in_flight_ends_that_extension_first() -> None:
    """The request running the work is cancelled (a shutdown, an embedding
    application's timeout): the extension still ends before the cancellation
    leaves ``kept_alive``."""

    async def run() -> list[str]:
        lease = StuckExtensions()
        events, sent = lease.events, lease.sent
        with anyio.CancelScope() as scope:
            async with kept_alive(lease):
                await sent.wait()
                scope.cancel()
                await anyio.sleep(3600)
        events.append("cancellation out")
        return events

    assert anyio.run(run) == ["extension sent", "extension over", "cancellation out"]

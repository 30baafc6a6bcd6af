"""``locking.kept_alive``: a lock kept alive through long work with no bytes
arriving (a finalize, a concatenation's copy, a sweep pass); and
``Lease.keep_alive`` itself, on a clock the spec moves.

It starts extending only once the first extension is due, extends about
once per third of the TTL, and when the work ends it stops the extending
task and waits for it, so that the caller, which then releases or commits,
never races an extension still in flight.

Straight on a lease whose ``extend`` is scripted here: what is pinned is the
schedule and the hand-over at the end, not Redis.
"""

from __future__ import annotations

import logging
import time

import anyio
import anyio.lowlevel
import pytest

from tests.helpers import AnsweredAsCancelled
from tusserver import locking
from tusserver.locking import Lease, kept_alive
from tusserver.state import StateUnavailable

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


def test_an_extension_that_drops_the_cancellation_still_ends_with_the_work() -> None:
    """Python 3.11's ``asyncio.wait_for``, through which redis-py sends every
    command, drops a cancellation that comes in the turn of the extension's
    answer (``tusserver/task_ends.py``): the extending task stops all the
    same, after that one extension, and does not go on extending for good."""

    async def run() -> int:
        extend = AnsweredAsCancelled()
        lease = Lease("k" * 32, "token", ttl=TTL, extend=extend)
        async with kept_alive(lease):
            await extend.in_call.wait()
        return extend.calls

    assert anyio.run(run) == 1


class Clock:
    """``time`` for ``tusserver.locking``: its ``monotonic`` is what the spec sets."""

    def __init__(self, now: float) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


class ScriptedExtensions:
    """An ``extend`` that answers from a list and records each call."""

    def __init__(self, *answers: bool | Exception) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, str, int]] = []

    async def __call__(self, key: str, token: str, ttl_ms: int) -> bool:
        self.calls.append((key, token, ttl_ms))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock(100.0)
    monkeypatch.setattr(locking, "time", clock)
    return clock


def test_an_extension_falls_due_a_third_of_the_ttl_after_the_last_and_asks_for_the_whole_ttl(
    clock: Clock,
) -> None:
    # A TTL of 3 s: an extension is due every second exactly (floats that
    # add up exactly), and each asks Redis for the TTL in milliseconds.
    extend = ScriptedExtensions(True, True)
    lease = Lease("k" * 32, "token", ttl=3.0, extend=extend)

    async def at(moment: float) -> bool:
        clock.now = moment
        return await lease.keep_alive()

    async def run() -> list[int]:
        asked = []
        for moment in (100.5, 100.999, 101.0, 101.5, 101.999, 102.0):
            assert await at(moment)
            asked.append(len(extend.calls))
        return asked

    assert anyio.run(run) == [0, 0, 1, 1, 1, 2]
    assert extend.calls == [("k" * 32, "token", 3000)] * 2
    assert lease.keep_alive_interval == 1.0


def keep_alive_at(lease: Lease, clock: Clock, *moments: float) -> list[bool]:
    """What ``lease.keep_alive`` answers, called once at each of ``moments``."""

    async def run() -> list[bool]:
        answers = []
        for moment in moments:
            clock.now = moment
            answers.append(await lease.keep_alive())
        return answers

    return anyio.run(run)


def test_an_extension_redis_fails_to_answer_keeps_the_writer_going_and_is_tried_again(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    # Redis may be back at the next extension; meanwhile the commit's
    # compare-and-set protects the offset. The writer is not stopped.
    extend = ScriptedExtensions(StateUnavailable("connection refused"), True)
    lease = Lease("k" * 32, "token", ttl=3.0, extend=extend)

    with caplog.at_level(logging.WARNING, logger="tusserver.locking"):
        assert keep_alive_at(lease, clock, 101.0, 102.0) == [True, True]
    assert len(extend.calls) == 2
    assert [record.getMessage() for record in caplog.records] == [
        f"lock of {'k' * 32}: could not extend it: StateUnavailable"
    ]


def test_a_lease_whose_extension_is_refused_is_lost_and_only_that_is_logged(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    # Refused: another token holds the lock (or none does). The writer must
    # stop, and the operator's log says why; a granted extension says nothing.
    extend = ScriptedExtensions(True, False)
    lease = Lease("k" * 32, "token", ttl=3.0, extend=extend)

    with caplog.at_level(logging.INFO, logger="tusserver.locking"):
        assert keep_alive_at(lease, clock, 101.0, 102.0) == [True, False]
    assert [record.getMessage() for record in caplog.records] == [
        f"lock of {'k' * 32}: lost while in use; stopping"
    ]

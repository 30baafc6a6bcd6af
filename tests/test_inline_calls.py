"""Quick file calls on the event loop, threads after a stall
(storage_backends/inline_calls.py): the policy on its own clock, then where
LocalStorage's writes really run, seen by an audit hook on ``open``."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from storage_backends.inline_calls import LONGEST_PAUSE, PAUSE, STALL, InlineWhileQuick
from storage_backends.local import LocalStorage

UPLOAD_ID = "0123456789abcdef0123456789abcdef"
QUICK = STALL / 10
SLOW = STALL * 2


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_calls_run_on_the_loop_while_they_stay_quick() -> None:
    clock = Clock()
    policy = InlineWhileQuick(clock=clock)
    for _ in range(100):
        assert policy.allowed()
        policy.took(QUICK)
        clock.now += 0.01
    policy.took(STALL)  # at the limit: still quick
    assert policy.allowed()


def test_by_default_a_call_of_5_ms_is_quick_and_one_of_20_ms_a_stall() -> None:
    # Normal writes of half a MiB take a quarter of a millisecond, 2 ms at
    # the most seen; a throttled writer waits tens to hundreds.
    clock = Clock()
    policy = InlineWhileQuick(clock=clock)
    policy.took(0.005)
    assert policy.allowed()
    policy.took(0.020)
    assert not policy.allowed()


def test_a_stalled_call_sends_the_calls_to_threads_for_a_pause() -> None:
    clock = Clock()
    policy = InlineWhileQuick(clock=clock)
    policy.took(SLOW)

    assert not policy.allowed()
    clock.now += PAUSE - 0.001
    assert not policy.allowed()
    clock.now += 0.001
    assert policy.allowed()


def test_the_pause_doubles_while_the_calls_tried_again_stall_and_resets_when_one_is_quick() -> None:
    clock = Clock()
    policy = InlineWhileQuick(clock=clock)
    pauses = []
    for _ in range(10):
        policy.took(SLOW)
        started = clock.now
        for _ in range(1000):  # a quarter of a second at a time, 250 s at most
            if policy.allowed():
                break
            clock.now += 0.25
        pauses.append(clock.now - started)
    assert pauses == [1, 2, 4, 8, 16, 32, 64, 64, 64, 64]
    assert LONGEST_PAUSE == 64

    policy.took(QUICK)
    policy.took(SLOW)
    clock.now += PAUSE
    assert policy.allowed()


def test_the_stall_limit_is_the_storages_to_choose() -> None:
    clock = Clock()
    patient = InlineWhileQuick(stall=SLOW * 2, clock=clock)
    patient.took(SLOW)
    assert patient.allowed()
    impatient = InlineWhileQuick(stall=0.0, clock=clock)
    impatient.took(QUICK)
    assert not impatient.allowed()


# Paths whose opens are watched, and the threads that opened them.
_watched: dict[str, list[int]] = {}


def _on_audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and _watched:
        opened = os.fsdecode(args[0]) if isinstance(args[0], (str, bytes, Path)) else None
        if opened in _watched:
            _watched[opened].append(threading.get_ident())


sys.addaudithook(_on_audit)  # cannot be removed: inert while nothing is watched


@contextmanager
def threads_opening(path: Path) -> Iterator[list[int]]:
    """The threads that open ``path`` within the block, in order."""
    seen: list[int] = []
    _watched[str(path)] = seen
    try:
        yield seen
    finally:
        del _watched[str(path)]


async def blocks(count: int) -> AsyncIterator[Sequence[bytes]]:
    for index in range(count):
        yield [bytes([65 + index]) * 4096]


@pytest.mark.anyio
async def test_blocks_are_written_on_the_event_loops_thread_while_writes_are_quick(
    tmp_path: Path,
) -> None:
    storage = LocalStorage(tmp_path / "root")
    await storage.check()
    await storage.create(UPLOAD_ID)
    with threads_opening(storage.staging / UPLOAD_ID) as openers:
        assert await storage.write(UPLOAD_ID, 0, blocks(5)) == 5 * 4096

    assert openers == [threading.get_ident()] * 5
    await storage.aclose()


@pytest.mark.anyio
async def test_after_a_stalled_write_the_next_blocks_are_written_in_threads(
    tmp_path: Path,
) -> None:
    # Every call on the loop counts as stalled: the first block is written
    # there, the next ones (within the pause) in worker threads, and the
    # bytes are the same.
    storage = LocalStorage(tmp_path / "root", inline_stall=0.0)
    await storage.check()
    await storage.create(UPLOAD_ID)  # on the loop, stalled: the pause begins
    partial = storage.staging / UPLOAD_ID
    with threads_opening(partial) as openers:
        assert await storage.write(UPLOAD_ID, 0, blocks(3)) == 3 * 4096

    loop_thread = threading.get_ident()
    assert len(openers) == 3
    assert loop_thread not in openers
    assert partial.read_bytes() == b"A" * 4096 + b"B" * 4096 + b"C" * 4096
    await storage.aclose()

"""Waiting for the tasks a request started beside itself to end.

A request's side tasks (its body's receiver and watchdog, a checkpoint's
commit, a lock's extension) touch its lock and its offset: the request
must not go on, to its closing commit or its release, while one of them
still runs. So the wait is shielded from the request's own cancellation
(a shutdown, an embedding application's timeout): cancelled, the request
still waits, and the cancellation goes on once the tasks ended.

A side task that calls Redis in a loop (the watchdog's and ``kept_alive``'s
lock extensions, ``Lease.keep_alive``) raises the cancellation again when
``cancel_requested`` says one was asked during the call: on Python 3.11 a
cancellation can be lost on its way. redis-py writes every
command it sends through ``asyncio.wait_for``, which before Python 3.12
returns its inner call's result, and drops the cancellation, when both come
in the same turn of the event loop. The task then went on as if nobody had
asked: a watchdog until its body's idle timeout (a minute with the
defaults, found with 64 uploads at once on a fresh Redis, every lock
extension sent the ordinary way to load its script), a lock keeper
forever, and the request waiting for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import anyio


def cancel_requested() -> bool:
    """Whether this task was asked to stop: a cancellation requested and not
    taken back, even if whatever it landed in returned as if it had not."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def wait_for_end(tasks: Iterable[asyncio.Task[None] | None]) -> None:
    """Wait until each task (None: not started) has ended, shielded."""
    running = [task for task in tasks if task is not None and not task.done()]
    if running:
        with anyio.CancelScope(shield=True):
            await asyncio.wait(running)


async def cancel_and_wait(tasks: Iterable[asyncio.Task[None] | None]) -> None:
    """Cancel the tasks still running and wait for them to end, shielded."""
    running = [task for task in tasks if task is not None and not task.done()]
    for task in running:
        task.cancel()
    await wait_for_end(running)

"""Waiting for the tasks a request started beside itself to end.

A request's side tasks (its body's receiver and watchdog, a checkpoint's
commit, a lock's extension) touch its lock and its offset: the request
must not go on, to its closing commit or its release, while one of them
still runs. So the wait is shielded from the request's own cancellation
(a shutdown, an embedding application's timeout): cancelled, the request
still waits, and the cancellation goes on once the tasks ended.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import anyio


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

"""One timer for the socket timeout of the replies read on the store's own
connections (``script_calls``, ``batched_reads``)."""

from __future__ import annotations

import asyncio

from redis.asyncio.connection import AbstractConnection


class ReplyDeadlines:
    """The socket timeout of the replies read on kept connections, kept by
    one timer for all of them: redis-py arms an ``asyncio.timeout`` around
    each read and cancels it, a fifth of a read's client CPU
    (bench/read_cost.py). A connection whose reply is late is aborted; its
    read then fails as a connection Redis closed does, and the call goes the
    ordinary way (with redis-py's own timeout and retries), as a read that
    timed out did."""

    def __init__(self, timeout: float | None) -> None:
        self._timeout = timeout
        self._deadlines: dict[AbstractConnection, float] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    def start(self, connection: AbstractConnection) -> None:
        if self._timeout is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        self._deadlines[connection] = deadline
        # One timer, for the earliest deadline: every later one is looked at
        # when it fires (all reads share the timeout, so it is seldom).
        if self._timer is None or self._timer_loop is not loop:
            self._arm(loop, deadline)

    def stop(self, connection: AbstractConnection) -> None:
        self._deadlines.pop(connection, None)

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        self._timer = loop.call_at(when, self._expire, loop)
        self._timer_loop = loop

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        for connection, deadline in list(self._deadlines.items()):
            if deadline <= now:
                del self._deadlines[connection]
                writer = connection._writer
                if writer is not None:
                    writer.transport.abort()
        if self._deadlines:
            self._arm(loop, min(self._deadlines.values()))

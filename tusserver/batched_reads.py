"""Plain reads of concurrent requests, sent to Redis together.

Each HEAD reads its upload's record with one ``HGETALL``. Sent one by one,
each read is a write to Redis's socket (which also wakes Redis) and a read
of its reply: a quarter of a HEAD's CPU in py-spy
(``bench/patch_profile.py --py-spy head``). Here the reads asked within one
turn of the event loop go out in one write on one connection, and one task
reads their replies as Redis answers them, in the order they were sent: what
other clients call auto-pipelining. Sixteen concurrent reads cost one write
and, as a rule, one read of the socket; a lone read goes alone, as before
(``BatchedReads.joined``).

Anything unusual ends the connection and hands each read it held back to
the caller (``Unsent``), which sends it the ordinary way: a reply later than
the socket timeout (``ReplyDeadlines`` aborts the connection), a connection
Redis closed. A reply to a caller that was cancelled meanwhile is read and
dropped, so the connection never holds a stray reply.
"""

from __future__ import annotations

import asyncio
import collections
import math
from typing import Any

import anyio
import hiredis
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import ResponseError
from redis.typing import EncodableT

from tusserver.reply_deadlines import ReplyDeadlines


class Unsent(Exception):
    """The read was not answered on the shared connection: send it another way."""


class BatchedReads:
    """Reads of one client's pool sent together on one connection of it."""

    def __init__(self, pool: ConnectionPool, deadlines: ReplyDeadlines) -> None:
        self._pool = pool
        self._deadlines = deadlines
        self._connection: AbstractConnection | None = None
        self._connecting: asyncio.Event | None = None
        # Packed, not written yet; then written, their replies not read yet.
        self._queued: list[tuple[bytes, asyncio.Future[Any]]] = []
        self._in_flight: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._flush_due = False
        self._reader: asyncio.Task[None] | None = None
        self._turn_taken = False

    def joined(self) -> bool:
        """Whether a read should go with the others: when one of this turn
        of the event loop already went alone, or reads are queued or in
        flight. The first read of a turn goes alone on a connection of its
        own (``ScriptCalls``): a lone read then costs what it did, without
        the hop through the reading task (7 µs of CPU, ``bench/read_cost.py``)."""
        if self._turn_taken or self._queued or self._in_flight:
            return True
        self._turn_taken = True
        asyncio.get_running_loop().call_soon(self._end_turn)
        return False

    def _end_turn(self) -> None:
        self._turn_taken = False

    async def call(self, command: tuple[EncodableT, ...]) -> Any:
        """``command``'s reply (a Redis error reply raised as redis-py raises
        it); ``Unsent`` when it must go another way."""
        loop = asyncio.get_running_loop()
        if self._connection is None:
            await self._connect(loop)
        future: asyncio.Future[Any] = loop.create_future()
        # hiredis's stub types the tuple as of one item.
        self._queued.append((hiredis.pack_command(command), future))  # type: ignore[arg-type]
        if not self._flush_due:
            # After every request of this turn of the loop has asked.
            loop.call_soon(self._flush)
            self._flush_due = True
        return await future

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> None:
        connecting = self._connecting
        if connecting is not None:
            # The reads of a burst wait for one connection (without one, the
            # flush hands them back).
            await connecting.wait()
            return
        self._connecting = connecting = asyncio.Event()
        try:
            connection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        except Exception:
            raise Unsent from None  # the ordinary way says what is wrong, with its retries
        finally:
            self._connecting = None
            connecting.set()
        self._connection = connection
        # Kept: the event loop holds only a weak reference to its tasks.
        self._reader = loop.create_task(self._read_replies(connection))

    def _flush(self) -> None:
        self._flush_due = False
        queued, self._queued = self._queued, []
        connection = self._connection
        writer = None if connection is None else connection._writer
        if connection is None or writer is None or writer.transport.is_closing():
            _hand_back(future for _, future in queued)
            return
        # Reads are a few dozen bytes each: the socket takes them at once,
        # and what it does not, asyncio sends as it can.
        writer.write(b"".join(packed for packed, _ in queued))
        if not self._in_flight:
            self._deadlines.start(connection)
        self._in_flight.extend(future for _, future in queued)

    async def _read_replies(self, connection: AbstractConnection) -> None:
        try:
            while True:
                try:
                    reply: Any = await connection.read_response(timeout=math.inf)
                except ResponseError as error:
                    reply = error  # an error reply: the connection is still in step
                if not self._in_flight:
                    return  # a reply nobody asked for: out of step
                future = self._in_flight.popleft()
                if self._in_flight:
                    self._deadlines.start(connection)  # the next reply has the whole timeout
                else:
                    self._deadlines.stop(connection)
                if future.done():
                    continue  # its caller was cancelled
                if isinstance(reply, ResponseError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except Exception:
            return  # closed, or aborted as late: the reads go another way (finally)
        finally:
            # Every read the connection holds goes another way, and the next
            # read connects anew; cancelled (the loop ends) too.
            self._connection = self._reader = None
            self._deadlines.stop(connection)
            _hand_back(self._in_flight)
            self._in_flight.clear()
            with anyio.CancelScope(shield=True):
                await connection.disconnect()
                await self._pool.release(connection)


def _hand_back(futures: Any) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(Unsent())

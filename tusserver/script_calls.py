"""Running the store's Lua scripts, and the plain read a HEAD sends, with as
little client work as possible.

Every tus request runs one or two scripts or that read (``state``), and through
redis-py's ``Redis.execute_command`` each costs about three times what
sending it and reading its reply does: the pool's lock, a check that the
connection has no stray data (a non-blocking read), observability hooks,
the retry wrapper. That was a third of a HEAD's CPU.

So, on one standalone server, a call is sent on a connection kept here,
taken once from the client's pool (``EVALSHA``, or the first ``HGETALL`` of
a turn of the event loop: the others go together, ``batched_reads``), packed by
hiredis itself, then its reply. A connection goes back to the idle list only after a whole
reply was read, so it never holds stray data. Anything unusual goes to
redis-py's ordinary path, which has the retries and the failover handling:

- a script is not loaded (a restarted or failed-over Redis): the ordinary
  call loads it;
- the connection failed or timed out: it is closed, and the ordinary call
  tries again on another one. The scripts are written to be retried (a
  claim finds its own token, a commit its own offset), as redis-py's own
  retry already resends them.

On a Redis Cluster the ordinary path is used: routing by slot is the
cluster client's job. Behind Sentinel too: see ``ScriptCalls``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import hiredis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT, KeyT

from tusserver.batched_reads import BatchedReads, Unsent
from tusserver.reply_deadlines import ReplyDeadlines

# Connections kept idle beyond this go back to the pool: a burst of
# concurrent requests does not pin its peak of connections for good.
_MAX_IDLE = 32


class ScriptCalls:
    """Scripts of one client, run on connections of their own when it can."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        pool = None if isinstance(client, RedisCluster) else client.connection_pool
        # Sentinel too goes the ordinary way: a kept connection can outlive a
        # failover on the demoted primary, where a script that decides before
        # it writes (COMMIT's "moved") still answers, from a record that is
        # not the new primary's. redis-py's Sentinel connections are made
        # anew when a write is refused there, and ours only to a server that
        # says it is the primary (``redis_topology``).
        self._pool: ConnectionPool | None = (
            None if isinstance(pool, SentinelConnectionPool) else pool
        )
        if self._pool is not None and not _packs_as_hiredis(self._pool):
            self._pool = None
        self._idle: list[AbstractConnection] = []
        timeout = None if self._pool is None else self._pool.connection_kwargs.get("socket_timeout")
        self._deadlines = ReplyDeadlines(timeout)
        self._reads = None if self._pool is None else BatchedReads(self._pool, self._deadlines)
        self._registered: list[AsyncScript] = []

    def register(self, text: str) -> Script:
        script = self._client.register_script(text)
        self._registered.append(script)
        return Script(self, script)

    async def load_all(self) -> None:
        """Load every registered script into Redis (into each primary of a
        Cluster). Not needed, as a call loads its script when Redis lacks
        it, but each request that meets a missing script sends it again:
        on a fresh Redis, every request of a first burst would."""
        for script in self._registered:
            await self._client.script_load(script.script)

    async def hgetall(self, key: str) -> dict[str, str]:
        """A hash's fields (none: no such key); str, as the store's client
        decodes replies."""
        if self._reads is None:
            return await self._client.hgetall(key)  # type: ignore[return-value]
        command = ("HGETALL", key)
        if not self._reads.joined():
            reply = await self._on_kept_connection(command, lambda: self._client.hgetall(key))
        else:
            try:
                reply = await self._reads.call(command)
            except Unsent:
                return await self._client.hgetall(key)  # type: ignore[return-value]
        if isinstance(reply, dict):  # RESP3 answers a map
            return reply
        return dict(zip(reply[::2], reply[1::2], strict=True))

    async def run(
        self, script: AsyncScript, keys: Sequence[KeyT], args: Sequence[EncodableT]
    ) -> Any:
        if self._pool is None:
            return await script(keys=keys, args=args)
        return await self._on_kept_connection(
            ("EVALSHA", script.sha, len(keys), *keys, *args),
            lambda: script(keys=keys, args=args),
        )

    async def _on_kept_connection(
        self, command: tuple[EncodableT, ...], ordinary: Callable[[], Awaitable[Any]]
    ) -> Any:
        """``command``'s reply, read on a kept connection; ``ordinary()``, the
        same call through redis-py, whenever that cannot be done cleanly."""
        assert self._pool is not None
        connection = self._idle.pop() if self._idle else await self._pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await _send(connection, command)
            self._deadlines.start(connection)
            try:
                reply = await connection.read_response(timeout=math.inf)
            finally:
                self._deadlines.stop(connection)
        except NoScriptError:
            # A whole reply was read: the connection is clean.
            await self._put_back(connection)
            return await ordinary()
        except (RedisConnectionError, RedisTimeoutError, OSError):
            await self._drop(connection)
            return await ordinary()
        except BaseException:
            # Cancelled, or a reply that failed to parse: a reply may still
            # be on its way, so the connection cannot serve another call.
            await self._drop(connection)
            raise
        await self._put_back(connection)
        return reply

    async def _put_back(self, connection: AbstractConnection) -> None:
        if len(self._idle) < _MAX_IDLE:
            self._idle.append(connection)
            return
        assert self._pool is not None
        with anyio.CancelScope(shield=True):
            await self._pool.release(connection)

    async def _drop(self, connection: AbstractConnection) -> None:
        assert self._pool is not None
        # Shielded: left open, the connection would stay counted as in use.
        with anyio.CancelScope(shield=True):
            await connection.disconnect()
            await self._pool.release(connection)


async def _send(connection: AbstractConnection, command: tuple[EncodableT, ...]) -> None:
    """``connection.send_command`` without its write in a task of its own:
    with a socket timeout, redis-py writes through ``asyncio.wait_for``,
    which (before Python 3.12) wraps the write in a new task, a turn of the
    event loop and a sixth of a HEAD's own work.

    A call is a few hundred bytes, which the socket takes at once: then
    there is nothing to wait for, and no timeout to set up (a timer armed
    and cancelled, a tenth of a HEAD's own work in py-spy). Only bytes the
    socket left buffered are waited for, under the socket timeout; a
    timeout raises ``TimeoutError``, an ``OSError``, as a failed write does.
    A connection lost meanwhile shows at the reply's read.

    Packed by ``hiredis.pack_command`` rather than redis-py's packer, which
    encodes each argument in Python first (1 against 6-10 µs a call): the
    store passes only str, int and bytes, which hiredis encodes as redis-py
    would (str as UTF-8, the client's encoding: ``ScriptCalls``)."""
    writer = connection._writer
    if writer is None or writer.transport.is_closing():
        # redis-py's own write raises its ConnectionError for these.
        await connection._send_packed_command(connection.pack_command(*command))
        return
    # hiredis's stub types the tuple as of one item.
    writer.write(hiredis.pack_command(command))  # type: ignore[arg-type]
    if writer.transport.get_write_buffer_size():
        async with asyncio.timeout(connection.socket_timeout):
            await writer.drain()


def _packs_as_hiredis(pool: ConnectionPool) -> bool:
    """Whether ``hiredis.pack_command`` sends what the pool's connections
    would: their arguments encoded as UTF-8, strictly (redis-py's default)."""
    kwargs = pool.connection_kwargs
    return (
        kwargs.get("encoding", "utf-8").lower().replace("_", "-") in ("utf-8", "utf8")
        and kwargs.get("encoding_errors", "strict") == "strict"
    )


class Script:
    """A registered script: called as redis-py's ``AsyncScript`` is, with
    ``client`` for a pipeline or a pinned connection."""

    def __init__(self, calls: ScriptCalls, script: AsyncScript) -> None:
        self._calls = calls
        self.script = script

    async def __call__(
        self,
        keys: Sequence[KeyT],
        args: Sequence[EncodableT] = (),
        client: aioredis.Redis | None = None,
    ) -> Any:
        if client is not None:
            return await self.script(keys=keys, args=args, client=client)
        return await self._calls.run(self.script, keys, args)

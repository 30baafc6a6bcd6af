"""Clients of the Redis holding the upload state, whatever its topology
(see ``redis_urls`` for the URL forms).

Every client built here answers ``decode_responses`` strings, fails within
seconds when Redis is away, and retries a failed command only twice: a
request should rather answer 423/503 soon and let the tus client retry. A
Sentinel client asks the sentinels for the primary again on every new
connection, and a Cluster client follows MOVED/ASK and refreshes its slot
map, so a failover costs a few failed commands, never a restart.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelManagedConnection as AsyncSentinelManagedConnection
from redis.backoff import ExponentialBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection

from tusserver.config import Config
from tusserver.redis_urls import RedisTarget, Topology
from tusserver.release_requests import BroadcastReleases, ReleaseRequests, ShardedReleases

# A request waits at most this long for a connection, and retries twice.
_CONNECT_TIMEOUT = 5.0
_SOCKET_TIMEOUT = 30.0


def _common(*, decode: bool) -> dict[str, Any]:
    return {
        "decode_responses": decode,
        "socket_connect_timeout": _CONNECT_TIMEOUT,
        "socket_timeout": _SOCKET_TIMEOUT,
    }


class _PrimaryOnly(AsyncSentinelManagedConnection):
    """A connection to the server the sentinels name as primary, refused
    unless that server says it is one (``ROLE``, once per connection).

    A sentinel that has not caught up with a failover still names the old
    primary, which may be back as a replica: before its first sync it holds
    the writes the failover lost, after it lags. A write there fails
    (READONLY, and redis-py asks the sentinels again), but a plain read, a
    HEAD's ``HGETALL``, would be answered from that copy. Refused, the
    connection is asked for again (redis-py's retries), and without a primary
    the request answers 423 or 503 for the client to retry."""

    async def connect_to(self, address: tuple[str, int]) -> None:
        await super().connect_to(address)  # type: ignore[no-untyped-call]
        await self.send_command("ROLE")
        if not _is_primary(await self.read_response()):
            await self.disconnect()
            raise RedisConnectionError(_NOT_PRIMARY)


class _SyncPrimaryOnly(SentinelManagedConnection):
    """``_PrimaryOnly`` for the blocking client of commands."""

    def connect_to(self, address: tuple[str, int]) -> None:
        super().connect_to(address)  # type: ignore[no-untyped-call]
        self.send_command("ROLE")  # type: ignore[no-untyped-call]
        if not _is_primary(self.read_response()):
            self.disconnect()  # type: ignore[no-untyped-call]
            raise RedisConnectionError(_NOT_PRIMARY)


_NOT_PRIMARY = "the server named as primary is not one (yet)"


def _is_primary(role: Any) -> bool:
    """Whether a ``ROLE`` reply is a primary's (decoded or not)."""
    return bool(role) and role[0] in ("master", b"master")


def connect(target: RedisTarget) -> aioredis.Redis:
    """An asyncio client of the target, for the app's lifetime (``aclose`` it).

    A Cluster client is a ``redis.asyncio.RedisCluster``: the same commands,
    routed by key; the type says ``Redis`` because both serve the store alike.
    """
    retry = AsyncRetry(ExponentialBackoff(cap=0.2, base=0.02), 2)
    if target.topology is Topology.STANDALONE:
        return aioredis.Redis.from_url(target.url, retry=retry, **_common(decode=True))
    if target.topology is Topology.SENTINEL:
        sentinel = AsyncSentinel(
            list(target.nodes),
            sentinel_kwargs={"socket_connect_timeout": _CONNECT_TIMEOUT},
            socket_connect_timeout=_CONNECT_TIMEOUT,
        )
        client: aioredis.Redis = sentinel.master_for(
            target.service,
            connection_class=_PrimaryOnly,
            db=target.db,
            password=target.password,
            retry=retry,
            **_common(decode=True),
        )
        return client
    cluster = AsyncRedisCluster(
        startup_nodes=[AsyncClusterNode(host, port) for host, port in target.nodes],
        password=target.password,
        retry=retry,
        **_common(decode=True),
    )
    return cluster  # type: ignore[return-value]


def connect_sync(target: RedisTarget, *, timeout: float = _CONNECT_TIMEOUT) -> redis.Redis:
    """A blocking client of the target, for commands (``tusserver sweep``'s
    start-up check, ``tusserver uploads``)."""
    if target.topology is Topology.STANDALONE:
        return redis.Redis.from_url(
            target.url,
            decode_responses=True,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
        )
    if target.topology is Topology.SENTINEL:
        sentinel = Sentinel(
            list(target.nodes),
            sentinel_kwargs={"socket_connect_timeout": timeout, "socket_timeout": timeout},
        )
        client: redis.Redis = sentinel.master_for(
            target.service,
            connection_class=_SyncPrimaryOnly,
            db=target.db,
            password=target.password,
            decode_responses=True,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 2),
        )
        return client
    cluster = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],  # type: ignore[no-untyped-call]
        password=target.password,
        decode_responses=True,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
    )
    return cluster  # type: ignore[return-value]


def release_requests(target: RedisTarget, client: aioredis.Redis) -> ReleaseRequests:
    """How instances ask each other to let go of an upload, over ``client``
    (made by ``connect`` for ``target``): sharded pub/sub on a Cluster."""
    if isinstance(client, AsyncRedisCluster):
        return ShardedReleases(client, target.password)
    return BroadcastReleases(client)


class PinnedConnections:
    """One connection to the server holding a key, for a few commands in a row.

    ``WAIT`` counts the replication of the writes made on its own connection
    only, so a write that must be on replicas before the server goes on is
    sent, and waited for, on one connection taken from the pool (one server,
    a Sentinel's primary) or opened to the primary of the key's slot (a
    Cluster; those clients are kept, one per primary, until ``aclose``).
    """

    def __init__(self, target: RedisTarget, client: aioredis.Redis) -> None:
        self._target = target
        self._client = client
        self._nodes: dict[str, aioredis.Redis] = {}

    @asynccontextmanager
    async def to(self, key: str) -> AsyncIterator[aioredis.Redis]:
        base = self._client
        if isinstance(self._client, AsyncRedisCluster):
            node = self._client.get_node_from_key(key)
            base = self._nodes.get(node.name) or self._nodes.setdefault(
                node.name,
                aioredis.Redis(
                    host=node.host,
                    port=node.port,
                    password=self._target.password,
                    **_common(decode=True),
                ),
            )
        pinned = base.client()
        try:
            yield pinned
        finally:
            with anyio.CancelScope(shield=True):
                await pinned.aclose()

    async def aclose(self) -> None:
        for node in self._nodes.values():
            await node.aclose()
        self._nodes.clear()


def replicas(config: Config, target: RedisTarget) -> int:
    """How many replicas durable writes wait for (``Config.redis_replicas``)."""
    if config.redis_replicas is not None:
        return config.redis_replicas
    return 1 if target.topology is Topology.SENTINEL else 0

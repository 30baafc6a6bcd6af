"""Release requests: "whoever holds upload X, let go if you are stalled",
sent by one instance and heard by every instance (see ``locking``).

On one server, and on a Sentinel-watched primary, that is classic pub/sub on
one channel, ``tus:release``. On a Redis Cluster, classic pub/sub would send
every message to every node; sharded pub/sub (Redis 7) keeps a message on
the shard of its channel instead. There is one channel per slot,
``tus:{<slot tag>}:release`` (``tusserver.slots``), a request goes to the
channel of its upload's slot, and each instance subscribes, on every
primary, to the channels of the slots that primary serves. When slots move
or a primary fails over, the subscriptions are made again from the
cluster's new slot map.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import anyio
import anyio.abc
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from tusserver import slots
from tusserver.log_safety import describe

logger = logging.getLogger(__name__)

BROADCAST_CHANNEL = "tus:release"
# After a lost connection, before subscribing again.
_RECONNECT_SECONDS = 1.0

# Called with the upload id of each request heard.
OnRequest = Callable[[str], None]


def shard_channel(slot: int) -> str:
    return f"tus:{{{slots.slot_tag(slot)}}}:release"


class ReleaseRequests(Protocol):
    async def publish(self, upload_id: str) -> None:
        """Ask every instance; raises RedisError."""

    async def listen(self, on_request: OnRequest) -> None:
        """Call ``on_request`` for every request, for as long as the task runs;
        reconnects on its own and never returns."""


class BroadcastReleases:
    """Classic pub/sub on one channel: one server, or a Sentinel's primary."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client

    async def publish(self, upload_id: str) -> None:
        await self._redis.publish(BROADCAST_CHANNEL, upload_id)

    async def listen(self, on_request: OnRequest) -> None:
        while True:
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(BROADCAST_CHANNEL)
                    async for message in pubsub.listen():
                        on_request(message["data"])
            except RedisError as exc:
                logger.warning(
                    "release-request listener lost Redis (%s); reconnecting", describe(exc)
                )
                await anyio.sleep(_RECONNECT_SECONDS)


class _SlotsMoved(Exception):
    """A primary gave up slots we listen on: subscribe again from a fresh map."""


class ShardedReleases:
    """Sharded pub/sub on a Redis Cluster, one channel per slot."""

    def __init__(self, cluster: RedisCluster, password: str | None) -> None:
        self._cluster = cluster
        self._password = password

    async def publish(self, upload_id: str) -> None:
        await self._cluster.spublish(shard_channel(slots.upload_slot(upload_id)), upload_id)

    async def listen(self, on_request: OnRequest) -> None:
        while True:
            try:
                shards = await self._slot_map()
            except (RedisError, RedisClusterException) as exc:  # the latter: no node answers
                logger.warning("release-request listener: no slot map (%s)", describe(exc))
                await anyio.sleep(_RECONNECT_SECONDS)
                continue
            # One task per primary; the first to fail (a lost connection,
            # slots moved) ends them all, and all subscribe again.
            async with anyio.create_task_group() as tasks:
                for (host, port), served in shards.items():
                    tasks.start_soon(self._listen_to, host, port, served, on_request, tasks)
            await anyio.sleep(_RECONNECT_SECONDS)

    async def _slot_map(self) -> dict[tuple[str, int], list[int]]:
        """Which slots each primary serves, as the cluster says now."""
        reply: dict[tuple[int, int], dict[str, Any]] = await self._cluster.execute_command(
            "CLUSTER SLOTS", target_nodes=RedisCluster.RANDOM
        )
        shards: dict[tuple[str, int], list[int]] = {}
        for (first, last), nodes in reply.items():
            host, port = nodes["primary"][:2]
            shards.setdefault((str(host), int(port)), []).extend(range(first, last + 1))
        return shards

    async def _listen_to(
        self,
        host: str,
        port: int,
        served: list[int],
        on_request: OnRequest,
        tasks: anyio.abc.TaskGroup,
    ) -> None:
        node = aioredis.Redis(
            host=host,
            port=port,
            password=self._password,
            decode_responses=True,
            socket_connect_timeout=5,
        )
        try:
            async with node.pubsub() as pubsub:
                # One command per channel: channels of one SSUBSCRIBE must
                # share a slot. Sent back to back, confirmed as they come.
                for slot in served:
                    await pubsub.ssubscribe(shard_channel(slot))
                async for message in pubsub.listen():
                    kind = message["type"]
                    if kind == "smessage":
                        on_request(message["data"])
                    elif kind == "sunsubscribe":
                        # Redis drops the shard channels of slots that moved away.
                        raise _SlotsMoved("slots moved to another primary")
        except (RedisError, OSError, _SlotsMoved) as exc:
            logger.info("release-request listener: subscribing again (%s)", describe(exc))
            tasks.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await node.aclose()

"""The Redis side of hooks: the post-finish outbox and the post-receive limiter.

Keys (see ``hook_delivery`` for why the outbox is shaped so):

    tus:{<id>}:post-finish   string: the post-finish event of upload <id>, as
                             JSON, written by the COMPLETE script with the
                             completion itself; deleted once delivered
    tus:hooks:post-finish    stream: one entry {"id": <id>} per announced
                             finish, written before COMPLETE; consumer group
                             "tusserver" delivers them
    tus:{<id>}:progress      string with a TTL of the progress interval: a
                             post-receive was sent for <id> within it

The stream is global, so it is never written by a per-upload script (one
Redis Cluster slot per script). Every Redis failure leaves this module as
``StateUnavailable``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from tusserver.state import _translating, info_key, post_finish_key

POST_FINISH_STREAM = "tus:hooks:post-finish"
GROUP = "tusserver"


def progress_key(upload_id: str) -> str:
    return f"tus:{{{upload_id}}}:progress"


@dataclass(frozen=True)
class Entry:
    """One announced finish in the stream."""

    entry_id: str
    upload_id: str


class HookOutbox:
    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client

    @_translating
    async def announce(self, upload_id: str) -> None:
        """Add the stream entry of a finish about to be recorded."""
        await self._redis.xadd(POST_FINISH_STREAM, {"id": upload_id})

    @_translating
    async def progress_due(self, upload_id: str, interval_ms: int) -> bool:
        """True at most once per interval per upload, across all instances."""
        return bool(await self._redis.set(progress_key(upload_id), "1", nx=True, px=interval_ms))

    @_translating
    async def join(self) -> None:
        """Create the consumer group (and the stream) unless they exist."""
        try:
            await self._redis.xgroup_create(POST_FINISH_STREAM, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    @_translating
    async def read_new(self, consumer: str, count: int, block_ms: int) -> list[Entry]:
        """Entries no consumer has been given yet; waits up to ``block_ms`` for one."""
        reply: Any = await self._redis.xreadgroup(
            GROUP, consumer, {POST_FINISH_STREAM: ">"}, count=count, block=block_ms
        )
        return [entry for _, entries in reply or [] for entry in _entries(entries)]

    @_translating
    async def reclaim(self, consumer: str, min_idle_ms: int, count: int) -> list[Entry]:
        """Entries given to a consumer that has not touched them for
        ``min_idle_ms`` (it died, or is stuck): this consumer takes them over."""
        reply: list[Any] = await self._redis.xautoclaim(
            POST_FINISH_STREAM, GROUP, consumer, min_idle_ms, start_id="0-0", count=count
        )
        return _entries(reply[1])

    @_translating
    async def keep(self, consumer: str, entry_ids: list[str]) -> None:
        """Reset the idle time of entries this consumer is still retrying, so
        that no other instance takes over an entry its live owner works on."""
        if entry_ids:
            ids: Any = entry_ids  # redis-py's stub wants a list of one exact union
            await self._redis.xclaim(POST_FINISH_STREAM, GROUP, consumer, 0, ids, justid=True)

    @_translating
    async def event_and_record(self, upload_id: str) -> tuple[str | None, dict[str, str]]:
        """The recorded post-finish event (None: not recorded yet, or
        delivered) and the upload's record fields, read in one transaction
        (both keys are on the upload's slot)."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(post_finish_key(upload_id))
            pipe.hgetall(info_key(upload_id))
            value, fields = await pipe.execute()
        return (None if value is None else str(value)), dict(fields)

    @_translating
    async def delivered(self, entry: Entry) -> None:
        """The event is delivered: forget it, then the entry. A crash in
        between leaves an entry whose event is gone, which is only acked."""
        await self._redis.delete(post_finish_key(entry.upload_id))
        await self.drop(entry)

    @_translating
    async def drop(self, entry: Entry) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xack(POST_FINISH_STREAM, GROUP, entry.entry_id)
            pipe.xdel(POST_FINISH_STREAM, entry.entry_id)
            await pipe.execute()


def _entries(raw: list[Any]) -> list[Entry]:
    # A claimed entry deleted meanwhile comes back with no fields.
    return [
        Entry(str(entry_id), str(fields["id"]))
        for entry_id, fields in raw
        if fields and "id" in fields
    ]

"""The upload store's scripts on a real Redis: what a retried call and a
stale writer each get from a commit."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import redis.asyncio as aioredis

from tusserver.record import Upload
from tusserver.state import CommitStatus, UploadStore, lock_key

UPLOAD_ID = "a" * 32


def with_store(
    redis_url: str, scenario: Callable[[UploadStore, aioredis.Redis], Awaitable[None]]
) -> None:
    async def run() -> None:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            await scenario(UploadStore(client), client)
        finally:
            await client.aclose()

    anyio.run(run)


def test_a_retried_commit_finds_its_own_commit_done(redis_url: str) -> None:
    async def scenario(store: UploadStore, client: aioredis.Redis) -> None:
        await store.create(Upload(UPLOAD_ID, 0, 100), lock_token="A", lock_ttl_ms=10_000)
        assert await store.commit(UPLOAD_ID, "A", 0, 60, release=True) is CommitStatus.OK
        # The reply was lost and redis-py sent the same call again.
        assert await store.commit(UPLOAD_ID, "A", 0, 60, release=True) is CommitStatus.OK

    with_store(redis_url, scenario)


def test_a_writer_whose_lock_lapsed_cannot_commit_a_range_another_writer_committed(
    redis_url: str,
) -> None:
    async def scenario(store: UploadStore, client: aioredis.Redis) -> None:
        await store.create(Upload(UPLOAD_ID, 0, 100), lock_token="A", lock_ttl_ms=10_000)
        await client.delete(lock_key(UPLOAD_ID))  # A's lock lapses
        assert (await store.claim(UPLOAD_ID, "B", 10_000)).upload is not None
        assert await store.commit(UPLOAD_ID, "B", 0, 100, release=True) is CommitStatus.OK

        # A, stale, reports the same range: not its commit, so not "ok".
        assert await store.commit(UPLOAD_ID, "A", 0, 100, release=True) is CommitStatus.MOVED

    with_store(redis_url, scenario)

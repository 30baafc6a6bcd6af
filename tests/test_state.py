"""The upload store's scripts on a real Redis: what a retried call and a
stale writer each get from a commit or from recording a deferred length."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import redis.asyncio as aioredis

from tusserver.record import Upload
from tusserver.state import CommitStatus, UploadStore, info_key, lock_key

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


def test_a_deferred_length_is_set_only_by_the_lock_holder_at_its_offset_and_once(
    redis_url: str,
) -> None:
    async def scenario(store: UploadStore, client: aioredis.Redis) -> None:
        await store.create(Upload(UPLOAD_ID, 0, None), lock_token="A", lock_ttl_ms=10_000)
        # B does not hold the lock; A's view of the offset is stale.
        assert await store.set_length(UPLOAD_ID, "B", 0, 50) is CommitStatus.LOST_LOCK
        assert await store.set_length(UPLOAD_ID, "A", 7, 50) is CommitStatus.MOVED
        assert await client.hget(info_key(UPLOAD_ID), "length") == ""

        assert await store.set_length(UPLOAD_ID, "A", 0, 50) is CommitStatus.OK
        # A retried call finds it done; another length is refused.
        assert await store.set_length(UPLOAD_ID, "A", 0, 50) is CommitStatus.OK
        assert await store.set_length(UPLOAD_ID, "A", 0, 60) is CommitStatus.MOVED
        assert await client.hget(info_key(UPLOAD_ID), "length") == "50"
        assert await store.set_length("b" * 32, "A", 0, 50) is CommitStatus.MISSING

    with_store(redis_url, scenario)


def test_a_commit_records_the_length_its_chunked_body_declared_with_its_bytes(
    redis_url: str,
) -> None:
    async def scenario(store: UploadStore, client: aioredis.Redis) -> None:
        await store.create(Upload(UPLOAD_ID, 0, None), lock_token="A", lock_ttl_ms=10_000)
        # Refused (the offset moved): neither the offset nor the length is recorded.
        moved = await store.commit(UPLOAD_ID, "A", 3, 10, release=False, length=20)
        assert moved is CommitStatus.MOVED
        assert await client.hmget(info_key(UPLOAD_ID), "offset", "length") == ["0", ""]

        assert (
            await store.commit(UPLOAD_ID, "A", 0, 10, release=False, length=20) is CommitStatus.OK
        )
        assert await client.hmget(info_key(UPLOAD_ID), "offset", "length") == ["10", "20"]
        # Another writer's length, recorded meanwhile, is never overwritten.
        clash = await store.commit(UPLOAD_ID, "A", 10, 15, release=True, length=30)
        assert clash is CommitStatus.MOVED
        assert await client.hmget(info_key(UPLOAD_ID), "offset", "length") == ["10", "20"]

    with_store(redis_url, scenario)

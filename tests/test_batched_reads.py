"""Concurrent reads of the store go to Redis together
(tusserver/batched_reads.py), on a real Redis: each caller gets its own
record, Redis reads them in one go, and a cancelled caller, an error reply or
a connection Redis closed leaves every other read answered and the shared
connection in step (no new connection while nothing failed).

One Redis server only: behind Sentinel and on a Cluster the reads go the
ordinary way (tusserver/script_calls.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tests.redis_topologies import free_ports
from tests.test_state import impatient_store, with_store
from tusserver.record import Upload
from tusserver.state import StateUnavailable, UploadStore, info_key

pytestmark = pytest.mark.standalone_redis

IDS = [f"{n:032x}" for n in range(1, 33)]


async def stats(client: aioredis.Redis) -> tuple[int, int]:
    """Redis's count of reads of client sockets, and of connections accepted."""
    info = await client.info("stats")
    return int(info["total_reads_processed"]), int(info["total_connections_received"])


@asynccontextmanager
async def no_new_connection(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """An admin client; Redis must accept no connection while the block runs."""
    async with aioredis.Redis.from_url(redis_url) as admin:
        _, before = await stats(admin)
        yield admin
        _, after = await stats(admin)
    assert after == before, "the shared connection was made again"


def with_uploads(
    redis_url: str, scenario: Callable[[UploadStore, aioredis.Redis], Awaitable[None]]
) -> None:
    """``scenario`` on a store holding an upload of length n for ``IDS[n - 1]``,
    after two reads at once (the first goes alone, the second makes the
    shared connection)."""

    async def prepared(store: UploadStore, client: aioredis.Redis) -> None:
        await create_uploads(store)
        assert await lengths(store, IDS[:2]) == [1, 2]
        await scenario(store, client)

    with_store(redis_url, prepared)


def writes_so_far() -> int:
    """The write system calls this process made (Linux's per-process count)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("syscw:"):
            return int(line.split()[1])
    raise AssertionError("no syscw in /proc/self/io")


async def create_uploads(store: UploadStore) -> None:
    for length, upload_id in enumerate(IDS, start=1):
        await store.create(Upload(upload_id, 0, length), lock_token=None, lock_ttl_ms=10_000)


async def lengths(store: UploadStore, upload_ids: list[str]) -> list[int | None]:
    reads = await asyncio.gather(*(store.read(upload_id) for upload_id in upload_ids))
    return [read.length if isinstance(read, Upload) else None for read in reads]


def test_reads_asked_together_go_to_redis_together_and_each_gets_its_own_record(
    redis_url: str,
) -> None:
    async def scenario(store: UploadStore, client: aioredis.Redis) -> None:
        async with aioredis.Redis.from_url(redis_url) as admin:
            reads_before, connections_before = await stats(admin)
            writes_before = writes_so_far()
            assert await lengths(store, IDS) == list(range(1, 33))
            writes = writes_so_far() - writes_before
            reads_after, connections_after = await stats(admin)
        # The first read goes alone, the other 31 in one write; Redis reads
        # its sockets about as often (and once for this INFO). Sent one by
        # one: 32 writes, 32 reads, on as many connections.
        assert writes <= 3
        assert reads_after - reads_before <= 4
        assert connections_after == connections_before

    with_uploads(redis_url, scenario)


def test_a_read_cancelled_on_its_way_leaves_the_others_their_records_and_the_connection_in_step(
    redis_url: str,
) -> None:
    async def scenario(store: UploadStore, client: aioredis.Redis) -> None:
        async with no_new_connection(redis_url):
            reads = [asyncio.ensure_future(store.read(upload_id)) for upload_id in IDS[:8]]
            await asyncio.sleep(0)  # each asked, none answered yet
            reads[3].cancel()
            done = await asyncio.gather(*reads, return_exceptions=True)
            assert isinstance(done[3], asyncio.CancelledError)
            assert [r.length for i, r in enumerate(done) if i != 3] == [1, 2, 3, 5, 6, 7, 8]  # type: ignore[union-attr]

            # Its reply was read and dropped: the next ones get their own.
            assert await lengths(store, IDS[7::-1]) == list(range(8, 0, -1))

    with_uploads(redis_url, scenario)


def test_an_error_reply_fails_its_own_read_only(redis_url: str) -> None:
    async def scenario(store: UploadStore, client: aioredis.Redis) -> None:
        async with no_new_connection(redis_url) as admin:
            await admin.set(info_key(IDS[2]), "not a record")  # HGETALL answers WRONGTYPE
            reads = await asyncio.gather(
                *(store.read(upload_id) for upload_id in IDS[:6]), return_exceptions=True
            )
            assert isinstance(reads[2], StateUnavailable)
            assert [r.length for i, r in enumerate(reads) if i != 2] == [1, 2, 4, 5, 6]  # type: ignore[union-attr]
            assert await lengths(store, IDS[3:6]) == [4, 5, 6]

    with_uploads(redis_url, scenario)


def test_reads_on_a_connection_redis_closed_are_answered_on_another(redis_url: str) -> None:
    async def scenario(store: UploadStore, client: aioredis.Redis) -> None:
        async with aioredis.Redis.from_url(redis_url) as admin:
            for attempt in range(3):
                await admin.client_kill_filter(_type="normal", skipme=True)
                assert await lengths(store, IDS) == list(range(1, 33)), attempt

    with_uploads(redis_url, scenario)


def test_a_burst_of_reads_on_a_fresh_store_makes_one_shared_connection(redis_url: str) -> None:
    async def scenario(store: UploadStore, client: aioredis.Redis) -> None:
        await create_uploads(store)  # scripts, on connections of their own
        async with aioredis.Redis.from_url(redis_url) as admin:
            _, connections_before = await stats(admin)
            assert await lengths(store, IDS) == list(range(1, 33))
            _, connections_after = await stats(admin)
        # The first read goes alone on a connection the scripts left; the
        # others wait for the one the second makes.
        assert connections_after - connections_before == 1

    with_store(redis_url, scenario)


def test_reads_without_redis_fail_as_unavailable() -> None:
    (port,) = free_ports(1)  # nothing listens there

    async def run() -> None:
        client = aioredis.Redis.from_url(
            f"redis://127.0.0.1:{port}/0", decode_responses=True, retry=Retry(NoBackoff(), 0)
        )
        try:
            store = UploadStore(client)
            reads = await asyncio.gather(
                *(store.read(upload_id) for upload_id in IDS[:8]), return_exceptions=True
            )
            assert all(isinstance(read, StateUnavailable) for read in reads), reads
        finally:
            await client.aclose()

    anyio.run(run)


def test_reads_together_fail_as_unavailable_when_redis_answers_later_than_the_socket_timeout(
    redis_url: str,
) -> None:
    async def run() -> None:
        async with impatient_store(redis_url) as (store, admin):
            await create_uploads(store)
            assert await lengths(store, IDS[:2]) == [1, 2]  # the shared connection made
            # The timeouts' timer fires with no read late, and must be armed
            # again for the next ones.
            await anyio.sleep(0.5)

            await admin.execute_command("CLIENT", "PAUSE", "3000", "ALL")
            reads = await asyncio.gather(
                *(store.read(upload_id) for upload_id in IDS[:8]), return_exceptions=True
            )
            # Not answered once the pause is over: each failed at its timeout.
            assert all(isinstance(read, StateUnavailable) for read in reads), reads

    anyio.run(run)


def test_a_shared_connection_redis_closed_goes_back_to_the_pool(redis_url: str) -> None:
    async def run() -> None:
        # A pool that refuses an eleventh connection: eight reads take at most
        # ten (one alone, the shared one, seven sent again if it breaks), and
        # a connection the store kept after Redis closed it adds up.
        client = aioredis.Redis.from_url(redis_url, decode_responses=True, max_connections=10)
        admin = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            store = UploadStore(client)
            await create_uploads(store)
            for attempt in range(16):
                assert await lengths(store, IDS[:8]) == list(range(1, 9)), attempt
                await admin.client_kill_filter(_type="normal", skipme=True)
        finally:
            await client.aclose()
            await admin.aclose()

    anyio.run(run)

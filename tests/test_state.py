"""The upload store's scripts on a real Redis: what a retried call, a
stale writer and a writer when nobody holds the lock each get from a
creation, a claim, a commit, recording a deferred length, a completion and
a termination."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tests.redis_topologies import RedisSentinelSet
from tusserver.protocol import Metadata
from tusserver.record import PARTIAL, Upload, from_fields
from tusserver.redis_topology import connect
from tusserver.redis_urls import parse as parse_redis_url
from tusserver.state import (
    LEGACY_INDEX,
    ClaimStatus,
    CommitStatus,
    Index,
    NotReplicated,
    StateUnavailable,
    UploadStore,
    info_key,
    lock_key,
    post_finish_key,
    upload_index_key,
)

UPLOAD_ID = "a" * 32
OTHER_ID = "b" * 32


def with_store(
    redis_url: str, scenario: Callable[[UploadStore, aioredis.Redis], Awaitable[None]]
) -> None:
    """``scenario`` on a store of a client as the server makes one (one
    server, Sentinel or Cluster, as ``redis_url`` says)."""

    async def run() -> None:
        client = connect(parse_redis_url(redis_url))
        try:
            await scenario(UploadStore(client), client)
        finally:
            await client.aclose()

    anyio.run(run)


def test_a_retried_commit_finds_its_own_commit_done(redis_url: str) -> None:
    async def scenario(store: UploadStore, client: aioredis.Redis) -> None:
        await store.create(Upload(UPLOAD_ID, 0, 100), lock_token="A", lock_ttl_ms=10_000)
        assert await store.commit(UPLOAD_ID, "A", 0, 60, release=True) is CommitStatus.OK
        # The reply was lost and redis-py sent the same call again, and again.
        assert await store.commit(UPLOAD_ID, "A", 0, 60, release=True) is CommitStatus.OK
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
        # The next commit of the same body declares the same length: no clash.
        same = await store.commit(UPLOAD_ID, "A", 10, 12, release=False, length=20)
        assert same is CommitStatus.OK
        # Another writer's length, recorded meanwhile, is never overwritten.
        clash = await store.commit(UPLOAD_ID, "A", 12, 15, release=True, length=30)
        assert clash is CommitStatus.MOVED
        assert await client.hmget(info_key(UPLOAD_ID), "offset", "length") == ["12", "20"]

    with_store(redis_url, scenario)


def test_a_read_finds_the_committed_record_whoever_holds_the_lock_and_tells_missing_from_gone(
    redis_url: str,
) -> None:
    async def scenario(store: UploadStore, client: aioredis.Redis) -> None:
        assert await store.read(UPLOAD_ID) is ClaimStatus.MISSING
        metadata = Metadata("name bmFtZQ==", {"name": b"name"})
        await store.create(
            Upload(UPLOAD_ID, 0, 100, metadata=metadata), lock_token="A", lock_ttl_ms=10_000
        )
        assert await store.commit(UPLOAD_ID, "A", 0, 40, release=False) is CommitStatus.OK
        read = await store.read(UPLOAD_ID)
        assert isinstance(read, Upload)
        assert (read.id, read.offset, read.length) == (UPLOAD_ID, 40, 100)
        assert read.metadata.values == {"name": b"name"}
        assert await client.get(lock_key(UPLOAD_ID)) == "A"  # a read takes nothing
        assert await store.terminate(UPLOAD_ID, "A") is CommitStatus.OK
        assert await store.read(UPLOAD_ID) is ClaimStatus.GONE
        assert await store.read(OTHER_ID) is ClaimStatus.MISSING

    with_store(redis_url, scenario)


def test_a_retried_create_finds_its_own_record_and_a_taken_id_or_a_tombstone_is_refused(
    redis_url: str,
) -> None:
    async def scenario(store: UploadStore, client: aioredis.Redis) -> None:
        first = Upload(UPLOAD_ID, 0, 100, created=1000.0)
        assert await store.create(first, lock_token=None, lock_ttl_ms=10_000)
        # The reply was lost and redis-py sent the same call again.
        assert await store.create(first, lock_token=None, lock_ttl_ms=10_000)
        # Another creation of the same id (a pre-create hook chose it) is refused.
        taken = Upload(UPLOAD_ID, 0, 5, created=2000.0)
        assert not await store.create(taken, lock_token=None, lock_ttl_ms=10_000)
        assert await client.hget(info_key(UPLOAD_ID), "length") == "100"

        # So is the id of a terminated upload while its tombstone lasts.
        await store.create(Upload(OTHER_ID, 0, 5), lock_token="A", lock_ttl_ms=10_000)
        assert await store.terminate(OTHER_ID, "A") is CommitStatus.OK
        again = Upload(OTHER_ID, 0, 5, created=3000.0)
        assert not await store.create(again, lock_token=None, lock_ttl_ms=10_000)
        assert await client.exists(info_key(OTHER_ID)) == 0

    with_store(redis_url, scenario)


def test_the_creator_holds_the_lock_it_asked_for_and_a_retried_claim_finds_its_own(
    redis_url: str,
) -> None:
    async def scenario(store: UploadStore, client: aioredis.Redis) -> None:
        await store.create(Upload(UPLOAD_ID, 0, 100), lock_token="A", lock_ttl_ms=10_000)
        assert (await store.claim(UPLOAD_ID, "B", 10_000)).status is ClaimStatus.LOCKED
        # A read never looks at the lock: the record as committed.
        read = await store.read(UPLOAD_ID)
        assert isinstance(read, Upload) and read.length == 100
        # A's claim sent again (reply lost): its own lock, not another's.
        assert (await store.claim(UPLOAD_ID, "A", 10_000)).status is ClaimStatus.CLAIMED

        # Created without a lock: free for the first claim, and then taken.
        await store.create(Upload(OTHER_ID, 0, 100), lock_token=None, lock_ttl_ms=10_000)
        assert (await store.claim(OTHER_ID, "B", 10_000)).status is ClaimStatus.CLAIMED
        assert (await store.claim(OTHER_ID, "C", 10_000)).status is ClaimStatus.LOCKED

    with_store(redis_url, scenario)


def test_a_checkpoint_sent_twice_keeps_the_lock_and_the_closing_commit_of_its_offset_releases_it(
    redis_url: str,
) -> None:
    async def scenario(store: UploadStore, client: aioredis.Redis) -> None:
        await store.create(Upload(UPLOAD_ID, 0, 100), lock_token="A", lock_ttl_ms=10_000)
        assert await store.commit(UPLOAD_ID, "A", 0, 60, release=False) is CommitStatus.OK
        assert await store.commit(UPLOAD_ID, "A", 0, 60, release=False) is CommitStatus.OK
        assert await client.get(lock_key(UPLOAD_ID)) == "A"

        # The patch ends at the offset its last checkpoint committed.
        assert await store.commit(UPLOAD_ID, "A", 0, 60, release=True) is CommitStatus.OK
        assert await client.get(lock_key(UPLOAD_ID)) is None
        assert await client.hget(info_key(UPLOAD_ID), "offset") == "60"
        # Sent again (reply lost): still its own commit.
        assert await store.commit(UPLOAD_ID, "A", 0, 60, release=True) is CommitStatus.OK

    with_store(redis_url, scenario)


def test_with_nobody_holding_the_lock_a_writer_may_commit_and_record_the_length(
    redis_url: str,
) -> None:
    async def scenario(store: UploadStore, client: aioredis.Redis) -> None:
        # Its lock lapsed and nobody took it since.
        await store.create(Upload(UPLOAD_ID, 0, None), lock_token=None, lock_ttl_ms=10_000)
        assert await store.set_length(UPLOAD_ID, "A", 0, 50) is CommitStatus.OK
        assert await store.commit(UPLOAD_ID, "A", 0, 50, release=True) is CommitStatus.OK
        assert await client.hmget(info_key(UPLOAD_ID), "offset", "length") == ["50", "50"]

    with_store(redis_url, scenario)


def test_a_completion_or_termination_is_refused_to_a_writer_whose_lock_another_holds(
    redis_url: str,
) -> None:
    async def scenario(store: UploadStore, client: aioredis.Redis) -> None:
        await store.create(Upload(UPLOAD_ID, 5, 5), lock_token="B", lock_ttl_ms=10_000)
        assert await store.complete(UPLOAD_ID, "A", "file", None) is CommitStatus.LOST_LOCK
        assert await store.terminate(UPLOAD_ID, "A") is CommitStatus.LOST_LOCK
        upload = await store.read(UPLOAD_ID)
        assert isinstance(upload, Upload) and upload.state == PARTIAL

        # The holder finishes it, and lets go of the lock in the same step.
        assert await store.complete(UPLOAD_ID, "B", "file", None) is CommitStatus.OK
        assert await client.exists(lock_key(UPLOAD_ID)) == 0
        # Without a post-finish event to deliver, none is stored.
        assert await client.exists(post_finish_key(UPLOAD_ID)) == 0

        # With nobody holding the lock (it lapsed), a writer may finish; an
        # upload removed meanwhile is missing.
        await store.create(Upload(OTHER_ID, 5, 5), lock_token=None, lock_ttl_ms=10_000)
        assert await store.complete(OTHER_ID, "A", "file", None) is CommitStatus.OK
        assert await store.complete("c" * 32, "A", "file", None) is CommitStatus.MISSING

    with_store(redis_url, scenario)


def test_only_the_holder_releases_or_extends_the_lock(redis_url: str) -> None:
    async def scenario(store: UploadStore, client: aioredis.Redis) -> None:
        await store.create(Upload(UPLOAD_ID, 0, 100), lock_token="A", lock_ttl_ms=1_000)
        await store.release(UPLOAD_ID, "B")
        assert not await store.extend(UPLOAD_ID, "B", 60_000)
        assert await client.get(lock_key(UPLOAD_ID)) == "A"
        assert 0 < await client.pttl(lock_key(UPLOAD_ID)) <= 1_000

        assert await store.extend(UPLOAD_ID, "A", 60_000)
        assert 1_000 < await client.pttl(lock_key(UPLOAD_ID)) <= 60_000
        await store.release(UPLOAD_ID, "A")
        assert await client.exists(lock_key(UPLOAD_ID)) == 0
        # A lock that is gone (lapsed, or taken and released) is not extended back.
        assert not await store.extend(UPLOAD_ID, "A", 60_000)
        assert await client.exists(lock_key(UPLOAD_ID)) == 0

    with_store(redis_url, scenario)


def test_a_seize_takes_the_lock_from_its_holder_and_tells_a_terminated_from_an_unknown_upload(
    redis_url: str,
) -> None:
    async def scenario(store: UploadStore, client: aioredis.Redis) -> None:
        await store.create(Upload(UPLOAD_ID, 0, 100), lock_token="A", lock_ttl_ms=10_000)
        seized = await store.seize(UPLOAD_ID, "B", 10_000)
        assert seized.status is ClaimStatus.CLAIMED and seized.upload is not None
        assert await client.get(lock_key(UPLOAD_ID)) == "B"
        assert await store.commit(UPLOAD_ID, "A", 0, 10, release=True) is CommitStatus.LOST_LOCK

        assert await store.terminate(UPLOAD_ID, "B") is CommitStatus.OK
        assert (await store.seize(UPLOAD_ID, "C", 10_000)).status is ClaimStatus.GONE
        assert (await store.seize(OTHER_ID, "C", 10_000)).status is ClaimStatus.MISSING
        assert await client.exists(lock_key(UPLOAD_ID), lock_key(OTHER_ID)) == 0

    with_store(redis_url, scenario)


def test_a_commit_slides_the_expiry_of_an_upload_that_has_one_and_adds_none(
    redis_url: str,
) -> None:
    async def scenario(store: UploadStore, client: aioredis.Redis) -> None:
        expiring = Upload(UPLOAD_ID, 0, 100, expires=5000.0)
        await store.create(expiring, lock_token="A", lock_ttl_ms=10_000)
        slid = await store.commit(UPLOAD_ID, "A", 0, 10, release=False, expires=6000.0)
        assert slid is CommitStatus.OK
        assert await client.hget(info_key(UPLOAD_ID), "expires") == "6000.0"
        # A commit that does not slide it leaves it as it is.
        assert await store.commit(UPLOAD_ID, "A", 10, 20, release=True) is CommitStatus.OK
        assert await client.hget(info_key(UPLOAD_ID), "expires") == "6000.0"

        # An upload without an expiry (published, or never expiring) gets none.
        await store.create(Upload(OTHER_ID, 0, 100), lock_token="A", lock_ttl_ms=10_000)
        unslid = await store.commit(OTHER_ID, "A", 0, 10, release=True, expires=7000.0)
        assert unslid is CommitStatus.OK
        assert await client.hexists(info_key(OTHER_ID), "expires") == 0

    with_store(redis_url, scenario)


def test_a_retried_durable_commit_waits_for_a_write_of_its_own(
    redis_sentinels: RedisSentinelSet,
) -> None:
    # WAIT counts the replication stream only up to its own connection's
    # last write. A durable COMMIT retried after its WAIT timed out finds its
    # commit done; it writes the committer again, so that its WAIT waits for
    # a write behind the one it repeats. Without that write, a retry on
    # another connection, whose last write the replica has, would count a
    # replica that lags behind the first commit (connected, acknowledging
    # nothing) as having it.
    redis_sentinels.flush()
    primary, replica = redis_sentinels.primary(), redis_sentinels.replica()
    assert replica.process is not None

    async def scenario() -> None:
        client = aioredis.Redis(port=primary.port, decode_responses=True)
        first, retry = (
            aioredis.Redis(port=primary.port, decode_responses=True, single_connection_client=True)
            for _ in range(2)
        )
        pinned = iter((first, retry))

        @asynccontextmanager
        async def next_connection(key: str) -> AsyncIterator[aioredis.Redis]:
            yield next(pinned)

        store = UploadStore(client, replicas=1, pin_to=next_connection)
        try:
            await store.create(Upload(UPLOAD_ID, 0, 100), lock_token="A", lock_ttl_ms=60_000)
            # The retry's connection wrote before, and the replica has it.
            await retry.set(OTHER_ID, "1")
            assert await retry.wait(1, 2_000) == 1
            replica.process.send_signal(signal.SIGSTOP)
            try:
                with pytest.raises(NotReplicated):
                    await store.commit(UPLOAD_ID, "A", 0, 100, release=False, durable=True)
                # Told "not on a replica yet", the writer tries again.
                with pytest.raises(NotReplicated):
                    await store.commit(UPLOAD_ID, "A", 0, 100, release=False, durable=True)
            finally:
                replica.process.send_signal(signal.SIGCONT)
        finally:
            for connection in (client, first, retry):
                await connection.aclose()

    anyio.run(scenario)


@asynccontextmanager
async def impatient_store(redis_url: str) -> AsyncIterator[tuple[UploadStore, aioredis.Redis]]:
    """A store whose client's replies time out after 0.3 s, with no retry, and
    a client to pause Redis with; Redis is unpaused at the end."""
    client = aioredis.Redis.from_url(
        redis_url, decode_responses=True, socket_timeout=0.3, retry=Retry(NoBackoff(), 0)
    )
    admin = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield UploadStore(client), admin
    finally:
        await admin.execute_command("CLIENT", "UNPAUSE")
        await client.aclose()
        await admin.aclose()


# Pauses one Redis server's clients.
@pytest.mark.standalone_redis
def test_a_reply_later_than_the_socket_timeout_fails_the_read_and_the_next_read_is_answered(
    redis_url: str,
) -> None:
    # Reads on the store's kept connections share one timer for their
    # socket timeout (tusserver/script_calls.py): a late reply must still
    # end the read as a timeout would, not wait for Redis however long.
    async def run() -> None:
        async with impatient_store(redis_url) as (store, admin):
            await store.create(Upload(UPLOAD_ID, 0, 100), lock_token=None, lock_ttl_ms=10_000)
            assert isinstance(await store.read(UPLOAD_ID), Upload)  # a connection kept

            await admin.execute_command("CLIENT", "PAUSE", "4000", "ALL")
            with pytest.raises(StateUnavailable):
                await store.read(UPLOAD_ID)

            for _ in range(40):  # until the pause is over
                try:
                    read = await store.read(UPLOAD_ID)
                except StateUnavailable:
                    await anyio.sleep(0.25)
                    continue
                assert isinstance(read, Upload) and read.length == 100
                break
            else:
                pytest.fail("the store never read again once Redis answered")

    anyio.run(run)


def test_the_operators_listing_reads_the_records_in_batches_of_the_size_asked(
    redis_url: str,
) -> None:
    # `tusserver uploads list` on millions of uploads holds one batch at a
    # time: every record once, never more than the batch asked for.
    ids = [f"{n:032x}" for n in range(5)]

    async def scenario(store: UploadStore, client: aioredis.Redis) -> None:
        for upload_id in ids:
            await store.create(Upload(upload_id, 0, 100), lock_token=None, lock_ttl_ms=10_000)
        batches = [batch async for batch in store.snapshots(2)]
        assert [len(batch) for batch in batches] == [2, 2, 1]
        assert sorted(snapshot.upload.id for batch in batches for snapshot in batch) == ids

    with_store(redis_url, scenario)


@pytest.mark.standalone_redis
def test_a_listing_redis_stops_answering_fails_and_is_never_a_shorter_list(
    redis_url: str,
) -> None:
    ids = [f"{n:032x}" for n in range(5)]

    async def run() -> None:
        client = aioredis.Redis.from_url(
            redis_url, decode_responses=True, socket_timeout=0.3, retry=Retry(NoBackoff(), 0)
        )
        admin = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            store = UploadStore(client)
            for upload_id in ids:
                await store.create(Upload(upload_id, 0, 100), lock_token=None, lock_ttl_ms=10_000)
            listed: list[str] = []
            with pytest.raises(StateUnavailable):
                async for batch in store.snapshots(2):
                    listed += [snapshot.upload.id for snapshot in batch]
                    # Redis stops answering after the first batch: what the
                    # listing asks next (a SCAN step, a batch's reads) times out.
                    await admin.execute_command("CLIENT", "PAUSE", "3000", "ALL")
            assert len(listed) == 2
        finally:
            await admin.execute_command("CLIENT", "UNPAUSE")
            await client.aclose()
            await admin.aclose()

    anyio.run(run)


@pytest.mark.parametrize("redis_topology", ["standalone", "cluster"], indirect=True)
def test_the_index_of_earlier_versions_is_moved_a_batch_at_a_time_keeping_the_earlier_score(
    redis_url: str,
) -> None:
    # An upgrade's first sweep moves a global index of any size: `count`
    # entries per call (one pipeline each), until none is left, each with
    # the score it had. An entry already in the per-slot index (moved once by
    # a pass cut short, or re-scored since) keeps the earlier of its two
    # scores: the sweeper then looks at it no later than either says, and
    # re-scores it from the record if it is not due.
    scores = {f"{n:032x}": 1000.0 + n for n in range(5)}
    earlier, later = f"{0:032x}", f"{1:032x}"

    async def scenario(store: UploadStore, client: aioredis.Redis) -> None:
        await client.zadd(LEGACY_INDEX[Index.EXPIRY], scores)
        await client.zadd(upload_index_key(Index.EXPIRY, earlier), {earlier: 500.0})
        await client.zadd(upload_index_key(Index.EXPIRY, later), {later: 5000.0})
        moved = [await store.migrate_legacy_index(Index.EXPIRY, 2) for _ in range(4)]
        assert moved == [2, 2, 1, 0]
        assert await client.exists(LEGACY_INDEX[Index.EXPIRY]) == 0
        expected = {**scores, earlier: 500.0}
        for upload_id, score in expected.items():
            key = upload_index_key(Index.EXPIRY, upload_id)
            assert await client.zscore(key, upload_id) == score

    # On a Cluster, a batch's entries go to the indexes of different slots,
    # on different primaries (one pipeline, no transaction across them).
    assert len({upload_index_key(Index.EXPIRY, upload_id) for upload_id in scores}) > 1

    with_store(redis_url, scenario)


def test_a_lock_key_without_a_ttl_shows_as_held_with_no_time_left(redis_url: str) -> None:
    # tusserver never sets a lock without a TTL; one set by hand (PTTL -1)
    # is shown to the operator as held, with 0 ms left, never a negative time.
    async def scenario(store: UploadStore, client: aioredis.Redis) -> None:
        await store.create(Upload(UPLOAD_ID, 0, 100), lock_token=None, lock_ttl_ms=10_000)
        await client.set(lock_key(UPLOAD_ID), "by-hand")
        shown = await store.snapshot(UPLOAD_ID)
        assert not isinstance(shown, ClaimStatus)
        assert (shown.lock_token, shown.lock_ttl_ms) == ("by-hand", 0)
        [[listed]] = [batch async for batch in store.snapshots(10)]
        assert listed.lock_ttl_ms == 0

    with_store(redis_url, scenario)


@pytest.mark.parametrize("redis_topology", ["standalone", "cluster"], indirect=True)
def test_which_of_many_uploads_have_a_record_is_one_call_across_slots(redis_url: str) -> None:
    # The sweeper asks this of a batch of stale staging files (orphans are
    # those without a record): on a Cluster their records are on many slots.
    ids = [f"{n:032x}" for n in range(6)]

    async def scenario(store: UploadStore, client: aioredis.Redis) -> None:
        for upload_id in ids[::2]:
            await store.create(Upload(upload_id, 0, 100), lock_token=None, lock_ttl_ms=10_000)
        assert await store.records_exist(ids) == [True, False] * 3

    with_store(redis_url, scenario)


def test_a_records_metadata_values_are_decoded_only_when_looked_at() -> None:
    # A HEAD echoes the raw header and never looks at the values: it does
    # not pay for their decoding.
    fields = {"metadata": "name bmFtZQ==,flag", "meta": '{"name": "name", "flag": ""}'}
    values = from_fields(UPLOAD_ID, fields).metadata.values
    assert values == {"name": b"name", "flag": b""}
    assert (len(values), sorted(values), values["name"], values.get("none")) == (
        2,
        ["flag", "name"],
        b"name",
        None,
    )

    unreadable = from_fields(UPLOAD_ID, {"metadata": "name bmFtZQ==", "meta": "{not json"})
    assert unreadable.metadata.raw == "name bmFtZQ=="
    with pytest.raises(ValueError):
        dict(unreadable.metadata.values)

    # A record written before the values were kept: parsed from the raw header.
    older = from_fields(UPLOAD_ID, {"metadata": "name bmFtZQ=="})
    assert older.metadata.values == {"name": b"name"}
    assert from_fields(UPLOAD_ID, {}).metadata.values == {}

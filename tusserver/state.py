"""Upload records in Redis.

Keys of one upload share a hash tag, so they live on one Redis Cluster slot
and one Lua script may touch them all: ``tus:{<id>}:info`` (the record, see
``tusserver.record``), ``tus:{<id>}:lock`` (the token of the request allowed
to write, see ``locking``), ``tus:{<id>}:gone`` (tombstone of a
terminated or expired upload: 410, not 404) and ``tus:{<id>}:post-finish``
(its post-finish event until delivered, see ``hook_delivery``).

Two indexes let the sweeper find its work without scanning keys (see
``expiry``); they are sorted sets of upload ids, one per Redis Cluster slot
(``tusserver.slots``), so that an upload's entries sit on its own slot and
the scripts that create, finish and terminate it keep them in the same step:

    tus:{<slot tag>}:expiry     unpublished uploads, scored by when they expire
    tus:{<slot tag>}:retention  published uploads whose record is to be
                                removed, scored by completion time +
                                retention (only with a retention)

The expiry index is kept lazily so that a PATCH costs no extra round trip:
a commit moves the record's ``expires`` forward inside its script, and the
index keeps the older, earlier score. Invariant: an upload's index score is
never later than its record's ``expires``, so the sweeper visits it no later
than due, re-checks the record under the upload's lock and re-scores the
entry of an upload that was extended. Nothing global is ever written in
the same step as an upload's keys: every command touches one slot.

Earlier versions kept one global ``tus:expiry`` and ``tus:retention``; the
sweeper moves their entries into the per-slot indexes
(``migrate_legacy_index``).

Rules the scripts enforce:
- The offset moves only by compare-and-set from the offset the writer
  started at, and only while the writer still holds the lock or nobody does
  (a lapsed lock that nobody took over still fences nothing out).
- Each request does its Redis work in as few round trips as possible: a
  PATCH claims the lock *and* reads the record in one script, and commits
  the offset *and* releases the lock in another. Each round trip costs about
  0.3 ms from Python, which matters for clients sending 1 MiB chunks.

Every Redis failure leaves this module as ``StateUnavailable``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from enum import Enum
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from redis.typing import EncodableT

from tusserver import metrics, scripts, slots
from tusserver.record import COMPLETE, FAILED, OWNER_FIELD, Upload, from_fields, to_fields
from tusserver.script_calls import Script, ScriptCalls

# How long a terminated upload answers 410 before it is forgotten (then 404).
GONE_TTL_SECONDS = 24 * 3600


class StateUnavailable(Exception):
    """Redis did not answer or failed; nothing was changed by this call."""


class NotReplicated(StateUnavailable):
    """The write was made on the primary, but fewer replicas than asked have
    it (WAIT timed out): a failover now could lose it, so nothing that relies
    on it may go on. Retried, the request finds the write done."""


# One connection to the server holding a key (redis_topology.PinnedConnections.to).
PinTo = Callable[[str], AbstractAsyncContextManager[aioredis.Redis]]
# How long a durable write waits for its replicas.
REPLICA_WAIT_MS = 2000


class ClaimStatus(Enum):
    CLAIMED = "claimed"
    LOCKED = "locked"
    MISSING = "missing"
    GONE = "gone"


class CommitStatus(Enum):
    OK = "ok"
    LOST_LOCK = "lost"  # another writer holds the lock now
    MOVED = "moved"  # the offset is no longer the one we started from
    MISSING = "missing"  # the record was removed meanwhile


@dataclass
class Claim:
    status: ClaimStatus
    upload: Upload | None = None


@dataclass
class Snapshot:
    """An upload as an operator sees it: its record and its lock, read in one
    round trip (``tusserver uploads``)."""

    upload: Upload
    fields: dict[str, str]  # the record as stored
    lock_ttl_ms: int | None  # None: no request holds its lock
    lock_token: str | None = None  # read only for one upload (``snapshot``)


def info_key(upload_id: str) -> str:
    return f"tus:{{{upload_id}}}:info"


def lock_key(upload_id: str) -> str:
    return f"tus:{{{upload_id}}}:lock"


def gone_key(upload_id: str) -> str:
    return f"tus:{{{upload_id}}}:gone"


# Every upload has exactly one key of this shape: SCAN finds the uploads by it.
RECORD_KEY_PATTERN = "tus:{*}:info"


def record_keys(client: aioredis.Redis, batch: int) -> AsyncIterator[str]:
    """Every record key in ``client``'s Redis, streamed by SCAN ``batch`` at a
    time: never KEYS, which blocks Redis for the whole keyspace. On a Redis
    Cluster client, ``scan_iter`` walks every primary in turn. SCAN promises
    each key that exists throughout at least once (a key may come twice while
    Redis rehashes); one created or removed meanwhile may or may not come."""
    return client.scan_iter(match=RECORD_KEY_PATTERN, count=batch)


def upload_id_of_key(key: str) -> str:
    """``tus:{<id>}:info`` -> ``<id>``."""
    return key[len("tus:{") : -len("}:info")]


def post_finish_key(upload_id: str) -> str:
    """The upload's post-finish event until delivered (see hook_delivery)."""
    return f"tus:{{{upload_id}}}:post-finish"


def _complete_keys(upload_id: str) -> list[str]:
    return [info_key(upload_id), lock_key(upload_id), post_finish_key(upload_id)]


class Index(Enum):
    EXPIRY = "expiry"
    RETENTION = "retention"


def index_key(index: Index, slot: int) -> str:
    return f"tus:{{{slots.slot_tag(slot)}}}:{index.value}"


def upload_index_key(index: Index, upload_id: str) -> str:
    """The index key on the upload's own slot."""
    return index_key(index, slots.upload_slot(upload_id))


def _index_keys(upload_id: str) -> list[str]:
    return [upload_index_key(Index.EXPIRY, upload_id), upload_index_key(Index.RETENTION, upload_id)]


# The single global indexes of earlier versions, drained by the sweeper.
LEGACY_INDEX = {Index.EXPIRY: "tus:expiry", Index.RETENTION: "tus:retention"}
# Held by the instance sweeping right now (see expiry); one sweeper at a time.
SWEEP_LOCK = "tus:sweep:lock"


def _keys(upload_id: str) -> list[str]:
    return [info_key(upload_id), lock_key(upload_id), gone_key(upload_id)]


P = ParamSpec("P")
R = TypeVar("R")


def _translating(func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Turn every Redis failure into StateUnavailable, once, at the boundary."""

    @wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await func(*args, **kwargs)
        except RedisError as exc:
            metrics.recorder().redis_error(type(exc).__name__)
            raise StateUnavailable(str(exc)) from exc

    return wrapper


class UploadStore:
    """``replicas``: how many replicas a durable write (the final offset, a
    completion) must reach before the call returns, through ``pin_to``."""

    def __init__(
        self, client: aioredis.Redis, *, replicas: int = 0, pin_to: PinTo | None = None
    ) -> None:
        self._redis = client
        self._replicas = replicas if pin_to is not None else 0
        self._pin_to = pin_to
        calls = self._calls = ScriptCalls(client)
        self._create = calls.register(scripts.CREATE)
        self._claim = calls.register(scripts.CLAIM)
        self._commit = calls.register(scripts.COMMIT)
        self._set_length = calls.register(scripts.SET_LENGTH)
        self._complete = calls.register(scripts.COMPLETE)
        self._terminate = calls.register(scripts.TERMINATE)
        self._release = calls.register(scripts.RELEASE)
        self._extend = calls.register(scripts.EXTEND)
        self._seize = calls.register(scripts.SEIZE)
        self._inspect = calls.register(scripts.INSPECT)
        self._inspect_many = calls.register(scripts.INSPECT_MANY)
        slots.slot_tag(0)  # the tag table, built now rather than in a first request

    @_translating
    async def load_scripts(self) -> None:
        """Load the store's scripts into Redis ahead of their first calls
        (``ScriptCalls.load_all``)."""
        await self._calls.load_all()

    @_translating
    async def create(self, upload: Upload, *, lock_token: str | None, lock_ttl_ms: int) -> bool:
        """Store a new record; with ``lock_token``, the creator also holds its
        lock. False, and nothing stored, if the id is taken (a record or a
        tombstone has it)."""
        fields = to_fields(upload)
        pairs: list[EncodableT] = [item for pair in fields.items() for item in pair]
        expires = "" if upload.expires is None else repr(upload.expires)
        reply = await self._create(
            keys=[*_keys(upload.id), upload_index_key(Index.EXPIRY, upload.id)],
            args=[lock_token or "", lock_ttl_ms, fields["created"], expires, *pairs],
        )
        return bool(reply == "ok")

    @_translating
    async def claim(self, upload_id: str, token: str, ttl_ms: int) -> Claim:
        """Take the upload's lock if it is free, and read the record, in one trip."""
        return _to_claim(upload_id, await self._claim(keys=_keys(upload_id), args=[token, ttl_ms]))

    @_translating
    async def seize(self, upload_id: str, token: str, ttl_ms: int) -> Claim:
        """Take the upload's lock whoever holds it, and read the record (a
        forced termination): the request that held it loses it."""
        return _to_claim(upload_id, await self._seize(keys=_keys(upload_id), args=[token, ttl_ms]))

    @_translating
    async def read(self, upload_id: str) -> Upload | ClaimStatus:
        """The record as committed, whoever holds the lock; MISSING or GONE (a
        tombstone) when there is none. A plain HGETALL, not a script: Redis
        spends about half the CPU on it, and a HEAD's record is all a read
        needs. The tombstone is looked for only when the record is not there
        (a second trip, for a 404 or 410)."""
        fields = await self._calls.hgetall(info_key(upload_id))
        if fields:
            return from_fields(upload_id, fields)
        gone = await self._redis.exists(gone_key(upload_id))
        return ClaimStatus.GONE if gone else ClaimStatus.MISSING

    @_translating
    async def commit(
        self,
        upload_id: str,
        token: str,
        expected: int,
        new: int,
        *,
        release: bool,
        expires: float | None = None,
        durable: bool = False,
        length: int | None = None,
    ) -> CommitStatus:
        """Move the offset by compare-and-set; with ``expires``, also slide the
        expiry of an unpublished upload, and with ``length``, record a deferred
        length (MOVED if another one is recorded), in the same script (no
        extra trip). ``durable``: on the replicas too before it returns
        (NotReplicated)."""
        return CommitStatus(
            await self._run(
                self._commit,
                durable,
                keys=[info_key(upload_id), lock_key(upload_id)],
                args=[
                    token,
                    expected,
                    new,
                    "1" if release else "0",
                    "" if expires is None else repr(expires),
                    "" if length is None else str(length),
                ],
            )
        )

    async def _run(
        self, script: Script, durable: bool, keys: list[str], args: list[EncodableT]
    ) -> Any:
        """Run ``script``; when ``durable`` and replicas are asked for, on one
        connection followed by WAIT on it, so its write is on the replicas."""
        if not durable or self._pin_to is None or self._replicas == 0:
            return await script(keys=keys, args=args)
        async with self._pin_to(keys[0]) as connection:
            result = await script(keys=keys, args=args, client=connection)
            if result == "ok":
                acknowledged = await connection.wait(self._replicas, REPLICA_WAIT_MS)
                if acknowledged < self._replicas:
                    raise NotReplicated(
                        f"{acknowledged} of {self._replicas} replicas acknowledged the write"
                    )
            return result

    @_translating
    async def set_length(
        self, upload_id: str, token: str, expected: int, length: int
    ) -> CommitStatus:
        """Fix a deferred length by compare-and-set: refused (LOST_LOCK,
        MOVED) once another writer holds the lock, moved the offset from
        ``expected`` or recorded another length."""
        return CommitStatus(
            await self._set_length(
                keys=[info_key(upload_id), lock_key(upload_id)], args=[token, expected, length]
            )
        )

    @_translating
    async def complete(
        self,
        upload_id: str,
        token: str,
        location: str,
        sha256: str | None,
        *,
        retention: float | None = None,
        post_finish: str | None = None,
    ) -> CommitStatus:
        """Record the published file and its SHA-256, and release the lock. Idempotent.

        ``post_finish``: the event to store with the completion, in the same step.

        In the same step, the upload leaves the expiry index; with a
        ``retention``, it enters the retention index so the sweeper removes
        its record (never its file) that long after completion.
        """
        completed = time.time()
        result = await self._run(
            self._complete,
            True,
            keys=[*_complete_keys(upload_id), *_index_keys(upload_id)],
            args=[
                token,
                COMPLETE,
                "1",
                post_finish or "",
                "" if retention is None else repr(completed + retention),
                "location",
                location,
                # No field at all without a digest, rather than an empty one.
                *(() if sha256 is None else ("sha256", sha256)),
                "completed",
                repr(completed),
            ],
        )
        return CommitStatus(result)

    @_translating
    async def complete_unpublished(
        self, upload_id: str, token: str, *, post_finish: str | None = None
    ) -> CommitStatus:
        """Mark a concatenation part complete, kept staged and still expiring;
        releases the lock. ``post_finish`` as for ``complete``."""
        result = await self._complete(
            keys=[*_complete_keys(upload_id), *_index_keys(upload_id)],
            args=[token, COMPLETE, "0", post_finish or "", ""],
        )
        return CommitStatus(result)

    @_translating
    async def fail(self, upload_id: str, token: str, failure: str, code: str) -> CommitStatus:
        """Record that the upload will never be finalized, why, and the code of
        the error that says so; releases the lock. It keeps expiring, so the
        sweeper removes its bytes and record in time."""
        result = await self._complete(
            keys=[*_complete_keys(upload_id), *_index_keys(upload_id)],
            args=[token, FAILED, "0", "", "", "failure", failure, "failcode", code],
        )
        return CommitStatus(result)

    @_translating
    async def terminate(self, upload_id: str, token: str) -> CommitStatus:
        result = await self._terminate(
            keys=[*_keys(upload_id), *_index_keys(upload_id)], args=[token, GONE_TTL_SECONDS]
        )
        return CommitStatus(result)

    @_translating
    async def release(self, upload_id: str, token: str) -> None:
        await self._release(keys=[lock_key(upload_id)], args=[token])

    @_translating
    async def extend(self, upload_id: str, token: str, ttl_ms: int) -> bool:
        return bool(await self._extend(keys=[lock_key(upload_id)], args=[token, ttl_ms]))

    @_translating
    async def read_many(self, upload_ids: Sequence[str]) -> list[Upload | None]:
        """The records of several uploads in one round trip; None for each one
        that does not exist. Locks are not looked at."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for upload_id in upload_ids:
                pipe.hgetall(info_key(upload_id))
            replies: list[dict[str, str]] = await pipe.execute()
        return [
            from_fields(upload_id, fields) if fields else None
            for upload_id, fields in zip(upload_ids, replies, strict=True)
        ]

    @_translating
    async def owner(self, upload_id: str) -> str | None:
        """Who owns the upload (tusserver.ownership); None for an anonymous
        or missing one. Locks are not looked at."""
        owner = await self._redis.hget(info_key(upload_id), OWNER_FIELD)
        assert owner is None or isinstance(owner, str)  # decode_responses
        return owner or None

    # --- for operators (tusserver uploads) ---------------------------------

    async def snapshots(self, batch: int) -> AsyncIterator[list[Snapshot]]:
        """Every upload with its lock, a batch at a time: the record keys come
        from SCAN (``record_keys``), and each batch of up to ``batch`` is read
        in one pipeline. An upload removed meanwhile is left out."""
        keys: list[str] = []
        try:
            async for key in record_keys(self._redis, batch):
                keys.append(key)
                if len(keys) >= batch:
                    yield await self._snapshot_batch(keys)
                    keys = []
            if keys:
                yield await self._snapshot_batch(keys)
        except RedisError as exc:
            # As ``_translating`` does (a generator cannot be wrapped by it).
            metrics.recorder().redis_error(type(exc).__name__)
            raise StateUnavailable(str(exc)) from exc

    async def _snapshot_batch(self, keys: list[str]) -> list[Snapshot]:
        ids = [upload_id_of_key(key) for key in keys]
        replies: list[tuple[int, list[str]]]
        if isinstance(self._redis, aioredis.RedisCluster):
            # One slot per script: one INSPECT per upload, in one pipeline.
            # A cluster pipeline sends EVALSHA and, unlike a plain one, never
            # loads a script a primary lacks (a new or promoted node has an
            # empty script cache): so SCRIPT LOAD, which goes to every
            # primary, first. One round trip per primary per batch.
            await self._redis.script_load(scripts.INSPECT)
            async with self._redis.pipeline(transaction=False) as pipe:
                for upload_id in ids:
                    keys_of_one = [info_key(upload_id), lock_key(upload_id)]
                    await self._inspect(keys=keys_of_one, client=pipe)
                replies = await pipe.execute()
        else:
            # Four times faster than a pipeline of INSPECTs, whose replies
            # redis-py parses one by one.
            pairs = [key for upload_id in ids for key in (info_key(upload_id), lock_key(upload_id))]
            flat_replies = await self._inspect_many(keys=pairs)
            replies = list(zip(flat_replies[::2], flat_replies[1::2], strict=True))
        snapshots = []
        for upload_id, (ttl, flat) in zip(ids, replies, strict=True):
            if flat:  # else removed since SCAN saw it
                fields = dict(zip(flat[::2], flat[1::2], strict=True))
                snapshots.append(Snapshot(from_fields(upload_id, fields), fields, _ttl(ttl)))
        return snapshots

    @_translating
    async def snapshot(self, upload_id: str) -> Snapshot | ClaimStatus:
        """One upload with its lock and the lock's token, in one round trip;
        MISSING or GONE (a tombstone) when it has no record."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(info_key(upload_id))
            pipe.get(lock_key(upload_id))
            pipe.pttl(lock_key(upload_id))
            pipe.exists(gone_key(upload_id))
            fields, token, ttl, gone = await pipe.execute()
        if not fields:
            return ClaimStatus.GONE if gone else ClaimStatus.MISSING
        return Snapshot(from_fields(upload_id, fields), fields, _ttl(ttl), token)

    # --- for the sweeper (see expiry) ------------------------------------

    @_translating
    async def due(
        self, index: Index, now: float, in_slots: Sequence[int], per_slot: int
    ) -> list[str]:
        """Ids of ``index`` scored at or before ``now``, earliest first in each
        slot, at most ``per_slot`` from each of ``in_slots``, in one round
        trip per server."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for slot in in_slots:
                pipe.zrangebyscore(index_key(index, slot), "-inf", now, start=0, num=per_slot)
            replies: list[list[str]] = await pipe.execute()
        return [str(upload_id) for ids in replies for upload_id in ids]

    @_translating
    async def reschedule_expiry(self, upload_id: str, expires: float) -> None:
        """Re-score the index entry of an upload whose PATCHes moved its expiry."""
        await self._redis.zadd(upload_index_key(Index.EXPIRY, upload_id), {upload_id: expires})

    @_translating
    async def unindex_published(
        self, upload_id: str, completed: float | None, retention: float | None
    ) -> None:
        """Move a published upload from the expiry index (to the retention
        index): the repair of an entry an older version left behind."""
        expiry, retired = _index_keys(upload_id)
        # Added before removed: a failure in between leaves the entry in the
        # expiry index, where the sweeper finds it again. One slot: one server.
        async with self._redis.pipeline(transaction=False) as pipe:
            if retention is not None:
                pipe.zadd(retired, {upload_id: (completed or time.time()) + retention})
            pipe.zrem(expiry, upload_id)
            await pipe.execute()

    @_translating
    async def unindex(self, index: Index, upload_id: str) -> None:
        await self._redis.zrem(upload_index_key(index, upload_id), upload_id)

    @_translating
    async def forget(self, upload_id: str, token: str) -> CommitStatus:
        """Remove the record and its index entries, leaving a tombstone, as on
        termination. The caller holds the lock with ``token``."""
        result = await self._terminate(
            keys=[*_keys(upload_id), *_index_keys(upload_id)], args=[token, GONE_TTL_SECONDS]
        )
        return CommitStatus(result)

    @_translating
    async def migrate_legacy_index(self, index: Index, count: int) -> int:
        """Move up to ``count`` entries of the global index of earlier versions
        into the per-slot ones, keeping their scores; how many moved."""
        legacy = LEGACY_INDEX[index]
        entries: list[tuple[str, float]] = await self._redis.zrange(  # type: ignore[assignment]
            legacy, 0, count - 1, withscores=True
        )
        if not entries:
            return 0
        # Written per slot before removed from the old index: a failure in
        # between leaves an entry in both, which the next pass moves again.
        async with self._redis.pipeline(transaction=False) as pipe:
            for upload_id, score in entries:
                pipe.zadd(upload_index_key(index, upload_id), {upload_id: score}, lt=True)
            await pipe.execute()
        await self._redis.zrem(legacy, *(upload_id for upload_id, _ in entries))
        return len(entries)

    @_translating
    async def records_exist(self, upload_ids: list[str]) -> list[bool]:
        """Whether each upload has a record, in one round trip."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for upload_id in upload_ids:
                pipe.exists(info_key(upload_id))
            return [bool(found) for found in await pipe.execute()]

    @_translating
    async def claim_sweep(self, token: str, ttl_ms: int) -> bool:
        """Become the one instance sweeping now (SET NX PX); False if another is."""
        return bool(await self._redis.set(SWEEP_LOCK, token, nx=True, px=ttl_ms))

    @_translating
    async def extend_sweep(self, token: str, ttl_ms: int) -> bool:
        return bool(await self._extend(keys=[SWEEP_LOCK], args=[token, ttl_ms]))

    @_translating
    async def release_sweep(self, token: str) -> None:
        await self._release(keys=[SWEEP_LOCK], args=[token])


def _ttl(reply: int) -> int | None:
    """PTTL's answer: -2 for no key (no lock); -1, a key without a TTL, never
    set by tusserver, counts as held."""
    return None if reply == -2 else max(reply, 0)


def _to_claim(upload_id: str, reply: list[Any]) -> Claim:
    status = ClaimStatus(reply[0])
    if len(reply) < 2:
        return Claim(status)
    flat: list[str] = reply[1]
    return Claim(status, from_fields(upload_id, dict(zip(flat[::2], flat[1::2], strict=True))))

"""Upload records in Redis.

Keys of one upload share a hash tag, so they live on one Redis Cluster slot
and one Lua script may touch them all: ``tus:{<id>}:info`` (the record, see
``tusserver.record``), ``tus:{<id>}:lock`` (the token of the request allowed
to write, see ``locking``), ``tus:{<id>}:gone`` (tombstone of a
terminated or expired upload: 410, not 404) and ``tus:{<id>}:post-finish``
(its post-finish event until delivered, see ``hook_delivery``).

Two global indexes let the sweeper find its work without scanning keys (see
``expiry``); they are sorted sets of upload ids:

    tus:expiry        unpublished uploads, scored by when they expire
    tus:retention     published uploads whose record is to be removed, scored
                      by completion time + retention (only with a retention)

The expiry index is kept lazily so that a PATCH costs no extra round trip:
a commit moves the record's ``expires`` forward inside its script, and the
index keeps the older, earlier score. Invariant: an upload's index score is
never later than its record's ``expires``, so the sweeper visits it no later
than due, re-checks the record under the upload's lock and re-scores the
entry of an upload that was extended. Index keys are global, so they never
appear in a per-upload script (one Redis Cluster slot per script).

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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from redis.typing import EncodableT

from tusserver import scripts
from tusserver.record import COMPLETE, FAILED, OWNER_FIELD, Upload, from_fields, to_fields

# How long a terminated upload answers 410 before it is forgotten (then 404).
GONE_TTL_SECONDS = 24 * 3600


class StateUnavailable(Exception):
    """Redis did not answer or failed; nothing was changed by this call."""


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


def info_key(upload_id: str) -> str:
    return f"tus:{{{upload_id}}}:info"


def lock_key(upload_id: str) -> str:
    return f"tus:{{{upload_id}}}:lock"


def gone_key(upload_id: str) -> str:
    return f"tus:{{{upload_id}}}:gone"


def post_finish_key(upload_id: str) -> str:
    """The upload's post-finish event until delivered (see hook_delivery)."""
    return f"tus:{{{upload_id}}}:post-finish"


def _complete_keys(upload_id: str) -> list[str]:
    return [info_key(upload_id), lock_key(upload_id), post_finish_key(upload_id)]


EXPIRY_INDEX = "tus:expiry"
RETENTION_INDEX = "tus:retention"
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
            raise StateUnavailable(str(exc)) from exc

    return wrapper


class UploadStore:
    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client
        self._create = client.register_script(scripts.CREATE)
        self._claim = client.register_script(scripts.CLAIM)
        self._commit = client.register_script(scripts.COMMIT)
        self._complete = client.register_script(scripts.COMPLETE)
        self._terminate = client.register_script(scripts.TERMINATE)
        self._release = client.register_script(scripts.RELEASE)
        self._extend = client.register_script(scripts.EXTEND)

    @_translating
    async def create(self, upload: Upload, *, lock_token: str | None, lock_ttl_ms: int) -> bool:
        """Store a new record; with ``lock_token``, the creator also holds its
        lock. False, and nothing stored, if the id is taken (a record or a
        tombstone has it)."""
        fields = to_fields(upload)
        pairs: list[EncodableT] = [item for pair in fields.items() for item in pair]
        async with self._redis.pipeline(transaction=True) as pipe:
            # The index entry first: should the pipeline ever be split (Redis
            # Cluster), an entry without a record is what the sweeper cleans.
            # LT: a taken id's entry keeps its earlier score (never later than
            # its record's expiry).
            if upload.expires is not None:
                pipe.zadd(EXPIRY_INDEX, {upload.id: upload.expires}, lt=True)
            await self._create(
                keys=_keys(upload.id),
                args=[lock_token or "", lock_ttl_ms, fields["created"], *pairs],
                client=pipe,
            )
            replies = await pipe.execute()
        return bool(replies[-1] == "ok")

    @_translating
    async def claim(self, upload_id: str, token: str, ttl_ms: int) -> Claim:
        """Take the upload's lock if it is free, and read the record, in one trip."""
        return _to_claim(upload_id, await self._claim(keys=_keys(upload_id), args=[token, ttl_ms]))

    @_translating
    async def read(self, upload_id: str) -> Claim:
        """Read the record; status LOCKED means a writer holds it right now."""
        return _to_claim(upload_id, await self._claim(keys=_keys(upload_id), args=["", 0]))

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
    ) -> CommitStatus:
        """Move the offset by compare-and-set; with ``expires``, also slide the
        expiry of an unpublished upload, in the same script (no extra trip)."""
        result = await self._commit(
            keys=[info_key(upload_id), lock_key(upload_id)],
            args=[
                token,
                expected,
                new,
                "1" if release else "0",
                "" if expires is None else repr(expires),
            ],
        )
        return CommitStatus(result)

    @_translating
    async def set_length(self, upload_id: str, length: int) -> None:
        """Fix a deferred length. The caller holds the lock and checked it was unset."""
        await self._redis.hset(info_key(upload_id), "length", str(length))

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

        Once recorded, the upload leaves the expiry index; with a
        ``retention``, it enters the retention index so the sweeper removes
        its record (never its file) that long after completion. Should that
        second step fail, the sweeper repairs it when the old entry is due.
        """
        completed = time.time()
        result = await self._complete(
            keys=_complete_keys(upload_id),
            args=[
                token,
                COMPLETE,
                "1",
                post_finish or "",
                "location",
                location,
                # No field at all without a digest, rather than an empty one.
                *(() if sha256 is None else ("sha256", sha256)),
                "completed",
                repr(completed),
            ],
        )
        status = CommitStatus(result)
        if status is CommitStatus.OK:
            await self._unindex_published(upload_id, completed, retention)
        return status

    @_translating
    async def complete_unpublished(
        self, upload_id: str, token: str, *, post_finish: str | None = None
    ) -> CommitStatus:
        """Mark a concatenation part complete, kept staged and still expiring;
        releases the lock. ``post_finish`` as for ``complete``."""
        result = await self._complete(
            keys=_complete_keys(upload_id), args=[token, COMPLETE, "0", post_finish or ""]
        )
        return CommitStatus(result)

    @_translating
    async def fail(
        self, upload_id: str, token: str, failure: str, code: str | None = None
    ) -> CommitStatus:
        """Record that the upload will never be finalized, why, and the code of
        the error that says so; releases the lock. It keeps expiring, so the
        sweeper removes its bytes and record in time."""
        fields = ["failure", failure] + ([] if code is None else ["failcode", code])
        result = await self._complete(
            keys=_complete_keys(upload_id),
            args=[token, FAILED, "0", "", *fields],
        )
        return CommitStatus(result)

    @_translating
    async def terminate(self, upload_id: str, token: str) -> CommitStatus:
        result = await self._terminate(keys=_keys(upload_id), args=[token, GONE_TTL_SECONDS])
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

    # --- for the sweeper (see expiry) ------------------------------------

    @_translating
    async def due(self, index: str, now: float, start: int, count: int) -> list[str]:
        """Up to ``count`` ids of ``index`` scored at or before ``now``, earliest
        first, skipping the first ``start`` of them."""
        ids = await self._redis.zrangebyscore(index, "-inf", now, start=start, num=count)
        return [str(upload_id) for upload_id in ids]

    @_translating
    async def reschedule_expiry(self, upload_id: str, expires: float) -> None:
        """Re-score the index entry of an upload whose PATCHes moved its expiry."""
        await self._redis.zadd(EXPIRY_INDEX, {upload_id: expires})

    @_translating
    async def unindex_published(
        self, upload_id: str, completed: float | None, retention: float | None
    ) -> None:
        """Move a published upload from the expiry index (to the retention index)."""
        await self._unindex_published(upload_id, completed or time.time(), retention)

    async def _unindex_published(
        self, upload_id: str, completed: float, retention: float | None
    ) -> None:
        # Added before removed: a failure in between leaves the entry in the
        # expiry index, where the sweeper finds it again.
        async with self._redis.pipeline(transaction=False) as pipe:
            if retention is not None:
                pipe.zadd(RETENTION_INDEX, {upload_id: completed + retention})
            pipe.zrem(EXPIRY_INDEX, upload_id)
            await pipe.execute()

    @_translating
    async def unindex(self, index: str, upload_id: str) -> None:
        await self._redis.zrem(index, upload_id)

    @_translating
    async def forget(self, upload_id: str, token: str, index: str) -> CommitStatus:
        """Remove the record (leaving a tombstone, as on termination), then its
        entry in ``index``. The caller holds the lock with ``token``."""
        status = CommitStatus(
            await self._terminate(keys=_keys(upload_id), args=[token, GONE_TTL_SECONDS])
        )
        if status is CommitStatus.OK:
            await self._redis.zrem(index, upload_id)
        return status

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


def _to_claim(upload_id: str, reply: list[Any]) -> Claim:
    status = ClaimStatus(reply[0])
    if len(reply) < 2:
        return Claim(status)
    flat: list[str] = reply[1]
    return Claim(status, from_fields(upload_id, dict(zip(flat[::2], flat[1::2], strict=True))))

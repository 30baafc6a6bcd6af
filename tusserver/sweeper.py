"""The sweeper: removes what expired (see ``tusserver.expiry`` for when that is).

Every instance runs ``run_sweeper`` in its lifespan; ``sweep_once`` is one
pass (also run on demand by ``tusserver sweep``):

1. Only one instance sweeps at a time: a Redis lock (token, SET NX PX,
   compare-and-delete), kept alive while sweeping by the same keep-alive as
   an upload's lock (``locking.kept_alive``). That is for economy only:
   each upload is handled under its own upload lock, so even two sweepers
   running at once would remove each upload once.
2. Expired uploads, found through the expiry index (never by scanning keys;
   the index has one key per Redis Cluster slot, read a thousand slots per
   round trip, from a random slot on, so that a backlog larger than one pass
   is worked off evenly):
   take the upload's lock as any request does (held by a live request: skip
   it, it is in use), re-check the record's ``expires`` under that lock (a
   PATCH may have moved it: then only the index entry is re-scored), delete
   the bytes, then the record and the index entry, leaving a tombstone (410,
   then 404 once it lapses). Bytes go first, so a crash in between leaves at
   worst a record whose bytes are gone, never bytes nobody knows of; the
   next pass finishes the job.
3. With a retention configured, the records of finished uploads past it,
   through the retention index: the record goes (with a tombstone), the
   published file stays, because it is the product of the upload.
4. Staging files older than the expiry that have no record at all (left by a
   Redis that lost its data) are removed: orphans.

Each pass handles a bounded number of uploads; the rest waits for the next.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio

from storage_backends.base import Storage
from tusserver import metrics
from tusserver.config import Config
from tusserver.locking import Lease, Locker, kept_alive
from tusserver.log_safety import describe
from tusserver.slots import SLOTS
from tusserver.state import (
    SWEEP_LOCK,
    ClaimStatus,
    CommitStatus,
    Index,
    StateUnavailable,
    UploadStore,
)

logger = logging.getLogger(__name__)

# The sweep lock lapses this long after an instance stopped extending it (a
# crashed sweeper), letting another instance take over.
SWEEP_LOCK_TTL = 30.0
# The indexes exist once per Redis Cluster slot (see state): a pass reads
# this many slots' due ids per round trip, at most PER_SLOT from each, and
# handles at most MAX_PER_PASS uploads per index, so one pass stays short
# whatever the backlog. Staging files are checked BATCH per round trip.
SLOTS_PER_READ = 1024
PER_SLOT = 16
BATCH = 100
MAX_PER_PASS = 1000
# Entries of the global indexes of earlier versions moved per pass.
LEGACY_PER_PASS = 10_000


@dataclass
class SweepReport:
    """What one pass did. Every id is listed once, under what happened to it."""

    # False: another instance was sweeping, so this pass did nothing.
    ran: bool = True
    # Unfinished uploads removed: bytes, then record (a tombstone remains).
    expired: list[str] = field(default_factory=list)
    # Finished uploads whose record was removed after the retention; their
    # published files are kept.
    retired: list[str] = field(default_factory=list)
    # Staging files without any record, removed.
    orphans: list[str] = field(default_factory=list)
    # Due, but a live request held the upload's lock (or removing it failed):
    # left for a later pass.
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{len(self.expired)} expired, {len(self.retired)} retired,"
            f" {len(self.orphans)} orphans, {len(self.skipped)} skipped"
        )


async def sweep_once(
    store: UploadStore, storage: Storage, config: Config, *, now: float | None = None
) -> SweepReport:
    """One sweep pass across the cluster; ``ran`` is False if another instance
    was sweeping. Idempotent and safe to run from any number of processes at
    once. Raises ``StateUnavailable`` when Redis fails, ``OSError`` when
    listing the staging files fails; a failure to delete one upload's bytes
    only skips that upload."""
    sweep = _Sweep(store, storage, config, time.time() if now is None else now)
    if not await store.claim_sweep(sweep.token, int(SWEEP_LOCK_TTL * 1000)):
        logger.debug("another instance is sweeping; this pass does nothing")
        return SweepReport(ran=False)
    try:
        async with kept_alive(sweep.lease):
            await sweep.run()
    finally:
        # Shielded: a pass cancelled at shutdown still lets go at once.
        with anyio.CancelScope(shield=True):
            try:
                await store.release_sweep(sweep.token)
            except StateUnavailable:
                logger.warning("could not release the sweep lock; it lapses by TTL")
    report = sweep.report
    metrics.recorder().swept(
        len(report.expired), len(report.retired), len(report.orphans), len(report.skipped)
    )
    return report


async def run_sweeper(store: UploadStore, storage: Storage, config: Config) -> None:
    """Background task for the app's lifetime: a pass every ``sweep_interval``.

    The first pass comes one interval after start-up. A failing pass is
    logged and the next one tries again.
    """
    while True:
        await anyio.sleep(config.sweep_interval)
        try:
            report = await sweep_once(store, storage, config)
        except StateUnavailable as exc:
            logger.warning("sweep stopped: state store unavailable: %s", describe(exc))
        except OSError as exc:
            logger.warning("sweep stopped: storage failed: %s", describe(exc))
        else:
            if report.expired or report.retired or report.orphans or report.skipped:
                logger.info("sweep done: %s", report.summary())


class _LostSweepLock(Exception):
    """Another instance holds the sweep lock now: stop this pass."""


class _Sweep:
    def __init__(self, store: UploadStore, storage: Storage, config: Config, now: float) -> None:
        self.store = store
        self.storage = storage
        self.config = config
        self.now = now
        self.token = Locker.new_token()
        self.report = SweepReport()
        self.lease = Lease(SWEEP_LOCK, self.token, ttl=SWEEP_LOCK_TTL, extend=self._extend_lock)
        self._upload_ttl_ms = int(config.lock_ttl * 1000)
        self._lock_held = True

    async def run(self) -> None:
        try:
            for index in Index:
                await self._migrate_legacy(index)
            await self._drain(Index.EXPIRY, self._expire)
            if self.config.retention is not None:
                await self._drain(Index.RETENTION, self._retire)
            await self._remove_orphans()
        except _LostSweepLock:
            logger.warning("sweep lock lost (a pass took over %s s); stopping", SWEEP_LOCK_TTL)

    async def _migrate_legacy(self, index: Index) -> None:
        moved = 0
        while moved < LEGACY_PER_PASS:
            count = await self.store.migrate_legacy_index(index, BATCH)
            if count == 0:
                break
            moved += count
            self._stop_if_lock_lost()
        if moved:
            logger.info("moved %d entries of the old global %s index", moved, index.value)

    async def _drain(self, index: Index, handle: Callable[[str], Awaitable[bool]]) -> None:
        """Handle the due ids of ``index``, each slot's read once per pass;
        ``handle`` returns False for an id it left in place (still due)."""
        first = random.randrange(SLOTS)
        handled = 0
        for start in range(0, SLOTS, SLOTS_PER_READ):
            in_slots = [(first + slot) % SLOTS for slot in range(start, start + SLOTS_PER_READ)]
            for upload_id in await self.store.due(index, self.now, in_slots, PER_SLOT):
                await handle(upload_id)
                handled += 1
                self._stop_if_lock_lost()
                if handled >= MAX_PER_PASS:
                    return

    async def _expire(self, upload_id: str) -> bool:
        claim = await self.store.claim(upload_id, self.token, self._upload_ttl_ms)
        if claim.status in (ClaimStatus.MISSING, ClaimStatus.GONE):
            # Terminated since, or a pass stopped between removing the record
            # and its entry. No record: no request can write these bytes.
            if not await self._delete_bytes(upload_id):
                return self._skip(upload_id, "its bytes could not be deleted")
            await self.store.unindex(Index.EXPIRY, upload_id)
            return True
        if claim.status is ClaimStatus.LOCKED:
            return self._skip(upload_id, "in use by a live request")
        upload = claim.upload
        assert upload is not None
        forgotten = False
        try:
            if upload.expires is None:
                # Published, but moving it out of the index failed then: do it now.
                await self.store.unindex_published(
                    upload_id, upload.completed, self.config.retention
                )
                return True
            if upload.expires > self.now:
                # PATCHes slid the expiry; the index keeps the earlier score.
                await self.store.reschedule_expiry(upload_id, upload.expires)
                return True
            if upload.needs_finalize:
                # A finalize was cut short: the file may already be published
                # under its final name, which removing the record would orphan.
                # The next HEAD or PATCH finishes it; until then it stays.
                return self._skip(upload_id, "fully received but not finalized")
            if not await self._delete_bytes(upload_id):
                return self._skip(upload_id, "its bytes could not be deleted")
            status = await self.store.forget(upload_id, self.token)
            forgotten = status is CommitStatus.OK
            if not forgotten:
                return self._skip(upload_id, f"record not removed ({status.value})")
            logger.info("upload %s expired: bytes and record removed", upload_id)
            self.report.expired.append(upload_id)
            return True
        finally:
            if not forgotten:
                await self._release(upload_id)

    async def _retire(self, upload_id: str) -> bool:
        claim = await self.store.claim(upload_id, self.token, self._upload_ttl_ms)
        if claim.status in (ClaimStatus.MISSING, ClaimStatus.GONE):
            await self.store.unindex(Index.RETENTION, upload_id)  # terminated since
            return True
        if claim.status is ClaimStatus.LOCKED:
            return self._skip(upload_id, "in use by a live request")
        status = await self.store.forget(upload_id, self.token)
        if status is not CommitStatus.OK:
            await self._release(upload_id)
            return self._skip(upload_id, f"record not removed ({status.value})")
        # The published file stays: it is what the upload was for.
        logger.info("upload %s: record removed after the retention; file kept", upload_id)
        self.report.retired.append(upload_id)
        return True

    async def _remove_orphans(self) -> None:
        stale = await self.storage.stale_partials(self.now - self.config.expire_after)
        stale = stale[:MAX_PER_PASS]
        for start in range(0, len(stale), BATCH):
            batch = stale[start : start + BATCH]
            for upload_id, has_record in zip(
                batch, await self.store.records_exist(batch), strict=True
            ):
                # An upload with a record is the expiry index's business.
                if not has_record and await self._delete_bytes(upload_id):
                    logger.info("upload %s: staging file without a record removed", upload_id)
                    self.report.orphans.append(upload_id)
            self._stop_if_lock_lost()

    async def _delete_bytes(self, upload_id: str) -> bool:
        """Remove the upload's partial (never a published file); False if that failed."""
        try:
            await self.storage.delete(upload_id)
        except OSError as exc:
            logger.warning("upload %s: could not delete its partial: %s", upload_id, describe(exc))
            return False
        return True

    def _skip(self, upload_id: str, reason: str) -> bool:
        logger.info("upload %s: due but %s; left for a later sweep", upload_id, reason)
        self.report.skipped.append(upload_id)
        return False

    async def _release(self, upload_id: str) -> None:
        with anyio.CancelScope(shield=True):
            await self.store.release(upload_id, self.token)

    async def _extend_lock(self, key: str, token: str, ttl_ms: int) -> bool:
        """The sweep lease's ``extend``: it keeps the sweep lock, not an upload's."""
        self._lock_held = await self.store.extend_sweep(token, ttl_ms)
        return self._lock_held

    def _stop_if_lock_lost(self) -> None:
        """Between two uploads: once another instance holds the sweep lock, it sweeps."""
        if not self._lock_held:
            raise _LostSweepLock

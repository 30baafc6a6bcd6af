"""post-finish, delivered at least once, by any instance, across restarts.

Why it is shaped so. The finish of an upload is recorded by the COMPLETE
script, which may touch only that upload's keys (one Redis Cluster slot), so
it cannot also add to a global stream. Writing the stream entry *after* the
script would lose the event if the process died in between; so:

1. ``announce``: before COMPLETE, the finishing request adds an entry naming
   the upload to the global stream ``tus:hooks:post-finish``;
2. COMPLETE stores the event itself in ``tus:{<id>}:post-finish``, in the
   same step that marks the upload complete: the event exists if and only if
   the finish is recorded;
3. every instance runs a ``Deliverer``, a consumer of one consumer group on
   the stream. For each entry it reads the upload's event, together with
   its record in one transaction (a COMPLETE between two separate reads
   would make a recorded event look delivered): present, it is
   delivered to the hook, then deleted, then the entry acked and removed;
   absent, the finish is either already delivered (a repeated entry) or not
   recorded: if the upload's record shows it still waiting for its finish (a
   crash between 1 and 2; its next HEAD or PATCH finishes it and records the
   event), the entry is kept and looked at again later, otherwise it is
   dropped.

A failed delivery stays in this consumer's pending entries and is retried
with a doubling backoff (up to a minute); an instance that dies leaves its
pending entries to the others, which take them over with XAUTOCLAIM once
nobody has touched them for ``--hooks-reclaim-after``. Delivery is at least
once: a receiver may see one finish twice (a crash after delivering, before
forgetting), and should key its work on the upload id.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass

import anyio

from tusserver import metrics
from tusserver.hook_events import HookType, decode_event
from tusserver.hook_outbox import Entry, HookOutbox
from tusserver.hooking import hook_failure
from tusserver.hooks import Hook
from tusserver.log_safety import describe
from tusserver.record import from_fields
from tusserver.state import StateUnavailable

logger = logging.getLogger(__name__)

_BATCH = 16
_FIRST_RETRY_SECONDS = 0.25
_LAST_RETRY_SECONDS = 60.0
# How long one read waits for a new entry when nothing else is due.
_READ_WAIT_SECONDS = 1.0


@dataclass
class _Retry:
    entry: Entry
    due: float  # monotonic
    delay: float


class Deliverer:
    def __init__(
        self,
        outbox: HookOutbox,
        hook: Hook,
        *,
        timeout: float,
        reclaim_after: float,
    ) -> None:
        self._outbox = outbox
        self._hook = hook
        self._timeout = timeout
        self._reclaim_ms = max(1, int(reclaim_after * 1000))
        self._reclaim_every = reclaim_after / 2
        self.consumer = "tusserver-" + secrets.token_hex(8)
        self._retries: dict[str, _Retry] = {}

    async def run(self) -> None:
        """Background task for the app's lifetime. Never raises but on cancellation."""
        joined = False
        reclaimed_at = 0.0
        while True:
            try:
                if not joined:
                    await self._outbox.join()
                    joined = True
                now = time.monotonic()
                entries: list[Entry] = []
                if now - reclaimed_at >= self._reclaim_every:
                    reclaimed_at = now
                    entries += await self._outbox.reclaim(self.consumer, self._reclaim_ms, _BATCH)
                entries += [retry.entry for retry in self._due(now)]
                wait = 0.0 if entries else self._wait(now)
                entries += await self._outbox.read_new(
                    self.consumer, _BATCH, max(1, int(wait * 1000))
                )
                for entry in entries:
                    await self._handle(entry)
                await self._outbox.keep(self.consumer, list(self._retries))
            except StateUnavailable as exc:
                # Redis away, or emptied (the group with it): join again later.
                logger.warning("post-finish delivery paused: %s", describe(exc))
                joined = False
                await anyio.sleep(1)

    def _due(self, now: float) -> list[_Retry]:
        return [retry for retry in self._retries.values() if retry.due <= now]

    def _wait(self, now: float) -> float:
        nearest = min((retry.due for retry in self._retries.values()), default=now + 60)
        return max(0.0, min(_READ_WAIT_SECONDS, nearest - now, self._reclaim_every))

    async def _handle(self, entry: Entry) -> None:
        # Read together, atomically: read one after the other, a COMPLETE in
        # between would make a recorded event look delivered.
        payload, fields = await self._outbox.event_and_record(entry.upload_id)
        if payload is None:
            if fields and from_fields(entry.upload_id, fields).needs_finalize:
                self._later(entry)
            else:
                self._retries.pop(entry.entry_id, None)
                await self._outbox.drop(entry)
            return
        try:
            with anyio.fail_after(self._timeout):
                await self._hook(decode_event(payload))
        except Exception as exc:  # retried until the hook takes it
            metrics.recorder().hook(HookType.POST_FINISH.value, False)
            logger.warning(
                "upload %s: post-finish hook not delivered (%s); retrying",
                entry.upload_id,
                hook_failure(exc),
            )
            self._later(entry)
            return
        metrics.recorder().hook(HookType.POST_FINISH.value, True)
        await self._outbox.delivered(entry)
        self._retries.pop(entry.entry_id, None)
        logger.info("upload %s: post-finish hook delivered", entry.upload_id)

    def _later(self, entry: Entry) -> None:
        retry = self._retries.get(entry.entry_id)
        delay = _FIRST_RETRY_SECONDS if retry is None else min(retry.delay * 2, _LAST_RETRY_SECONDS)
        self._retries[entry.entry_id] = _Retry(entry, time.monotonic() + delay, delay)

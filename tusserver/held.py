"""An upload whose lock this request holds: the one place that changes it.

A request that claimed an upload (``Locker.hold``) or created it with its lock
(``Locker.adopt``) gets a ``HeldUpload``. Every state script an upload
holder runs goes through it, and each call keeps three things in step:

- the record in Redis (the script itself, compare-and-set on the lock token);
- the in-memory ``Upload`` the request reads (offset, state, expiry ...);
- the lease: a script that releases the lock as it commits marks the lease
  released, so the final ``release`` knows not to send one more.

and maps every ``CommitStatus`` to one answer: a record that vanished is 410,
a lock that another request took over is 423 ``upload_lock_lost``, whoever
notices it (a PATCH, a finalize, a concatenation, a DELETE).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from tusserver import errors, metrics
from tusserver.hook_events import HookResponse
from tusserver.log_safety import describe
from tusserver.record import COMPLETE, FAILED, Upload
from tusserver.state import CommitStatus, StateUnavailable, UploadStore

if TYPE_CHECKING:
    from tusserver.locking import Lease, Locker

logger = logging.getLogger(__name__)


class HeldUpload:
    def __init__(self, upload: Upload, lease: Lease, locker: Locker) -> None:
        self.upload = upload
        self.lease = lease
        self._locker = locker
        # Set when a post-receive hook said StopUpload while this request
        # writes: its answer, for the client (see receiving).
        self.stopped_by_hook: HookResponse | None = None
        # upload.length is a deferred length a chunked body declared, not yet
        # recorded (see ``announce_length``).
        self._unrecorded_length = False

    @property
    def id(self) -> str:
        return self.upload.id

    @property
    def _store(self) -> UploadStore:
        return self._locker.store

    async def commit(self, new_offset: int, *, expires: float | None = None) -> None:
        """Move the offset to ``new_offset`` (compare-and-set from the current
        one) and, with ``expires``, slide the expiry of an unpublished upload;
        the lock is released with it unless every byte is now in (finalize
        follows under the same lock)."""
        length = self.upload.length
        finishing = length is not None and new_offset == length
        # Durable when final: the file is published next, and a failover that
        # lost this offset would strand an upload whose partial is gone.
        await self._move_offset(
            new_offset, release=not finishing, expires=expires, durable=finishing
        )
        self.lease.released = not finishing

    async def checkpoint(self, new_offset: int, *, expires: float) -> None:
        """Commit the bytes stored so far while the body still streams,
        keeping the lock: what a crash of this process can no longer lose."""
        await self._move_offset(new_offset, release=False, expires=expires)

    async def _move_offset(
        self, new_offset: int, *, release: bool, expires: float | None, durable: bool = False
    ) -> None:
        upload = self.upload
        status = await self._store.commit(
            upload.id,
            self.lease.token,
            upload.offset,
            new_offset,
            release=release,
            expires=expires,  # the script ignores it once the file is published
            durable=durable,
            # Recorded with the bytes: the body fitted in it.
            length=upload.length if self._unrecorded_length else None,
        )
        self._check(status, "commit")
        self._unrecorded_length = False
        metrics.recorder().stored(new_offset - upload.offset)
        upload.offset = new_offset
        if expires is not None and upload.expires is not None:
            upload.expires = expires

    async def set_length(self, length: int) -> None:
        """Fix a deferred length (creation-defer-length) now; the caller
        checked it was unset. Compare-and-set, as a commit: refused (423)
        once another request took the upload over meanwhile."""
        upload = self.upload
        status = await self._store.set_length(upload.id, self.lease.token, upload.offset, length)
        self._check(status, "length")
        upload.length = length
        self._unrecorded_length = False

    def announce_length(self, length: int) -> None:
        """A deferred length declared by a PATCH whose body has no announced
        size (chunked), checked otherwise: the upload's length while that
        body streams, recorded only with its bytes (``commit``) or by
        ``record_length`` once the body ended within it. A body that runs
        past it is refused and the length ``withdraw``n: a refused PATCH
        leaves the upload deferred, as when its Content-Length is too long."""
        self.upload.length = length
        self._unrecorded_length = True

    async def record_length(self) -> None:
        """Record an announced length that no commit recorded (the body
        stored nothing)."""
        if self._unrecorded_length:
            assert self.upload.length is not None
            await self.set_length(self.upload.length)

    def withdraw_length(self) -> None:
        """Forget an announced length that was never recorded."""
        if self._unrecorded_length:
            self.upload.length = None
            self._unrecorded_length = False

    async def complete(
        self,
        location: str,
        sha256: str | None,
        *,
        retention: float | None,
        post_finish: str | None,
    ) -> None:
        """Record the published file and its SHA-256 (None: not computed), with its post-finish
        event if any (see hook_delivery); releases the lock."""
        status = await self._store.complete(
            self.upload.id,
            self.lease.token,
            location,
            sha256,
            retention=retention,
            post_finish=post_finish,
        )
        self._check(status, "completion")
        self.lease.released = True
        upload = self.upload
        upload.state, upload.location, upload.sha256 = COMPLETE, location, sha256
        upload.expires = None  # a published file does not expire

    async def complete_unpublished(self, *, post_finish: str | None) -> None:
        """Mark a concatenation part complete, kept staged; releases the lock."""
        status = await self._store.complete_unpublished(
            self.upload.id, self.lease.token, post_finish=post_finish
        )
        self._check(status, "")
        self.lease.released = True
        self.upload.state = COMPLETE

    async def fail(self, failure: str, code: str) -> None:
        """Record that the upload will never be published, why, and the code of
        the error that says so (HEAD answers it); releases the lock."""
        status = await self._store.fail(self.upload.id, self.lease.token, failure, code)
        self._check(status, "failure")
        self.lease.released = True
        metrics.recorder().failed(code)
        upload = self.upload
        upload.state, upload.failure, upload.failure_code = FAILED, failure, code

    async def terminate(self) -> None:
        """Remove the record, leaving a tombstone (410); releases the lock."""
        self._check(await self._store.terminate(self.upload.id, self.lease.token), "termination")
        self.lease.released = True

    async def try_terminate(self) -> None:
        """``terminate``, for cleaning up after a failure: never raises;
        what is left, the sweeper removes when the upload expires."""
        try:
            await self.terminate()
        except (StateUnavailable, errors.TusError) as exc:
            logger.warning("upload %s: could not remove the record: %s", self.id, describe(exc))

    async def release(self) -> None:
        """Let go of the lock unless a script already did. Never raises."""
        await self._locker.release(self.lease)

    def _check(self, status: CommitStatus, step: str) -> None:
        """The one mapping of a script's outcome to an answer."""
        if status is CommitStatus.OK:
            return
        logger.warning("upload %s: %s refused (%s)", self.upload.id, step or "update", status.value)
        if status is CommitStatus.MISSING:
            raise errors.gone()
        # LOST_LOCK or MOVED: our lock lapsed and another request moved on.
        raise errors.lock_lost(self.upload.offset)

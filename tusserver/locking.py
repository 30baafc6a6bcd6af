"""One writer per upload, across processes and hosts, with release requests.

The lock is ``tus:{id}:lock = <token>`` with a TTL (see ``state``). A request
that finds it held does not just wait: it publishes a *release request* for
the upload (``release_requests``: one channel, or one per slot on a Redis
Cluster). Every process listens; the process whose request holds the lock
wakes it, and that request stops
reading its body, commits what it has stored and lets go, but only if no
byte arrived for ``takeover_after``: a writer that is receiving keeps the
upload (``transfer``). This is how a client that reconnects after a dropped
connection is not stuck behind its own dead PATCH, while a second writer
never interrupts a live one. The newcomer then takes over, or answers 423
after ``lock_wait``. Readers (HEAD) never ask: they read what is committed.

The holder keeps the lock alive while bytes arrive (``Lease.keep_alive``),
so a hung request lets it lapse after ``lock_ttl``; nothing else extends it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
from redis.exceptions import RedisError

from tusserver import errors, metrics
from tusserver.held import HeldUpload
from tusserver.log_safety import describe
from tusserver.record import Upload
from tusserver.release_requests import ReleaseRequests
from tusserver.state import Claim, ClaimStatus, StateUnavailable, UploadStore
from tusserver.task_ends import cancel_and_wait, cancel_requested

logger = logging.getLogger(__name__)

# Between two attempts while another request holds the lock.
_POLL_SECONDS = 0.02
_Attempt = Callable[[], Awaitable[Claim]]
# A release request can be missed if it is published in the instant between
# the holder taking the lock and registering for requests: say it again.
_REPUBLISH_SECONDS = 0.5


# Extends the lock of ``key`` held with ``token`` to ``ttl_ms`` from now; False
# once that token no longer holds it (``UploadStore.extend`` for an upload).
Extend = Callable[[str, str, int], Awaitable[bool]]


class Lease:
    """The right to write one upload, held by one request: a lock taken with
    ``token`` that lapses ``ttl`` seconds after its last ``extend``.

    The sweeper keeps its own lock alive through a lease too; then
    ``upload_id`` names that lock.
    """

    def __init__(self, upload_id: str, token: str, *, ttl: float, extend: Extend) -> None:
        self.upload_id = upload_id
        self.token = token
        # Set by the release listener; the request's watchdog waits on it.
        self.release_requested = asyncio.Event()
        # The process is stopping: let go at once, even while bytes arrive.
        self.must_let_go = False
        self.released = False
        self._ttl = ttl
        self._extend = extend
        self._extended_at = time.monotonic()

    async def keep_alive(self) -> bool:
        """Extend the lock, at most a few times per TTL; False once it is lost.

        Raises nothing but a cancellation: also one asked while the
        extension ran that the Redis call dropped (``tusserver/task_ends.py``),
        so that the task extending in a loop stops as asked.

        Called while the request is alive (bytes arrived within the idle
        timeout), not only on progress: a client that pauses for a few
        seconds must not lose its lock to a second writer while its PATCH
        is still running.
        """
        now = time.monotonic()
        if now - self._extended_at < self.keep_alive_interval:
            return True
        self._extended_at = now
        try:
            extended = await self._extend(self.upload_id, self.token, int(self._ttl * 1000))
        except StateUnavailable as exc:
            # Redis may be back at the next tick; the commit's compare-and-set
            # protects the offset meanwhile.
            logger.warning("lock of %s: could not extend it: %s", self.upload_id, describe(exc))
            extended = True
        else:
            if not extended:
                logger.warning("lock of %s: lost while in use; stopping", self.upload_id)
        if cancel_requested():
            raise asyncio.CancelledError
        return extended

    def let_go(self) -> None:
        """Ask the request holding this lease to commit and let go now, whether
        or not bytes are arriving (the process is stopping)."""
        self.must_let_go = True
        self.release_requested.set()

    @property
    def keep_alive_interval(self) -> float:
        """How often a ``keep_alive`` call actually extends the lock."""
        return self._ttl / 3


@asynccontextmanager
async def kept_alive(lease: Lease) -> AsyncIterator[None]:
    """Keep ``lease`` alive while the block runs: for long work with no bytes
    arriving to show progress (copying parts, reading a file back to hash
    it, fsyncing a large file; a whole sweep pass). Without it the lock could
    lapse mid-way and a second request take the upload over while this one
    still works on it.

    Most blocks (a small upload's finalize, in every PATCH that completes
    one) end long before the first extension is due: until then this is a
    timer armed and cancelled, and the task that extends starts only when
    it fires. A task group with a sleeping task per block was, with the
    transfer's, some 140 µs of a short PATCH (bench/transfer_cost.py).
    """
    loop = asyncio.get_running_loop()
    keeper: asyncio.Task[None] | None = None

    async def keep() -> None:
        while True:
            if not await lease.keep_alive():
                return  # lost: the next commit or completion will be refused
            await asyncio.sleep(lease.keep_alive_interval)

    def start_keeping() -> None:
        nonlocal keeper
        keeper = loop.create_task(keep())

    first = loop.call_later(lease.keep_alive_interval, start_keeping)
    try:
        yield
    finally:
        first.cancel()
        # An extension cut off mid-call drops its connection before the
        # block's caller goes on (and releases the lock).
        await cancel_and_wait([keeper])


class Locker:
    def __init__(
        self, releases: ReleaseRequests, store: UploadStore, *, ttl: float, wait: float
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.ttl_ms = int(ttl * 1000)
        self.wait = wait
        self._releases = releases
        self._leases: dict[str, Lease] = {}
        # Set while the process drains (tusserver.draining): a release request
        # is honoured at once, since this process is leaving anyway.
        self.draining = False
        # Set at the end of the shutdown grace: every lease lets go at once,
        # also one taken afterwards (a PATCH that was waiting for its lock).
        self.cutting = False

    @staticmethod
    def new_token() -> str:
        return secrets.token_hex(16)

    def adopt(self, upload: Upload, token: str) -> HeldUpload:
        """An upload whose lock this request set with its record (creation)."""
        lease = Lease(upload.id, token, ttl=self.ttl, extend=self.store.extend)
        self._take(lease)
        return HeldUpload(upload, lease, self)

    @asynccontextmanager
    async def hold(self, upload_id: str, *, wait: bool = True) -> AsyncIterator[HeldUpload]:
        """Claim the upload, asking a current holder to let go; 404/410/423 otherwise.

        Without ``wait``: 423 at once if a request holds it, which is not
        asked anything (an operator's termination that must not interrupt)."""
        lease = Lease(upload_id, self.new_token(), ttl=self.ttl, extend=self.store.extend)
        claim = await self._wait_for(
            upload_id,
            lambda: self.store.claim(upload_id, lease.token, self.ttl_ms),
            self.wait if wait else 0.0,
        )
        assert claim.upload is not None
        self._take(lease)
        try:
            yield HeldUpload(claim.upload, lease, self)
        finally:
            await self.release(lease)

    @asynccontextmanager
    async def seize(self, upload_id: str) -> AsyncIterator[HeldUpload]:
        """``hold``, taking the lock even from a request that is writing: an
        operator's forced termination (``tusserver uploads terminate
        --force``). The writer's next extend stops its reading, and its
        commit is refused, so none of its bytes count. 404/410 as ``hold``."""
        lease = Lease(upload_id, self.new_token(), ttl=self.ttl, extend=self.store.extend)
        claim = await self.store.seize(upload_id, lease.token, self.ttl_ms)
        if claim.status is ClaimStatus.MISSING:
            raise errors.not_found()
        if claim.status is ClaimStatus.GONE:
            raise errors.gone()
        assert claim.upload is not None
        self._take(lease)
        try:
            yield HeldUpload(claim.upload, lease, self)
        finally:
            await self.release(lease)

    def _take(self, lease: Lease) -> None:
        self._leases[lease.upload_id] = lease
        if self.cutting:
            lease.let_go()

    def let_all_go(self) -> None:
        """End of the shutdown grace: every request of this process holding an
        upload stops reading, commits what it stored and releases the lock."""
        self.cutting = True
        for lease in list(self._leases.values()):
            lease.let_go()

    async def release_all(self) -> None:
        """Last step of a shutdown: release the locks still held (by requests
        that did not end in time), so other instances need not wait for their
        TTL. Such a request's later commit is refused by the compare-and-set."""
        for lease in list(self._leases.values()):
            await self.release(lease)

    async def read(self, upload_id: str) -> Upload:
        """The record as committed, whether or not a request is writing it; 404/410.

        Never waits and never asks a writer to let go: a HEAD that polls
        progress must not slow or interrupt the PATCH it watches. A writer
        commits every ``checkpoint_interval`` while bytes stream, so the
        offset read is at most that stale.
        """
        upload = await self.store.read(upload_id)
        if upload is ClaimStatus.MISSING:
            raise errors.not_found()
        if upload is ClaimStatus.GONE:
            raise errors.gone()
        assert not isinstance(upload, ClaimStatus)
        return upload

    async def release(self, lease: Lease) -> None:
        """Give the lock back unless a commit already did. Never raises."""
        if self._leases.get(lease.upload_id) is lease:
            del self._leases[lease.upload_id]
        if lease.released:
            return
        lease.released = True
        try:
            # Shielded: a request cancelled at shutdown still lets go at once
            # rather than blocking its upload for the lock's TTL.
            with anyio.CancelScope(shield=True):
                await self.store.release(lease.upload_id, lease.token)
        except StateUnavailable:
            logger.warning("upload %s: could not release lock; it lapses by TTL", lease.upload_id)

    async def _wait_for(self, upload_id: str, attempt: _Attempt, wait: float) -> Claim:
        deadline = time.monotonic() + wait
        asked_at = 0.0
        while True:
            claim = await attempt()
            if claim.status is ClaimStatus.MISSING:
                raise errors.not_found()
            if claim.status is ClaimStatus.GONE:
                raise errors.gone()
            if claim.status is ClaimStatus.CLAIMED:
                if asked_at:
                    metrics.recorder().takeover()  # its holder let go when asked
                return claim
            now = time.monotonic()
            if now >= deadline:
                raise errors.locked()
            if now - asked_at >= _REPUBLISH_SECONDS:
                asked_at = now
                await self._request_release(upload_id)
            await anyio.sleep(_POLL_SECONDS)

    async def _request_release(self, upload_id: str) -> None:
        try:
            await self._releases.publish(upload_id)
        except RedisError as exc:
            raise StateUnavailable(str(exc)) from exc

    async def drain(self) -> None:
        """Return once no request of this process holds a lock (callers bound the wait).

        At shutdown, uvicorn cancels running PATCHes and runs the lifespan's
        exit at once; those PATCHes still need Redis to commit their bytes.
        """
        # Polled: leases come and go in several places, and this runs once,
        # at shutdown, where a 50 ms step costs nothing.
        while self._leases:  # noqa: ASYNC110
            await anyio.sleep(0.05)

    async def listen_for_release_requests(self) -> None:
        """Background task for the app's lifetime: wake local holders on request."""
        await self._releases.listen(self._release_requested)

    def _release_requested(self, upload_id: str) -> None:
        lease = self._leases.get(upload_id)
        if lease is not None:
            logger.info("upload %s: release requested", lease.upload_id)
            if self.draining:
                lease.let_go()
            else:
                lease.release_requested.set()

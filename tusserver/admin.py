"""What ``tusserver uploads`` does, without the command line: list the
uploads in Redis, inspect one, terminate one.

It works on the server's own state and storage, through the same store,
locker and termination path as the server's requests (a forced termination
takes the lock from a running PATCH with ``Locker.seize``). The rows it
gives are plain data; ``admin_output`` shows them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import anyio
import anyio.lowlevel

from storage_backends.base import Storage
from tusserver import redis_topology, redis_urls, termination

# The server's own connection settings, so the admin command reaches every
# Redis the server can (and fails as fast as a request would).
from tusserver.app import open_storage
from tusserver.config import Config
from tusserver.hook_outbox import HookOutbox
from tusserver.hook_setup import open_hooks
from tusserver.locking import Locker
from tusserver.record import Upload
from tusserver.services import Services
from tusserver.state import ClaimStatus, Snapshot, UploadStore

RUNNING = "running"  # a request holds its lock (a PATCH, or a finish, in flight)
INCOMPLETE = "incomplete"  # bytes missing, nobody writing
FINISHED = "finished"  # every byte in and recorded complete
FAILED = "failed"  # never to be published (a refused checksum, type, size)
STATES = (RUNNING, INCOMPLETE, FINISHED, FAILED)
# Uploads read per SCAN step and per pipeline: big enough that the round
# trips cost little, small enough that a batch never holds Redis long.
BATCH = 1000
# How long a terminate waits for its post-terminate notification to go out.
_NOTIFY_WAIT_SECONDS = 30.0


def state_of(snapshot: Snapshot) -> str:
    upload = snapshot.upload
    if upload.is_failed:
        return FAILED
    if upload.is_complete:
        return FINISHED
    return RUNNING if snapshot.lock_ttl_ms is not None else INCOMPLETE


@dataclass(frozen=True)
class Row:
    """One upload as ``tusserver uploads list`` shows it. Times in epoch seconds."""

    id: str
    state: str
    offset: int
    length: int | None  # None while deferred
    created: float
    last_activity: float
    expires: float | None  # None once published
    owner: str | None
    filename: str | None  # from the client's metadata

    @property
    def percent(self) -> float | None:
        if self.length is None:
            return None
        return 100.0 if self.length == 0 else 100.0 * self.offset / self.length


def row_of(snapshot: Snapshot, expire_after: float) -> Row:
    upload = snapshot.upload
    return Row(
        id=upload.id,
        state=state_of(snapshot),
        offset=upload.offset,
        length=upload.length,
        created=upload.created,
        last_activity=last_activity(upload, expire_after),
        expires=upload.expires,
        owner=upload.owner,
        filename=filename_of(upload),
    )


def last_activity(upload: Upload, expire_after: float) -> float:
    """When the upload last changed. The record keeps no such time: each
    commit slides ``expires`` to ``--expire-after`` past it, so that is read
    back (right when the command's --expire-after is the server's)."""
    if upload.completed is not None:
        return upload.completed
    if upload.expires is not None:
        return max(upload.created, upload.expires - expire_after)
    return upload.created


def filename_of(upload: Upload) -> str | None:
    value = upload.metadata.values.get("filename")
    return None if value is None else value.decode("utf-8", "replace")


@dataclass(frozen=True)
class Filter:
    state: str | None = None
    owner: str | None = None

    def keeps(self, row: Row) -> bool:
        return (self.state is None or row.state == self.state) and (
            self.owner is None or row.owner == self.owner
        )


async def rows(store: UploadStore, config: Config, keep: Filter) -> AsyncIterator[list[Row]]:
    """Every upload ``keep`` keeps, a batch at a time, as Redis gives them (no order)."""
    async for batch in store.snapshots(BATCH):
        found = [row_of(snapshot, config.expire_after) for snapshot in batch]
        yield [row for row in found if keep.keeps(row)]


@dataclass(frozen=True)
class Details:
    """One upload as ``tusserver uploads show`` shows it."""

    row: Row
    snapshot: Snapshot
    stored_bytes: int | None  # None: no file on the storage
    stored_file: str  # "final" (the published file) or "partial"


async def details(services: Services, upload_id: str) -> Details | ClaimStatus:
    """The upload's record, lock and stored bytes; MISSING or GONE."""
    found = await services.store.snapshot(upload_id)
    if isinstance(found, ClaimStatus):
        return found
    location = found.upload.location
    size = await stored_size(services.storage, upload_id, location)
    return Details(
        row_of(found, services.config.expire_after),
        found,
        size,
        "partial" if location is None else "final",
    )


async def stored_size(storage: Storage, upload_id: str, location: str | None) -> int | None:
    try:
        return (await storage.stat(upload_id, location)).size
    except FileNotFoundError:
        return None


async def terminate(services: Services, upload_id: str, *, force: bool) -> Upload:
    """What a DELETE does (``termination``). Without ``force``, refused
    (423) at once while a request holds the upload's lock, and that request
    is not disturbed: unlike a client's DELETE, an operator's command does
    not ask even a paused PATCH to let go. With ``force`` its lock is taken
    from it and its bytes never count. 404, 410, or a pre-terminate hook's
    refusal, as TusErrors."""
    locker = services.locker
    holding = locker.seize(upload_id) if force else locker.hold(upload_id, wait=False)
    async with holding as held:
        await termination.terminate(services, held)
    termination.announce(services, held.upload)
    with anyio.move_on_after(_NOTIFY_WAIT_SECONDS):
        await services.hooks.settle()
    return held.upload


@asynccontextmanager
async def server_services(config: Config) -> AsyncIterator[Services]:
    """The services a server of ``config`` has (Redis at ``config.redis_url``,
    its storage, its HTTP hooks), for one admin command."""
    assert config.redis_url is not None, "the caller resolves the embedded Redis"
    failure: BaseException | None = None
    async with AsyncExitStack() as stack:
        target = redis_urls.parse(config.redis_url)
        client = redis_topology.connect(target)
        stack.push_async_callback(client.aclose)
        storage = open_storage(config)
        stack.push_async_callback(storage.aclose)
        store = UploadStore(client)
        releases = redis_topology.release_requests(target, client)
        locker = Locker(releases, store, ttl=config.lock_ttl, wait=config.lock_wait)
        hook_set = await open_hooks(config, None, HookOutbox(client), stack)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(hook_set.runner.run)  # the notifications' task group
            await anyio.lowlevel.checkpoint()  # run() has set up its task group
            try:
                yield Services(config, store, locker, storage, hooks=hook_set.runner)
            except BaseException as exc:
                # Re-raised below, as itself: inside the task group it would
                # come out wrapped in an exception group.
                failure = exc
            finally:
                tasks.cancel_scope.cancel()
    if failure is not None:
        raise failure

"""Moving one request body into storage: streamed, bounded, interruptible.

Two or three tasks cooperate for one PATCH (or POST with data):

- the *receiving* takes ASGI body messages (at most 64 KiB each from
  uvicorn), gathers them into blocks of ``block_size`` without copying, and
  refuses bytes beyond ``limit`` without storing them. In a body of known
  length it hands on what it gathered once only a quarter block is left to
  come (``final_block_size``), so that what is left to write once
  the last byte arrived, while the client waits for its answer, is that
  quarter, not a whole block: one block more per body, no more;
- the *writer* (the storage backend) writes the blocks. A storage that
  writes on the event loop (``WritesOnLoop``: a copy into the page cache)
  is handed each block by the receiving, in its task, and the next block is
  received once it is written: one block in memory per request. Any other
  (a write that waits for a network or a thread) writes in the request's
  task while the next block is received beside it, in a task of its own
  (``tusserver/handoff.py``): at most three blocks in memory (one gathering,
  one queued, one being written). Either way, whatever the upload size;
- the receiving also feeds the *digests* (when they are wanted) each message
  as it takes it, on the loop, while its bytes are in the cache
  (``tusserver/digests.py``): the digests have then consumed exactly the
  bytes handed to the writer;
- the *watchdog* ends the reading when no byte arrived for ``idle_timeout``,
  when another request asked for the lock (see ``locking``) and no byte
  arrived for ``takeover_after`` (a writer that is receiving keeps the
  upload), when the process is stopping and asks it to let go at once, or
  when the lock was lost, and keeps the lock alive while the request is not
  idle;
- *checkpoints* (when the caller asks for them) commit the bytes stored so
  far while the body still streams, every ``Checkpoints.every_bytes`` or
  ``every_seconds``, whichever comes first, so that a process that dies
  mid-body loses at most the bytes since the last one. Each runs beside the
  pipeline, never stalling it, and one at a time;
- a *head check* (when the caller gives one) judges the upload's first
  bytes as the receiving takes them, before the block holding them is handed
  to storage: refused content stops the reading and nothing of this body is
  stored. Only those first bytes are copied aside.

A body that ends early (disconnect, stall, release request) is not an error:
tus asks servers to keep as much as possible, so ``Transfer.stored`` tells
the caller what to commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import anyio
from starlette.types import Message, Receive

from storage_backends.base import Block, Storage
from tusserver.content_types import HeadCheck
from tusserver.digests import Digests
from tusserver.extensions import writes_on_loop
from tusserver.handoff import Handoff
from tusserver.locking import Lease
from tusserver.task_ends import cancel_and_wait, wait_for_end


class End(enum.Enum):
    COMPLETE = "complete"  # the client sent the whole body
    DISCONNECT = "disconnect"  # the connection went away
    IDLE = "idle"  # no byte for idle_timeout
    RELEASED = "released"  # another request took the upload over from this stalled one
    SHUTDOWN = "shutdown"  # the process is stopping: this request let go at once
    TOO_LARGE = "too_large"  # the body ran past the limit: discard it all
    LOCK_LOST = "lock_lost"  # the lock lapsed and was taken: the commit will be refused
    REFUSED = "refused"  # the head check refused the content: discard it all


@dataclass
class Checkpoints:
    """When to commit during a body, and how: ``commit(stored)`` commits the
    first ``stored`` bytes of this body and returns False once the upload is
    no longer this request's to write (then the reading stops)."""

    commit: Callable[[int], Awaitable[bool]]
    every_bytes: int
    every_seconds: float
    committed: int = 0  # bytes of this body committed by a checkpoint
    _running: asyncio.Task[None] | None = None
    # A commit that raised (a fault, not a refusal): the transfer raises it at its end.
    failure: Exception | None = None
    _at: float = field(default_factory=time.monotonic)

    def due(self, stored: int) -> bool:
        if self._running is not None or stored <= self.committed:
            return False
        since = time.monotonic() - self._at
        return stored - self.committed >= self.every_bytes or since >= self.every_seconds

    def start_if_due(self, stored: int, stop: Callable[[], None]) -> None:
        """Commit the first ``stored`` bytes in a task of its own if one is
        due and none is running; ``stop()`` if the upload is no longer ours.

        One at a time: two commits would both compare-and-set from the same
        offset, and the one that lost would read as a lost lock. So it counts
        as running from here, not from when its task first runs: the writer
        and the watchdog can both ask within one turn of the event loop,
        before that task has run a line.
        """
        if not self.due(stored):
            return
        self._running = asyncio.get_running_loop().create_task(self._run(stored, stop))

    async def finished(self) -> None:
        """Wait for the running checkpoint, if any, to its end. Never cancelled
        (nobody cancels its task): a commit cut off after Redis applied it
        would leave this request with an offset it does not know it moved."""
        await wait_for_end([self._running])

    async def _run(self, stored: int, stop: Callable[[], None]) -> None:
        try:
            if await self.commit(stored):
                self.committed = stored
            else:
                stop()
        except Exception as exc:
            # Not a refusal (``commit`` answers those): a fault, raised
            # where the transfer ends; meanwhile the reading stops.
            self.failure = exc
            stop()
        finally:
            self._at = time.monotonic()
            self._running = None


@dataclass
class Transfer:
    received: int = 0  # bytes taken from the body (up to the limit)
    # When the last body bytes arrived (time.monotonic()): whether this
    # writer is alive when another request asks for the upload.
    last_bytes_at: float = field(default_factory=time.monotonic)
    stored: int = 0  # bytes the storage confirmed written
    end: End = End.COMPLETE
    # The receiver saw the end of the body (not merely stopped reading it).
    whole_body: bool = False
    # The storage failed; ``stored`` counts what it had confirmed before.
    failure: OSError | None = None
    # Why the head check refused the content (End.REFUSED).
    refusal: str | None = None


async def receive_into_storage(
    transfer: Transfer,
    receive: Receive,
    storage: Storage,
    lease: Lease,
    offset: int,
    *,
    limit: int | None,
    block_size: int,
    idle_timeout: float,
    takeover_after: float,
    digests: Digests | None = None,
    checkpoints: Checkpoints | None = None,
    head_check: HeadCheck | None = None,
    body_length: int | None = None,
) -> None:
    """Stream the body to ``storage`` at ``offset``, recording in ``transfer`` how it went.

    ``body_length``: the body's Content-Length, if it has one; the last
    ``final_block_size(block_size)`` bytes of such a body go in a block of
    their own.

    A storage ``OSError`` does not propagate: it is recorded as
    ``Transfer.failure``, with ``stored`` counting the blocks confirmed
    before it, so the caller can commit those and then answer the error.
    If this task is cancelled (server shutdown), ``transfer.stored`` is
    still accurate when the cancellation reaches the caller.

    ``digests``, if given, has consumed every byte handed to the writer:
    exactly the stored bytes when the storage did not fail
    (``digests.fed == transfer.stored``), more when it did, and bytes of a
    body that counts for nothing (too large, refused); a caller checks
    ``fed == stored`` before trusting it.
    """
    loop = asyncio.get_running_loop()
    # Plain asyncio tasks, not an anyio task group: its scopes look up the
    # running library and task at every step, which with the group's own
    # set-up was a seventh of a short PATCH's CPU. Nothing outside cancels
    # them: this function stops them, and waits for them, itself.
    stopping = False  # the reading was asked to stop (stop_reading)
    # The task waiting in receive(), if one does: a stop's cancel lands there.
    in_receive: asyncio.Task[None] | None = None
    # A fault of the server's receive(): raised as itself once the blocks
    # received before it are stored.
    receive_failure: Exception | None = None
    watching: asyncio.Task[None] | None = None

    def stop_reading(end: End) -> None:
        """End the reading early, keeping the bytes taken so far; ``end`` says why."""
        nonlocal stopping
        transfer.end = end
        stopping = True
        # Waiting for a message: cut the wait. Otherwise the reading stops at
        # the top of its loop, after handing on what it gathered.
        if in_receive is not None:
            in_receive.cancel()

    def lock_lost() -> None:
        # Another request owns the upload now: stop writing into it.
        stop_reading(End.LOCK_LOST)

    def checkpoint_if_due() -> None:
        if checkpoints is not None:
            checkpoints.start_if_due(transfer.stored, lock_lost)

    # Called with each message's bytes as they are taken, or None.
    hash_piece = digests.feed if digests is not None and digests.active else None
    # Bytes received from which only the final block is left to come.
    final_block = final_block_size(block_size)
    final_from = None if body_length is None else body_length - final_block

    async def receive_message() -> Message | None:
        """The next message, or None once the reading was stopped."""
        nonlocal in_receive
        in_receive = asyncio.current_task()
        try:
            return await receive()
        except asyncio.CancelledError:
            if not stopping:
                raise  # the transfer is being torn down
            # Cancelled by stop_reading: that is an end of the body, not an error.
            assert in_receive is not None
            in_receive.uncancel()
            return None
        finally:
            in_receive = None

    async def gathered() -> AsyncGenerator[Block, None]:
        """The body, in blocks: taken, checked and hashed message by message."""
        nonlocal receive_failure
        pieces: list[bytes] = []
        size = 0
        while not stopping:
            try:
                message = await receive_message()
            except Exception as exc:
                receive_failure = exc
                break
            if message is None:
                break
            if message["type"] == "http.disconnect":
                transfer.end = End.DISCONNECT
                break
            body: bytes = message.get("body", b"")
            if body:
                if limit is not None and transfer.received + len(body) > limit:
                    transfer.end = End.TOO_LARGE
                    pieces = []
                    break
                if head_check is not None:
                    transfer.refusal = head_check.take(body)
                    if transfer.refusal is not None:
                        transfer.end = End.REFUSED
                        pieces = []
                        break
                transfer.received += len(body)
                transfer.last_bytes_at = time.monotonic()
                if hash_piece is not None:
                    hash_piece(body)
                pieces.append(body)
                size += len(body)
                if size >= block_size or (
                    size >= final_block
                    and final_from is not None
                    and transfer.received >= final_from
                ):
                    yield pieces
                    pieces, size = [], 0
            if not message.get("more_body", False):
                transfer.whole_body = True
                break
        # Reached at the end of the body, on a disconnect, on a fault of
        # receive() and when the reading was stopped: the bytes gathered are kept.
        if pieces:
            yield pieces

    async def store(blocks: AsyncIterator[Block]) -> None:
        try:
            transfer.stored = await storage.write(
                lease.upload_id, offset, _counted(blocks, transfer, checkpoint_if_due)
            )
        except OSError as exc:
            transfer.failure = exc

    async def receive_in_turn() -> None:
        # Closed when the storing ends, a storage failure included: the
        # blocks the storage did not ask for are never received.
        async with contextlib.aclosing(gathered()) as blocks:
            await store(blocks)

    async def receive_beside(handoff: Handoff) -> None:
        try:
            async with contextlib.aclosing(gathered()) as blocks:
                async for block in blocks:
                    # Queued whole or not at all (``Handoff.send``), and a stop
                    # cancels only a wait in receive(): never lost, never
                    # stored twice.
                    await handoff.send(block)
        except anyio.BrokenResourceError:
            pass  # the writer stopped (storage failure): nothing to hand over to
        finally:
            handoff.close_sending()

    tick = min(1.0, idle_timeout / 4)

    async def watchdog() -> None:
        last_activity = -1
        active_at = time.monotonic()
        while True:
            now = time.monotonic()
            if lease.must_let_go:
                stop_reading(End.SHUTDOWN)
                return
            if lease.release_requested.is_set():
                if now - transfer.last_bytes_at >= takeover_after:
                    stop_reading(End.RELEASED)
                    return
                # Bytes are arriving: this writer keeps the upload, and the
                # asker waits (it asks again while it waits).
                lease.release_requested = asyncio.Event()
            activity = transfer.received + transfer.stored
            if activity != last_activity:
                last_activity, active_at = activity, now
            elif now - active_at >= idle_timeout:
                stop_reading(End.IDLE)
                return
            if not await lease.keep_alive():
                lock_lost()
                return
            checkpoint_if_due()
            with anyio.move_on_after(tick):
                await lease.release_requested.wait()

    def start_watchdog() -> None:
        nonlocal watching
        watching = loop.create_task(watchdog())

    handoff: Handoff | None = None
    receiving: asyncio.Task[None] | None = None
    if writes_on_loop(storage):
        # Received and written in turn, in a task of its own (a stop cancels
        # its wait in receive(), never this request's task).
        receiving = loop.create_task(receive_in_turn())
    else:
        # Written here, while the next block is received beside.
        handoff = Handoff()
        receiving = loop.create_task(receive_beside(handoff))
    # The watchdog starts at its first tick, not with the body: most bodies
    # end before it, and a task less is a tenth of a short PATCH's CPU.
    # Nothing it watches can fall due sooner: a takeover needs
    # ``takeover_after`` without bytes, and this first tick comes no later
    # than that; idleness counts from the first tick anyway. Only a stop's
    # "let go at once" waits for it (a second at most).
    first_tick = loop.call_later(min(tick, takeover_after), start_watchdog)
    try:
        if handoff is None:
            await receiving
        else:
            await store(handoff)
    finally:
        first_tick.cancel()
        if handoff is not None:
            # Wakes a receiver waiting to hand over a block the writer will
            # never take. At the end of a body the receiver is done already.
            handoff.close_receiving()
        await cancel_and_wait([receiving, watching])
        if checkpoints is not None:
            await checkpoints.finished()
    # Faults of the tasks beside the writer, raised as themselves (a task
    # group would wrap them in an exception group), once all of them ended.
    for task in (receiving, watching):
        if task is not None and not task.cancelled() and (failure := task.exception()):
            raise failure
    if receive_failure is not None:
        raise receive_failure
    if checkpoints is not None and checkpoints.failure is not None:
        raise checkpoints.failure
    if transfer.end in (End.TOO_LARGE, End.REFUSED):
        # A body that counts for nothing: the caller commits none of it.
        transfer.stored = 0


def final_block_size(block_size: int) -> int:
    """The last bytes of a body of known length that go in a block of their
    own: a quarter of a block, at least 64 KiB (one uvicorn body message).

    Their write is the part of a PATCH's storing that nothing
    overlaps (the body has ended), so the smaller the better; but the block
    before them is written while they arrive, and writing runs at about
    twice the rate bytes arrive over loopback, so a quarter leaves that
    block written, or nearly, by the time the last byte is in.
    """
    return max(block_size // 4, 64 * 1024)


async def _counted(
    blocks: AsyncIterator[Block], transfer: Transfer, stored_more: Callable[[], None]
) -> AsyncIterator[Block]:
    """Hand blocks to storage, counting a block as stored once the next is asked for.

    That is the Storage.write contract: it asks for the next block only
    after the previous one is fully written.
    """
    async for block in blocks:
        yield block
        # Resumed: the writer asks for the next block, so this one is written.
        transfer.stored += sum(len(piece) for piece in block)
        stored_more()

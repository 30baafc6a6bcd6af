"""The storage interface: bytes only, no HTTP, no Redis.

A backend keeps an unfinished upload as a *partial* in a staging area that
nobody browses, and finalizes it by publishing it under its final name in
one step, never replacing a file (the file-system backends share one
algorithm for that: storage_backends/finalizing.py). It never decides
whether bytes count: the caller commits an offset only after ``write`` says
the bytes are stored.

Locks: the backend takes none. The caller holds the upload's lock (in
Redis) around ``write``, ``finalize``, ``concat`` and ``delete`` of an
upload, so one upload's partial has one writer at a time; ``create`` runs
before the upload's URL exists; ``stat``, ``read`` and ``stale_partials``
run without it and must cope with a partial that grows meanwhile.

Errors: backends raise builtin ``OSError`` subclasses (``FileNotFoundError``
for a missing partial, ``FileExistsError`` only internally while choosing a
free final name, ``PermissionError``, plain ``OSError`` for I/O faults);
foreign exceptions are translated at the backend's boundary. Ids that are
not opaque tokens raise ``ValueError`` and names that would leave the
storage root ``PermissionError``, before any I/O.

Optional capabilities are separate one-method protocols at the end of this
module; the tus extensions a server advertises follow from them
(tusserver/extensions.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

# A block is a run of buffers that are stored contiguously. Handing over the
# pieces as they arrived from the network (instead of joining them) lets a
# backend write a whole block with one vectored call and no copy.
Block = Sequence[bytes]


@dataclass(frozen=True)
class FileStat:
    size: int  # bytes in the file
    modified: float  # last modification, seconds since the epoch


class Storage(Protocol):
    async def check(self) -> None:
        """Prepare the storage and prove it is reachable and writable.

        Called once at start-up; raises ``OSError`` whose message names what
        is wrong, so the server refuses to start instead of failing uploads.
        """

    async def create(self, upload_id: str) -> None:
        """Create the empty partial for a new upload. Idempotent."""

    async def write(self, upload_id: str, offset: int, blocks: AsyncIterator[Block]) -> int:
        """Store ``blocks`` contiguously from ``offset``; return the byte count stored.

        Blocks are consumed in order, and the next block is requested only
        after the previous one is fully written (so a caller that counts the
        blocks it handed out knows what is stored even if this raises).
        Bytes already in the partial past the written range are left alone.
        Raises ``FileNotFoundError`` if the partial does not exist.
        """

    async def finalize(self, upload_id: str, final_name: str, length: int) -> str:
        """Trim the partial to ``length`` and publish it as ``final_name``.

        Never overwrites an existing file: if the name is taken, a free
        variant is chosen. Returns the location actually used (relative to
        the storage root). What finalize leaves in staging (the partial, or
        a note of where it went) stays until the caller, having recorded
        the location, calls ``delete(upload_id)``; until then, finalizing
        again returns the same location instead of publishing a second
        copy, so a crash between publishing and recording is repaired by
        finalizing again. Raises ``FileNotFoundError`` if the partial is
        gone and no earlier finalize of it published a file that is still
        there, ``OSError`` if it holds fewer than ``length`` bytes (then
        nothing is published and the partial is left as it was).
        """

    async def delete(self, upload_id: str, location: str | None = None) -> None:
        """Remove the partial and, if given, the finished file. Idempotent."""

    async def aclose(self) -> None:
        """Release connections and threads. Called once, at shutdown."""

    async def stat(self, upload_id: str, location: str | None) -> FileStat:
        """Size and modification time of the finished file at ``location``,
        or of the upload's partial when ``location`` is None.

        Raises ``FileNotFoundError`` if that file does not exist,
        ``PermissionError`` if ``location`` would leave the storage root.
        """

    def read(
        self, upload_id: str, location: str | None, start: int, end: int
    ) -> AsyncIterator[bytes]:
        """Bytes ``[start, end)`` of the finished file at ``location`` (or of
        the partial when ``location`` is None), in blocks of at most 1 MiB.

        Names are checked at the call (``ValueError``, ``PermissionError``);
        the file is opened on the first iteration (``FileNotFoundError`` if it
        is missing) and read one block per worker-thread hop. A file that
        ends before ``end`` raises ``OSError`` rather than yielding fewer
        bytes. The iterator is an async generator: a caller that stops early
        calls its ``aclose()``, which closes the file at once (also under
        cancellation). Reading never changes the file; a partial may be read
        while a writer appends past the range.
        """

    async def stale_partials(self, older_than: float) -> list[str]:
        """Upload ids of the partials last modified before ``older_than`` (epoch
        seconds), for the sweeper's removal of partials that have no record.

        Lists only what looks like an upload id; publishes and removes
        nothing. Raises ``OSError`` if the staging area cannot be listed.
        """


# --- optional capabilities ------------------------------------------------------
# One method each, in the manner of tusd's composer: the server asks
# ``isinstance(storage, Concatenator)`` and advertises the matching tus
# extension only when the backend has it (tusserver/extensions.py), so
# nothing is advertised that is not implemented.


@runtime_checkable
class Concatenator(Protocol):
    async def concat(self, upload_id: str, parts: Sequence[tuple[str, int]]) -> None:
        """Fill ``upload_id``'s partial, from offset 0, with the first
        ``length`` bytes of each part's partial (``(upload id, length)``
        pairs, in order; one id may appear more than once).

        Exactly ``length`` bytes of each part, never its whole file: a
        partial may hold stale bytes past its committed length (a discarded
        chunk), and those must not shift the parts after it. A part holding
        fewer than ``length`` bytes raises ``OSError``. The parts
        are read, never changed, so a part can go into several final uploads.
        Afterwards the partial holds exactly the parts' bytes, whatever it
        held before, so a failed attempt may simply be repeated. The copy
        stays inside the storage (no pass through the server where the
        storage allows it). The caller holds ``upload_id``'s lock. Raises
        ``FileNotFoundError`` if the partial of ``upload_id`` or of a part is
        missing, ``OSError`` on I/O faults.
        """


@runtime_checkable
class BlockSized(Protocol):
    @property
    def preferred_block_size(self) -> int:
        """Bytes per block this backend writes best (``write`` takes any size).

        The server gathers a request body into blocks of this size unless
        its configuration sets one; a backend without it gets 4 MiB.
        """


@runtime_checkable
class WritesOnLoop(Protocol):
    @property
    def writes_on_loop(self) -> bool:
        """Whether ``write`` stores each block on the event loop: a copy
        into memory that the system writes out later, over before anything
        else could run.

        Then nothing is gained by receiving the next block while one is
        written, and the server receives a block and writes it in turn, in
        one task. Without it (a write that waits for a network or a worker
        thread), the server receives the next block beside each write.
        """


@runtime_checkable
class Flusher(Protocol):
    async def flush(self, upload_id: str) -> None:
        """Make the bytes written to the upload's partial so far durable: on
        stable storage, where a crash of the machine (not only of the
        process) keeps them.

        Called with ``durable_commits`` before an offset that counts those
        bytes is committed. The caller holds the upload's lock and no write
        of it is in flight. Raises ``FileNotFoundError`` if the partial is
        gone, ``OSError`` on I/O faults.
        """

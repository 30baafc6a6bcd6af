"""The storage interface: bytes only, no HTTP, no Redis.

A backend keeps an unfinished upload as a *partial* in a staging area that
nobody browses, and finalizes it by one atomic rename to its final name on
the same volume. It never decides whether bytes count: the caller (holding
the upload's lock) commits an offset only after ``write`` says the bytes are
stored.

Errors: backends raise builtin ``OSError`` subclasses (``FileNotFoundError``
for a missing partial, ``FileExistsError`` only internally while choosing a
free final name, ``PermissionError``, plain ``OSError`` for I/O faults);
foreign exceptions are translated at the backend's boundary.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

# A block is a run of buffers that are stored contiguously. Handing over the
# pieces as they arrived from the network (instead of joining them) lets a
# backend write a whole block with one vectored call and no copy.
Block = Sequence[bytes]


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
        the storage root). The partial stays until the caller, having
        recorded the location, calls ``delete(upload_id)``; until then,
        finalizing again returns the same location instead of publishing a
        second copy, so a crash between publishing and recording is
        repaired by finalizing again. Raises ``FileNotFoundError`` if the
        partial is gone, ``OSError`` if it holds fewer than ``length`` bytes.
        """

    async def delete(self, upload_id: str, location: str | None = None) -> None:
        """Remove the partial and, if given, the finished file. Idempotent."""

    async def aclose(self) -> None:
        """Release connections and threads. Called once, at shutdown."""

    async def stale_partials(self, older_than: float) -> list[str]:
        """Upload ids of the partials last modified before ``older_than`` (epoch
        seconds), for the sweeper's removal of partials that have no record.

        Lists only what looks like an upload id; publishes and removes
        nothing. Raises ``OSError`` if the staging area cannot be listed.
        """

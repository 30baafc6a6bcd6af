"""One finalize for every backend that stores files in folders (local disk, an
SMB share): the algorithm and its crash repair, written once.

    seal      trim the partial to the upload's length (never pad it) and make
              its bytes durable, so the final name never shows a hole or a
              torn tail
    note      write the name about to be used to ``<staging>/<id>.final``,
              durably, before the move
    move      give the partial that name unless another file has it (never
              replacing one), else try the next variant: ``a.txt``,
              ``a (1).txt``, ...

Crash repair is the note, for both backends: if the process dies after the
move but before the caller recorded the location, finalizing again finds no
partial, reads the note and returns the name it points to (if the file
there has the upload's length). A crash before the move leaves the partial
where it was, and finalizing again simply runs again. The caller's
``Storage.delete(upload_id)``, once the location is recorded, removes the
note with the partial's name.

Each backend supplies the six blocking steps below as a ``StagedUpload`` and
runs ``finalize`` in its own worker thread.
"""

from __future__ import annotations

import errno
from pathlib import PurePosixPath
from typing import Protocol

from storage_backends.names import name_variants, safe_relative


class StagedUpload(Protocol):
    """One upload's partial and note on a file-system-like store. Blocking; each
    missing file raises builtin ``FileNotFoundError``."""

    def seal(self, length: int) -> None:
        """Trim the partial to ``length`` and make it durable (file mode applied
        where the store has one). ``OSError`` if it holds fewer bytes."""

    def make_folders(self, relative: PurePosixPath) -> None:
        """Create the folders above ``relative`` below the storage root."""

    def write_note(self, location: str) -> None:
        """Durably record ``location`` as where the partial is being moved."""

    def read_note(self) -> str:
        """The location last recorded by ``write_note``."""

    def size_of(self, relative: PurePosixPath) -> int:
        """Size of the file at ``relative`` below the storage root."""

    def move_to(self, relative: PurePosixPath) -> bool:
        """Move the partial to ``relative`` in one step unless another file has
        that name; False if one does. Idempotent: a partial already there
        (an interrupted move) counts as moved."""


def finalize(staged: StagedUpload, relative: PurePosixPath, length: int) -> str:
    """Publish the partial under the first free variant of ``relative``; that location.

    ``FileNotFoundError`` if the partial is gone and no earlier finalize of
    this upload published it; ``FileExistsError`` if every variant is taken.
    """
    try:
        staged.seal(length)
    except FileNotFoundError as missing:
        return _published_earlier(staged, length, missing)
    staged.make_folders(relative)
    for candidate in name_variants(relative):
        location = candidate.as_posix()
        staged.write_note(location)
        if staged.move_to(candidate):
            return location
    raise FileExistsError(errno.EEXIST, "no free final name", relative.as_posix())


def _published_earlier(staged: StagedUpload, length: int, missing: FileNotFoundError) -> str:
    """Where an interrupted finalize moved the partial, from its note."""
    try:
        # Checked like any name: a note is a file in staging, never a way out of the root.
        location = safe_relative(staged.read_note())
        size = staged.size_of(location)
    except FileNotFoundError:
        raise missing from None
    if size != length:
        # Not this upload's file any more (replaced since): nothing to return.
        raise missing
    return location.as_posix()

"""Name rules every backend shares: which ids and final names may become paths.

Upload ids are opaque server-made tokens; a final name is a relative path
that stays inside the storage root and outside the staging folder. Both
checks run before any storage call.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterator
from pathlib import PurePosixPath

STAGING_DIR = ".partial"
UPLOAD_ID = re.compile(r"[0-9A-Za-z_-]{1,128}")
# A finalize's note of where it moves the partial: ``<staging>/<id>.final``
# (storage_backends/finalizing.py). Ids never contain a dot.
NOTE_SUFFIX = ".final"
# Bounded so that a name collision storm cannot loop forever.
MAX_NAME_VARIANTS = 1000


def check_upload_id(upload_id: str) -> str:
    if UPLOAD_ID.fullmatch(upload_id) is None:
        raise ValueError("invalid upload id")
    return upload_id


def staged_upload_id(name: str) -> str | None:
    """The upload a staging entry belongs to (its partial or its note); None
    for anything else."""
    upload_id = name.removesuffix(NOTE_SUFFIX)
    return upload_id if UPLOAD_ID.fullmatch(upload_id) else None


def safe_relative(name: str) -> PurePosixPath:
    """A relative path that stays inside the root and outside staging."""
    relative = PurePosixPath(name)
    parts = relative.parts
    if (
        not parts
        or relative.is_absolute()
        or any(part in ("", ".", "..") for part in parts)
        or parts[0] == STAGING_DIR
        or "\\" in name
        or "\x00" in name
    ):
        raise PermissionError(errno.EACCES, "name escapes the storage root", name)
    return relative


def name_variants(relative: PurePosixPath) -> Iterator[PurePosixPath]:
    """``name.ext``, then ``name (1).ext``, ``name (2).ext``, ..."""
    yield relative
    suffix = "".join(relative.suffixes[-1:])
    stem = relative.name[: len(relative.name) - len(suffix)] if suffix else relative.name
    for number in range(1, MAX_NAME_VARIANTS):
        yield relative.with_name(f"{stem} ({number}){suffix}")

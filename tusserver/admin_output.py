"""How ``tusserver uploads`` shows uploads: a table for people, printed as
rows arrive, or one JSON object per line for scripts. Pure functions.

Text that came from a client (a file name, an owner) may hold control
characters; in the table they are escaped, so a name cannot rewrite the
operator's terminal. JSON escapes them by itself.
"""

from __future__ import annotations

import json
from typing import Any

from tusserver.admin import Details, Row

_COLUMNS = (
    ("ID", 32),
    ("STATE", 10),
    ("OFFSET/LENGTH", 26),
    ("SIZE", 9),
    ("AGE", 6),
    ("ACTIVE", 6),
    ("EXPIRES", 8),
    ("OWNER", 16),
)


def header() -> str:
    return "  ".join(name.ljust(width) for name, width in _COLUMNS) + "  FILENAME"


def table_line(row: Row, now: float) -> str:
    cells = (
        row.id,
        row.state,
        progress(row),
        "-" if row.length is None else size(row.length),
        duration(now - row.created),
        duration(now - row.last_activity),
        expiry(row.expires, now),
        printable(row.owner or "-"),
    )
    line = "  ".join(cell.ljust(width) for cell, (_, width) in zip(cells, _COLUMNS, strict=True))
    return f"{line}  {printable(row.filename or '-')}"


def json_line(row: Row) -> str:
    return json.dumps(row_fields(row), separators=(",", ":"))


def row_fields(row: Row) -> dict[str, Any]:
    percent = row.percent
    return {
        "id": row.id,
        "state": row.state,
        "offset": row.offset,
        "length": row.length,
        "percent": None if percent is None else round(percent, 1),
        "created": row.created,
        "last_activity": row.last_activity,
        "expires": row.expires,
        "owner": row.owner,
        "filename": row.filename,
    }


def details_fields(found: Details) -> dict[str, Any]:
    snapshot = found.snapshot
    lock = None
    if snapshot.lock_ttl_ms is not None:
        lock = {"token": snapshot.lock_token, "ttl_ms": snapshot.lock_ttl_ms}
    return {
        **row_fields(found.row),
        "stored_bytes": found.stored_bytes,
        "stored_file": found.stored_file,
        "lock": lock,
        "record": dict(sorted(snapshot.fields.items())),
    }


def details_text(found: Details, now: float) -> list[str]:
    row, snapshot = found.row, found.snapshot
    stored = "none" if found.stored_bytes is None else f"{found.stored_bytes} bytes"
    lock = "none"
    if snapshot.lock_ttl_ms is not None:
        lock = f"{snapshot.lock_token} (expires in {snapshot.lock_ttl_ms} ms)"
    lines = [
        f"id             {row.id}",
        f"state          {row.state}",
        f"progress       {progress(row)}",
        f"created        {duration(now - row.created)} ago",
        f"last activity  {duration(now - row.last_activity)} ago",
        f"expires        {expiry(row.expires, now)}",
        f"owner          {printable(row.owner or '-')}",
        f"filename       {printable(row.filename or '-')}",
        f"stored         {stored} ({found.stored_file} file)",
        f"lock           {lock}",
        "record:",
    ]
    lines += [f"  {name} = {printable(value)}" for name, value in sorted(snapshot.fields.items())]
    return lines


def progress(row: Row) -> str:
    if row.length is None:
        return f"{row.offset}/deferred"
    percent = row.percent
    return f"{row.offset}/{row.length} {percent:.0f}%"


def size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def duration(seconds: float) -> str:
    """A span as people read it at a glance: 42s, 5m, 3h, 12d."""
    seconds = max(0, int(seconds))
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{seconds // length}{unit}"
    return f"{seconds}s"


def expiry(expires: float | None, now: float) -> str:
    if expires is None:
        return "never"
    if expires <= now:
        return "due"
    return "in " + duration(expires - now)


def printable(text: str) -> str:
    """``text`` with control characters escaped, for a terminal."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)

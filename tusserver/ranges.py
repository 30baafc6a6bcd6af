"""Byte ranges and the validators that guard them (RFC 9110 sections 13-14).

Pure functions over header values, no I/O, for serving one static
representation of a known size. Only a single range is served: RFC 9110
14.2 lets a server ignore a Range it does not want to answer, and a
malformed or multi-range header is answered with the whole file (200)
rather than multipart/byteranges, which no download client needs.
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass

from tusserver import errors

# One range-spec: "first-last", "first-" or "-suffix". Bounded digit runs:
# a longer number is treated as malformed, and the Range is ignored.
_RANGE_SPEC = re.compile(r"(?:([0-9]{1,19})-([0-9]{0,19})|-([0-9]{1,19}))")
_ENTITY_TAG = re.compile(r'\s*(W/)?("[^"]*")\s*')


@dataclass(frozen=True)
class ByteRange:
    start: int  # first byte served
    end: int  # one past the last byte served

    @property
    def length(self) -> int:
        return self.end - self.start

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end - 1}/{size}"


def parse_range(value: str, size: int) -> ByteRange | None:
    """The one byte range ``value`` asks for, or None to serve the whole file.

    None for anything that is not a single, well-formed bytes range (RFC 9110
    14.2: such a Range may be ignored), and for an empty file, whose only
    possible answer is the whole (empty) file. Raises the 416 error when the
    range lies wholly outside ``size`` bytes (RFC 9110 14.1.1).
    """
    unit, equals, specs = value.partition("=")
    if not equals or unit.strip().lower() != "bytes" or size == 0:
        return None
    listed = [spec.strip() for spec in specs.split(",") if spec.strip()]
    if len(listed) != 1:
        return None
    match = _RANGE_SPEC.fullmatch(listed[0])
    if match is None:
        return None
    first, last, suffix = match.groups()
    if suffix is not None:
        if int(suffix) == 0:
            raise errors.range_not_satisfiable(size)
        return ByteRange(max(0, size - int(suffix)), size)
    start = int(first)
    if last and int(last) < start:
        return None  # invalid range-spec (RFC 9110 14.1.1): ignore the Range
    if start >= size:
        raise errors.range_not_satisfiable(size)
    end = size if not last else min(int(last) + 1, size)
    return ByteRange(start, end)


def none_match(value: str, etag: str) -> bool:
    """If-None-Match matches ``etag`` (weak comparison, RFC 9110 13.1.2)."""
    if value.strip() == "*":
        return True
    return any(tag == etag for _, tag in _entity_tags(value))


def if_range_holds(value: str, etag: str | None, modified: float | None) -> bool:
    """The Range may be honoured: If-Range names the current representation.

    An entity-tag must match strongly; a date must equal Last-Modified
    exactly (RFC 9110 13.1.5). Without validators nothing matches, and the
    whole file is served.
    """
    value = value.strip()
    if value.startswith(('"', "W/")):
        tags = _entity_tags(value)
        return etag is not None and len(tags) == 1 and tags[0] == ("", etag)
    when = parse_http_date(value)
    return modified is not None and when is not None and when == int(modified)


def modified_since(value: str, modified: float) -> bool:
    """If-Modified-Since: the file changed after the given date (else 304).

    An unparsable date means the condition is ignored (RFC 9110 13.1.3).
    """
    when = parse_http_date(value)
    return when is None or int(modified) > when


def parse_http_date(value: str) -> int | None:
    """An HTTP-date as whole seconds since the epoch, or None if malformed."""
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        return None  # HTTP-dates are GMT; a zone-less date is not one
    return int(parsed.timestamp())


def http_date(timestamp: float) -> str:
    return email.utils.formatdate(timestamp, usegmt=True)


def _entity_tags(value: str) -> list[tuple[str, str]]:
    """``W/"a", "b"`` -> [("W/", '"a"'), ("", '"b"')]; [] if malformed."""
    tags: list[tuple[str, str]] = []
    for item in value.split(","):
        match = _ENTITY_TAG.fullmatch(item)
        if match is None:
            return []
        tags.append((match.group(1) or "", match.group(2)))
    return tags

"""Which types of file an upload may be: what its client declares, and what
its first bytes are.

Two checks, both only when the operator lists allowed types
(``Config.allow_types``, patterns like ``image/*`` or ``application/pdf``):

- at creation, every type the client declares must be allowed: the
  ``filetype`` metadata (tus-js-client's examples), ``type`` (Uppy, and
  tus-js-client when given a browser File) and the type the ``filename``
  extension maps to;
- on the first bytes, the content is sniffed (``puremagic``: pure Python,
  no system libmagic to install or to parse hostile input in C). The
  sniffed type must be allowed and agree with every declared type: the
  declared type never overrides what the bytes are.

Content the sniffer cannot identify (plain text, CSV, source code has no
magic number) passes only if a text-like type was declared, that type is
allowed, and the bytes hold no NUL, which every executable and binary
format has within its first kilobytes. Undeclared unknown bytes are refused.

This module judges bytes and metadata given to it; it never reads storage.
"""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import puremagic

# The built-in table only, never the machine's mime.types: the same
# filename must be judged alike on every server of a deployment.
_MIME_TABLE = mimetypes.MimeTypes()

# puremagic reaches this far into a file for its deepest signature (an ISO
# image at 32 KiB); beyond it, more bytes change nothing. Tens of KiB per
# upload, held only until the head is judged.
HEAD_SIZE: int = min(puremagic.main.max_head, 64 * 1024)

# Bytes of no particular type; what browsers send for files they cannot name.
_UNKNOWN = "application/octet-stream"

# Names for one type that clients and sniffers spell differently.
_ALIASES = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "image/x-png": "image/png",
    "audio/mp3": "audio/mpeg",
    "audio/x-mp3": "audio/mpeg",
    "application/x-pdf": "application/pdf",
    "application/x-zip-compressed": "application/zip",
    "application/x-gzip": "application/gzip",
    "image/x-ms-bmp": "image/bmp",
    "audio/x-wav": "audio/wav",
}

_MEDIA_TYPE = re.compile(r"[a-z0-9][\w.+-]*/[a-z0-9][\w.+-]*")
# What a declared type that is no media type counts as: allowed by */* only.
_UNREADABLE = "(unreadable)"
_PATTERN = re.compile(r"(\*|[a-z0-9][\w.+-]*)/(\*|[a-z0-9][\w.+-]*)")
_TEXT_LIKE = re.compile(
    r"text/.*|application/(json|xml|javascript|x-ndjson|yaml|x-yaml|toml|sql|csv)"
    r"|application/.*\+(json|xml)"
)


def split_patterns(values: tuple[str, ...], setting: str) -> tuple[str, ...]:
    """``("image/*,application/pdf",)`` -> ``("image/*", "application/pdf")``:
    flags give one list each, split at commas or spaces, lower-cased."""
    return tuple(part.lower() for value in values for part in re.split(r"[\s,]+", value) if part)


def bad_pattern(patterns: Iterable[str]) -> str | None:
    """The first pattern that is not ``type/subtype``, ``type/*`` or ``*/*``."""
    for pattern in patterns:
        match = _PATTERN.fullmatch(pattern)
        if match is None or (match.group(1) == "*" and match.group(2) != "*"):
            return pattern
    return None


def normalize(media_type: str) -> str:
    """Lower case, no parameters (``; charset=...``), aliases resolved."""
    bare = media_type.split(";", 1)[0].strip().lower()
    return _ALIASES.get(bare, bare)


def is_allowed(media_type: str, patterns: Iterable[str]) -> bool:
    kind, _, _ = media_type.partition("/")
    return any(pattern in ("*/*", media_type) or pattern == f"{kind}/*" for pattern in patterns)


def declared_types(metadata: Mapping[str, bytes]) -> frozenset[str]:
    """Every type the client's metadata claims, from ``filetype``, ``type``
    and the ``filename`` (or ``name``) extension; none when it claims none."""
    declared = set()
    for key in ("filetype", "type"):
        value = normalize(metadata.get(key, b"").decode("utf-8", "replace"))
        # Browsers send the generic type for files they cannot name: no claim.
        if value and value != _UNKNOWN:
            # Client text goes into answers and logs only as a media type.
            declared.add(value if _MEDIA_TYPE.fullmatch(value) else _UNREADABLE)
    filename = (metadata.get("filename") or metadata.get("name") or b"").decode("utf-8", "replace")
    # Only the last segment: Uppy's relative paths may carry dotted folders.
    guessed, _ = _MIME_TABLE.guess_type(re.split(r"[/\\]", filename)[-1], strict=False)
    if guessed:
        # An extension mapped to the generic type (.exe, .dll, .bin) does
        # claim something: a program or raw binary.
        declared.add(normalize(guessed))
    return frozenset(declared)


def refused_declaration(declared: Iterable[str], patterns: Iterable[str]) -> str | None:
    """The first declared type the patterns do not allow, or None."""
    patterns = tuple(patterns)
    return next((kind for kind in sorted(declared) if not is_allowed(kind, patterns)), None)


def sniff(head: bytes, *, whole: bool) -> frozenset[str] | None:
    """The types the bytes most likely are (puremagic's best matches), or
    None if nothing matched. ``whole``: ``head`` is the entire file, so
    signatures at a file's end may count too; otherwise only those at its
    start, lest the end of the head pass for the end of the file."""
    if not head:
        return None
    try:
        matches = puremagic.magic_string(head)
    except puremagic.PureError:
        return None
    matches = [match for match in matches if whole or match.offset >= 0]
    if not matches:
        return None
    best = max(match.confidence for match in matches)
    return frozenset(_type_of(match) for match in matches if match.confidence == best)


def _type_of(match: puremagic.PureMagicWithConfidence) -> str:
    # puremagic names some formats (ELF, PE) only by extension or not at
    # all: unnamed bytes count as the generic binary type.
    if match.mime_type:
        return normalize(match.mime_type)
    guessed, _ = _MIME_TABLE.guess_type("x" + match.extension, strict=False)
    return normalize(guessed) if guessed else _UNKNOWN


def refused_content(
    head: bytes, declared: frozenset[str], patterns: Iterable[str], *, whole: bool
) -> str | None:
    """Why the content the head starts is refused, or None if it passes."""
    patterns = tuple(patterns)
    sniffed = sniff(head, whole=whole)
    if sniffed is None:
        text_declared = bool(declared) and all(_TEXT_LIKE.fullmatch(kind) for kind in declared)
        if (
            text_declared
            and b"\x00" not in head
            and refused_declaration(declared, patterns) is None
        ):
            return None
        return "its content is of no type this server accepts"
    for kind in sorted(sniffed):
        if is_allowed(kind, patterns) and all(kind == other for other in declared):
            return None
    shown = ", ".join(sorted(sniffed))
    if declared:
        return f"its content is {shown}, not {', '.join(sorted(declared))} as declared"
    return f"its content is {shown}, which this server does not accept"


@dataclass
class HeadCheck:
    """The first bytes of one upload, gathered as they arrive until there are
    enough to judge (``HEAD_SIZE``, or the whole upload if it is shorter).

    ``head`` starts with the bytes an earlier request already stored (a
    first PATCH shorter than the head): the caller reads them back.
    """

    declared: frozenset[str]
    patterns: tuple[str, ...]
    length: int | None  # the upload's length, None while deferred
    head: bytes = b""
    decided: bool = False

    def take(self, body: bytes) -> str | None:
        """Add the next received bytes; judge once there are enough. Returns
        why the upload is refused, or None (it passed, or is not judged yet:
        a deferred length, or a body that ended before the head was full,
        waits for the next request)."""
        if self.decided:
            return None
        room = HEAD_SIZE - len(self.head)
        if room > 0:
            self.head += body[:room]
        return self.judge_if_ready()

    def judge_if_ready(self) -> str | None:
        whole = self.length is not None and len(self.head) >= self.length
        if self.decided or (len(self.head) < HEAD_SIZE and not whole):
            return None
        self.decided = True
        return refused_content(self.head, self.declared, self.patterns, whole=whole)

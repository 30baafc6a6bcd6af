"""The tus 1.0.0 vocabulary: header names, constants and header parsing.

Pure functions only, no I/O. Every parser raises ``TusError`` with a 400-class
status so handlers can call them before touching Redis or storage.
Spec: https://tus.io/protocols/resumable-upload (protocol.md).
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from urllib.parse import urljoin, urlsplit

from tusserver import errors
from tusserver.headers import UPLOAD_CHECKSUM, UPLOAD_CONCAT, UPLOAD_DEFER_LENGTH

TUS_VERSION = "1.0.0"
SUPPORTED_VERSIONS = (TUS_VERSION,)
OFFSET_OCTET_STREAM = "application/offset+octet-stream"


# checksum extension: sha1 is the one the spec requires; the others are what
# tusd and the clients offer. Digest sizes in bytes, to refuse a malformed
# value before any body is read.
CHECKSUM_ALGORITHMS = {"sha1": 20, "md5": 16, "sha256": 32, "sha512": 64, "crc32": 4}
# The metadata key in which a client may declare the digest of the whole file.
CHECKSUM_METADATA_KEY = "checksum"

# Offsets and lengths are stored as decimal strings in Redis and as int64 by
# other tus servers; anything larger is malformed, not merely too large.
MAX_INT64 = 2**63 - 1
_DIGITS = re.compile(r"[0-9]{1,19}")

# Ids the server makes are 128 random bits as 32 lowercase hex digits; a
# pre-create hook may choose others. Every id, from a URL or a hook, is
# checked against this before any Redis key or path is derived from it: no
# braces (the keys' hash tag), no dots or slashes (paths), lowercase only (an
# SMB share ignores case, so "A" and "a" would be one file), and at least 8
# characters (never a Windows device name such as CON or COM1).
UPLOAD_ID_PATTERN = re.compile(r"[0-9a-z][0-9a-z_-]{7,63}")

# Metadata keys: tus says ASCII, no spaces, no commas. We also refuse control
# characters so a key can never smuggle a header line break.
_METADATA_KEY = re.compile(r"[!-+\--~]+")


def new_upload_id() -> str:
    return secrets.token_hex(16)


def is_upload_id(text: str) -> bool:
    return UPLOAD_ID_PATTERN.fullmatch(text) is not None


def check_tus_resumable(value: str | None) -> None:
    """Every request but OPTIONS must name a version we speak (412 otherwise)."""
    if value is None:
        raise errors.version_missing()
    if value.strip() not in SUPPORTED_VERSIONS:
        raise errors.version_unsupported()


def parse_non_negative(value: str, header: str) -> int:
    """Upload-Offset / Upload-Length: plain decimal digits, no sign, no spaces."""
    if _DIGITS.fullmatch(value) is None or int(value) > MAX_INT64:
        raise errors.invalid_header(header, "a non-negative integer (decimal digits only)")
    return int(value)


def parse_defer_length(value: str) -> bool:
    """Upload-Defer-Length: the only valid value is 1."""
    if value.strip() != "1":
        raise errors.invalid_header(UPLOAD_DEFER_LENGTH, "1")
    return True


@dataclass(frozen=True)
class Metadata:
    """Upload-Metadata, parsed once at creation and kept so in the record."""

    raw: str = ""  # the header exactly as the client sent it, echoed on HEAD
    # Decoded values; a key without a value maps to b"".
    values: Mapping[str, bytes] = field(default_factory=dict)


def parse_metadata(value: str, max_size: int) -> dict[str, bytes]:
    """Parse Upload-Metadata leniently, as real clients send it.

    ``key b64value`` pairs separated by commas. Accepted: an empty header
    (tuspy always sends one), a key without a value, a key followed by a space
    and nothing (tus-js-client's empty value), surrounding spaces, missing
    base64 padding. Refused with 400: invalid base64, a bad or repeated key,
    more than ``max_size`` bytes.
    """
    if len(value) > max_size:
        raise errors.metadata_too_large(max_size)
    result: dict[str, bytes] = {}
    for raw_pair in value.split(","):
        pair = raw_pair.strip(" \t")
        if not pair:
            continue
        key, _, encoded = pair.partition(" ")
        if _METADATA_KEY.fullmatch(key) is None:
            raise errors.invalid_metadata(
                f"key {key[:40]!r} is not a token without spaces or commas"
            )
        if key in result:
            raise errors.invalid_metadata(f"key {key[:40]!r} appears more than once")
        result[key] = _decode_base64(key, encoded.strip(" \t"))
    return result


def _decode_base64(key: str, encoded: str) -> bytes:
    try:
        return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise errors.invalid_metadata(f"the value of {key[:40]!r} is not valid base64") from None


def parse_content_type(value: str | None) -> str | None:
    """Media type without parameters, lower-cased."""
    if value is None:
        return None
    return value.split(";", 1)[0].strip().lower()


@dataclass(frozen=True)
class Checksum:
    """An expected digest: ``Upload-Checksum: <algorithm> <base64 digest>``."""

    algorithm: str
    digest: bytes


def parse_checksum(value: str, source: str = UPLOAD_CHECKSUM) -> Checksum:
    """Parse an Upload-Checksum value (or the ``checksum`` metadata value).

    400 for an unsupported algorithm (spec: checksum extension) or for a
    digest that is not base64 of the algorithm's size; both are caught
    before any byte of the body is read.
    """
    algorithm, _, encoded = value.strip().partition(" ")
    algorithm = algorithm.lower()
    size = CHECKSUM_ALGORITHMS.get(algorithm)
    if size is None:
        raise errors.unsupported_checksum_algorithm(algorithm, ", ".join(CHECKSUM_ALGORITHMS))
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != size:
        raise errors.invalid_header(
            source, f"'<algorithm> <base64 digest>' with a {size}-byte {algorithm} digest"
        )
    return Checksum(algorithm, digest)


# Upload-Concat roles (tus "Concatenation" extension).
CONCAT_PARTIAL = "partial"
CONCAT_FINAL = "final"
# Parts of one final upload. tus-js-client makes `parallelUploads` parts
# (a handful); the cap bounds the record and the reads one final costs.
MAX_CONCAT_PARTS = 1000


@dataclass(frozen=True)
class UploadConcat:
    """A parsed Upload-Concat header: a partial upload, or a final one with its parts."""

    role: str  # CONCAT_PARTIAL | CONCAT_FINAL
    urls: tuple[str, ...] = ()  # the parts' URLs as the client sent them (final only)
    ids: tuple[str, ...] = ()  # the upload ids those URLs name, in the same order

    @property
    def is_final(self) -> bool:
        return self.role == CONCAT_FINAL


def parse_upload_concat(
    value: str, request_path: str, uploads_path: str, *public_uploads_paths: str
) -> UploadConcat:
    """``partial``, or ``final;<url> <url> ...`` (400 otherwise).

    Part URLs may be absolute or relative (tus spec, "Upload-Concat"); a
    relative one is resolved against ``request_path``, the path the POST went
    to (RFC 3986, section 5). Only the path counts: the host of an absolute
    URL is never trusted (behind a proxy it names the proxy). The path must be
    ``uploads_path`` (where this app serves uploads: mount root plus base
    path) followed by a valid upload id, or one of ``public_uploads_paths``
    (where clients see uploads through a proxy or a public URL) followed by
    one; anything else is refused, naming the part, before any id reaches
    Redis or storage.
    """
    text = value.strip()
    if text == CONCAT_PARTIAL:
        return UploadConcat(CONCAT_PARTIAL)
    role, semicolon, listed = text.partition(";")
    if role.strip() != CONCAT_FINAL or not semicolon:
        raise errors.invalid_header(
            UPLOAD_CONCAT, "'partial', or 'final;' followed by space-separated upload URLs"
        )
    urls = tuple(listed.split())
    if not urls:
        raise errors.concat_without_parts()
    if len(urls) > MAX_CONCAT_PARTS:
        raise errors.too_many_concat_parts(MAX_CONCAT_PARTS)
    ids = tuple(
        _upload_id_in(url, number, request_path, (uploads_path, *public_uploads_paths))
        for number, url in enumerate(urls, start=1)
    )
    return UploadConcat(CONCAT_FINAL, urls, ids)


def _upload_id_in(url: str, number: int, request_path: str, uploads_paths: tuple[str, ...]) -> str:
    try:
        path = urlsplit(urljoin(request_path, url)).path
    except ValueError:  # e.g. an unbalanced IPv6 bracket in the host
        raise errors.concat_part_invalid(number, url) from None
    for uploads_path in uploads_paths:
        upload_id = path.removeprefix(uploads_path)
        if path.startswith(uploads_path) and is_upload_id(upload_id):
            return upload_id
    raise errors.concat_part_invalid(number, url)


def format_expires(epoch_seconds: float) -> str:
    """Upload-Expires: an HTTP-date (RFC 9110 IMF-fixdate), e.g.
    ``Wed, 25 Jun 2025 12:00:00 GMT``; fractions of a second are dropped, so
    the date a client sees is never later than the real expiry."""
    return _http_date(int(epoch_seconds))


# An upload's expiry moves only with its commits: the HEADs polling it
# between two ask for the same date again.
@functools.lru_cache(maxsize=1024)
def _http_date(epoch_seconds: int) -> str:
    return format_datetime(datetime.fromtimestamp(epoch_seconds, UTC), usegmt=True)

"""The record of one upload: what Redis keeps of it, and how it is read back.

The record is the hash ``tus:{<id>}:info`` (``tusserver.state`` has the keys
and the scripts that change it). Its fields:

    offset      bytes committed (moves only forward, by compare-and-set)
    length      "" while deferred
    metadata    Upload-Metadata exactly as the client sent it, echoed on HEAD
    meta        its values, parsed once at creation: JSON, each value's
                bytes as latin-1 text (absent when there are none)
    checksum    the whole-file digest the client declared, "<alg> <base64>"
    created     epoch seconds
    state       partial | complete | failed
    location    where the published file is, relative to the storage root
    sha256      hex digest of the finished file
    failure     why a failed upload was not published
    failcode    the error code that failed it (absent: a checksum mismatch)
    committer   token of the last commit, so a retried commit finds itself
    concat      partial | final (absent for a plain upload)
    parts       a final upload's part URLs, space-separated
    expires     epoch seconds, until the file is published
    completed   epoch seconds when the file was published
    owner       who created it (tusserver.ownership; absent when anonymous)
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from tusserver.protocol import Checksum, Metadata, parse_metadata

PARTIAL = "partial"
COMPLETE = "complete"
# Never to be published: every byte arrived but the file does not match the
# digest its client declared (kept for inspection until it expires or is
# deleted), or its content or length was refused (its bytes removed at once).
FAILED = "failed"
# The record field ``UploadStore.owner`` reads alone.
OWNER_FIELD = "owner"


@dataclass
class Upload:
    id: str
    offset: int
    length: int | None  # None while the length is deferred
    metadata: Metadata = field(default_factory=Metadata)
    # The whole-file digest the client declared in its metadata, if any.
    declared_checksum: Checksum | None = None
    created: float = 0.0
    state: str = PARTIAL
    location: str | None = None  # where the finished file is, relative to storage
    sha256: str | None = None  # hex digest of the finished file's bytes
    failure: str | None = None  # why a FAILED upload was not finalized
    failure_code: str | None = None  # the error that failed it; None: a checksum mismatch of old
    concat: str = ""  # "partial" or "final" (concatenation), "" for a plain upload
    parts: tuple[str, ...] = ()  # a final upload's part URLs, as the client sent them
    expires: float | None = None  # epoch seconds; None once the file is published
    completed: float | None = None  # epoch seconds when the file was published
    owner: str | None = None  # who created it (tusserver.ownership); None: anonymous

    @property
    def is_complete(self) -> bool:
        return self.state == COMPLETE

    @property
    def is_failed(self) -> bool:
        return self.state == FAILED

    @property
    def is_fully_received(self) -> bool:
        return self.length is not None and self.offset == self.length

    @property
    def needs_finalize(self) -> bool:
        """Every byte is in but the upload is neither finished nor failed: a
        finalize is due, or was cut short (a crash) and must be repeated."""
        return self.is_fully_received and not self.is_complete and not self.is_failed


def to_fields(upload: Upload) -> dict[str, str]:
    """The fields of a new upload's record."""
    fields = {
        "offset": str(upload.offset),
        "length": "" if upload.length is None else str(upload.length),
        "metadata": upload.metadata.raw,
        "created": repr(upload.created or time.time()),
        "state": upload.state,
    }
    if upload.metadata.values:
        fields["meta"] = _encode_values(upload.metadata.values)
    if upload.declared_checksum is not None:
        fields["checksum"] = _encode_checksum(upload.declared_checksum)
    if upload.concat:
        fields["concat"] = upload.concat
    if upload.parts:
        fields["parts"] = " ".join(upload.parts)
    if upload.expires is not None:
        fields["expires"] = repr(upload.expires)
    if upload.owner is not None:
        fields[OWNER_FIELD] = upload.owner
    return fields


def from_fields(upload_id: str, fields: Mapping[str, str]) -> Upload:
    """The upload a record describes."""
    length = fields.get("length", "")
    return Upload(
        id=upload_id,
        offset=int(fields.get("offset", "0")),
        length=int(length) if length else None,
        metadata=_metadata(fields),
        declared_checksum=_decode_checksum(fields.get("checksum")),
        created=float(fields.get("created", "0")),
        state=fields.get("state", PARTIAL),
        location=fields.get("location") or None,
        sha256=fields.get("sha256") or None,
        failure=fields.get("failure") or None,
        failure_code=fields.get("failcode") or None,
        concat=fields.get("concat", ""),
        parts=tuple(fields.get("parts", "").split()),
        expires=_optional_float(fields.get("expires")),
        completed=_optional_float(fields.get("completed")),
        owner=fields.get(OWNER_FIELD) or None,
    )


def _metadata(fields: Mapping[str, str]) -> Metadata:
    raw = fields.get("metadata", "")
    text = fields.get("meta")
    return Metadata(raw, _StoredValues(text, raw) if raw or text else {})


class _StoredValues(Mapping[str, bytes]):
    """A record's metadata values, decoded when first looked at: a HEAD, the
    most frequent request, echoes only the raw header and never looks."""

    __slots__ = ("_raw", "_text", "_values")

    def __init__(self, text: str | None, raw: str) -> None:
        self._text = text
        self._raw = raw
        self._values: dict[str, bytes] | None = None

    def _decoded(self) -> dict[str, bytes]:
        if self._values is None:
            self._values = _decode_values(self._text, self._raw)
        return self._values

    def __getitem__(self, key: str) -> bytes:
        return self._decoded()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._decoded())

    def __len__(self) -> int:
        return len(self._decoded())

    def __repr__(self) -> str:
        return repr(self._decoded())


def _optional_float(value: str | None) -> float | None:
    return float(value) if value else None


# Metadata values are bytes; JSON holds text. Latin-1 maps each byte to one
# code point and back, so any value survives, and reading the record needs no
# second validation of what creation already checked.
def _encode_values(values: Mapping[str, bytes]) -> str:
    return json.dumps({key: value.decode("latin-1") for key, value in values.items()})


def _decode_values(text: str | None, raw: str) -> dict[str, bytes]:
    if text is None and raw:
        # Written before the record kept parsed values: parse it now (it was
        # checked at its creation), so an upgrade finds its uploads intact.
        return parse_metadata(raw, len(raw))
    if not text:
        return {}
    return {key: value.encode("latin-1") for key, value in json.loads(text).items()}


def _encode_checksum(checksum: Checksum) -> str:
    return f"{checksum.algorithm} {base64.b64encode(checksum.digest).decode('ascii')}"


def _decode_checksum(text: str | None) -> Checksum | None:
    if not text:
        return None
    algorithm, _, encoded = text.partition(" ")
    return Checksum(algorithm, base64.b64decode(encoded))

"""What a hook is told and what it may answer: tusd v2's hook format, typed.

An HTTP hook receives ``{"Type": ..., "Event": {"Upload": ..., "HTTPRequest":
...}}`` and answers ``{"HTTPResponse": ..., "RejectUpload": ..., ...}``, field
for field as tusd v2 sends and reads them, so a receiver written for tusd
works unchanged. Python hooks get and return the same content as the frozen
dataclasses below; ``to_wire``/``from_wire`` are the one mapping between them.

Parsing an answer raises ``ValueError`` for a shape that is not tusd's (the
caller treats the hook as failed); unknown fields are ignored, as tusd does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class HookType(StrEnum):
    PRE_CREATE = "pre-create"
    POST_CREATE = "post-create"
    POST_RECEIVE = "post-receive"
    PRE_FINISH = "pre-finish"
    POST_FINISH = "post-finish"
    PRE_TERMINATE = "pre-terminate"
    POST_TERMINATE = "post-terminate"
    PRE_ACCESS = "pre-access"

    @property
    def is_blocking(self) -> bool:
        """The request waits for the hook's answer, and fails if there is none."""
        return self in _BLOCKING


_BLOCKING = frozenset(
    {HookType.PRE_CREATE, HookType.PRE_FINISH, HookType.PRE_TERMINATE, HookType.PRE_ACCESS}
)


@dataclass(frozen=True)
class FileInfo:
    """tusd's ``Upload``: the upload the event is about."""

    id: str  # "" in pre-create: the id is chosen after the hook agreed
    size: int | None  # None while deferred
    offset: int
    metadata: Mapping[str, str] = field(default_factory=dict)
    is_partial: bool = False
    is_final: bool = False
    partial_uploads: tuple[str, ...] | None = None  # a final upload's part ids
    # Where the finished file is: {"Type": "tusserver", "Location": <relative
    # to the storage root>, "SHA256": <hex>}; None until it is published.
    storage: Mapping[str, str] | None = None
    # Who the upload belongs to (tusserver.ownership): a token's `sub`, what
    # the application's `authenticate` returned, or what pre-create chose;
    # None when anonymous. Sent as `Owner`, which tusd receivers ignore.
    owner: str | None = None

    @property
    def size_is_deferred(self) -> bool:
        return self.size is None


@dataclass(frozen=True)
class HTTPRequest:
    """The client request that caused the event (credentials redacted, see ``hooking``)."""

    method: str
    uri: str
    remote_addr: str
    header: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class HookEvent:
    type: HookType
    upload: FileInfo
    http_request: HTTPRequest


@dataclass(frozen=True)
class HTTPResponse:
    """What a hook wants the client's answer to carry; 0 / "" mean "unchanged"."""

    status_code: int = 0
    body: str = ""
    header: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_empty(self) -> bool:
        return not (self.status_code or self.body or self.header)


@dataclass(frozen=True)
class FileInfoChanges:
    """pre-create only: the id to give the upload ("" = generate one), and
    metadata that replaces the client's entirely (None = keep it), as tusd."""

    id: str = ""
    metadata: Mapping[str, str] | None = None
    # tusserver only: the owner to bind the upload to ("" = keep the
    # requester's), for receivers that authenticate clients themselves.
    owner: str = ""


@dataclass(frozen=True)
class HookResponse:
    http_response: HTTPResponse = field(default_factory=HTTPResponse)
    reject_upload: bool = False  # pre-create
    change_file_info: FileInfoChanges = field(default_factory=FileInfoChanges)  # pre-create
    stop_upload: bool = False  # post-receive
    reject_termination: bool = False  # pre-terminate
    reject_access: bool = False  # pre-access


def to_wire(event: HookEvent) -> dict[str, Any]:
    """The JSON body tusd v2 POSTs to an HTTP hook."""
    upload = event.upload
    request = event.http_request
    return {
        "Type": event.type.value,
        "Event": {
            "Upload": {
                "ID": upload.id,
                "Size": upload.size or 0,
                "SizeIsDeferred": upload.size_is_deferred,
                "Offset": upload.offset,
                "MetaData": dict(upload.metadata),
                "IsPartial": upload.is_partial,
                "IsFinal": upload.is_final,
                "PartialUploads": (
                    None if upload.partial_uploads is None else list(upload.partial_uploads)
                ),
                "Storage": None if upload.storage is None else dict(upload.storage),
                "Owner": upload.owner,
            },
            "HTTPRequest": {
                "Method": request.method,
                "URI": request.uri,
                "RemoteAddr": request.remote_addr,
                "Header": {name: list(values) for name, values in request.header.items()},
            },
        },
    }


def from_wire(data: Mapping[str, Any]) -> HookEvent:
    """An event back from its JSON form (the durable post-finish record)."""
    event = data["Event"]
    upload = event["Upload"]
    request = event["HTTPRequest"]
    parts = upload.get("PartialUploads")
    storage = upload.get("Storage")
    return HookEvent(
        type=HookType(data["Type"]),
        upload=FileInfo(
            id=str(upload["ID"]),
            size=None if upload["SizeIsDeferred"] else int(upload["Size"]),
            offset=int(upload["Offset"]),
            metadata={str(k): str(v) for k, v in (upload.get("MetaData") or {}).items()},
            is_partial=bool(upload["IsPartial"]),
            is_final=bool(upload["IsFinal"]),
            partial_uploads=None if parts is None else tuple(str(p) for p in parts),
            storage=None if storage is None else {str(k): str(v) for k, v in storage.items()},
            owner=None if upload.get("Owner") is None else str(upload["Owner"]),
        ),
        http_request=HTTPRequest(
            method=str(request["Method"]),
            uri=str(request["URI"]),
            remote_addr=str(request["RemoteAddr"]),
            header={
                str(name): tuple(str(v) for v in values)
                for name, values in (request.get("Header") or {}).items()
            },
        ),
    )


def encode_event(event: HookEvent) -> str:
    return json.dumps(to_wire(event), separators=(",", ":"))


def decode_event(text: str) -> HookEvent:
    return from_wire(json.loads(text))


def response_from_wire(body: bytes) -> HookResponse:
    """A hook's answer. An empty body is "no objection" (a receiver that only
    listens may answer 200 with nothing); anything but a JSON object with
    tusd's field types is a ``ValueError``."""
    if not body.strip():
        return HookResponse()
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ValueError("the hook answer is not a JSON object")
    http = _object(data, "HTTPResponse")
    changes = _object(data, "ChangeFileInfo")
    metadata = changes.get("MetaData")
    return HookResponse(
        http_response=HTTPResponse(
            status_code=_int(http.get("StatusCode", 0)),
            body=_str(http.get("Body", "")),
            header=_headers(_object(http, "Header")),
        ),
        reject_upload=_bool(data.get("RejectUpload", False)),
        change_file_info=FileInfoChanges(
            id=_str(changes.get("ID", "")),
            owner=_str(changes.get("Owner", "")),
            metadata=(
                None
                if metadata is None
                else {_str(k): _str(v) for k, v in _object(changes, "MetaData").items()}
            ),
        ),
        stop_upload=_bool(data.get("StopUpload", False)),
        reject_termination=_bool(data.get("RejectTermination", False)),
        reject_access=_bool(data.get("RejectAccess", False)),
    )


def _headers(data: Mapping[str, Any]) -> dict[str, str]:
    headers = {_str(name): _str(value) for name, value in data.items()}
    for name, value in headers.items():
        if not HEADER_NAME.fullmatch(name) or not HEADER_VALUE.fullmatch(value):
            raise ValueError("HTTPResponse.Header holds a name or value not fit for HTTP")
    return headers


def _object(data: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{name} is not an object")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("a text field holds something else")
    return value


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError("StatusCode is not an integer")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("a flag is not true or false")
    return value


# Response header names a hook may set: HTTP tokens. Values: no control
# characters, so a hook can never split the answer's header block.
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
HEADER_VALUE = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f]*")

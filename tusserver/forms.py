"""Plain form uploads: ``POST <base-path>`` with ``multipart/form-data``.

For clients that are not tus clients (an HTML ``<form>``, ``curl -F``). Each
file part becomes one upload, made and finished as a tus upload is:

- created by ``creation.create_held`` (the one creation path, with whatever
  checks hang there), with deferred length and ``filename`` / ``filetype``
  metadata from the part's Content-Disposition and Content-Type, parsed as
  Upload-Metadata is;
- its bytes received by ``receiving.receive_body``, as a PATCH's are: the
  part is handed over as if it were a request body of its own (``_Form``
  plays the ASGI ``receive`` of it), so the transfer pipeline (bytes
  hashed as they arrive, blocks written in a thread, ``--max-size``
  enforced while bytes arrive, idle timeout, checkpoints) is the same
  code, not a copy;
- finished by ``finishing.finalize`` once the whole form is in: SHA-256
  recorded, file published by rename.

The body is parsed as it streams, by python-multipart's push parser fed
from the ASGI messages: no part is ever held whole in memory or spooled to a
temporary file (Starlette's ``request.form()`` spools files).

All or nothing: a form is one request, answered once. If it is cut, stalls,
is malformed or refused, no file of it is published, also none whose part
had ended: its client never learns their URLs, and a user resubmits the
whole form. So each file's upload is kept unfinished (deferred length,
expiring like any unfinished upload, which a crash leaves for the sweeper)
until the closing boundary arrives, and only then are they finalized, in
order. Every upload the form began is discarded (bytes and record) when it
fails; a failure while publishing also removes the files published before
it (a ``post_finish`` hook may have seen those).

Fields that are not files are read and dropped, bounded in size: a tus
upload's metadata is fixed at its creation, where hooks and type checks see
it, and a field that follows a file in the form could join that file's
metadata only by a later change nobody checks; metadata that depends on the
order of fields would surprise. A part with an empty filename is what a
browser sends for a file input left empty: treated as a field.
"""

from __future__ import annotations

import base64
import logging
from collections import deque
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass

import anyio
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive

from tusserver import creation, errors, ownership, protocol
from tusserver.finishing import finalize
from tusserver.headers import CACHE_CONTROL, CONTENT_TYPE, UPLOAD_METADATA
from tusserver.held import HeldUpload
from tusserver.log_safety import describe
from tusserver.receiving import receive_body
from tusserver.record import Upload
from tusserver.services import Services, tus_headers
from tusserver.urls import upload_url

logger = logging.getLogger(__name__)

MULTIPART_FORM = "multipart/form-data"
# Parts of one form, files and fields together. Every file of a form is an
# upload in progress until the form ends (a record and a partial each).
MAX_FORM_PARTS = 1000
# The header lines of one part together (a Content-Disposition with a long
# filename, a Content-Type): far more than browsers send.
MAX_PART_HEADER_BYTES = 16 * 1024
# A field that is not a file: read and dropped, but not without end.
MAX_FIELD_BYTES = 64 * 1024
# RFC 2046, section 5.1.1: 1 to 70 characters.
_MAX_BOUNDARY = 70


def is_form(headers: Headers) -> bool:
    """Whether a POST carries a multipart form."""
    return protocol.parse_content_type(headers.get(CONTENT_TYPE)) == MULTIPART_FORM


@dataclass(frozen=True)
class _FilePart:
    name: str  # the form field's name
    filename: bytes  # as sent: browsers send UTF-8
    filetype: bytes  # the part's Content-Type, "" if none


async def receive_form(request: Request, services: Services) -> Response:
    """Store every file of the form, then answer 201 listing them."""
    form = _Form(request.receive, _boundary(request.headers), services.config.idle_timeout)
    received: list[tuple[_FilePart, HeldUpload]] = []
    owner = ownership.owner_of_new(ownership.requester(request))
    try:
        async with AsyncExitStack() as began:
            while (headers := await form.next_part()) is not None:
                part = _describe(headers)
                if part is None:
                    await form.skip_field()
                    continue
                draft = creation.Draft(None, _metadata(part, services), owner=owner)
                held = await began.enter_async_context(creation.create_held(services, draft))
                await _receive_file(request, services, form, held)
                received.append((part, held))
            if not received:
                raise errors.form_without_files()
            published = await _publish(services, [held.id for _, held in received])
    except errors.TusError as exc:
        # The uploads it began are discarded by now (creation.create_held).
        logger.info("form not stored (%s); nothing of it kept", exc.code)
        raise
    files = [
        {
            "id": upload.id,
            "url": upload_url(request, services.config, upload.id),
            "name": part.name,
            "filename": part.filename.decode("utf-8", "replace"),
            "size": upload.length,
            # Absent, not empty, with the file digest off.
            **({} if upload.sha256 is None else {"sha256": upload.sha256}),
        }
        for (part, _), upload in zip(received, published, strict=True)
    ]
    answered = tus_headers({CACHE_CONTROL: "no-store"})
    return JSONResponse({"files": files}, status_code=201, headers=answered)


async def _receive_file(
    request: Request, services: Services, form: _Form, held: HeldUpload
) -> None:
    """The part's bytes into the upload, as a PATCH body of unknown length.

    The upload stays unfinished (its length deferred) and unlocked after:
    ``_publish`` takes it up again when the whole form is in.
    """
    form.part_ended = False
    # The request as it is (headers, client, path for whatever looks at
    # them), but its body is this part's bytes.
    part_request = Request(request.scope, form.part_message)
    await receive_body(part_request, services, held, None, None)
    # A part that ends with no byte commits nothing, which leaves the lock.
    await held.release()
    if not form.part_ended:
        # Cut, stalled, malformed: the transfer stopped before the part's end.
        raise form.failure or errors.form_incomplete()


async def _publish(services: Services, upload_ids: Sequence[str]) -> list[Upload]:
    """Fix each upload's length at what was received, and finalize it.

    Should one fail, the files published before it are removed again
    (their records go with every other upload of the form, see
    ``receive_form``): the form fails whole.
    """
    published: list[Upload] = []
    try:
        for upload_id in upload_ids:
            async with services.locker.hold(upload_id) as held:
                await held.set_length(held.upload.offset)
                await finalize(services, held)
            published.append(held.upload)
    except BaseException:
        with anyio.CancelScope(shield=True):
            for upload in published:
                await _unpublish(services, upload)
        raise
    return published


async def _unpublish(services: Services, upload: Upload) -> None:
    try:
        await services.storage.delete(upload.id, upload.location)
    except OSError as exc:
        logger.warning(
            "upload %s: could not remove the file of a failed form: %s", upload.id, describe(exc)
        )


def _boundary(headers: Headers) -> bytes:
    _, parameters = parse_options_header(headers.get(CONTENT_TYPE, ""))
    boundary = parameters.get(b"boundary", b"")
    if not boundary:
        raise errors.form_malformed("its Content-Type names no boundary")
    if len(boundary) > _MAX_BOUNDARY:
        raise errors.form_malformed(f"its boundary is longer than {_MAX_BOUNDARY} characters")
    return boundary


def _describe(headers: dict[bytes, bytes]) -> _FilePart | None:
    """The file a part carries, or None for a field (400 if it is neither)."""
    disposition, parameters = parse_options_header(headers.get(b"content-disposition", b""))
    name = parameters.get(b"name")
    if disposition != b"form-data" or name is None:
        raise errors.form_malformed("a part has no Content-Disposition: form-data with a name")
    filename = parameters.get(b"filename", b"")
    if not filename:
        return None
    filetype = headers.get(b"content-type", b"").strip()
    return _FilePart(name.decode("utf-8", "replace"), filename, filetype)


def _metadata(part: _FilePart, services: Services) -> protocol.Metadata:
    """``filename`` and ``filetype``, as a tus client would send them in
    Upload-Metadata, and parsed by the same code (so bounded and checked
    alike, and echoed by HEAD)."""
    pairs = [("filename", part.filename)]
    if part.filetype:
        pairs.append(("filetype", part.filetype))
    raw = ",".join(f"{key} {base64.b64encode(value).decode('ascii')}" for key, value in pairs)
    metadata, _ = creation.read_metadata(
        Headers({UPLOAD_METADATA: raw}), services.config.max_metadata_size
    )
    return metadata


class _Form:
    """The request body through the push parser, one part at a time.

    The parser calls back synchronously while a chunk is written to it; the
    callbacks queue what they see (a part's headers, slices of its data, its
    end), and the readers below take from the queue, reading the next ASGI
    message only when it is empty: at most one message's worth (64 KiB from
    uvicorn) waits in memory.
    """

    def __init__(self, receive: Receive, boundary: bytes, idle_timeout: float) -> None:
        self._receive = receive
        self._idle_timeout = idle_timeout
        self._queue: deque[tuple[str, bytes]] = deque()
        # The headers of each queued "part", in the same order.
        self._part_headers: deque[dict[bytes, bytes]] = deque()
        self._headers: dict[bytes, bytes] = {}
        self._field = bytearray()
        self._value = bytearray()
        self._header_bytes = 0
        self._parts = 0
        self._body_ended = False
        self._disconnected = False
        # Why the form cannot go on; once set, nothing more is taken from it.
        self.failure: errors.TusError | None = None
        # Set when the part being read reached its end.
        self.part_ended = False
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_end": self._on_end,
            },
        )

    async def next_part(self) -> dict[bytes, bytes] | None:
        """The headers of the next part (names lower-cased), or None once the
        closing boundary is in. Raises when the form cannot go on."""
        kind, _ = await self._next_within_idle_timeout()
        if kind == "end":
            return None
        if kind != "part":  # data outside a part cannot come from the parser
            raise self.failure or errors.form_incomplete()
        return self._part_headers.popleft()

    async def skip_field(self) -> None:
        """Read a field's value to its end and drop it."""
        size = 0
        while True:
            kind, data = await self._next_within_idle_timeout()
            if kind == "part_end":
                return
            if kind != "data":
                raise self.failure or errors.form_incomplete()
            size += len(data)
            if size > MAX_FIELD_BYTES:
                raise errors.form_field_too_large(MAX_FIELD_BYTES)

    async def part_message(self) -> Message:
        """The current file part as the ASGI messages of a request body.

        The receiver of the transfer pipeline calls this; it must not raise
        there (it would come out of the pipeline's task group wrapped), so
        trouble reads as a disconnect and ``failure`` says what it was. The
        pipeline's own watchdog ends a part that stalls.
        """
        kind, data = await self._next()
        if kind == "data":
            return {"type": "http.request", "body": data, "more_body": True}
        if kind == "part_end":
            self.part_ended = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.disconnect"}

    async def _next_within_idle_timeout(self) -> tuple[str, bytes]:
        """Between and in fields no transfer watchdog runs: the idle timeout here."""
        with anyio.move_on_after(self._idle_timeout):
            return await self._next()
        raise errors.form_incomplete()

    async def _next(self) -> tuple[str, bytes]:
        """The next thing the parser saw: ("part" | "data" | "part_end" |
        "end" | "stop", data); "stop" when the form cannot go on."""
        while True:
            if self.failure is not None or self._disconnected:
                return "stop", b""
            if self._queue:
                return self._queue.popleft()
            if self._body_ended:
                # The body ended before the closing boundary.
                self.failure = errors.form_incomplete()
                continue
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self._disconnected = True
                continue
            body: bytes = message.get("body", b"")
            self._body_ended = not message.get("more_body", False)
            if body:
                self._write(body)

    def _write(self, body: bytes) -> None:
        try:
            self._parser.write(body)
        except MultipartParseError as exc:
            logger.info("form refused: malformed multipart body (%s)", describe(exc))
            self.failure = errors.form_malformed("not valid multipart/form-data")
        except errors.TusError as exc:  # a bound, from a callback
            self.failure = exc

    # --- parser callbacks: called inside ``self._parser.write`` ------------

    def _on_part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_FORM_PARTS:
            raise errors.form_too_many_parts(MAX_FORM_PARTS)
        self._headers = {}
        self._header_bytes = 0

    def _count_header(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_PART_HEADER_BYTES:
            raise errors.form_malformed(
                f"a part's headers are larger than {MAX_PART_HEADER_BYTES} bytes"
            )

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers[bytes(self._field).strip().lower()] = bytes(self._value).strip()
        self._field.clear()
        self._value.clear()

    def _on_headers_finished(self) -> None:
        self._part_headers.append(self._headers)
        self._queue.append(("part", b""))

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._queue.append(("data", data[start:end]))

    def _on_part_end(self) -> None:
        self._queue.append(("part_end", b""))

    def _on_end(self) -> None:
        self._queue.append(("end", b""))

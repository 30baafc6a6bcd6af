"""GET on an upload URL: download the finished file (not part of tus 1.0.0;
tusd and @tus/server offer the same).

The bytes stream from storage one block at a time, so memory stays flat
whatever the file size. A single byte range is honoured (206, or 416 with
``Content-Range: bytes */size``); ETag and Last-Modified let a browser
revalidate (304) and resume (If-Range). The file's type comes from the
client's metadata, so it is trusted only for types a browser cannot run as
a page or script: anything else is served as an ``attachment`` of type
``application/octet-stream``, and ``nosniff`` stops the browser guessing.

An unfinished upload answers 404 unless ``download_unfinished`` is set; then
the bytes received so far, ``[0, Upload-Offset)``, are served from the
partial, which never changes below the committed offset, with no caching.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Send

from storage_backends.base import FileStat
from tusserver import errors, expiry, naming, ownership, protocol
from tusserver.headers import (
    ACCEPT_RANGES,
    CACHE_CONTROL,
    CONTENT_DISPOSITION,
    CONTENT_LENGTH,
    CONTENT_RANGE,
    CONTENT_TYPE,
    CONTENT_TYPE_OPTIONS,
    ETAG,
    IF_MODIFIED_SINCE,
    IF_NONE_MATCH,
    IF_RANGE,
    LAST_MODIFIED,
    RANGE,
)
from tusserver.log_safety import describe
from tusserver.ranges import (
    ByteRange,
    http_date,
    if_range_holds,
    modified_since,
    none_match,
    parse_range,
)
from tusserver.record import Upload
from tusserver.services import Services, tus_headers
from tusserver.state import ClaimStatus

logger = logging.getLogger(__name__)

# Types a browser may show inline: it renders them as media or plain text and
# never runs script from them (tusd's list, plus common audio and AVIF).
# Not SVG or HTML (script), not PDF (viewers have a history of exploits).
SAFE_INLINE_TYPES = frozenset(
    {
        "text/plain",
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/bmp",
        "image/webp",
        "image/avif",
        "audio/wave",
        "audio/wav",
        "audio/x-wav",
        "audio/x-pn-wav",
        "audio/webm",
        "audio/ogg",
        "audio/mpeg",
        "audio/mp4",
        "audio/aac",
        "audio/flac",
        "video/mp4",
        "video/webm",
        "video/ogg",
        "application/ogg",
    }
)
FALLBACK_TYPE = "application/octet-stream"
# Content never changes at an upload URL, but an upload can be terminated:
# revalidate every time (a 304 costs one Redis read), so a deleted file
# stops being served at once; "private" keeps users' files out of shared caches.
FINISHED_CACHE_CONTROL = "private, no-cache"
_CHARSET = re.compile(r';\s*charset\s*=\s*"?([A-Za-z0-9._:-]{1,40})"?', re.IGNORECASE)
# RFC 6266 appendix D: some browsers percent-decode the plain filename. The
# quote and backslash would end or escape the quoted string, and NFKD turns
# full-width forms (U+FF02 and the like) back into them, so they go too,
# with the path and parameter separators.
_FALLBACK_UNSAFE = re.compile(r'[^\x20-\x7e]|[%"\\/:;*?<>|=]')


async def download_upload(request: Request, services: Services) -> Response:
    """GET: the file, whole or one byte range. No Tus-Resumable needed: a
    download link is followed by a plain browser, not a tus client."""
    upload_id = request.path_params["upload_id"]
    if not protocol.is_upload_id(upload_id):
        raise errors.not_found()
    upload, stat = await _locate(request, services, upload_id)
    await services.hooks.check_access(upload)
    finished = upload.is_complete
    # A published file is exactly its bytes; a partial (unfinished, or a
    # complete concatenation part) may hold stale bytes past its offset.
    size = stat.size if upload.location is not None else upload.offset
    headers = tus_headers({ACCEPT_RANGES: "bytes", CONTENT_TYPE_OPTIONS: "nosniff"})
    headers.update(content_headers(upload.metadata.values))
    etag = modified = None
    if finished:
        etag, modified = entity_tag(upload_id, stat), stat.modified
        headers.update(
            {ETAG: etag, LAST_MODIFIED: http_date(modified), CACHE_CONTROL: FINISHED_CACHE_CONTROL}
        )
        if _not_modified(request, etag, modified):
            # RFC 9110 15.4.5: a 304 repeats the validators and caching headers only.
            kept = (ETAG, LAST_MODIFIED, CACHE_CONTROL)
            return Response(status_code=304, headers={k: headers[k] for k in kept})
    else:
        # The bytes so far are a moving target: never cache them.
        headers[CACHE_CONTROL] = "no-store"

    byte_range = _requested_range(request, size, etag, modified)
    if byte_range is None:
        byte_range, status = ByteRange(0, size), 200
    else:
        status = 206
        headers[CONTENT_RANGE] = byte_range.content_range(size)
    headers[CONTENT_LENGTH] = str(byte_range.length)
    if byte_range.length == 0:
        # Complete with its headers: the client may go on (and remove the
        # upload through another instance) before a stream would have opened
        # the file, which would then cut the connection it reuses.
        return Response(status_code=status, headers=headers)
    blocks = services.storage.read(upload_id, _source(upload), byte_range.start, byte_range.end)
    logger.debug(
        "upload %s: serving bytes %d-%d of %d", upload_id, byte_range.start, byte_range.end, size
    )
    return BlockStreamResponse(upload_id, blocks, status_code=status, headers=headers)


async def _locate(request: Request, services: Services, upload_id: str) -> tuple[Upload, FileStat]:
    """The upload's record and the size and age of the file to serve."""
    upload = await _record(request, services, upload_id)
    try:
        return upload, await services.storage.stat(upload_id, _source(upload))
    except FileNotFoundError:
        if upload.is_complete:
            logger.error("upload %s: finished file %s is missing", upload_id, upload.location)
            raise errors.gone() from None
    # The partial's name is gone: a finalize may have published it since the
    # record was read. Look once more; still missing means the bytes are lost.
    upload = await _record(request, services, upload_id)
    try:
        return upload, await services.storage.stat(upload_id, _source(upload))
    except FileNotFoundError:
        raise errors.gone() from None


async def _record(request: Request, services: Services, upload_id: str) -> Upload:
    """The record, whether or not a PATCH is writing: a finished file no
    longer changes, and a partial never changes below the committed offset."""
    upload = await services.store.read(upload_id)
    if upload is ClaimStatus.MISSING:
        raise errors.not_found()
    if upload is ClaimStatus.GONE:
        raise errors.gone()
    assert not isinstance(upload, ClaimStatus)
    # Before anything of its state (expired, unfinished) shows.
    ownership.ensure(request, upload)
    if expiry.has_expired(upload):
        raise errors.gone()  # as HEAD says once Upload-Expires has passed
    if not upload.is_complete and not services.config.download_unfinished:
        raise errors.not_finished()
    return upload


def _source(upload: Upload) -> str | None:
    """Where the bytes are: the finished file, or (None) the partial."""
    return upload.location if upload.is_complete else None


def entity_tag(upload_id: str, stat: FileStat) -> str:
    """A strong ETag: a finished file never changes, so id, size and
    modification time name its bytes."""
    return f'"{upload_id}-{stat.size:x}-{int(stat.modified * 1_000_000):x}"'


def content_headers(metadata: Mapping[str, bytes]) -> dict[str, str]:
    """Content-Type and Content-Disposition from the client's metadata.

    Uppy sends ``type`` and ``name`` and copies them to ``filetype`` and
    ``filename``; tus-js-client and tuspy send what the application sets.
    """
    raw_type = (metadata.get("filetype") or metadata.get("type") or b"").decode("utf-8", "replace")
    media_type = protocol.parse_content_type(raw_type)
    if media_type in SAFE_INLINE_TYPES:
        content_type, disposition = media_type, "inline"
        charset = _CHARSET.search(raw_type)
        if media_type == "text/plain" and charset:
            content_type += f"; charset={charset.group(1)}"
    else:
        content_type, disposition = FALLBACK_TYPE, "attachment"
    filename = naming.client_filename(metadata)
    if filename:
        disposition += content_disposition_filename(filename)
    return {CONTENT_TYPE: content_type, CONTENT_DISPOSITION: disposition}


def content_disposition_filename(filename: str) -> str:
    """``; filename="<ASCII>"; filename*=UTF-8''<percent-encoded>`` (RFC 6266 4.3).

    ``filename`` is already sanitized (no quotes, backslashes, separators or
    controls). The plain parameter is an ASCII look-alike for old clients;
    ``filename*`` (RFC 8187) carries the exact name and wins where understood.
    """
    decomposed = unicodedata.normalize("NFKD", filename)
    ascii_name = "".join(c for c in decomposed if not unicodedata.combining(c))
    ascii_name = _FALLBACK_UNSAFE.sub("_", ascii_name)
    encoded = quote(filename, safe="!#$&+-.^_`|~")
    return f"; filename=\"{ascii_name}\"; filename*=UTF-8''{encoded}"


def _not_modified(request: Request, etag: str, modified: float) -> bool:
    """RFC 9110 13.2.2: If-None-Match decides; If-Modified-Since only without it."""
    if_none_match = request.headers.get(IF_NONE_MATCH)
    if if_none_match is not None:
        return none_match(if_none_match, etag)
    if_modified_since = request.headers.get(IF_MODIFIED_SINCE)
    return if_modified_since is not None and not modified_since(if_modified_since, modified)


def _requested_range(
    request: Request, size: int, etag: str | None, modified: float | None
) -> ByteRange | None:
    range_header = request.headers.get(RANGE)
    if range_header is None:
        return None
    if_range = request.headers.get(IF_RANGE)
    if if_range is not None and not if_range_holds(if_range, etag, modified):
        return None  # the client's copy is outdated: send the whole new file
    return parse_range(range_header, size)


class BlockStreamResponse(StreamingResponse):
    """A StreamingResponse that closes the storage's block iterator however
    the response ends (done, client gone, storage fault), so the file is
    closed at once instead of whenever the generator is collected."""

    def __init__(
        self,
        upload_id: str,
        blocks: AsyncIterator[bytes],
        *,
        status_code: int,
        headers: dict[str, str],
    ) -> None:
        super().__init__(blocks, status_code=status_code, headers=headers)
        self.upload_id = upload_id
        self.blocks = blocks

    async def stream_response(self, send: Send) -> None:
        start = {"type": "http.response.start", "status": self.status_code}
        await send({**start, "headers": self.raw_headers})
        try:
            while True:
                try:
                    block = await anext(self.blocks)
                except StopAsyncIteration:
                    break
                except OSError as exc:
                    # The status line is sent: all that is left is to end the
                    # connection short of Content-Length, which clients detect.
                    logger.error(
                        "upload %s: download failed mid-stream: %s", self.upload_id, describe(exc)
                    )
                    return
                await send({"type": "http.response.body", "body": block, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            if isinstance(self.blocks, AsyncGenerator):
                await self.blocks.aclose()

"""One function per tus request. Each reads like the spec: checks first, in the
order the spec gives them, with an early return or raise per failure.

Handlers talk only to the interfaces in ``Services``: the upload store, the
locker and the storage. They never see Redis or files. Receiving a body is
``receiving``'s job, finishing an upload ``finishing``'s.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response

from tusserver import (
    concatenation,
    creation,
    errors,
    expiry,
    extensions,
    metrics,
    ownership,
    protocol,
    screening,
    termination,
)
from tusserver.config import Config
from tusserver.finishing import finalize
from tusserver.headers import (
    CACHE_CONTROL,
    CONTENT_LENGTH,
    CONTENT_TYPE,
    LOCATION,
    TRANSFER_ENCODING,
    TUS_CHECKSUM_ALGORITHM,
    TUS_EXTENSION,
    TUS_MAX_SIZE,
    TUS_RESUMABLE,
    UPLOAD_CHECKSUM,
    UPLOAD_CONCAT,
    UPLOAD_DEFER_LENGTH,
    UPLOAD_LENGTH,
    UPLOAD_METADATA,
    UPLOAD_OFFSET,
)
from tusserver.headers import TUS_VERSION as TUS_VERSION_HEADER
from tusserver.held import HeldUpload
from tusserver.hook_events import HookType
from tusserver.locking import kept_alive
from tusserver.protocol import TUS_VERSION
from tusserver.receiving import receive_body
from tusserver.record import Upload
from tusserver.services import Services, tus_headers
from tusserver.urls import upload_url, uploads_path

logger = logging.getLogger(__name__)


def options(request: Request, services: Services) -> Response:
    """Server discovery. No Tus-Resumable check (spec: OPTIONS ignores it).

    200 rather than 204: some browsers reject a 204 preflight (docs/clients.md).
    """
    headers = {
        TUS_RESUMABLE: TUS_VERSION,
        TUS_VERSION_HEADER: ",".join(protocol.SUPPORTED_VERSIONS),
        TUS_EXTENSION: ",".join(extensions.advertised(services.storage)),
        TUS_CHECKSUM_ALGORITHM: ",".join(protocol.CHECKSUM_ALGORITHMS),
    }
    if services.config.max_size is not None:
        headers[TUS_MAX_SIZE] = str(services.config.max_size)
    return Response(status_code=200, headers=headers)


async def create_upload(request: Request, services: Services) -> Response:
    """POST to the endpoint: creation, creation-defer-length, creation-with-upload,
    concatenation."""
    config = services.config
    headers = request.headers
    protocol.check_tus_resumable(headers.get(TUS_RESUMABLE))
    concat = _upload_concat(request, config)
    if concat is not None:
        extensions.concatenator(services.storage)  # 400 before anything is created
    if concat is not None and concat.is_final:
        return await _create_final(request, services, concat)
    length = _declared_length(headers)
    if length is not None and config.max_size is not None and length > config.max_size:
        raise errors.size_exceeded(config.max_size)
    metadata, declared = creation.read_metadata(headers, config.max_metadata_size)
    checksum = _chunk_checksum(headers)
    content_length = _content_length(headers)
    has_body = _has_body(headers, content_length)
    with_data = protocol.parse_content_type(headers.get(CONTENT_TYPE)) == (
        protocol.OFFSET_OCTET_STREAM
    )
    if has_body and not with_data:
        raise errors.unsupported_content_type()
    draft = creation.Draft(
        length,
        metadata,
        declared,
        concat="" if concat is None else concat.role,
        owner=ownership.owner_of_new(ownership.requester(request)),
    )
    # Only a creation that writes or finishes needs the lock; taking it costs
    # nothing extra here (one pipeline with the record). Data with neither
    # Content-Length nor chunked framing is possible over HTTP/2: read it.
    if not (has_body or length == 0 or (with_data and content_length is None)):
        return _created(request, config, await creation.create(services, draft))
    async with creation.create_held(services, draft) as held:
        await receive_body(request, services, held, content_length, checksum)
    return _created(request, config, held.upload)


async def _create_final(
    request: Request, services: Services, concat: protocol.UploadConcat
) -> Response:
    """POST with Upload-Concat: final: assemble, then finalize like any upload."""
    has_body = _has_body(request.headers, _content_length(request.headers))
    final = await concatenation.check_final(
        services,
        request.headers,
        concat,
        has_body=has_body,
        requester=ownership.requester(request),
    )
    async with creation.create_held(services, final.draft) as held:
        await concatenation.fill(services, held, final.parts)
        await screening.check_assembled(services, held.upload)
        await finalize(services, held)
    return _created(request, services.config, held.upload)


def _created(request: Request, config: Config, upload: Upload) -> Response:
    location = upload_url(request, config, upload.id)
    created = tus_headers({LOCATION: location, UPLOAD_OFFSET: str(upload.offset)})
    created.update(expiry.expires_headers(upload))
    return Response(status_code=201, headers=created)


def _upload_concat(request: Request, config: Config) -> protocol.UploadConcat | None:
    value = request.headers.get(UPLOAD_CONCAT)
    if value is None:
        return None
    # Clients name parts by the URLs they were given (Location): through a
    # proxy or a public URL, those paths differ from the app's own.
    public_path = urlsplit(upload_url(request, config, "")).path
    return protocol.parse_upload_concat(
        value, request.url.path, uploads_path(request, config), public_path
    )


async def head_upload(request: Request, services: Services) -> Response:
    """HEAD: where to resume: the committed offset, at once, even while a PATCH
    runs (see ``Locker.read``); the PATCH that follows takes the upload over
    from a writer that stalled (``transfer``)."""
    upload_id = _upload_id(request)
    protocol.check_tus_resumable(request.headers.get(TUS_RESUMABLE))
    await ownership.check(request, services, upload_id)  # before any work on the upload
    upload = await services.locker.read(upload_id)
    if expiry.has_expired(upload):
        raise errors.gone()  # in line with the Upload-Expires announced; not swept yet
    await services.hooks.check_access(upload)
    if upload.needs_finalize:
        # A finalize was interrupted (crash): finish it before saying "done".
        async with services.locker.hold(upload_id) as held:
            upload = held.upload
            if upload.needs_finalize:
                await finalize(services, held)
    if upload.is_failed:
        # Not "offset == length": the client must not believe it is done.
        raise errors.failed(upload.failure_code, upload.failure or "unknown")
    headers = tus_headers({UPLOAD_OFFSET: str(upload.offset), CACHE_CONTROL: "no-store"})
    headers.update(expiry.expires_headers(upload))
    if upload.length is None:
        headers[UPLOAD_DEFER_LENGTH] = "1"
    else:
        headers[UPLOAD_LENGTH] = str(upload.length)
    if upload.metadata.raw:
        headers[UPLOAD_METADATA] = upload.metadata.raw
    if upload.concat:
        _add_concat_headers(headers, upload)
    return Response(status_code=200, headers=headers)


def _add_concat_headers(headers: dict[str, str], upload: Upload) -> None:
    """Spec: HEAD echoes Upload-Concat as received on creation, and a final
    upload shows no Upload-Offset until its concatenation has finished."""
    if upload.concat == protocol.CONCAT_FINAL:
        headers[UPLOAD_CONCAT] = f"{protocol.CONCAT_FINAL};{' '.join(upload.parts)}"
        if not upload.is_fully_received:
            del headers[UPLOAD_OFFSET]
    else:
        headers[UPLOAD_CONCAT] = upload.concat


async def patch_upload(request: Request, services: Services) -> Response:
    """PATCH: append the body at Upload-Offset."""
    upload_id = _upload_id(request)
    headers = request.headers
    protocol.check_tus_resumable(headers.get(TUS_RESUMABLE))
    content_type = protocol.parse_content_type(headers.get(CONTENT_TYPE))
    if content_type != protocol.OFFSET_OCTET_STREAM:
        raise errors.unsupported_content_type()
    offset_header = headers.get(UPLOAD_OFFSET)
    if offset_header is None:
        raise errors.missing_upload_offset()
    offset = protocol.parse_non_negative(offset_header, UPLOAD_OFFSET)
    length_header = headers.get(UPLOAD_LENGTH)
    length = (
        None if length_header is None else protocol.parse_non_negative(length_header, UPLOAD_LENGTH)
    )
    content_length = _content_length(headers)
    checksum = _chunk_checksum(headers)
    await ownership.check(request, services, upload_id)  # before claiming the lock

    async with services.locker.hold(upload_id) as held:
        upload = held.upload
        if expiry.has_expired(upload):
            raise errors.gone()  # in line with the Upload-Expires announced; not swept yet
        await _check_access(services, held)
        if upload.is_failed:
            raise errors.failed(upload.failure_code, upload.failure or "unknown")
        if upload.concat == protocol.CONCAT_FINAL:
            raise errors.final_upload_immutable()  # spec: 403, and nothing modified
        if upload.is_complete and offset == upload.offset:
            return _patched(upload)  # nothing left to send: done
        if offset != upload.offset:
            # Also for a complete upload (as tusd does): a PATCH that raced
            # the one that finished it, or a client repeating its last PATCH
            # after a lost 204, must not read a 2xx as "these bytes were
            # accepted"; the current offset tells it the upload is done.
            raise errors.mismatched_offset(upload.offset)
        if length is not None:
            await _settle_length(services, held, length, content_length)
        await receive_body(request, services, held, content_length, checksum)
    return _patched(upload)


async def delete_upload(request: Request, services: Services) -> Response:
    """DELETE (termination): bytes first, then the record; a tombstone stays."""
    upload_id = _upload_id(request)
    protocol.check_tus_resumable(request.headers.get(TUS_RESUMABLE))
    await ownership.check(request, services, upload_id)  # before claiming the lock
    async with services.locker.hold(upload_id) as held:
        await _check_access(services, held)
        await termination.terminate(services, held)
    metrics.recorder().terminated()
    termination.announce(services, held.upload)
    return Response(status_code=204, headers=tus_headers())


async def _check_access(services: Services, held: HeldUpload) -> None:
    """pre-access with the lock held: kept alive while the hook answers."""
    if services.hooks.enabled(HookType.PRE_ACCESS):
        async with kept_alive(held.lease):
            await services.hooks.check_access(held.upload)


async def _settle_length(
    services: Services, held: HeldUpload, length: int, content_length: int | None
) -> None:
    """creation-defer-length: the length is set once, on a PATCH, never changed.

    A body announced longer than the length leaves is refused before the
    length is recorded, so that the refused PATCH changes nothing. A chunked
    body's size shows only as it streams: its length is announced, and
    recorded with its bytes only if it fits (``HeldUpload.announce_length``).
    """
    upload = held.upload
    if upload.length is not None:
        if length != upload.length:
            raise errors.length_changed()
        return
    if length < upload.offset:
        raise errors.length_below_offset()
    if content_length is not None and content_length > length - upload.offset:
        raise errors.body_exceeds_length()
    max_size = services.config.max_size
    if max_size is not None and length > max_size:
        raise errors.size_exceeded(max_size)
    too_small = screening.below_minimum(services.config, length)
    if too_small is not None:
        # The file it ends up being is too small: nothing can make this
        # upload acceptable, so it fails for good.
        raise await screening.refuse(services, held, screening.TOO_SMALL, too_small)
    if content_length is None:
        held.announce_length(length)
    else:
        await held.set_length(length)


def _patched(upload: Upload) -> Response:
    headers = tus_headers({UPLOAD_OFFSET: str(upload.offset), **expiry.expires_headers(upload)})
    return Response(status_code=204, headers=headers)


def _declared_length(headers: Headers) -> int | None:
    """Upload-Length on POST, or None when deferred (Upload-Defer-Length: 1)."""
    length = headers.get(UPLOAD_LENGTH)
    defer = headers.get(UPLOAD_DEFER_LENGTH)
    if length is not None and defer is not None:
        raise errors.length_and_defer()
    if length is not None:
        return protocol.parse_non_negative(length, UPLOAD_LENGTH)
    if defer is not None:
        protocol.parse_defer_length(defer)
        return None
    raise errors.missing_upload_length()


def _content_length(headers: Headers) -> int | None:
    value = headers.get(CONTENT_LENGTH)
    if value is None:
        return None
    return protocol.parse_non_negative(value, CONTENT_LENGTH)


def _has_body(headers: Headers, content_length: int | None) -> bool:
    if content_length is not None:
        return content_length > 0
    return "chunked" in headers.get(TRANSFER_ENCODING, "").lower()


def _chunk_checksum(headers: Headers) -> protocol.Checksum | None:
    """Upload-Checksum, parsed before any byte of the body is read (400 if bad)."""
    value = headers.get(UPLOAD_CHECKSUM)
    return None if value is None else protocol.parse_checksum(value)


def _upload_id(request: Request) -> str:
    upload_id: str = request.path_params["upload_id"]
    # Checked before any Redis key or path is derived from it.
    if not protocol.is_upload_id(upload_id):
        raise errors.not_found()
    return upload_id

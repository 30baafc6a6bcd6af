"""One function per tus request. Each reads like the spec: checks first, in the
order the spec gives them, with an early return or raise per failure.

Handlers talk only to the interfaces in ``Services``: the upload store, the
locker and the storage. They never see Redis or files.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import anyio
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response

from storage_backends.base import Storage
from tusserver import errors, naming, protocol
from tusserver.config import Config
from tusserver.headers import (
    CACHE_CONTROL,
    CONTENT_LENGTH,
    CONTENT_TYPE,
    LOCATION,
    TRANSFER_ENCODING,
    TUS_EXTENSION,
    TUS_MAX_SIZE,
    TUS_RESUMABLE,
    UPLOAD_DEFER_LENGTH,
    UPLOAD_LENGTH,
    UPLOAD_METADATA,
    UPLOAD_OFFSET,
)
from tusserver.headers import TUS_VERSION as TUS_VERSION_HEADER
from tusserver.hooks import FinishedUpload, Hooks
from tusserver.locking import Lease, Locker
from tusserver.protocol import TUS_VERSION
from tusserver.state import CommitStatus, StateUnavailable, Upload, UploadStore
from tusserver.transfer import End, Transfer, receive_into_storage
from tusserver.urls import upload_url

logger = logging.getLogger(__name__)


@dataclass
class Services:
    config: Config
    store: UploadStore
    locker: Locker
    storage: Storage
    hooks: Hooks = field(default_factory=Hooks)


def tus_headers(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Headers every tus response carries, plus ``extra``."""
    headers = {TUS_RESUMABLE: TUS_VERSION}
    if extra:
        headers.update(extra)
    return headers


def options(request: Request, services: Services) -> Response:
    """Server discovery. No Tus-Resumable check (spec: OPTIONS ignores it).

    200 rather than 204: some browsers reject a 204 preflight (CLIENTS.md).
    """
    headers = {
        TUS_RESUMABLE: TUS_VERSION,
        TUS_VERSION_HEADER: ",".join(protocol.SUPPORTED_VERSIONS),
        TUS_EXTENSION: ",".join(protocol.EXTENSIONS),
    }
    if services.config.max_size is not None:
        headers[TUS_MAX_SIZE] = str(services.config.max_size)
    return Response(status_code=200, headers=headers)


async def create_upload(request: Request, services: Services) -> Response:
    """POST to the endpoint: creation, creation-defer-length, creation-with-upload."""
    config = services.config
    headers = request.headers
    protocol.check_tus_resumable(headers.get(TUS_RESUMABLE))
    length = _declared_length(headers)
    if length is not None and config.max_size is not None and length > config.max_size:
        raise errors.SIZE_EXCEEDED.with_headers({TUS_MAX_SIZE: str(config.max_size)})
    raw_metadata = headers.get(UPLOAD_METADATA, "").strip()
    protocol.parse_metadata(raw_metadata, config.max_metadata_size)
    content_length = _content_length(headers)
    has_body = _has_body(headers, content_length)
    with_data = protocol.parse_content_type(headers.get(CONTENT_TYPE)) == (
        protocol.OFFSET_OCTET_STREAM
    )
    if has_body and not with_data:
        raise errors.UNSUPPORTED_CONTENT_TYPE

    upload = Upload(
        id=protocol.new_upload_id(),
        offset=0,
        length=length,
        metadata=raw_metadata,
        created=time.time(),
    )
    # Only a creation that writes or finishes needs the lock; taking it costs
    # nothing extra here (one pipeline with the record). Data with neither
    # Content-Length nor chunked framing is possible over HTTP/2: read it.
    needs_lock = has_body or length == 0 or (with_data and content_length is None)
    lock_token = services.locker.new_token() if needs_lock else None
    await services.storage.create(upload.id)
    await services.store.create(upload, lock_token=lock_token, lock_ttl_ms=services.locker.ttl_ms)
    lease = services.locker.adopt(upload.id, lock_token) if lock_token else None
    logger.info("upload %s created (length %s)", upload.id, _describe_length(upload))
    if lease is not None:
        try:
            await _receive(request, services, upload, lease, content_length)
        except errors.TusError as error:
            if error.status == 413:
                # The client never learns this upload's URL: do not leave it behind.
                await services.storage.delete(upload.id)
                await services.store.terminate(upload.id, lease.token)
            raise
        finally:
            await services.locker.release(lease)
    location = upload_url(request, config, upload.id)
    return Response(
        status_code=201,
        headers=tus_headers({LOCATION: location, UPLOAD_OFFSET: str(upload.offset)}),
    )


async def head_upload(request: Request, services: Services) -> Response:
    """HEAD: where to resume. Asks a running PATCH to let go first, so the
    offset is fresh (a reconnecting client's HEAD is how it takes over)."""
    upload_id = _upload_id(request)
    protocol.check_tus_resumable(request.headers.get(TUS_RESUMABLE))
    upload = await services.locker.read_unlocked(upload_id)
    if upload.is_fully_received and not upload.is_complete:
        # A finalize was interrupted (crash): finish it before saying "done".
        async with services.locker.hold(upload_id) as (upload, lease):
            if upload.is_fully_received and not upload.is_complete:
                await _finalize(services, upload, lease)
    headers = tus_headers({UPLOAD_OFFSET: str(upload.offset), CACHE_CONTROL: "no-store"})
    if upload.length is None:
        headers[UPLOAD_DEFER_LENGTH] = "1"
    else:
        headers[UPLOAD_LENGTH] = str(upload.length)
    if upload.metadata:
        headers[UPLOAD_METADATA] = upload.metadata
    return Response(status_code=200, headers=headers)


async def patch_upload(request: Request, services: Services) -> Response:
    """PATCH: append the body at Upload-Offset."""
    upload_id = _upload_id(request)
    headers = request.headers
    protocol.check_tus_resumable(headers.get(TUS_RESUMABLE))
    content_type = protocol.parse_content_type(headers.get(CONTENT_TYPE))
    if content_type != protocol.OFFSET_OCTET_STREAM:
        raise errors.UNSUPPORTED_CONTENT_TYPE
    offset_header = headers.get(UPLOAD_OFFSET)
    if offset_header is None:
        raise errors.MISSING_UPLOAD_OFFSET
    offset = protocol.parse_non_negative(offset_header, UPLOAD_OFFSET)
    length_header = headers.get(UPLOAD_LENGTH)
    length = (
        None if length_header is None else protocol.parse_non_negative(length_header, UPLOAD_LENGTH)
    )
    content_length = _content_length(headers)

    async with services.locker.hold(upload_id) as (upload, lease):
        if upload.is_complete:
            # Idempotent completion: a client retrying its last PATCH after
            # a lost 204 learns it is done instead of getting an error.
            return _patched(upload)
        if offset != upload.offset:
            raise errors.mismatched_offset(upload.offset)
        if length is not None:
            await _settle_length(services, upload, length)
        await _receive(request, services, upload, lease, content_length)
    return _patched(upload)


async def delete_upload(request: Request, services: Services) -> Response:
    """DELETE (termination): bytes first, then the record; a tombstone stays."""
    upload_id = _upload_id(request)
    protocol.check_tus_resumable(request.headers.get(TUS_RESUMABLE))
    async with services.locker.hold(upload_id) as (upload, lease):
        await services.storage.delete(upload_id, upload.location)
        if await services.store.terminate(upload_id, lease.token) is not CommitStatus.OK:
            raise errors.LOCKED
        lease.released = True
    logger.info("upload %s terminated", upload_id)
    return Response(status_code=204, headers=tus_headers())


async def _receive(
    request: Request,
    services: Services,
    upload: Upload,
    lease: Lease,
    content_length: int | None,
) -> None:
    """Store the request body at the upload's offset, commit, finalize if done.

    Updates ``upload`` in place. The caller holds ``lease``.
    """
    config = services.config
    limit = _remaining(upload, config.max_size)
    if content_length is not None and limit is not None and content_length > limit:
        raise _too_large(upload, config)
    if content_length != 0 and not upload.is_fully_received:
        transfer = Transfer()
        try:
            await receive_into_storage(
                transfer,
                request.receive,
                services.storage,
                lease,
                upload.offset,
                limit=limit,
                block_size=config.block_size,
                idle_timeout=config.idle_timeout,
            )
        finally:
            # Shielded, so that it also runs when the server cancels this
            # request at shutdown: the bytes stored count either way, and the
            # client resumes after them. A body too large counts for nothing.
            with anyio.CancelScope(shield=True):
                if transfer.stored and transfer.end is not End.TOO_LARGE:
                    await _commit(services, upload, lease, upload.offset + transfer.stored)
        if transfer.end is End.TOO_LARGE:
            raise _too_large(upload, config)
        if transfer.end is not End.COMPLETE:
            logger.info(
                "upload %s: body ended early (%s); kept %d bytes",
                upload.id,
                transfer.end.value,
                transfer.stored,
            )
        if isinstance(transfer.failure, FileNotFoundError):
            # The partial is gone (removed behind our back): the bytes the
            # record counts are lost, so the upload is too. 410 makes a
            # client start over instead of retrying forever.
            logger.error("upload %s: partial missing; terminating the upload", upload.id)
            await services.store.terminate(upload.id, lease.token)
            lease.released = True
            raise errors.GONE
        if transfer.failure is not None:
            logger.error("upload %s: storage write failed: %s", upload.id, transfer.failure)
            raise errors.STORAGE_FAILED
    if upload.is_fully_received:
        await _finalize(services, upload, lease)


async def _commit(services: Services, upload: Upload, lease: Lease, new_offset: int) -> None:
    finishing = upload.length is not None and new_offset == upload.length
    status = await services.store.commit(
        upload.id, lease.token, upload.offset, new_offset, release=not finishing
    )
    if status is CommitStatus.MISSING:
        raise errors.GONE
    if status is not CommitStatus.OK:
        # Our lock lapsed and another request moved on: these bytes do not count.
        logger.warning("upload %s: commit refused (%s)", upload.id, status.value)
        raise errors.LOCKED
    upload.offset = new_offset
    lease.released = not finishing


async def _finalize(services: Services, upload: Upload, lease: Lease) -> None:
    assert upload.length is not None
    metadata = protocol.parse_metadata(upload.metadata, services.config.max_metadata_size)
    name = naming.final_name(services.config.final_name, upload.id, metadata)
    location = await services.storage.finalize(upload.id, name, upload.length)
    status = await _record_completion(services, upload, lease, location)
    if status is not CommitStatus.OK:
        logger.error(
            "upload %s: finalized as %s but could not record it (%s)",
            upload.id,
            location,
            status.value,
        )
        raise errors.INTERNAL
    lease.released = True
    upload.state, upload.location = "complete", location
    logger.info("upload %s finished as %s (%d bytes)", upload.id, location, upload.length)
    try:
        await services.storage.delete(upload.id)  # the partial's name; the bytes stay published
    except OSError as exc:
        logger.warning("upload %s: could not remove the partial's name: %s", upload.id, exc)
    if services.hooks.post_finish is not None:
        finished = FinishedUpload(upload.id, upload.length, metadata, location)
        try:
            await services.hooks.post_finish(finished)
        except Exception:
            logger.exception("upload %s: post-finish hook failed", upload.id)


async def _record_completion(
    services: Services, upload: Upload, lease: Lease, location: str
) -> CommitStatus:
    """Record the finished file, retrying a passing Redis fault a few times:
    the partial is already renamed, so failing here would strand the upload."""
    for delay in (0.2, 0.4):
        try:
            return await services.store.complete(upload.id, lease.token, location)
        except StateUnavailable:
            logger.warning("upload %s: finalized as %s; retrying to record it", upload.id, location)
            await anyio.sleep(delay)
    return await services.store.complete(upload.id, lease.token, location)


async def _settle_length(services: Services, upload: Upload, length: int) -> None:
    """creation-defer-length: the length is set once, on a PATCH, never changed."""
    if upload.length is not None:
        if length != upload.length:
            raise errors.LENGTH_CHANGED
        return
    if length < upload.offset:
        raise errors.LENGTH_BELOW_OFFSET
    max_size = services.config.max_size
    if max_size is not None and length > max_size:
        raise errors.SIZE_EXCEEDED.with_headers({TUS_MAX_SIZE: str(max_size)})
    await services.store.set_length(upload.id, length)
    upload.length = length


def _patched(upload: Upload) -> Response:
    return Response(status_code=204, headers=tus_headers({UPLOAD_OFFSET: str(upload.offset)}))


def _remaining(upload: Upload, max_size: int | None) -> int | None:
    """How many more bytes this upload may take, or None for no limit."""
    if upload.length is not None:
        return upload.length - upload.offset
    if max_size is not None:
        return max_size - upload.offset
    return None


def _too_large(upload: Upload, config: Config) -> errors.TusError:
    if upload.length is not None:
        return errors.BODY_EXCEEDS_LENGTH
    return errors.SIZE_EXCEEDED.with_headers({TUS_MAX_SIZE: str(config.max_size)})


def _declared_length(headers: Headers) -> int | None:
    """Upload-Length on POST, or None when deferred (Upload-Defer-Length: 1)."""
    length = headers.get(UPLOAD_LENGTH)
    defer = headers.get(UPLOAD_DEFER_LENGTH)
    if length is not None and defer is not None:
        raise errors.LENGTH_AND_DEFER
    if length is not None:
        return protocol.parse_non_negative(length, UPLOAD_LENGTH)
    if defer is not None:
        protocol.parse_defer_length(defer)
        return None
    raise errors.MISSING_UPLOAD_LENGTH


def _content_length(headers: Headers) -> int | None:
    value = headers.get(CONTENT_LENGTH)
    if value is None:
        return None
    return protocol.parse_non_negative(value, CONTENT_LENGTH)


def _has_body(headers: Headers, content_length: int | None) -> bool:
    if content_length is not None:
        return content_length > 0
    return "chunked" in headers.get(TRANSFER_ENCODING, "").lower()


def _upload_id(request: Request) -> str:
    upload_id: str = request.path_params["upload_id"]
    # Checked before any Redis key or path is derived from it.
    if not protocol.is_upload_id(upload_id):
        raise errors.NOT_FOUND
    return upload_id


def _describe_length(upload: Upload) -> str:
    return "deferred" if upload.length is None else str(upload.length)

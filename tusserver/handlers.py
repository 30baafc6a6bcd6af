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
from urllib.parse import urlsplit

import anyio
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response

from storage_backends.base import Storage
from tusserver import concatenation, errors, expiry, integrity, naming, protocol
from tusserver.config import Config
from tusserver.digests import FILE_DIGEST, Digests, Hasher, RunningDigests
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
from tusserver.hooks import FinishedUpload, Hooks
from tusserver.locking import Lease, Locker
from tusserver.protocol import TUS_VERSION
from tusserver.state import COMPLETE, FAILED, CommitStatus, StateUnavailable, Upload, UploadStore
from tusserver.transfer import End, Transfer, receive_into_storage
from tusserver.urls import upload_url

logger = logging.getLogger(__name__)


@dataclass
class Services:
    config: Config
    store: UploadStore
    locker: Locker
    storage: Storage
    # File digests in progress in this process (see digests.RunningDigests).
    running: RunningDigests = field(default_factory=RunningDigests)
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
    if concat is not None and concat.is_final:
        return await _create_final(request, services, concat)
    length = _declared_length(headers)
    if length is not None and config.max_size is not None and length > config.max_size:
        raise errors.SIZE_EXCEEDED.with_headers({TUS_MAX_SIZE: str(config.max_size)})
    raw_metadata = headers.get(UPLOAD_METADATA, "").strip()
    integrity.declared_checksum(protocol.parse_metadata(raw_metadata, config.max_metadata_size))
    checksum = _chunk_checksum(headers)
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
        concat="" if concat is None else concat.role,
    )
    upload.expires = upload.created + config.expire_after
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
            await _receive(request, services, upload, lease, content_length, checksum)
        except errors.TusError as error:
            if error.status in (413, 460):
                # The client never learns this upload's URL: do not leave it behind.
                await services.storage.delete(upload.id)
                await services.store.terminate(upload.id, lease.token)
            raise
        finally:
            await services.locker.release(lease)
    return _created(request, config, upload)


async def _create_final(
    request: Request, services: Services, concat: protocol.UploadConcat
) -> Response:
    """POST with Upload-Concat: final: assemble, then finalize like any upload."""
    has_body = _has_body(request.headers, _content_length(request.headers))
    upload, lease = await concatenation.assemble_final(
        services, request.headers, concat, has_body=has_body
    )
    try:
        await _finalize(services, upload, lease)
    finally:
        await services.locker.release(lease)
    return _created(request, services.config, upload)


def _created(request: Request, config: Config, upload: Upload) -> Response:
    location = upload_url(request, config, upload.id)
    created = tus_headers({LOCATION: location, UPLOAD_OFFSET: str(upload.offset)})
    created.update(expiry.expires_headers(upload))
    return Response(status_code=201, headers=created)


def _uploads_path(request: Request, config: Config) -> str:
    """The URL path under which this app serves uploads (its mount point included)."""
    root_path: str = request.scope.get("root_path", "")
    return root_path + config.base_path


def _upload_concat(request: Request, config: Config) -> protocol.UploadConcat | None:
    value = request.headers.get(UPLOAD_CONCAT)
    if value is None:
        return None
    # Clients name parts by the URLs they were given (Location): through a
    # proxy or a public URL, those paths differ from the app's own.
    public_path = urlsplit(upload_url(request, config, "")).path
    return protocol.parse_upload_concat(
        value, request.url.path, _uploads_path(request, config), public_path
    )


async def head_upload(request: Request, services: Services) -> Response:
    """HEAD: where to resume. Asks a running PATCH to let go first, so the
    offset is fresh (a reconnecting client's HEAD is how it takes over)."""
    upload_id = _upload_id(request)
    protocol.check_tus_resumable(request.headers.get(TUS_RESUMABLE))
    upload = await services.locker.read_unlocked(upload_id)
    if expiry.has_expired(upload):
        raise errors.GONE  # in line with the Upload-Expires announced; not swept yet
    if _needs_finalize(upload):
        # A finalize was interrupted (crash): finish it before saying "done".
        async with services.locker.hold(upload_id) as (upload, lease):
            if _needs_finalize(upload):
                await _finalize(services, upload, lease)
    if upload.is_failed:
        # Not "offset == length": the client must not believe it is done.
        raise errors.upload_checksum_failed(upload.failure or "unknown")
    headers = tus_headers({UPLOAD_OFFSET: str(upload.offset), CACHE_CONTROL: "no-store"})
    headers.update(expiry.expires_headers(upload))
    if upload.length is None:
        headers[UPLOAD_DEFER_LENGTH] = "1"
    else:
        headers[UPLOAD_LENGTH] = str(upload.length)
    if upload.metadata:
        headers[UPLOAD_METADATA] = upload.metadata
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
    checksum = _chunk_checksum(headers)

    async with services.locker.hold(upload_id) as (upload, lease):
        if expiry.has_expired(upload):
            raise errors.GONE  # in line with the Upload-Expires announced; not swept yet
        if upload.is_failed:
            raise errors.upload_checksum_failed(upload.failure or "unknown")
        if upload.concat == protocol.CONCAT_FINAL:
            raise errors.FINAL_UPLOAD_IMMUTABLE  # spec: 403, and nothing modified
        if upload.is_complete:
            # Idempotent completion: a client retrying its last PATCH after
            # a lost 204 learns it is done instead of getting an error.
            return _patched(upload)
        if offset != upload.offset:
            raise errors.mismatched_offset(upload.offset)
        if length is not None:
            await _settle_length(services, upload, length)
        await _receive(request, services, upload, lease, content_length, checksum)
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
    services.running.forget(upload_id)
    logger.info("upload %s terminated", upload_id)
    return Response(status_code=204, headers=tus_headers())


async def _receive(
    request: Request,
    services: Services,
    upload: Upload,
    lease: Lease,
    content_length: int | None,
    checksum: protocol.Checksum | None,
) -> None:
    """Store the request body at the upload's offset, commit, finalize if done.

    Updates ``upload`` in place. The caller holds ``lease``. With a
    ``checksum`` (Upload-Checksum), the chunk counts only if it arrived whole
    and matches; otherwise its bytes stay past the offset, where the next
    write overwrites them.
    """
    config = services.config
    limit = _remaining(upload, config.max_size)
    if content_length is not None and limit is not None and content_length > limit:
        raise _too_large(upload, config)
    if content_length != 0 and not upload.is_fully_received:
        digests = Digests(_running_file_digests(services, upload), checksum)
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
                digests=digests,
            )
        finally:
            # Shielded, so that it also runs when the server cancels this
            # request at shutdown: the bytes stored count either way, and the
            # client resumes after them. A body too large counts for nothing.
            with anyio.CancelScope(shield=True):
                if _countable(transfer, digests):
                    await _commit(services, upload, lease, upload.offset + transfer.stored)
                    _keep_file_digests(services, upload, transfer, digests)
        if transfer.end is End.TOO_LARGE:
            raise _too_large(upload, config)
        if transfer.end is not End.COMPLETE:
            logger.info(
                "upload %s: body ended early (%s); kept %d bytes",
                upload.id,
                transfer.end.value,
                transfer.stored if checksum is None else 0,
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
        if checksum is not None and not transfer.whole_body:
            raise errors.CHECKSUM_INCOMPLETE
        if checksum is not None and not digests.chunk_matches():
            logger.info("upload %s: Upload-Checksum mismatch; chunk discarded", upload.id)
            raise errors.CHECKSUM_MISMATCH
    if upload.is_fully_received:
        await _finalize(services, upload, lease)


def _countable(transfer: Transfer, digests: Digests) -> bool:
    """Whether the bytes this request stored move the offset."""
    if not transfer.stored or transfer.end is End.TOO_LARGE:
        return False
    if digests.chunk is None:
        return True  # tus: keep as much as possible of an interrupted body
    # A checksummed chunk counts only whole, fully stored and matching.
    return (
        transfer.whole_body
        and transfer.failure is None
        and transfer.stored == transfer.received == digests.fed
        and digests.chunk_matches()
    )


def _running_file_digests(services: Services, upload: Upload) -> dict[str, Hasher] | None:
    metadata = protocol.parse_metadata(upload.metadata, services.config.max_metadata_size)
    algorithms = integrity.file_algorithms(integrity.declared_checksum(metadata))
    return services.running.resume(upload.id, upload.offset, algorithms)


def _keep_file_digests(
    services: Services, upload: Upload, transfer: Transfer, digests: Digests
) -> None:
    """After a commit: remember the file digest at the new offset if it is exact."""
    if digests.file is not None and digests.fed == transfer.stored:
        services.running.keep(upload.id, upload.offset, digests.file)
    else:
        services.running.forget(upload.id)


async def _commit(services: Services, upload: Upload, lease: Lease, new_offset: int) -> None:
    finishing = upload.length is not None and new_offset == upload.length
    # Sliding expiry: stored bytes show the client is still at it.
    expires = time.time() + services.config.expire_after
    status = await services.store.commit(
        upload.id, lease.token, upload.offset, new_offset, release=not finishing, expires=expires
    )
    if status is CommitStatus.MISSING:
        raise errors.GONE
    if status is not CommitStatus.OK:
        # Our lock lapsed and another request moved on: these bytes do not count.
        logger.warning("upload %s: commit refused (%s)", upload.id, status.value)
        raise errors.LOCKED
    upload.offset = new_offset
    if upload.expires is not None:
        upload.expires = expires
    lease.released = not finishing


async def _finalize(services: Services, upload: Upload, lease: Lease) -> None:
    """Verify the whole file, publish it under its final name, record it."""
    assert upload.length is not None
    if upload.concat == protocol.CONCAT_PARTIAL:
        # A fragment for final uploads (concatenation): complete, but kept
        # staged and never published; no location.
        await _complete_partial(services, upload, lease)
        return
    metadata = protocol.parse_metadata(upload.metadata, services.config.max_metadata_size)
    declared = integrity.declared_checksum(metadata)
    digests = await integrity.file_digests(
        services.storage, services.running, upload, integrity.file_algorithms(declared)
    )
    services.running.forget(upload.id)
    failure = integrity.mismatch(declared, digests)
    if failure is not None:
        # Nothing is published; the partial stays for inspection until the
        # upload expires or is deleted, and the record says why.
        logger.warning("upload %s: not finalized: %s", upload.id, failure)
        if await services.store.fail(upload.id, lease.token, failure) is CommitStatus.OK:
            lease.released = True
        upload.state, upload.failure = FAILED, failure
        raise errors.upload_checksum_failed(failure)
    name = naming.final_name(services.config.final_name, upload.id, metadata)
    location = await services.storage.finalize(upload.id, name, upload.length)
    sha256 = digests[FILE_DIGEST].hex()
    status = await _record_completion(services, upload, lease, location, sha256)
    if status is not CommitStatus.OK:
        logger.error(
            "upload %s: finalized as %s but could not record it (%s)",
            upload.id,
            location,
            status.value,
        )
        raise errors.INTERNAL
    lease.released = True
    upload.state, upload.location, upload.sha256 = COMPLETE, location, sha256
    upload.expires = None  # a published file does not expire
    logger.info(
        "upload %s finished as %s (%d bytes, sha256 %s)", upload.id, location, upload.length, sha256
    )
    try:
        await services.storage.delete(upload.id)  # the partial's name; the bytes stay published
    except OSError as exc:
        logger.warning("upload %s: could not remove the partial's name: %s", upload.id, exc)
    if services.hooks.post_finish is not None:
        finished = FinishedUpload(upload.id, upload.length, metadata, location, sha256)
        try:
            await services.hooks.post_finish(finished)
        except Exception:
            logger.exception("upload %s: post-finish hook failed", upload.id)


async def _complete_partial(services: Services, upload: Upload, lease: Lease) -> None:
    # No file digest: a fragment is never published on its own; the final
    # upload made of it records its own. It keeps expiring (expiry sweeps it).
    services.running.forget(upload.id)
    status = await services.store.complete_unpublished(upload.id, lease.token)
    if status is not CommitStatus.OK:
        logger.error("upload %s: could not record completion (%s)", upload.id, status.value)
        raise errors.INTERNAL
    lease.released = True
    upload.state = COMPLETE
    logger.info("upload %s: partial upload complete (%d bytes)", upload.id, upload.length)


async def _record_completion(
    services: Services, upload: Upload, lease: Lease, location: str, sha256: str
) -> CommitStatus:
    """Record the finished file, retrying a passing Redis fault a few times:
    the partial is already renamed, so failing here would strand the upload."""
    for delay in (0.2, 0.4):
        try:
            return await services.store.complete(
                upload.id, lease.token, location, sha256, retention=services.config.retention
            )
        except StateUnavailable:
            logger.warning("upload %s: finalized as %s; retrying to record it", upload.id, location)
            await anyio.sleep(delay)
    return await services.store.complete(
        upload.id, lease.token, location, sha256, retention=services.config.retention
    )


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
    headers = tus_headers({UPLOAD_OFFSET: str(upload.offset), **expiry.expires_headers(upload)})
    return Response(status_code=204, headers=headers)


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


def _needs_finalize(upload: Upload) -> bool:
    return upload.is_fully_received and not upload.is_complete and not upload.is_failed


def _chunk_checksum(headers: Headers) -> protocol.Checksum | None:
    """Upload-Checksum, parsed before any byte of the body is read (400 if bad)."""
    value = headers.get(UPLOAD_CHECKSUM)
    return None if value is None else protocol.parse_checksum(value)


def _upload_id(request: Request) -> str:
    upload_id: str = request.path_params["upload_id"]
    # Checked before any Redis key or path is derived from it.
    if not protocol.is_upload_id(upload_id):
        raise errors.NOT_FOUND
    return upload_id


def _describe_length(upload: Upload) -> str:
    return "deferred" if upload.length is None else str(upload.length)

"""Final uploads assembled from partial uploads (tus "Concatenation" extension).

A *partial* upload (``Upload-Concat: partial``) is created and written like
any other upload. Once complete it is not published: it stays staged as a
fragment (see ``finishing.finalize``), so that one or several final uploads
can be assembled from it, until it is deleted or expires.

A *final* upload (``Upload-Concat: final;<url> <url> ...``) carries no bytes
of its own. Its POST names the parts; each must be a complete partial upload
of this endpoint. The final's length is the sum of theirs. The bytes are
copied by the storage (``Storage.concat``; inside the kernel locally) while
the POST holds the final's lock, then the final is finalized like any upload,
so its file appears under its final name whole, at once. Assembly is
synchronous: the 201 means the final upload is complete.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import anyio
from starlette.datastructures import Headers

from tusserver import errors, expiry, extensions, integrity, protocol
from tusserver.finishing import discard_unannounced
from tusserver.headers import UPLOAD_DEFER_LENGTH, UPLOAD_LENGTH, UPLOAD_METADATA
from tusserver.locking import Lease, kept_alive
from tusserver.state import CommitStatus, Upload, UploadStore

if TYPE_CHECKING:
    from tusserver.services import Services

logger = logging.getLogger(__name__)


async def assemble_final(
    services: Services, headers: Headers, concat: protocol.UploadConcat, *, has_body: bool
) -> tuple[Upload, Lease]:
    """Create the final upload and fill it with its parts' bytes.

    Returns the upload, fully received (offset == length) but not yet
    finalized, and the lease of its lock: the caller finalizes it and then
    releases the lease. On failure nothing of the final upload is left
    behind and the error says why (400 for a bad part, 413 over the size
    limit, 503 for a storage fault).
    """
    config = services.config
    # Spec: "The Client MUST NOT include the Upload-Length header in the
    # final upload creation"; the length is the parts' to decide.
    if UPLOAD_LENGTH in headers or UPLOAD_DEFER_LENGTH in headers:
        raise errors.final_length_not_allowed()
    if has_body:
        # Spec: a final upload must not be modified (403 for PATCH); the
        # same holds for data sent with its creation (tusd answers alike).
        raise errors.final_upload_immutable()
    raw_metadata = headers.get(UPLOAD_METADATA, "").strip()
    # The final's declared digest is checked at the end; its format is
    # checked now, before any byte is copied.
    integrity.declared_checksum(protocol.parse_metadata(raw_metadata, config.max_metadata_size))
    lengths = await _lengths_of_parts(services.store, concat)
    length = sum(lengths)
    if config.max_size is not None and length > config.max_size:
        raise errors.size_exceeded(config.max_size)

    upload = Upload(
        id=protocol.new_upload_id(),
        offset=0,
        length=length,
        # Spec: the parts' metadata is not transferred; the final has its own.
        metadata=raw_metadata,
        created=time.time(),
        concat=protocol.CONCAT_FINAL,
        parts=concat.urls,
    )
    # Expiring like any upload until published: a crash mid-assembly leaves
    # nothing the sweeper does not remove in time.
    upload.expires = expiry.expiry_from(config, upload.created)
    token = services.locker.new_token()
    await services.storage.create(upload.id)
    await services.store.create(upload, lock_token=token, lock_ttl_ms=services.locker.ttl_ms)
    lease = services.locker.adopt(upload.id, token)
    try:
        await _fill(services, upload, lease, list(zip(concat.ids, lengths, strict=True)))
    except BaseException:
        with anyio.CancelScope(shield=True):
            await discard_unannounced(services, upload, lease)
        raise
    logger.info(
        "upload %s assembled from %d partial uploads (%d bytes)", upload.id, len(concat.ids), length
    )
    return upload, lease


async def _lengths_of_parts(store: UploadStore, concat: protocol.UploadConcat) -> list[int]:
    """Each part's length, once each is known to be a complete partial upload."""
    parts = await store.read_many(concat.ids)
    lengths = []
    for number, (url, part) in enumerate(zip(concat.urls, parts, strict=True), start=1):
        if part is None or expiry.has_expired(part):
            # Expired counts as gone, as HEAD says (410) before the sweeper runs.
            raise errors.concat_part_not_found(number, url)
        if part.concat != protocol.CONCAT_PARTIAL:
            raise errors.concat_part_not_partial(number, url)
        # Fully received is complete (tus: offset == length), even if a crash
        # kept the completion from being recorded: its bytes are committed.
        if part.is_failed:
            raise errors.concat_part_failed(number, url)
        if not part.is_fully_received or part.length is None:
            raise errors.concat_part_incomplete(number, url)
        lengths.append(part.length)
    return lengths


async def _fill(
    services: Services, upload: Upload, lease: Lease, parts: list[tuple[str, int]]
) -> None:
    """Copy the parts into the final's partial and commit offset == length."""
    assert upload.length is not None
    failure: OSError | None = None
    # A large copy can outlast the lock's TTL: keep the lock while it runs.
    async with kept_alive(lease):
        try:
            await extensions.concatenator(services.storage).concat(upload.id, parts)
        except OSError as exc:
            failure = exc
    if isinstance(failure, FileNotFoundError):
        logger.warning("upload %s: a part vanished during assembly: %s", upload.id, failure)
        raise errors.concat_part_removed()
    if failure is not None:
        logger.error("upload %s: assembly failed: %s", upload.id, failure)
        raise errors.storage_failure(failure)
    status = await services.store.commit(upload.id, lease.token, 0, upload.length, release=False)
    if status is not CommitStatus.OK:
        logger.error("upload %s: assembled but not committed (%s)", upload.id, status.value)
        raise errors.locked()
    upload.offset = upload.length

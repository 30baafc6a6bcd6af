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
from dataclasses import dataclass

from starlette.datastructures import Headers

from tusserver import errors, expiry, extensions, protocol
from tusserver.creation import Draft, read_metadata
from tusserver.headers import UPLOAD_DEFER_LENGTH, UPLOAD_LENGTH
from tusserver.held import HeldUpload
from tusserver.locking import kept_alive
from tusserver.log_safety import describe
from tusserver.services import Services
from tusserver.state import UploadStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinalUpload:
    """A final upload's creation, checked: what to create and what to fill it with."""

    draft: Draft
    parts: list[tuple[str, int]]  # (part's upload id, its length), in order


async def check_final(
    services: Services, headers: Headers, concat: protocol.UploadConcat, *, has_body: bool
) -> FinalUpload:
    """Check a final upload's creation request and its parts before anything
    is created: 400 for a bad part, 413 over the size limit."""
    config = services.config
    # Spec: "The Client MUST NOT include the Upload-Length header in the
    # final upload creation"; the length is the parts' to decide.
    if UPLOAD_LENGTH in headers or UPLOAD_DEFER_LENGTH in headers:
        raise errors.final_length_not_allowed()
    if has_body:
        # Spec: a final upload must not be modified (403 for PATCH); the
        # same holds for data sent with its creation (tusd answers alike).
        raise errors.final_upload_immutable()
    # Spec: the parts' metadata is not transferred; the final has its own.
    # Its declared digest is checked at the end, its format now.
    metadata, declared = read_metadata(headers, config.max_metadata_size)
    lengths = await _lengths_of_parts(services.store, concat)
    length = sum(lengths)
    if config.max_size is not None and length > config.max_size:
        raise errors.size_exceeded(config.max_size)
    draft = Draft(
        length,
        metadata,
        declared,
        concat=protocol.CONCAT_FINAL,
        parts=concat.urls,
    )
    return FinalUpload(draft, list(zip(concat.ids, lengths, strict=True)))


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


async def fill(services: Services, held: HeldUpload, parts: list[tuple[str, int]]) -> None:
    """Copy the parts into the final's partial and commit offset == length.

    On failure the error says why (400 for a part removed meanwhile, 503 for
    a storage fault); the caller discards the final upload.
    """
    upload = held.upload
    assert upload.length is not None
    failure: OSError | None = None
    # A large copy can outlast the lock's TTL: keep the lock while it runs.
    async with kept_alive(held.lease):
        try:
            await extensions.concatenator(services.storage).concat(upload.id, parts)
        except OSError as exc:
            failure = exc
    if isinstance(failure, FileNotFoundError):
        logger.warning("upload %s: a part vanished during assembly", upload.id)
        raise errors.concat_part_removed()
    if failure is not None:
        logger.error("upload %s: assembly failed: %s", upload.id, describe(failure))
        raise errors.storage_failure(failure)
    await held.commit(upload.length)
    logger.info(
        "upload %s assembled from %d partial uploads (%d bytes)",
        upload.id,
        len(parts),
        upload.length,
    )

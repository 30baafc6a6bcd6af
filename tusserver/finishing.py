"""Finishing an upload once every byte is in: verify the whole file against
a declared digest, publish it under its final name, record its location and
SHA-256 (or, for a concatenation part, only mark it complete).

The caller holds the upload's lock.
"""

from __future__ import annotations

import logging
from typing import NoReturn

import anyio

from tusserver import errors, integrity, naming, protocol
from tusserver.digests import FILE_DIGEST
from tusserver.hooks import FinishedUpload
from tusserver.locking import Lease, kept_alive
from tusserver.services import Services
from tusserver.state import COMPLETE, FAILED, CommitStatus, StateUnavailable, Upload

logger = logging.getLogger(__name__)


async def finalize(services: Services, upload: Upload, lease: Lease) -> None:
    """Verify the whole file, publish it under its final name, record it.

    A concatenation part is verified too, then only marked complete: it stays
    staged, never published, for final uploads to be made of.
    """
    assert upload.length is not None
    metadata = protocol.parse_metadata(upload.metadata, services.config.max_metadata_size)
    declared = integrity.declared_checksum(metadata)
    # Reading a file back to hash it, and fsyncing a large one, can outlast
    # the lock's TTL: keep the lock until the outcome is recorded.
    async with kept_alive(lease):
        digests = await integrity.file_digests(
            services.storage, services.running, upload, integrity.file_algorithms(declared)
        )
        services.running.forget(upload.id)
        failure = integrity.mismatch(declared, digests)
        if failure is not None:
            await _fail(services, upload, lease, failure)
        if upload.concat == protocol.CONCAT_PARTIAL:
            await _complete_partial(services, upload, lease)
            return
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
        raise errors.internal()
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


async def _fail(services: Services, upload: Upload, lease: Lease, failure: str) -> NoReturn:
    """The declared digest does not match: nothing is published; the partial
    stays for inspection until the upload expires or is deleted, and the
    record says why."""
    logger.warning("upload %s: not finalized: %s", upload.id, failure)
    if await services.store.fail(upload.id, lease.token, failure) is CommitStatus.OK:
        lease.released = True
    upload.state, upload.failure = FAILED, failure
    raise errors.upload_checksum_failed(failure)


async def _complete_partial(services: Services, upload: Upload, lease: Lease) -> None:
    # It keeps expiring (expiry sweeps it); the final uploads made of it
    # record their own digests.
    status = await services.store.complete_unpublished(upload.id, lease.token)
    if status is not CommitStatus.OK:
        logger.error("upload %s: could not record completion (%s)", upload.id, status.value)
        raise errors.internal()
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


async def discard_unannounced(services: Services, upload: Upload, lease: Lease) -> None:
    """Remove an upload whose URL was never given out (its creation failed):
    bytes, record and lock. Never raises: what is left, the sweeper removes."""
    try:
        await services.storage.delete(upload.id)
        await services.store.terminate(upload.id, lease.token)
        lease.released = True
    except (OSError, StateUnavailable) as exc:
        logger.warning("upload %s: could not discard the refused upload: %s", upload.id, exc)
    await services.locker.release(lease)

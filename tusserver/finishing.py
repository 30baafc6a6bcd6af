"""Finishing an upload once every byte is in: verify the whole file against
a declared digest, publish it under its final name, record its location and
SHA-256 (or, for a concatenation part, only mark it complete).

The caller holds the upload's lock.
"""

from __future__ import annotations

import logging

import anyio

from tusserver import errors, integrity, metrics, naming, protocol
from tusserver.digests import FILE_DIGEST
from tusserver.held import HeldUpload
from tusserver.hook_events import HookType
from tusserver.hooking import file_info
from tusserver.locking import kept_alive
from tusserver.log_safety import describe
from tusserver.services import Services
from tusserver.state import StateUnavailable

logger = logging.getLogger(__name__)


async def finalize(services: Services, held: HeldUpload) -> None:
    """Verify the whole file, publish it under its final name, record it.

    A concatenation part is verified too, then only marked complete: it stays
    staged, never published, for final uploads to be made of.
    """
    upload = held.upload
    assert upload.length is not None
    declared = upload.declared_checksum
    algorithms = integrity.file_algorithms(declared, services.config.file_digest)
    # Reading a file back to hash it, and fsyncing a large one, can outlast
    # the lock's TTL: keep the lock until the outcome is recorded.
    async with kept_alive(held.lease):
        published: str | None = None
        try:
            digests = await integrity.file_digests(
                services.storage, services.running, upload, algorithms
            )
        except FileNotFoundError:
            if upload.concat == protocol.CONCAT_PARTIAL:
                raise  # a part is never published: its bytes are lost
            published = await _published_earlier(services, held)
            digests = await integrity.published_digests(
                services.storage, upload, published, algorithms
            )
        services.running.forget(upload.id)
        failure = integrity.mismatch(declared, digests)
        if failure is not None:
            # Nothing is published; the partial stays for inspection until
            # the upload expires or is deleted, and the record says why. (A
            # file published earlier passed this check then: failing now, it
            # was changed since, and the record says so.)
            logger.warning("upload %s: not finalized: %s", upload.id, failure)
            refusal = errors.upload_checksum_failed(failure)
            await held.fail(failure, refusal.code)
            raise refusal
        # Blocking: nothing is published until the hook agreed; without an
        # answer (503) the upload stays fully received, and the client's next
        # HEAD or PATCH finalizes it again. A file published already was
        # agreed to before; it is not asked again.
        if published is None:
            await services.hooks.decide(HookType.PRE_FINISH, file_info(upload))
        if upload.concat == protocol.CONCAT_PARTIAL:
            # It keeps expiring (expiry sweeps it); the final uploads made of
            # it record their own digests.
            post_finish = await services.hooks.announce_finish(upload)
            await held.complete_unpublished(post_finish=post_finish)
            metrics.recorder().finished()
            logger.info("upload %s: partial upload complete (%d bytes)", upload.id, upload.length)
            return
        location = published or await _publish(services, held)
        # None with the file digest off: the record and events then carry none.
        sha256 = digests[FILE_DIGEST].hex() if FILE_DIGEST in digests else None
        post_finish = await services.hooks.announce_finish(upload, location, sha256)
        await _record_completion(services, held, location, sha256, post_finish)
        metrics.recorder().finished()
    logger.info(
        "upload %s finished as %s (%d bytes%s)",
        upload.id,
        location,
        upload.length,
        "" if sha256 is None else f", sha256 {sha256}",
    )
    try:
        await services.storage.delete(upload.id)  # the partial's name; the bytes stay published
    except OSError as exc:
        logger.warning(
            "upload %s: could not remove the partial's name: %s", upload.id, describe(exc)
        )


async def _publish(services: Services, held: HeldUpload) -> str:
    """Publish the partial under its final name; where it went. Finalizing
    again after a publish whose completion was never recorded returns the
    same location rather than a second copy (see ``Storage.finalize``)."""
    upload = held.upload
    assert upload.length is not None
    name = naming.final_name(services.config.final_name, upload.id, upload.metadata.values)
    return await services.storage.finalize(upload.id, name, upload.length)


async def _published_earlier(services: Services, held: HeldUpload) -> str:
    """Where an earlier finalize published the upload whose partial is gone.

    It published the file, then its completion record was lost: the
    process died before recording it, or Redis acknowledged the record but
    failed over before replicating it (the completion answered
    NotReplicated, so the storage's note of the publish was kept). The
    storage's finalize finds the file from that note and never publishes
    again; FileNotFoundError if no finalize published it (the bytes are
    lost)."""
    location = await _publish(services, held)
    logger.warning("upload %s: published earlier as %s; recording it", held.id, location)
    return location


async def published_earlier(services: Services, held: HeldUpload) -> str | None:
    """Where an earlier finalize published the upload, whose partial the
    caller found gone; None if none did (its bytes are lost). Never
    publishes: without a partial, the storage's finalize only reads its note."""
    try:
        return await _publish(services, held)
    except FileNotFoundError:
        return None


async def _record_completion(
    services: Services,
    held: HeldUpload,
    location: str,
    sha256: str | None,
    post_finish: str | None,
) -> None:
    """Record the finished file, retrying a passing Redis fault a few times:
    the partial is already renamed, so failing here would strand the upload
    until the next HEAD or PATCH finalizes it again (which finds the file
    already published and records it)."""
    retention = services.config.retention
    for delay in (0.2, 0.4):
        try:
            await held.complete(location, sha256, retention=retention, post_finish=post_finish)
            return
        except StateUnavailable:
            logger.warning("upload %s: finalized as %s; retrying to record it", held.id, location)
            await anyio.sleep(delay)
    await held.complete(location, sha256, retention=retention, post_finish=post_finish)

"""Receiving a request body into an upload: stream it to storage, decide what
counts (interrupted bodies keep their bytes; a checksummed chunk counts only
whole and matching), commit the new offset, finalize when the last byte is in.

The caller (a PATCH, or a POST with data) holds the upload's lock.
"""

from __future__ import annotations

import logging
import time
from typing import NoReturn

import anyio
from starlette.requests import Request

from tusserver import errors, expiry, extensions, integrity, metrics, protocol, screening
from tusserver.config import Config
from tusserver.digests import Digests, Hasher
from tusserver.finishing import finalize, published_earlier
from tusserver.held import HeldUpload
from tusserver.hook_events import HookResponse, HookType
from tusserver.hooking import file_info, rejection
from tusserver.log_safety import describe
from tusserver.record import Upload
from tusserver.services import Services
from tusserver.state import StateUnavailable
from tusserver.transfer import Checkpoints, End, Transfer, receive_into_storage

logger = logging.getLogger(__name__)


async def receive_body(
    request: Request,
    services: Services,
    held: HeldUpload,
    content_length: int | None,
    checksum: protocol.Checksum | None,
) -> None:
    """Store the request body at the upload's offset, commit, finalize if done.

    The caller holds the upload (``held``). With a
    ``checksum`` (Upload-Checksum), the chunk counts only if it arrived whole
    and matches; otherwise its bytes stay past the offset, where the next
    write overwrites them.
    """
    config = services.config
    upload = held.upload
    limit = _remaining(upload, config.max_size)
    if content_length is not None and limit is not None and content_length > limit:
        raise _too_large(upload, config)
    head_check = await screening.head_check(services, upload)
    # A body of unknown size is read even when no byte is left to send: any
    # byte in it is a 413, never dropped behind a 204. An empty body with an
    # Upload-Checksum is read too: it must match the checksum of nothing.
    if checksum is not None or (
        content_length != 0 and (content_length is None or not upload.is_fully_received)
    ):
        start = upload.offset
        digests = Digests(_running_file_digests(services, upload), checksum)
        transfer = Transfer()
        try:
            await receive_into_storage(
                transfer,
                request.receive,
                services.storage,
                held.lease,
                upload.offset,
                limit=limit,
                block_size=services.block_size,
                idle_timeout=config.idle_timeout,
                takeover_after=config.takeover_after,
                digests=digests,
                checkpoints=_checkpoints(services, held, start, content_length, checksum, limit),
                head_check=head_check,
                body_length=content_length,
            )
        finally:
            # Shielded, so that it also runs when the server cancels this
            # request at shutdown: the bytes stored count either way, and the
            # client resumes after them. A body too large counts for nothing.
            with anyio.CancelScope(shield=True):
                metrics.recorder().received(transfer.received)
                if _countable(transfer, digests):
                    await _make_durable(services, held)
                    # Sliding expiry: stored bytes show the client is still at it.
                    expires = expiry.expiry_from(config, time.time())
                    await held.commit(start + transfer.stored, expires=expires)
                    _keep_file_digests(services, upload, transfer, digests)
                    _progress(services, held)
        if held.stopped_by_hook is not None:
            await _stop(services, held, held.stopped_by_hook)
        if transfer.end is End.TOO_LARGE:
            too_large = _too_large(upload, config)
            # Nothing was committed, so a length this chunked body declared
            # was never recorded: the upload stays deferred.
            held.withdraw_length()
            raise too_large
        if transfer.end is End.RELEASED:
            # Never a 2xx: another request has the upload now, and a client
            # reads a 2xx as "all sent was accepted".
            raise errors.taken_over(upload.offset)
        if transfer.end is End.LOCK_LOST:
            # Never a 2xx either: the lock lapsed and another request has
            # the upload. With bytes stored the commit above was refused
            # already; this is the PATCH that stored none before it noticed.
            raise errors.lock_lost(upload.offset)
        if transfer.end is End.SHUTDOWN:
            # Retryable, and never a 2xx, as for a takeover: the client
            # resumes on another instance from the offset committed here.
            logger.info("upload %s: cut by shutdown at offset %d", upload.id, upload.offset)
            raise errors.shutting_down(upload.offset)
        if transfer.end is End.REFUSED:
            assert transfer.refusal is not None
            raise await screening.refuse(
                services, held, screening.CONTENT_REFUSED, transfer.refusal
            )
        if transfer.end is not End.COMPLETE:
            logger.info(
                "upload %s: body ended early (%s); kept %d bytes",
                upload.id,
                transfer.end.value,
                transfer.stored if checksum is None else 0,
            )
        # The body did not run past a length it declared: recorded now if
        # no commit of its bytes did (a chunked body that stored nothing).
        await held.record_length()
        if isinstance(transfer.failure, FileNotFoundError) and await _published_before(
            services, held
        ):
            return
        if isinstance(transfer.failure, FileNotFoundError):
            # The partial is gone (removed behind our back): the bytes the
            # record counts are lost, so the upload is too. 410 makes a
            # client start over instead of retrying forever.
            logger.error("upload %s: partial missing; terminating the upload", upload.id)
            await held.try_terminate()
            raise errors.gone()
        if transfer.failure is not None:
            failure = describe(transfer.failure)
            logger.error("upload %s: storage write failed: %s", upload.id, failure)
            raise errors.storage_failure(transfer.failure)
        if checksum is not None and not transfer.whole_body:
            raise errors.checksum_incomplete()
        if checksum is not None and not digests.chunk_matches():
            logger.info("upload %s: Upload-Checksum mismatch; chunk discarded", upload.id)
            raise errors.checksum_mismatch()
    if upload.is_fully_received:
        # A head shorter than HEAD_SIZE is judged once the whole upload is
        # in: here, if the bytes that completed it came without a body (a
        # deferred length declared on an empty PATCH).
        refusal = None if head_check is None else head_check.judge_if_ready()
        if refusal is not None:
            raise await screening.refuse(services, held, screening.CONTENT_REFUSED, refusal)
        await finalize(services, held)


async def _published_before(services: Services, held: HeldUpload) -> bool:
    """Finish an upload whose partial is gone because an earlier finalize
    published every byte of it, though the record counts fewer: a request
    that reached a Redis primary before a failover read a final offset that
    primary never replicated, and published on it (see ``finishing``). The
    bytes are all stored, in the published file: the offset is moved to the
    length and the completion recorded, instead of a 410. False when no
    finalize published the upload (its bytes are lost)."""
    upload = held.upload
    if upload.length is None or upload.concat == protocol.CONCAT_PARTIAL:
        return False
    if await published_earlier(services, held) is None:
        return False
    logger.warning("upload %s: every byte was published earlier; counting them", upload.id)
    await held.commit(upload.length)
    await finalize(services, held)
    return True


def _checkpoints(
    services: Services,
    held: HeldUpload,
    start: int,
    content_length: int | None,
    checksum: protocol.Checksum | None,
    limit: int | None,
) -> Checkpoints | None:
    """Commits while the body streams, so that a crash of this process keeps
    what was stored (the offset is otherwise moved only when the body ends).

    None where bytes must not count before the body ends: a checksummed
    chunk counts only whole and matching, and a body of unknown length under
    a size limit counts for nothing if it runs past the limit.
    """
    config = services.config
    if checksum is not None or (content_length is None and limit is not None):
        return None

    async def commit(stored: int) -> bool:
        try:
            await _make_durable(services, held)
            await held.checkpoint(start + stored, expires=expiry.expiry_from(config, time.time()))
            _progress(services, held)
        except (StateUnavailable, OSError) as exc:
            # The next checkpoint, or the commit at the end, tries again.
            logger.warning("upload %s: checkpoint not committed: %s", held.id, describe(exc))
        except errors.TusError:
            return False  # the lock was lost, or the upload removed: stop writing
        return True

    return Checkpoints(commit, config.checkpoint_bytes, config.checkpoint_interval)


def _progress(services: Services, held: HeldUpload) -> None:
    """post-receive at the committed offset (rate-limited, in the background).
    A StopUpload answer ends this request's reading as a release request
    would; ``_stop`` then finishes the job once the bytes are committed."""

    def stop(answer: HookResponse) -> None:
        if held.stopped_by_hook is None:
            held.stopped_by_hook = answer
            held.lease.release_requested.set()

    services.hooks.progress(held.upload, stop)


async def _stop(services: Services, held: HeldUpload, answer: HookResponse) -> NoReturn:
    """A post-receive hook stopped the upload: as tusd does, it is terminated
    (bytes, then record) and the client gets the hook's answer, 400 by
    default, which tells it not to resume."""
    upload = held.upload
    logger.info("upload %s: stopped by the post-receive hook at %d bytes", upload.id, upload.offset)
    try:
        await services.storage.delete(upload.id)
    except OSError as exc:
        logger.warning(
            "upload %s: could not remove the stopped upload's bytes: %s", upload.id, describe(exc)
        )
    await held.try_terminate()
    metrics.recorder().terminated()
    services.running.forget(upload.id)
    services.hooks.notify(HookType.POST_TERMINATE, file_info(upload))
    raise rejection(answer, 400, "upload_stopped", "The server stopped this upload.")


async def _make_durable(services: Services, held: HeldUpload) -> None:
    """With durable commits, flush what was stored before a commit counts it."""
    if services.config.durable_commits:
        await extensions.flusher(services.storage).flush(held.id)


def _countable(transfer: Transfer, digests: Digests) -> bool:
    """Whether the bytes this request stored move the offset (none of a body
    too large or refused: the transfer counts them as none)."""
    if not transfer.stored:
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
    algorithms = integrity.file_algorithms(upload.declared_checksum, services.config.file_digest)
    if not algorithms:
        return None  # nothing to hash: no file digest, none declared
    return services.running.resume(upload.id, upload.offset, algorithms)


def _keep_file_digests(
    services: Services, upload: Upload, transfer: Transfer, digests: Digests
) -> None:
    """After a commit: remember the file digest at the new offset if it is exact."""
    if digests.file is not None and digests.fed == transfer.stored:
        services.running.keep(upload.id, upload.offset, digests.file)
    else:
        services.running.forget(upload.id)


def _remaining(upload: Upload, max_size: int | None) -> int | None:
    """How many more bytes this upload may take, or None for no limit."""
    if upload.length is not None:
        return upload.length - upload.offset
    if max_size is not None:
        return max_size - upload.offset
    return None


def _too_large(upload: Upload, config: Config) -> errors.TusError:
    if upload.length is not None:
        return errors.body_exceeds_length()
    return errors.size_exceeded(config.max_size)

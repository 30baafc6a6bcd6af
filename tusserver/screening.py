"""The operator's rules on what may be uploaded, applied: the size floor
(``min_size``) and the allowed types (``allow_types``).

``content_types`` judges metadata and bytes; this module decides when,
reads back the few head bytes an earlier request stored, and fails an
upload that breaks a rule: its bytes removed through the storage API, its
record marked failed with the error's code, so HEAD and PATCH answer that
error from then on.

Where each check runs (docs/architecture.md):

- creation (``creation._store_new``, every new upload): the declared
  length against ``min_size`` and the declared types against the patterns;
- the body (``receiving.receive_body``): the first ``HEAD_SIZE`` bytes,
  sniffed as they arrive, before any block past them is stored;
- a final upload of a concatenation, after its parts are assembled: its
  head sniffed like an upload's. Its parts are slices of one file, not
  files: their bytes are never sniffed and ``min_size`` does not apply.
"""

from __future__ import annotations

import logging

from tusserver import content_types, errors, protocol
from tusserver.config import Config
from tusserver.content_types import HEAD_SIZE, HeadCheck
from tusserver.held import HeldUpload
from tusserver.log_safety import describe
from tusserver.protocol import Metadata
from tusserver.record import Upload
from tusserver.services import Services

logger = logging.getLogger(__name__)

CONTENT_REFUSED = "upload_content_refused"
TOO_SMALL = "upload_too_small"


def check_creation(config: Config, length: int | None, metadata: Metadata, concat: str) -> None:
    """Refuse a creation that breaks a rule before anything is stored."""
    if concat != protocol.CONCAT_PARTIAL:
        check_length(config, length)
    if config.allow_types:
        declared = content_types.declared_types(metadata.values)
        refused = content_types.refused_declaration(declared, config.allow_types)
        if refused is not None:
            raise errors.type_not_allowed(refused)


def check_length(config: Config, length: int | None) -> None:
    """400 for a known length below ``min_size``."""
    reason = below_minimum(config, length)
    if reason is not None:
        raise errors.too_small(reason)


def below_minimum(config: Config, length: int | None) -> str | None:
    """Why a known length is too small, or None."""
    if length is None or config.min_size is None or length >= config.min_size:
        return None
    return f"its {length} bytes are fewer than the {config.min_size} accepted at least"


async def head_check(services: Services, upload: Upload) -> HeadCheck | None:
    """What judges the head of this upload's bytes, or None if nothing is
    left to judge: no type rules, a concatenation part, or a head already
    stored whole (the request that stored it judged it).

    An earlier request that stored fewer bytes than the head (a small first
    chunk, an interrupted body) left them in the partial: read back, at most
    ``HEAD_SIZE`` bytes, so the judgement sees the file's true start.
    """
    config = services.config
    if not config.allow_types or upload.concat == protocol.CONCAT_PARTIAL:
        return None
    if upload.offset >= HEAD_SIZE:
        return None
    stored = await _read_head(services, upload, upload.offset)
    declared = content_types.declared_types(upload.metadata.values)
    return HeadCheck(declared, tuple(config.allow_types), upload.length, stored)


async def check_assembled(services: Services, upload: Upload) -> None:
    """415 if a concatenation's final file, just assembled, is refused. Its
    creation is undone by the caller, as for any creation that fails."""
    config = services.config
    if not config.allow_types:
        return
    assert upload.length is not None
    head = await _read_head(services, upload, min(upload.length, HEAD_SIZE))
    declared = content_types.declared_types(upload.metadata.values)
    whole = upload.length <= HEAD_SIZE
    refusal = content_types.refused_content(head, declared, config.allow_types, whole=whole)
    if refusal is not None:
        logger.warning("upload %s refused: %s", upload.id, refusal)
        raise errors.content_refused(refusal)


async def _read_head(services: Services, upload: Upload, end: int) -> bytes:
    if not end:
        return b""
    try:
        # Read to its end, so the generator closes its file itself.
        reading = services.storage.read(upload.id, None, 0, end)
        return b"".join([piece async for piece in reading])
    except OSError as exc:
        logger.error("upload %s: could not read its head back: %s", upload.id, describe(exc))
        raise errors.storage_failure(exc, reading=True) from None


async def refuse(services: Services, held: HeldUpload, code: str, reason: str) -> errors.TusError:
    """Fail the upload for good: its bytes removed, its record marked failed
    with ``code`` (the lock released). Returns the error to answer."""
    upload_id = held.id
    logger.warning("upload %s refused: %s", upload_id, reason)
    services.running.forget(upload_id)
    try:
        await services.storage.delete(upload_id)
    except OSError as exc:
        # The record says failed either way; the sweeper removes the bytes
        # when the upload expires.
        logger.warning("upload %s: could not remove its bytes: %s", upload_id, describe(exc))
    await held.fail(reason, code)
    return errors.failed(code, reason)

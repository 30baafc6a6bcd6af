"""Creating an upload: the one path every new upload takes.

POST without data (``create``), POST with data and the final upload of a
concatenation (``create_held``, which also holds the new upload's lock) all
come through ``_store_new``: it gives the upload its id, creation time and
expiry, makes its partial in storage and its record in Redis. Whatever must
apply to every new upload (checks on the metadata, the owner it belongs to,
a hook that may refuse it) belongs there and nowhere else.

An upload whose creation fails after its record exists is removed again by
``discard``: its client never learned its URL, so nobody else would.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

import anyio
from starlette.datastructures import Headers

from tusserver import errors, expiry, integrity, metrics, protocol, screening
from tusserver.headers import UPLOAD_METADATA
from tusserver.held import HeldUpload
from tusserver.hook_events import FileInfo, HookType
from tusserver.hooking import file_info, metadata_text, part_ids, rejection
from tusserver.log_format import bind_upload
from tusserver.log_safety import describe
from tusserver.protocol import Checksum, Metadata
from tusserver.record import Upload
from tusserver.services import Services

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Draft:
    """What a creation request asks for, checked and parsed."""

    length: int | None  # None while deferred
    metadata: Metadata = field(default_factory=Metadata)
    declared_checksum: Checksum | None = None
    concat: str = ""  # protocol.CONCAT_PARTIAL or CONCAT_FINAL, "" for a plain upload
    parts: tuple[str, ...] = ()  # a final upload's part URLs, as the client sent them
    owner: str | None = None  # who creates it (tusserver.ownership); None: anonymous


def read_metadata(headers: Headers, max_size: int) -> tuple[Metadata, Checksum | None]:
    """Upload-Metadata, parsed once for the upload's life (400 if malformed),
    and the whole-file digest it declares, if any."""
    raw = headers.get(UPLOAD_METADATA, "").strip()
    metadata = Metadata(raw, protocol.parse_metadata(raw, max_size))
    return metadata, integrity.declared_checksum(metadata.values)


async def create(services: Services, draft: Draft) -> Upload:
    """A new upload, nobody holding its lock."""
    return await _store_new(services, draft, lock_token=None)


@asynccontextmanager
async def create_held(services: Services, draft: Draft) -> AsyncIterator[HeldUpload]:
    """A new upload whose lock this request holds for the block.

    If the block fails, the upload is discarded (bytes, record, lock): the
    response carries no Location, so no client can ever resume it. The lock
    is released when the block ends, unless a commit already let go.
    """
    token = services.locker.new_token()
    upload = await _store_new(services, draft, lock_token=token)
    held = services.locker.adopt(upload, token)
    try:
        yield held
    except BaseException:
        with anyio.CancelScope(shield=True):
            await discard(services, held)
        raise
    finally:
        await held.release()


async def _store_new(services: Services, draft: Draft, *, lock_token: str | None) -> Upload:
    screening.check_creation(services.config, draft.length, draft.metadata, draft.concat)
    upload_id, draft = await _pre_create(services, draft)
    created = time.time()
    upload = Upload(
        id=upload_id,
        offset=0,
        length=draft.length,
        metadata=draft.metadata,
        declared_checksum=draft.declared_checksum,
        created=created,
        concat=draft.concat,
        parts=draft.parts,
        owner=draft.owner,
        # Expiring like any upload until published: a crash mid-way leaves
        # nothing the sweeper does not remove in time.
        expires=expiry.expiry_from(services.config, created),
    )
    # Creating a partial is idempotent and never truncates, so a hook-chosen
    # id that turns out taken leaves the other upload's bytes alone.
    await services.storage.create(upload.id)
    stored = await services.store.create(
        upload, lock_token=lock_token, lock_ttl_ms=services.locker.ttl_ms
    )
    if not stored:
        logger.info("upload %s: not created: the id is taken", upload.id)
        raise errors.upload_id_taken()
    bind_upload(upload.id)
    metrics.recorder().created()
    logger.info(
        "upload %s created (length %s)",
        upload.id,
        "deferred" if upload.length is None else upload.length,
    )
    services.hooks.notify(HookType.POST_CREATE, file_info(upload))
    return upload


async def _pre_create(services: Services, draft: Draft) -> tuple[str, Draft]:
    """Ask the pre-create hook: it may refuse the upload, choose its id and
    replace its metadata (tusd's RejectUpload and ChangeFileInfo)."""
    hooks = services.hooks
    if not hooks.enabled(HookType.PRE_CREATE):
        return protocol.new_upload_id(), draft
    info = FileInfo(
        id="",
        size=draft.length,
        offset=0,
        metadata=metadata_text(draft.metadata.values),
        is_partial=draft.concat == protocol.CONCAT_PARTIAL,
        is_final=draft.concat == protocol.CONCAT_FINAL,
        partial_uploads=part_ids(draft.concat, draft.parts),
        owner=draft.owner,
    )
    answer = await hooks.decide(HookType.PRE_CREATE, info)
    if answer.reject_upload:
        logger.info("upload refused by the pre-create hook")
        raise rejection(answer, 400, "upload_rejected", "The server refused to create this upload.")
    changes = answer.change_file_info
    upload_id = changes.id or protocol.new_upload_id()
    if not protocol.is_upload_id(upload_id):
        logger.warning("the pre-create hook chose an invalid upload id; refusing the creation")
        raise errors.hook_invalid_answer(
            HookType.PRE_CREATE.value,
            "the upload id it chose is not 8 to 64 lowercase letters, digits, '-' or '_'",
        )
    if changes.metadata is not None:
        draft = _with_hook_metadata(draft, changes.metadata, services)
    if changes.owner:
        draft = replace(draft, owner=changes.owner)
    return upload_id, draft


def _with_hook_metadata(draft: Draft, values: Mapping[str, str], services: Services) -> Draft:
    """Metadata a pre-create hook gave, as if the client had sent it: encoded
    into the header HEAD echoes, held to the same rules (keys, size, a
    declared digest's format)."""
    raw = ",".join(
        f"{key} {base64.b64encode(value.encode()).decode()}" if value else key
        for key, value in values.items()
    )
    try:
        parsed = protocol.parse_metadata(raw, services.config.max_metadata_size)
        declared = integrity.declared_checksum(parsed)
    except errors.TusError as exc:
        raise errors.hook_invalid_answer(HookType.PRE_CREATE.value, exc.message) from None
    return replace(draft, metadata=Metadata(raw, parsed), declared_checksum=declared)


async def discard(services: Services, held: HeldUpload) -> None:
    """Remove an upload whose URL was never given out: bytes, record and
    lock. Never raises: what is left, the sweeper removes."""
    try:
        await services.storage.delete(held.id)
    except OSError as exc:
        logger.warning(
            "upload %s: could not remove the refused upload's bytes: %s", held.id, describe(exc)
        )
    await held.try_terminate()
    await held.release()

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

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
from starlette.datastructures import Headers

from tusserver import expiry, integrity, protocol
from tusserver.headers import UPLOAD_METADATA
from tusserver.held import HeldUpload
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
    created = time.time()
    upload = Upload(
        id=protocol.new_upload_id(),
        offset=0,
        length=draft.length,
        metadata=draft.metadata,
        declared_checksum=draft.declared_checksum,
        created=created,
        concat=draft.concat,
        parts=draft.parts,
        # Expiring like any upload until published: a crash mid-way leaves
        # nothing the sweeper does not remove in time.
        expires=expiry.expiry_from(services.config, created),
    )
    await services.storage.create(upload.id)
    await services.store.create(upload, lock_token=lock_token, lock_ttl_ms=services.locker.ttl_ms)
    logger.info(
        "upload %s created (length %s)",
        upload.id,
        "deferred" if upload.length is None else upload.length,
    )
    return upload


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

"""Termination: what removing an upload does, for a client's DELETE
(``handlers.delete_upload``) and an operator's ``tusserver uploads
terminate`` alike, once the upload is held.

Bytes before the record, so a crash in between leaves a record without
bytes (the sweeper finishes the job), never bytes nobody knows of.
"""

from __future__ import annotations

import logging

from tusserver.held import HeldUpload
from tusserver.hook_events import HookType
from tusserver.hooking import file_info
from tusserver.locking import kept_alive
from tusserver.record import Upload
from tusserver.services import Services

logger = logging.getLogger(__name__)


async def terminate(services: Services, held: HeldUpload) -> None:
    """Ask the pre-terminate hook (its refusal raises), then remove the bytes
    (the partial, or the published file) and the record, leaving a tombstone."""
    if services.hooks.enabled(HookType.PRE_TERMINATE):
        async with kept_alive(held.lease):
            await services.hooks.check_termination(held.upload)
    await services.storage.delete(held.id, held.upload.location)
    await held.terminate()
    services.running.forget(held.id)
    logger.info("upload %s terminated", held.id)


def announce(services: Services, upload: Upload) -> None:
    """post-terminate, once the lock is let go. Never raises."""
    services.hooks.notify(HookType.POST_TERMINATE, file_info(upload))

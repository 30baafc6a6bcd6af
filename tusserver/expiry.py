"""Expiration (tus "expiration" extension): when an upload expires, and the
headers that say so.

An upload expires ``expire_after`` seconds after it was created or last
stored bytes (each PATCH slides the expiry), until its file is published; a
published file never expires. Responses about an unpublished upload carry
``Upload-Expires``, and once that moment has passed the upload answers 410
even before the sweeper (``tusserver.sweeper``) got to it: the spec lets a
server answer 404 or 410 for an expired upload, and answering in line with
the date announced is what a client can rely on.
"""

from __future__ import annotations

import time

from tusserver import protocol
from tusserver.config import Config
from tusserver.headers import UPLOAD_EXPIRES
from tusserver.record import Upload


def expiry_from(config: Config, moment: float) -> float:
    """When an unpublished upload created or last written to at ``moment`` expires."""
    return moment + config.expire_after


def has_expired(upload: Upload, now: float | None = None) -> bool:
    """Whether the upload's expiry has passed (it may not be swept yet).

    Never for an upload whose every byte arrived but whose finalize was cut
    short: it is finishing, not abandoned (the next HEAD or PATCH repairs it).
    """
    if upload.needs_finalize:
        return False
    return upload.expires is not None and upload.expires <= (time.time() if now is None else now)


def expires_headers(upload: Upload) -> dict[str, str]:
    """``Upload-Expires`` for an upload that can still expire; nothing once published."""
    if upload.expires is None:
        return {}
    return {UPLOAD_EXPIRES: protocol.format_expires(upload.expires)}

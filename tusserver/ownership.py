"""Uploads belong to whoever created them.

When the app authenticates requests (tusserver.auth), each request carries
its requester, and every upload it creates records that requester's owner
(``Upload.owner``, set from ``Draft.owner`` in ``creation._store_new``).
HEAD, PATCH, GET and DELETE on an upload with another owner, and a final
upload naming another owner's part, are refused with 403 before anything
else is looked at: before the lock is waited for or a running PATCH is
asked to let go, before any state changes, before the upload's state
(expired, unfinished, failed) shows in an answer.

An upload without an owner (created anonymously) is open to every
requester, as every upload is on a server without authentication. Without
authentication no owner check runs at all: such a server trusts whoever
reaches it, with every upload.

A missing upload still answers 404 (a terminated one 410) rather than 403:
the difference tells that an upload exists only to whoever already holds
its URL, whose id has 128 random bits, so nothing can be found by probing;
the 403 itself says nothing about the upload.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from tusserver import errors
from tusserver.record import Upload
from tusserver.services import Services

# Where the requester is kept in the ASGI scope for the request's handlers.
SCOPE_KEY = "tusserver.requester"


@dataclass(frozen=True)
class Requester:
    """Who sent an authenticated request. ``owner`` None: anonymous."""

    owner: str | None


def remember(request: Request, owner: str | None) -> None:
    request.scope[SCOPE_KEY] = Requester(owner)


def requester(request: Request) -> Requester | None:
    """The request's requester; None when the app authenticates nobody."""
    who: Requester | None = request.scope.get(SCOPE_KEY)
    return who


def owner_of_new(who: Requester | None) -> str | None:
    """The owner an upload created by ``who`` gets."""
    return None if who is None else who.owner


def allows(who: Requester | None, owner: str | None) -> bool:
    return who is None or owner is None or owner == who.owner


def ensure(request: Request, upload: Upload) -> None:
    """403 unless the request may touch ``upload`` (a record already read)."""
    if not allows(requester(request), upload.owner):
        raise errors.forbidden_owner()


async def check(request: Request, services: Services, upload_id: str) -> None:
    """403 unless the request may touch the upload ``upload_id``: one read
    of its owner, before its lock is claimed or waited for. A missing upload
    passes, to get its 404 or 410 where it is looked up."""
    who = requester(request)
    if who is None:
        return
    if not allows(who, await services.store.owner(upload_id)):
        raise errors.forbidden_owner()

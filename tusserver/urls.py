"""The URL of an upload, as the client will use it (the 201's Location).

Three ways, chosen by configuration:

- default: a relative URL, ``<root_path><base_path><id>``. Clients resolve it
  against the URL they POSTed to, so it stays right behind any proxy that
  keeps the path, whatever scheme or host the proxy shows (docs/clients.md).
- ``public_url``: ``<public_url><id>``, absolute, for set-ups where the
  client-facing path differs from the app's (a proxy that strips a prefix).
- ``behind_proxy``: the scheme, host and path prefix the proxy reports in
  ``X-Forwarded-Proto/-Host/-Prefix`` or ``Forwarded`` (RFC 7239). Only when
  the operator says a proxy sets them: a client could send them too, so
  only the values the nearest proxy wrote are used (see forwarded_origin).

This module builds URLs only; it never parses them back.
"""

from __future__ import annotations

import re

from starlette.datastructures import Headers
from starlette.requests import Request

from tusserver.config import Config
from tusserver.headers import FORWARDED, X_FORWARDED_HOST, X_FORWARDED_PREFIX, X_FORWARDED_PROTO

# A host with an optional port, or a bracketed IPv6 literal: nothing that could
# add a path, credentials or a second header line to the Location.
_HOST = re.compile(r"(?:[A-Za-z0-9._~-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
_PROTOS = ("http", "https")
_PREFIX = re.compile(r"(?:/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)*/?")


def uploads_path(request: Request, config: Config) -> str:
    """The URL path under which this app serves uploads (its mount point included)."""
    root_path: str = request.scope.get("root_path", "")
    return root_path + config.base_path


def upload_url(request: Request, config: Config, upload_id: str) -> str:
    """Where the client finds upload ``upload_id`` (see the module docstring)."""
    if config.public_url is not None:
        return config.public_url.rstrip("/") + "/" + upload_id
    path = uploads_path(request, config) + upload_id
    if not config.behind_proxy:
        return path
    proto, host, prefix = forwarded_origin(request.headers)
    path = prefix + path
    if proto is None and host is None:
        return path
    return f"{proto or request.url.scheme}://{host or request.url.netloc}{path}"


def forwarded_origin(headers: Headers) -> tuple[str | None, str | None, str]:
    """(scheme, host, path prefix) as reported by the proxy in front of us.

    Only what that proxy wrote can be trusted, not what a client sent along:
    - ``X-Forwarded-*`` win over ``Forwarded``: proxies commonly overwrite the
      former and pass the latter through from the client untouched;
    - of a list, the *last* element counts: a proxy appends its own.
    Malformed values are ignored rather than copied into a Location.
    """
    proto = _last(headers.get(X_FORWARDED_PROTO))
    host = _last(headers.get(X_FORWARDED_HOST))
    forwarded = headers.get(FORWARDED)
    if forwarded and (proto is None or host is None):
        pairs = _forwarded_pairs(forwarded.rsplit(",", 1)[-1])
        proto = proto if proto is not None else pairs.get("proto")
        host = host if host is not None else pairs.get("host")
    if proto is not None:
        proto = proto.lower()
        if proto not in _PROTOS:
            proto = None
    if host is not None and not _HOST.fullmatch(host):
        host = None
    prefix = _last(headers.get(X_FORWARDED_PREFIX)) or ""
    if not (prefix.startswith("/") and _PREFIX.fullmatch(prefix)):
        prefix = ""
    return proto, host, prefix.rstrip("/")


def _forwarded_pairs(element: str) -> dict[str, str]:
    """``for=1.2.3.4;proto=https;host="a.example"`` -> {"for": ..., ...} (RFC 7239 §4)."""
    pairs: dict[str, str] = {}
    for pair in element.split(";"):
        name, sep, value = pair.strip().partition("=")
        if sep:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            pairs.setdefault(name.strip().lower(), value)
    return pairs


def _last(value: str | None) -> str | None:
    """The last element of a comma-separated header: the nearest proxy's."""
    if value is None:
        return None
    return value.rsplit(",", 1)[-1].strip() or None

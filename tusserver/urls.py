"""The URL of an upload, as the client will use it (the 201's Location).

Three ways, chosen by configuration:

- default: a relative URL, ``<root_path><base_path><id>``. Clients resolve it
  against the URL they POSTed to, so it stays right behind any proxy that
  keeps the path, whatever scheme or host the proxy shows (CLIENTS.md).
- ``public_url``: ``<public_url><id>``, absolute, for set-ups where the
  client-facing path differs from the app's (a proxy that strips a prefix).
- ``behind_proxy``: the scheme, host and path prefix the proxy reports in
  ``Forwarded`` (RFC 7239) or ``X-Forwarded-Proto/-Host/-Prefix``. Only when
  the operator says a proxy sets them: a client could send them too.

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


def upload_url(request: Request, config: Config, upload_id: str) -> str:
    """Where the client finds upload ``upload_id`` (see the module docstring)."""
    if config.public_url is not None:
        return config.public_url.rstrip("/") + "/" + upload_id
    root_path: str = request.scope.get("root_path", "")
    path = root_path + config.base_path + upload_id
    if not config.behind_proxy:
        return path
    proto, host, prefix = forwarded_origin(request.headers)
    path = prefix + path
    if proto is None and host is None:
        return path
    return f"{proto or request.url.scheme}://{host or request.url.netloc}{path}"


def forwarded_origin(headers: Headers) -> tuple[str | None, str | None, str]:
    """(scheme, host, path prefix) reported by the nearest-to-client proxy.

    ``Forwarded`` wins over ``X-Forwarded-*`` for the scheme and host. Of a
    list (several proxies), the first element is the client-facing one.
    Malformed values are ignored rather than copied into a Location.
    """
    proto = host = None
    forwarded = headers.get(FORWARDED)
    if forwarded:
        pairs = _forwarded_pairs(forwarded.split(",", 1)[0])
        proto, host = pairs.get("proto"), pairs.get("host")
    if proto is None:
        proto = _first(headers.get(X_FORWARDED_PROTO))
    if host is None:
        host = _first(headers.get(X_FORWARDED_HOST))
    if proto is not None:
        proto = proto.lower()
        if proto not in _PROTOS:
            proto = None
    if host is not None and not _HOST.fullmatch(host):
        host = None
    prefix = _first(headers.get(X_FORWARDED_PREFIX)) or ""
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


def _first(value: str | None) -> str | None:
    if value is None:
        return None
    return value.split(",", 1)[0].strip() or None

"""CORS for browser clients on other origins (tus-js-client, Uppy).

A page on another origin sees only the response headers named in
``Access-Control-Expose-Headers``, on errors as much as on success: without
Upload-Offset or Location there, tus-js-client reports "invalid or missing
offset value" and fails, or (no Location) creates uploads anew from byte 0 (docs/clients.md).

Starlette's ``CORSMiddleware`` does exactly what is needed, so it is used
as-is rather than rewritten: its send wrapper adds the exposed headers to
every response that passes through it, and the dispatcher renders every
error (tus errors, 405, 500) as a response, so errors carry them too; it
answers preflights itself with 200 (some browsers reject a 204 preflight),
``Access-Control-Max-Age`` and ``Vary: Origin``, and echoes an explicit
origin rather than ``*`` when credentials are allowed. A preflight it
refuses (origin, method or header not allowed) is answered 400 with the tus
JSON error body instead of its plain text: the browser then sends nothing,
so no tus request from that origin reaches the server.

Without configured origins there is no middleware at all: same-origin only.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response

from tusserver import errors, headers
from tusserver.config import Config

Render = Callable[[errors.TusError], Response]

# Every header a tus client sends (tus 1.0.0 and its extensions), plus the
# ones apps put in front of an upload endpoint (tusd allows the same).
REQUEST_HEADERS = (
    headers.TUS_RESUMABLE,
    headers.UPLOAD_LENGTH,
    headers.UPLOAD_OFFSET,
    headers.UPLOAD_METADATA,
    headers.UPLOAD_DEFER_LENGTH,
    headers.UPLOAD_CONCAT,
    headers.UPLOAD_CHECKSUM,
    headers.CONTENT_TYPE,
    headers.METHOD_OVERRIDE,
    # GET download: a page resuming or revalidating a file with fetch().
    headers.RANGE,
    headers.IF_RANGE,
    headers.IF_NONE_MATCH,
    headers.IF_MODIFIED_SINCE,
    headers.AUTHORIZATION,
    headers.X_REQUESTED_WITH,
    headers.X_REQUEST_ID,
)

# Every header a tus response may carry that a client reads.
RESPONSE_HEADERS = (
    headers.LOCATION,
    headers.UPLOAD_OFFSET,
    headers.UPLOAD_LENGTH,
    headers.UPLOAD_METADATA,
    headers.UPLOAD_DEFER_LENGTH,
    headers.UPLOAD_CONCAT,
    headers.UPLOAD_EXPIRES,
    headers.TUS_VERSION,
    headers.TUS_RESUMABLE,
    headers.TUS_MAX_SIZE,
    headers.TUS_EXTENSION,
    headers.TUS_CHECKSUM_ALGORITHM,
    # GET download: a page reading a file's name, range and version.
    headers.CONTENT_DISPOSITION,
    headers.CONTENT_RANGE,
    headers.ACCEPT_RANGES,
    headers.ETAG,
    # A 401's challenge: a page can tell an expired token from a missing one.
    headers.WWW_AUTHENTICATE,
    # The request's id (tusserver/observing.py), to quote in a support request.
    headers.X_REQUEST_ID,
)

METHODS = ("POST", "HEAD", "PATCH", "DELETE", "OPTIONS", "GET")

# Browsers cap this (Chromium at 2 h); a day asks for as much as they give.
MAX_AGE = 86400


class TusCORSMiddleware(CORSMiddleware):
    """Starlette's CORS, with refused preflights rendered as tus errors."""

    def __init__(self, *args: object, render: Render, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.render = render

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        # Starlette names what it refused ("Disallowed CORS origin, headers").
        refused = bytes(response.body).decode("latin-1").removeprefix("Disallowed CORS ")
        error = errors.cors_refused(refused).with_headers(
            {name: value for name, value in response.headers.items() if name.startswith("access-")}
        )
        return self.render(error)


def cors_middleware(config: Config, render: Render) -> list[Middleware]:
    """The CORS layer for ``config``; none when no origin is allowed.

    ``render`` turns a refused preflight into the app's error response.
    """
    if not config.cors_origins:
        return []
    return [
        Middleware(
            TusCORSMiddleware,
            render=render,
            allow_origins=[browser_origin(origin) for origin in config.cors_origins],
            allow_methods=METHODS,
            allow_headers=REQUEST_HEADERS,
            allow_credentials=config.cors_allow_credentials,
            expose_headers=RESPONSE_HEADERS,
            max_age=MAX_AGE,
        )
    ]


_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


def browser_origin(origin: str) -> str:
    """``origin`` as browsers send it in Origin (RFC 6454: lower case, no
    default port), since the comparison is exact: ``HTTPS://App.Example.com:443``
    must still match."""
    if origin == "*":
        return origin
    origin = origin.lower()
    scheme = origin.partition("://")[0]
    return origin.removesuffix(_DEFAULT_PORTS.get(scheme, "\0"))

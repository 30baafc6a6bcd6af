"""The app's outermost layer: each request's id, duration, metrics and access line.

Request ids: an ``X-Request-ID`` the client or a proxy sent is kept when it
is a sane token (1 to 128 of ``A-Z a-z 0-9 . _ : -``), so one id follows a
request through the proxy's logs and ours; anything else is replaced by one
made here. The id is returned on every response, errors and CORS
preflights included (``tusserver/cors.py`` exposes it to pages), is in
every log line of the request (``tusserver/log_format.py``) and in the hook
events it causes (``tusserver/hooking.py``).
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tusserver import metrics
from tusserver.log_format import RequestFields, bind_request

logger = logging.getLogger("tusserver.access")

_SANE_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
_HEADER = b"x-request-id"
# Made ids: a random prefix per process and a counter, unique across
# processes and restarts and cheaper than a random id per request.
_PREFIX = secrets.token_hex(6)
_counter = itertools.count(1)


def request_id(scope: Scope) -> str:
    """The id of the request in ``scope``: the client's if sane, else a new one."""
    for name, value in scope["headers"]:
        if name == _HEADER:
            if _SANE_ID.fullmatch(value):
                return str(value.decode("ascii"))
            break
    return f"{_PREFIX}-{next(_counter):x}"


class Observed:
    """Binds the request's id and the app's metrics recorder, then times and counts it."""

    def __init__(
        self,
        app: ASGIApp,
        recorder: metrics.Recorder,
        *,
        access_log: bool,
        scrape: tuple[str, ASGIApp] | None = None,
    ) -> None:
        """``scrape``: the metrics path and the app answering GET there."""
        self.app = app
        self.recorder = recorder
        self.access_log = access_log
        self.scrape_path = scrape[0] if scrape is not None else ""
        self.scrape: ASGIApp | None = scrape[1] if scrape is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        metrics.use(self.recorder)
        started = time.perf_counter()
        rid = request_id(scope)
        method: str = scope["method"]
        bind_request(RequestFields(rid, method, scope["path"]))
        header = (_HEADER, rid.encode("ascii"))
        status = 500  # what the client sees if the app fails before answering

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        recorder = self.recorder
        patch = method == "PATCH"
        if patch:
            recorder.patch_started()
        app = self.app
        if (
            self.scrape is not None
            and method in ("GET", "HEAD")
            # Mounted, the path is the whole path and root_path the mount's.
            and scope["path"] == scope.get("root_path", "") + self.scrape_path
        ):
            app = self.scrape
        try:
            await app(scope, receive, send_with_id)
        finally:
            if patch:
                recorder.patch_ended()
            seconds = time.perf_counter() - started
            recorder.request(method, status, seconds)
            if self.access_log:
                logger.info(
                    "%s %s %d %.3fs",
                    method,
                    scope["path"],
                    status,
                    seconds,
                    extra={"status": status, "duration": round(seconds, 6)},
                )

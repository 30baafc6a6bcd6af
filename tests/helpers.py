"""Small helpers shared by the behaviour specs."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import anyio
import httpx
from starlette.types import ASGIApp, Receive, Scope, Send


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def upload_id_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


def assert_tus_error(response: httpx.Response, status: int, code: str | None = None) -> None:
    """A tus error: the status, Tus-Resumable, and the JSON error body in full."""
    assert response.status_code == status, response.text
    assert response.headers["Tus-Resumable"] == "1.0.0"
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"code", "message", "hint", "retryable"}
    assert all(isinstance(error[key], str) and error[key] for key in ("code", "message", "hint"))
    assert isinstance(error["retryable"], bool)
    if code is not None:
        assert error["code"] == code


def descriptors_of(path: Path) -> int:
    """How many of this process's descriptors point at ``path`` (the test
    servers run in this process, so their open files count too)."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == str(path):
                count += 1
        except OSError:
            continue  # closed while we looked
    return count


class CutsRequestsOnRequest:
    """ASGI middleware of an embedding application that cancels its running
    requests of one method through an anyio cancel scope, as its own request
    timeout or shutdown would: a scope cancels every await inside it until
    it is left, where a task's cancel() interrupts one."""

    def __init__(self, app: ASGIApp, method: str) -> None:
        self.app = app
        self.method = method
        self.running: set[anyio.CancelScope] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != self.method:
            await self.app(scope, receive, send)
            return
        with anyio.CancelScope() as cut:
            self.running.add(cut)
            try:
                await self.app(scope, receive, send)
            finally:
                self.running.discard(cut)

    def cut_all(self) -> None:
        for cut in self.running:
            cut.cancel()

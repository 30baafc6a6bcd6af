"""Small helpers shared by the behaviour specs."""

from __future__ import annotations

import asyncio
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


class AnsweredAsCancelled:
    """A lock extension (a ``Lease``'s ``extend``) that goes through
    ``asyncio.wait_for``, as redis-py sends every command, and whose answer
    comes in the very turn of the event loop in which its caller is
    cancelled. Python 3.11's ``wait_for`` then returns the answer and drops
    the cancellation (3.12's keeps it). After ``lost_after`` calls it answers
    that the lock is lost, which ends any task that goes on extending."""

    def __init__(self, lost_after: int = 3) -> None:
        self.calls = 0
        self.in_call = asyncio.Event()
        self._lost_after = lost_after

    async def __call__(self, key: str, token: str, ttl_ms: int) -> bool:
        self.calls += 1
        caller = asyncio.current_task()
        assert caller is not None
        self.in_call.set()
        return await asyncio.wait_for(self._answer_once_cancelled(caller), timeout=60)

    async def _answer_once_cancelled(self, caller: asyncio.Task[object]) -> bool:
        # One turn of the loop at a time: the turn after the cancellation is
        # requested, this answers before the caller wakes up to it.
        for _ in range(1_000_000):
            if caller.cancelling():
                break
            await asyncio.sleep(0)
        return self.calls < self._lost_after

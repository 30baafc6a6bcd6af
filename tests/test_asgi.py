"""The app as a plain ASGI application, driven without an HTTP server.

For what no HTTP/1.1 client can send: an HTTP/2 server hands the app a body
without Content-Length and without chunked framing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from tusserver import Config, create_app

pytestmark = pytest.mark.anyio


async def call(app: Any, scope: dict[str, Any], body: list[bytes]) -> dict[str, Any]:
    """One request; returns the response start message with the body appended."""
    messages = [{"type": "http.request", "body": piece, "more_body": True} for piece in body]
    messages.append({"type": "http.request", "body": b"", "more_body": False})
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    start["headers"] = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return start


def http_scope(method: str, path: str, headers: dict[str, str]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "2",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }


async def test_creation_with_upload_reads_a_body_that_has_no_length_framing(
    redis_url: str, tmp_path: Path
) -> None:
    app = create_app(Config(storage=str(tmp_path / "uploads"), redis_url=redis_url))
    async with app.router.lifespan_context(app):
        created = await call(
            app,
            http_scope(
                "POST",
                "/files/",
                {
                    "Tus-Resumable": "1.0.0",
                    "Upload-Length": "11",
                    "Content-Type": "application/offset+octet-stream",
                },
            ),
            [b"hello", b" world"],
        )

    assert created["status"] == 201
    assert created["headers"]["upload-offset"] == "11"
    upload_id = created["headers"]["location"].rsplit("/", 1)[1]
    assert (tmp_path / "uploads" / upload_id).read_bytes() == b"hello world"

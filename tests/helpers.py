"""Small helpers shared by the behaviour specs."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import httpx


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

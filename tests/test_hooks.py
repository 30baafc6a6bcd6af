"""Hooks given to create_app by an application that mounts tusserver."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.server_fixtures import OCTETS, TUS, ThreadedUvicorn, free_port
from tusserver import Config, create_app
from tusserver.hooks import FinishedUpload, Hooks


@pytest.fixture
def failing_hook_server(redis_url: str, tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    calls: list[str] = []

    async def post_finish(upload: FinishedUpload) -> None:
        calls.append(upload.id)
        raise RuntimeError("the application's own bug")

    app = create_app(
        Config(storage=str(tmp_path / "uploads"), redis_url=redis_url),
        hooks=Hooks(post_finish=post_finish),
    )
    server = ThreadedUvicorn(app, free_port())
    server.start()
    try:
        yield f"http://127.0.0.1:{server.server.config.port}", calls
    finally:
        server.stop()


def test_a_failing_post_finish_hook_does_not_fail_the_finished_upload(
    failing_hook_server: tuple[str, list[str]],
) -> None:
    url, calls = failing_hook_server
    with httpx.Client(timeout=10) as client:
        created = client.post(url + "/files/", headers={**TUS, "Upload-Length": "3"})
        upload = url + created.headers["Location"]
        patched = client.patch(
            upload,
            headers={**TUS, "Upload-Offset": "0", "Content-Type": OCTETS},
            content=b"abc",
        )
        head = client.head(upload, headers=TUS)

    assert patched.status_code == 204
    assert patched.headers["Upload-Offset"] == "3"
    assert head.headers["Upload-Offset"] == "3"
    assert calls == [upload.rsplit("/", 1)[1]]

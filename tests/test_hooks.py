"""Hooks given to create_app by an application that mounts tusserver."""

from __future__ import annotations

from collections.abc import Callable

from tests.helpers import upload_id_of
from tests.server_fixtures import RunningServer
from tusserver.hooks import FinishedUpload, Hooks


def test_a_failing_post_finish_hook_does_not_fail_the_finished_upload(
    tus_server: Callable[..., RunningServer],
) -> None:
    calls: list[str] = []

    async def post_finish(upload: FinishedUpload) -> None:
        calls.append(upload.id)
        raise RuntimeError("the application's own bug")

    server = tus_server(hooks=Hooks(post_finish=post_finish))
    upload = server.create(3)

    patched = server.patch(upload, 0, b"abc")
    head = server.head(upload)

    assert patched.status_code == 204
    assert patched.headers["Upload-Offset"] == "3"
    assert head.headers["Upload-Offset"] == "3"
    assert calls == [upload_id_of(upload)]
    assert (server.storage / upload_id_of(upload)).read_bytes() == b"abc"

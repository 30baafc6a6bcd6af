"""Python hooks given to create_app by an application that mounts tusserver:
typed events in, the same decisions as an HTTP hook's answer out."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.helpers import assert_tus_error, b64
from tests.jwt_tokens import JWT_FIELDS, bearer
from tests.server_fixtures import OCTETS, TUS, ThreadedUvicorn, free_port
from tusserver import Config, create_app
from tusserver.config import ConfigError
from tusserver.hook_events import (
    FileInfoChanges,
    HookEvent,
    HookResponse,
    HookType,
    HTTPResponse,
    from_wire,
    response_from_wire,
    to_wire,
)
from tusserver.hooks import Hooks

Serve = Callable[[Hooks], str]


@pytest.fixture
def serve_with_hooks(redis_url: str, tmp_path: Path) -> Iterator[Serve]:
    servers: list[ThreadedUvicorn] = []

    def serve(hooks: Hooks) -> str:
        app = create_app(Config(storage=str(tmp_path / "uploads"), redis_url=redis_url), hooks)
        server = ThreadedUvicorn(app, free_port())
        server.start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server.config.port}"

    yield serve
    for server in servers:
        server.stop()


def wait_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def upload(
    client: httpx.Client, url: str, data: bytes, headers: dict[str, str] | None = None
) -> str:
    created = client.post(
        url + "/files/", headers={**TUS, "Upload-Length": str(len(data)), **(headers or {})}
    )
    assert created.status_code == 201, created.text
    location = url + created.headers["Location"]
    patched = client.patch(
        location, headers={**TUS, "Upload-Offset": "0", "Content-Type": OCTETS}, content=data
    )
    assert patched.status_code == 204
    return location


def test_python_hooks_get_typed_events_and_post_finish_carries_the_published_file(
    serve_with_hooks: Serve, tmp_path: Path
) -> None:
    seen: list[HookEvent] = []

    async def record(event: HookEvent) -> None:
        seen.append(event)

    url = serve_with_hooks(Hooks(pre_create=record, post_create=record, post_finish=record))
    with httpx.Client(timeout=10) as client:
        location = upload(client, url, b"abc", {"Upload-Metadata": f"filename {b64(b'a.txt')}"})
    wait_until(lambda: any(e.type is HookType.POST_FINISH for e in seen))

    upload_id = location.rsplit("/", 1)[1]
    assert [e.type for e in seen] == [
        HookType.PRE_CREATE,
        HookType.POST_CREATE,
        HookType.POST_FINISH,
    ]
    finished = seen[-1]
    assert finished.upload.id == upload_id
    assert finished.upload.size == finished.upload.offset == 3
    assert finished.upload.metadata == {"filename": "a.txt"}
    assert finished.upload.storage is not None
    assert (tmp_path / "uploads" / finished.upload.storage["Location"]).read_bytes() == b"abc"
    assert finished.http_request.method == "PATCH"


def test_a_python_pre_create_hook_refuses_and_chooses_ids(serve_with_hooks: Serve) -> None:
    async def decide(event: HookEvent) -> HookResponse:
        if "forbidden" in event.upload.metadata:
            return HookResponse(
                reject_upload=True, http_response=HTTPResponse(422, "not this one", {"X-Why": "x"})
            )
        return HookResponse(change_file_info=FileInfoChanges(id="python-chosen-1"))

    url = serve_with_hooks(Hooks(pre_create=decide))
    with httpx.Client(timeout=10) as client:
        refused = client.post(
            url + "/files/", headers={**TUS, "Upload-Length": "1", "Upload-Metadata": "forbidden"}
        )
        created = client.post(url + "/files/", headers={**TUS, "Upload-Length": "1"})

    assert refused.status_code == 422
    assert refused.text == "not this one"
    assert refused.headers["X-Why"] == "x"
    assert created.headers["Location"] == "/files/python-chosen-1"


def test_a_python_pre_create_hook_that_raises_fails_creation_with_503(
    serve_with_hooks: Serve, state: redis.Redis
) -> None:
    async def broken(event: HookEvent) -> None:
        raise RuntimeError("the application's own bug")

    url = serve_with_hooks(Hooks(pre_create=broken))
    response = httpx.post(url + "/files/", headers={**TUS, "Upload-Length": "1"}, timeout=10)

    assert_tus_error(response, 503, "hook_unavailable")
    assert "own bug" not in response.text
    assert [key for key in state.keys("tus:*") if not key.startswith("tus:hooks:")] == []


def test_a_failing_hook_is_logged_by_its_kind_and_origin_never_by_its_text(
    serve_with_hooks: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cret-in-the-message"

    async def broken(event: HookEvent) -> None:
        raise RuntimeError(f"cannot read /srv/private/{secret}")

    async def finished(event: HookEvent) -> None:
        raise PermissionError(13, f"denied {secret}", "/srv/private/finished")

    refusing = serve_with_hooks(Hooks(pre_create=broken))
    notifying = serve_with_hooks(Hooks(post_create=broken, post_finish=finished))
    # Attached to tusserver's logger itself: it may not propagate to the root.
    tusserver_logger = logging.getLogger("tusserver")
    tusserver_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="tusserver"), httpx.Client(timeout=10) as client:
            token = {"Authorization": "Bearer tok-of-the-client"}
            refused = client.post(
                refusing + "/files/", headers={**TUS, "Upload-Length": "1", **token}
            )
            upload(client, notifying, b"abc", token)
            wait_until(lambda: "post-finish hook not delivered" in caplog.text)
            wait_until(lambda: "post-create hook failed" in caplog.text)
    finally:
        tusserver_logger.removeHandler(caplog.handler)

    assert_tus_error(refused, 503, "hook_unavailable")
    text = caplog.text
    assert "pre-create hook failed (RuntimeError at tests.test_python_hooks:" in text
    assert "post-create hook failed: RuntimeError at tests.test_python_hooks:" in text
    assert "post-finish hook not delivered (PermissionError EACCES at " in text
    for leak in (secret, "/srv/private", "tok-of-the-client", "Traceback"):
        assert leak not in text


def test_a_failing_post_finish_hook_does_not_fail_the_upload_and_is_retried_until_it_succeeds(
    serve_with_hooks: Serve,
) -> None:
    calls: list[str] = []

    async def flaky(event: HookEvent) -> None:
        calls.append(event.upload.id)
        if len(calls) < 3:
            raise RuntimeError("the application's own bug")

    url = serve_with_hooks(Hooks(post_finish=flaky))
    with httpx.Client(timeout=10) as client:
        location = upload(client, url, b"abc")
        head = client.head(location, headers=TUS)
    wait_until(lambda: len(calls) >= 3)
    time.sleep(1.5)

    assert head.headers["Upload-Offset"] == "3"
    assert calls == [location.rsplit("/", 1)[1]] * 3


def test_hooks_url_and_python_hooks_together_are_refused_at_start() -> None:
    async def hook(event: HookEvent) -> None:
        return None

    with pytest.raises(ConfigError, match="not both"):
        create_app(Config(hooks_url="http://127.0.0.1:9/hooks"), Hooks(post_finish=hook))


def test_hook_events_carry_the_owner_and_pre_create_may_bind_another(
    redis_url: str, tmp_path: Path
) -> None:
    # With tokens checked, every event names the upload's owner (the token's
    # sub), and a pre-create hook may bind the upload to another owner (a
    # team, say), which then holds for every later request.
    seen: list[HookEvent] = []

    async def record(event: HookEvent) -> HookResponse:
        seen.append(event)
        if event.type is HookType.PRE_CREATE and "team" in event.upload.metadata:
            return HookResponse(change_file_info=FileInfoChanges(owner="team-blue"))
        return HookResponse()

    hooks = Hooks(pre_create=record, post_create=record, pre_access=record)
    config = Config(storage=str(tmp_path / "uploads"), redis_url=redis_url, **JWT_FIELDS)
    server = ThreadedUvicorn(create_app(config, hooks), free_port())
    server.start()
    url = f"http://127.0.0.1:{server.server.config.port}"
    try:
        with httpx.Client(timeout=10) as client:
            alice = bearer("alice")
            own = client.post(url + "/files/", headers={**TUS, **alice, "Upload-Length": "3"})
            team = client.post(
                url + "/files/",
                headers={**TUS, **alice, "Upload-Length": "3", "Upload-Metadata": "team"},
            )
            own_head = client.head(url + own.headers["Location"], headers={**TUS, **alice})
            team_head = client.head(url + team.headers["Location"], headers={**TUS, **alice})
            as_team = bearer("team-blue")
            team_member_head = client.head(
                url + team.headers["Location"], headers={**TUS, **as_team}
            )
    finally:
        server.stop()

    assert own.status_code == team.status_code == 201
    assert own_head.status_code == 200
    assert team_head.status_code == 403
    assert team_member_head.status_code == 200
    owners = [(event.type, event.upload.owner) for event in seen]
    assert (HookType.PRE_CREATE, "alice") in owners
    assert (HookType.POST_CREATE, "alice") in owners
    assert (HookType.POST_CREATE, "team-blue") in owners
    # On the wire too, as tusd's format plus an Owner field.
    wire = to_wire(seen[-1])
    assert wire["Event"]["Upload"]["Owner"] == seen[-1].upload.owner
    assert from_wire(wire).upload.owner == seen[-1].upload.owner
    answer = response_from_wire(json.dumps({"ChangeFileInfo": {"Owner": "team-red"}}).encode())
    assert answer.change_file_info.owner == "team-red"

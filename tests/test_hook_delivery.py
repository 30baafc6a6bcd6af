"""post-finish is never lost: recorded in Redis with the finish, delivered at
least once, across a SIGKILL and by another instance (real ``tusserver serve``
processes, a real Redis, a real receiver)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import redis

from tests.helpers import upload_id_of
from tests.hook_receiver import HookReceiver
from tests.process_fixtures import ServeProcess
from tests.server_fixtures import OCTETS, TUS

StartProcess = Callable[..., ServeProcess]


def options(storage: Path, redis_url: str, receiver: HookReceiver) -> list[str | Path]:
    return [
        "--storage", storage,
        "--redis-url", redis_url,
        "--hooks-url", receiver.url,
        "--hooks-events", "post-finish",
        "--hooks-retries", "0",
        "--hooks-reclaim-after", "1s",
    ]  # fmt: skip


def finish_upload(server: ServeProcess, data: bytes) -> str:
    with httpx.Client(timeout=10) as client:
        created = client.post(server.endpoint, headers={**TUS, "Upload-Length": str(len(data))})
        url = server.url + created.headers["Location"]
        patched = client.patch(
            url, headers={**TUS, "Upload-Offset": "0", "Content-Type": OCTETS}, content=data
        )
    assert patched.status_code == 204
    return url


def wait_delivered(state: redis.Redis, upload_id: str, timeout: float = 20) -> None:
    """Until the event is forgotten and its stream entry removed: delivered."""
    deadline = time.monotonic() + timeout
    while state.exists(f"tus:{{{upload_id}}}:post-finish") or state.xlen("tus:hooks:post-finish"):
        assert time.monotonic() < deadline, "post-finish not delivered"
        time.sleep(0.05)


def test_a_post_finish_not_yet_delivered_when_the_server_is_killed_is_delivered_after_restart(
    serve_process: StartProcess,
    hook_receiver: HookReceiver,
    redis_url: str,
    state: redis.Redis,
    tmp_path: Path,
) -> None:
    hook_receiver.answer("post-finish", status=500)
    server = serve_process(*options(tmp_path / "files", redis_url, hook_receiver))
    other = finish_upload(server, b"first")
    hook_receiver.wait_for("post-finish")
    url = finish_upload(server, b"second")
    hook_receiver.wait_for("post-finish", 2)

    server.kill()
    failed = len(hook_receiver.received("post-finish"))
    hook_receiver.answer("post-finish")
    server.start()
    wait_delivered(state, upload_id_of(url))

    after_restart = hook_receiver.received("post-finish")[failed:]
    delivered = {hook.upload["ID"] for hook in after_restart}
    assert delivered == {upload_id_of(url), upload_id_of(other)}
    assert all(hook.upload["Offset"] == hook.upload["Size"] for hook in after_restart)
    second = next(hook for hook in after_restart if hook.upload["ID"] == upload_id_of(url))
    assert second.upload["Size"] == len(b"second")
    assert second.request["Method"] == "PATCH"
    # Delivered means done: nothing more is sent.
    time.sleep(1.5)
    assert len(hook_receiver.received("post-finish")) == failed + len(after_restart)


def test_a_second_instance_delivers_the_post_finish_of_an_instance_that_never_came_back(
    serve_process: StartProcess,
    hook_receiver: HookReceiver,
    redis_url: str,
    state: redis.Redis,
    tmp_path: Path,
) -> None:
    hook_receiver.answer("post-finish", status=500)
    first = serve_process(*options(tmp_path / "files", redis_url, hook_receiver))
    url = finish_upload(first, b"payload")
    hook_receiver.wait_for("post-finish")
    first.kill()
    failed = len(hook_receiver.received("post-finish"))
    hook_receiver.answer("post-finish")

    serve_process(*options(tmp_path / "files", redis_url, hook_receiver))
    wait_delivered(state, upload_id_of(url))

    [delivered] = hook_receiver.received("post-finish")[failed:]
    assert delivered.upload["ID"] == upload_id_of(url)
    assert delivered.upload["Storage"]["Location"] == upload_id_of(url)


def test_a_failing_receiver_is_retried_by_the_live_instance_with_backoff(
    serve_process: StartProcess,
    hook_receiver: HookReceiver,
    redis_url: str,
    state: redis.Redis,
    tmp_path: Path,
) -> None:
    hook_receiver.answer("post-finish", status=503)
    server = serve_process(*options(tmp_path / "files", redis_url, hook_receiver))
    url = finish_upload(server, b"payload")
    time.sleep(2)
    attempts = len(hook_receiver.received("post-finish"))
    hook_receiver.answer("post-finish")
    wait_delivered(state, upload_id_of(url))

    # 0.25, 0.5, 1 s apart: a few attempts in 2 s, not a busy loop.
    assert 2 <= attempts <= 5
    assert {hook.upload["ID"] for hook in hook_receiver.received("post-finish")} == {
        upload_id_of(url)
    }

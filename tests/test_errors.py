"""Error responses: one shape everywhere, tus headers, no internals, and the
status a client needs to recover (423 on HEAD for passing trouble)."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread
import httpx
import pytest
import redis

from storage_backends.base import Block
from storage_backends.local import LocalStorage
from tests.helpers import upload_id_of
from tests.raw_http import raw_patch, send_in_pieces, wait_until
from tests.redis_fixtures import short_temp_dir
from tests.server_fixtures import OCTETS, TUS, RunningServer, ServedApps
from tusserver import Config, errors
from tusserver.embedded_redis import EmbeddedRedis
from tusserver.hook_events import HookEvent, HookResponse
from tusserver.hooks import Hooks

UNKNOWN_ID = "0123456789abcdef0123456789abcdef"


def assert_error_body(
    response: httpx.Response, status: int, storage: Path, *, retryable: bool | None = None
) -> dict[str, object]:
    """The one error shape: tus headers plus a JSON body without internals."""
    assert response.status_code == status, response.text
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert response.headers["Content-Type"] == "application/json"
    text = response.text
    assert "Traceback" not in text
    assert str(storage) not in text
    assert str(storage.parent) not in text
    assert ".partial" not in text
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, object] = body["error"]
    assert set(error) == {"code", "message", "hint", "retryable"}
    for key in ("code", "message", "hint"):
        value = error[key]
        assert isinstance(value, str) and value
    assert isinstance(error["retryable"], bool)
    if retryable is not None:
        assert error["retryable"] is retryable
    return error


# --- every error has the same shape -------------------------------------------


@dataclass
class Case:
    status: int
    send: Callable[[RunningServer], httpx.Response]


def _patch(url: str, offset: str = "0", **extra: str) -> Callable[[RunningServer], httpx.Response]:
    def send(server: RunningServer) -> httpx.Response:
        return server.client.patch(
            server.url + url,
            headers={**TUS, "Content-Type": OCTETS, "Upload-Offset": offset, **extra},
            content=b"hello",
        )

    return send


def _on_upload(
    status: int, act: Callable[[RunningServer, str], httpx.Response], length: int = 10
) -> Case:
    def send(server: RunningServer) -> httpx.Response:
        return act(server, server.create(length))

    return Case(status, send)


def _range_outside(server: RunningServer, url: str) -> httpx.Response:
    assert server.patch(url, 0, b"abc").status_code == 204
    return server.client.get(url, headers={"Range": "bytes=9-"})


ERROR_CASES = {
    "POST without Tus-Resumable": Case(
        412, lambda s: s.client.post(s.endpoint, headers={"Upload-Length": "1"})
    ),
    "POST with version 0.2.2": Case(
        412,
        lambda s: s.client.post(
            s.endpoint, headers={"Tus-Resumable": "0.2.2", "Upload-Length": "1"}
        ),
    ),
    "POST with malformed length": Case(
        400, lambda s: s.client.post(s.endpoint, headers={**TUS, "Upload-Length": "x"})
    ),
    "POST over max size": Case(
        413, lambda s: s.client.post(s.endpoint, headers={**TUS, "Upload-Length": "1000001"})
    ),
    "POST with invalid metadata": Case(
        400,
        lambda s: s.client.post(
            s.endpoint, headers={**TUS, "Upload-Length": "1", "Upload-Metadata": "k !"}
        ),
    ),
    "POST body of wrong type": Case(
        415,
        lambda s: s.client.post(
            s.endpoint,
            headers={**TUS, "Upload-Length": "1", "Content-Type": "text/plain"},
            content=b"x",
        ),
    ),
    "PUT on the endpoint": Case(405, lambda s: s.client.put(s.endpoint, headers=TUS)),
    "PUT on an upload": _on_upload(405, lambda s, url: s.client.put(url, headers=TUS)),
    "WebDAV method on an upload": _on_upload(
        405, lambda s, url: s.client.request("PROPFIND", url, headers=TUS)
    ),
    "unknown method by override": _on_upload(
        405,
        lambda s, url: s.client.post(url, headers={**TUS, "X-HTTP-Method-Override": "PURGE"}),
    ),
    "GET on an unfinished upload": _on_upload(404, lambda s, url: s.client.get(url)),
    "GET of a range outside a finished file": _on_upload(416, _range_outside, length=3),
    "PATCH with stale offset": _on_upload(409, lambda s, url: s.patch(url, 3, b"x")),
    "PATCH with wrong type": _on_upload(
        415, lambda s, url: s.patch(url, 0, b"x", Content_Type="text/plain")
    ),
    "PATCH without offset": _on_upload(
        400,
        lambda s, url: s.client.patch(url, headers={**TUS, "Content-Type": OCTETS}, content=b"x"),
    ),
    "PATCH past length": _on_upload(413, lambda s, url: s.patch(url, 0, b"x" * 11)),
    "PATCH of unknown id": Case(404, _patch("/files/" + UNKNOWN_ID)),
    "PATCH of uppercase id": Case(404, _patch("/files/" + UNKNOWN_ID.upper())),
    "PATCH of short id": Case(404, _patch("/files/ABC")),
    "PATCH of encoded traversal id": Case(404, _patch("/files/..%2F..%2Fetc")),
    "PATCH of terminated upload": _on_upload(
        410,
        lambda s, url: (s.client.delete(url, headers=TUS), s.patch(url, 0, b"x"))[1],
    ),
    "DELETE of unknown id": Case(
        404, lambda s: s.client.delete(s.endpoint + UNKNOWN_ID, headers=TUS)
    ),
}


@pytest.mark.parametrize("case", ERROR_CASES.values(), ids=ERROR_CASES.keys())
def test_every_error_response_carries_tus_resumable_and_the_json_error_shape(
    tus_server: Callable[..., RunningServer], case: Case
) -> None:
    server = tus_server(max_size=1_000_000)

    response = case.send(server)

    assert_error_body(response, case.status, server.storage)
    assert response.headers["Cache-Control"] == "no-store"


def test_error_from_a_raw_traversal_target_carries_the_json_error_shape(
    tus_server: Callable[..., RunningServer],
) -> None:
    server = tus_server()

    # The request target is sent verbatim (httpx would otherwise collapse the dots).
    response = server.client.patch(
        server.endpoint,
        headers={**TUS, "Content-Type": OCTETS, "Upload-Offset": "0"},
        content=b"x",
        extensions={"target": b"/files/../../etc/passwd"},
    )

    assert_error_body(response, 404, server.storage)


@pytest.mark.parametrize(
    ("path", "method", "allowed"),
    [
        ("", "PUT", {"OPTIONS", "POST"}),
        ("", "DELETE", {"OPTIONS", "POST"}),
        ("", "GET", {"OPTIONS", "POST"}),
        (UNKNOWN_ID, "PUT", {"OPTIONS", "HEAD", "PATCH", "DELETE", "GET"}),
        (UNKNOWN_ID, "POST", {"OPTIONS", "HEAD", "PATCH", "DELETE", "GET"}),
    ],
)
def test_unsupported_method_returns_405_json_with_allow(
    tus_server: Callable[..., RunningServer], path: str, method: str, allowed: set[str]
) -> None:
    server = tus_server()

    response = server.client.request(method, server.endpoint + path, headers=TUS)

    error = assert_error_body(response, 405, server.storage, retryable=False)
    assert error["code"] == "method_not_allowed"
    assert {m.strip() for m in response.headers["Allow"].split(",")} == allowed


# --- storage faults -----------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "reading", "status", "code", "retryable"),
    [
        (OSError(errno.ENOSPC, "full"), False, 507, "storage_full", False),
        (OSError(errno.EDQUOT, "quota"), False, 507, "storage_full", False),
        (PermissionError(errno.EACCES, "denied"), False, 500, "storage_refused", False),
        (OSError(errno.EROFS, "read-only"), False, 500, "storage_refused", False),
        (ConnectionResetError(errno.ECONNRESET, "reset"), False, 503, "storage_failed", True),
        (OSError(errno.EIO, "io"), True, 503, "storage_read_failed", True),
    ],
)
def test_storage_faults_answer_by_what_they_are(
    exc: OSError, reading: bool, status: int, code: str, retryable: bool
) -> None:
    error = errors.storage_failure(exc, reading=reading)
    assert (error.status, error.code, error.retryable) == (status, code, retryable)


def test_patch_on_a_failing_storage_answers_503_retryable_without_internals(
    tus_server: Callable[..., RunningServer], redis_url: str
) -> None:
    server = tus_server()
    url = server.create(10)
    upload_id = upload_id_of(url)
    # A directory where the partial should be: opening it for writing fails.
    (server.partials / upload_id).unlink()
    (server.partials / upload_id).mkdir()

    response = server.patch(url, 0, b"hello")

    error = assert_error_body(response, 503, server.storage, retryable=True)
    assert error["code"] == "storage_failed"
    assert upload_id not in response.text
    state = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert state.hget(f"tus:{{{upload_id}}}:info", "offset") == "0"
        assert state.exists(f"tus:{{{upload_id}}}:lock") == 0
    finally:
        state.close()
    assert (server.partials / upload_id).is_dir()
    head = server.head(url)
    assert head.status_code == 200
    assert head.headers["Upload-Offset"] == "0"


class FullAfter(LocalStorage):
    """Local storage whose disk fills up after a write's first ``blocks`` blocks."""

    def __init__(self, root: Path, blocks: int) -> None:
        super().__init__(root)
        self.blocks = blocks

    async def write(self, upload_id: str, offset: int, blocks: AsyncIterator[Block]) -> int:
        async def until_full() -> AsyncIterator[Block]:
            taken = 0
            async for block in blocks:
                if taken == self.blocks:
                    raise OSError(errno.ENOSPC, "No space left on device")
                taken += 1
                yield block

        return await super().write(upload_id, offset, until_full())


def start_on_a_disk_that_fills_after_3_blocks(
    served_apps: ServedApps, redis_url: str, tmp_path: Path
) -> RunningServer:
    """A server of 64 KiB blocks whose disk refuses each write's fourth block."""
    root = tmp_path / "files"
    config = Config(storage=str(root), redis_url=redis_url, block_size=64 * 1024)
    return served_apps.start(config, root, backend=FullAfter(root, blocks=3))


def test_a_disk_full_mid_body_commits_exactly_the_bytes_stored_before_it(
    served_apps: ServedApps, redis_url: str, state: redis.Redis, tmp_path: Path
) -> None:
    server = start_on_a_disk_that_fills_after_3_blocks(served_apps, redis_url, tmp_path)
    url = server.create(1024 * 1024)

    response = server.patch(url, 0, os.urandom(1024 * 1024))

    error = assert_error_body(response, 507, server.storage, retryable=False)
    assert error["code"] == "storage_full"
    stored = (server.partials / upload_id_of(url)).stat().st_size
    assert 3 * 64 * 1024 <= stored < 1024 * 1024
    assert state.hget(f"tus:{{{upload_id_of(url)}}}:info", "offset") == str(stored)


def test_an_upload_resumed_after_a_disk_full_mid_body_records_the_digest_of_its_bytes(
    served_apps: ServedApps, redis_url: str, state: redis.Redis, tmp_path: Path
) -> None:
    # The bytes of the block the disk refused were hashed as they arrived:
    # the running SHA-256 is then ahead of the stored bytes and must not be
    # resumed from.
    server = start_on_a_disk_that_fills_after_3_blocks(served_apps, redis_url, tmp_path)
    body = os.urandom(1024 * 1024)
    url = server.create(len(body))
    info = f"tus:{{{upload_id_of(url)}}}:info"
    assert server.patch(url, 0, body).status_code == 507
    stored = int(state.hget(info, "offset") or 0)
    assert 0 < stored < len(body)

    # The rest, in PATCHes short enough for this disk (three blocks each).
    for start in range(stored, len(body), 3 * 64 * 1024):
        response = server.patch(url, start, body[start : start + 3 * 64 * 1024])
        assert response.status_code == 204

    assert state.hget(info, "sha256") == hashlib.sha256(body).hexdigest()


def test_a_patch_that_stores_nothing_neither_moves_the_offset_nor_extends_the_expiry(
    tus_server: Callable[..., RunningServer], redis_url: str
) -> None:
    # Sliding expiry: only stored bytes show that the client is still at it.
    server = tus_server()
    url = server.create(10)
    upload_id = upload_id_of(url)
    (server.partials / upload_id).unlink()
    (server.partials / upload_id).mkdir()  # opening it for writing fails
    state = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        before = state.hgetall(f"tus:{{{upload_id}}}:info")
        time.sleep(0.05)

        response = server.patch(url, 0, b"hello")

        after = state.hgetall(f"tus:{{{upload_id}}}:info")
    finally:
        state.close()

    assert response.status_code == 503
    assert after == before


@pytest.mark.parametrize("damage", ["removed", "replaced by a file"])
def test_post_when_the_partials_folder_is_unusable_answers_503_without_path_or_errno(
    tus_server: Callable[..., RunningServer],
    redis_url: str,
    damage: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The storage fails before any body is read: the app's own storage-fault
    # answer, not the one of a PATCH whose body was being stored.
    server = tus_server()
    shutil.rmtree(server.partials)
    if damage == "replaced by a file":
        server.partials.write_bytes(b"")

    with caplog.at_level(logging.ERROR):
        response = server.client.post(server.endpoint, headers={**TUS, "Upload-Length": "5"})

    # The operator's log has the system's reason by name, still without a path.
    failed = [r.getMessage() for r in caplog.records if "storage failed" in r.getMessage()]
    assert failed, "the storage failure was not logged"
    errno_name = "ENOENT" if damage == "removed" else "ENOTDIR"
    assert f"Error {errno_name} (" in failed[-1]
    assert str(server.storage) not in failed[-1]

    error = assert_error_body(response, 503, server.storage, retryable=True)
    assert error["code"] == "storage_failed"
    assert response.headers["Cache-Control"] == "no-store"
    assert "Location" not in response.headers
    for internal in ("Errno", "No such file", "Not a directory", "FileNotFoundError", "partial"):
        assert internal not in response.text
    state = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert state.keys("tus:{*}:info") == []
    finally:
        state.close()


def test_an_unexpected_failure_answers_500_without_internals_and_logs_the_upload_id(
    tus_server: Callable[..., RunningServer],
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = tus_server()
    url = server.create(10)
    upload_id = upload_id_of(url)
    # A record no release of tusserver writes (damaged by hand, or by a
    # foreign tool): reading it fails in a way no handler expects, and the
    # failure's text carries what was in the record.
    secret = f"api_key=sk-93f1c0ffee {server.partials / upload_id}"
    state = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        state.hset(f"tus:{{{upload_id}}}:info", "offset", secret)
    finally:
        state.close()

    with caplog.at_level(logging.ERROR):
        response = server.patch(url, 0, b"hello")

    error = assert_error_body(response, 500, server.storage, retryable=True)
    assert error["code"] == "internal_error"
    assert response.headers["Cache-Control"] == "no-store"
    for internal in ("sk-93f1c0ffee", "api_key", str(server.partials), "ValueError", "int()"):
        assert internal not in response.text
    assert upload_id not in response.text
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert logged, "the failure was not logged"
    line = logged[-1]
    # The line names the upload and the failure's kind, and nothing an
    # operator's log must not hold: no trace, no path, no secret.
    assert upload_id in line.getMessage()
    # Where it was raised: the record's parsing, not the handler that called it.
    assert "unexpected failure: ValueError at tusserver.record:" in line.getMessage()
    assert line.exc_info is None and line.exc_text is None
    assert "Traceback" not in caplog.text
    for internal in ("sk-93f1c0ffee", "api_key", str(server.partials), ".py"):
        assert internal not in line.getMessage()
    assert (server.partials / upload_id).read_bytes() == b""


@pytest.mark.parametrize("length", [10, None], ids=["length-known", "length-deferred"])
def test_patch_after_the_partial_vanished_answers_410_and_the_upload_is_gone(
    tus_server: Callable[..., RunningServer], redis_url: str, length: int | None
) -> None:
    # The stored bytes are lost: retrying cannot help, the client must start
    # a new upload, which tus clients do on 410. With a deferred length no
    # finalize can have published the upload either: there is no note of
    # one to look for (``receiving._published_before``).
    server = tus_server()
    url = server.create(length)
    assert server.patch(url, 0, b"hello").status_code == 204
    upload_id = upload_id_of(url)
    (server.partials / upload_id).unlink()

    response = server.patch(url, 5, b"world")

    error = assert_error_body(response, 410, server.storage, retryable=False)
    assert error["code"] == "upload_gone"
    # The partial is not recreated full of holes.
    assert not (server.partials / upload_id).exists()
    assert server.head(url).status_code == 410
    state = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert not state.exists(f"tus:{{{upload_id}}}:info")
        assert not state.exists(f"tus:{{{upload_id}}}:lock")
    finally:
        state.close()


# --- Redis outages ------------------------------------------------------------


@pytest.fixture
def lone_server(tmp_path: Path, served_apps: ServedApps) -> Callable[[str], RunningServer]:
    """A tusserver on a Redis of the test's choosing (not the session's)."""

    def start(redis_url: str) -> RunningServer:
        storage = tmp_path / f"storage{len(served_apps)}"
        config = Config(storage=str(storage), redis_url=redis_url, lock_wait=0.5)
        return served_apps.start(config, storage)

    return start


def test_a_patch_keeps_writing_through_a_redis_failure_of_one_lock_keep_alive(
    served_apps: ServedApps, private_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    # Redis refuses one keep-alive (scripts denied for a moment, a real
    # permission error): the lock may still be ours, so the PATCH goes on,
    # and the commit's compare-and-set decides once Redis answers again.
    ttl = 3.0
    config = Config(
        storage=str(tmp_path / "storage"),
        redis_url=private_redis.url,
        lock_ttl=ttl,
        idle_timeout=0.4,
        block_size=64 * 1024,
    )
    server = served_apps.start(config, tmp_path / "storage")
    length = 512 * 1024
    data = os.urandom(length)
    url = server.create(length)
    partial = server.partials / upload_id_of(url)
    admin = redis.Redis.from_url(private_redis.url, decode_responses=True)
    try:
        with raw_patch(url, 0, content_length=length) as request:
            send_in_pieces(request, data[: 64 * 1024])
            wait_until(lambda: partial.stat().st_size >= 64 * 1024, "the first block stored")
            admin.acl_log_reset()
            admin.execute_command("ACL", "SETUSER", "default", "-evalsha", "-eval")
            sent = 64 * 1024
            deadline = time.monotonic() + ttl
            try:
                while not admin.acl_log() and time.monotonic() < deadline:
                    assert request.send(data[sent : sent + 1024])
                    sent += 1024
                    time.sleep(0.02)
            finally:
                admin.execute_command("ACL", "SETUSER", "default", "+evalsha", "+eval")
            refused = admin.acl_log()
            send_in_pieces(request, data[sent:], piece=8 * 1024)
            response = request.response()
    finally:
        admin.close()

    assert refused and refused[0]["object"] == "evalsha"
    assert response.status == 204
    assert response.headers["upload-offset"] == str(length)
    assert (server.storage / upload_id_of(url)).read_bytes() == data


class _AllowScriptsAfterRetries(logging.Handler):
    """Lets the ``default`` user run scripts again ``delay`` seconds after
    the ``refusals``-th "retrying to record it" of tusserver.finishing; counts
    those lines."""

    def __init__(self, admin: redis.Redis, refusals: int, delay: float) -> None:
        super().__init__(logging.WARNING)
        self.admin, self.refusals, self.delay = admin, refusals, delay
        self.retries = 0
        self.timer: threading.Timer | None = None

    def allow(self) -> None:
        self.admin.execute_command("ACL", "SETUSER", "default", "+evalsha", "+eval")

    def emit(self, record: logging.LogRecord) -> None:
        if "retrying to record it" not in record.getMessage():
            return
        self.retries += 1
        if self.retries == self.refusals:
            self.timer = threading.Timer(self.delay, self.allow)
            self.timer.start()


@pytest.mark.parametrize("refusals", [1, 2])
def test_a_completion_redis_refuses_for_a_moment_is_recorded_by_a_retry_after_a_pause(
    served_apps: ServedApps, private_redis: EmbeddedRedis, tmp_path: Path, refusals: int
) -> None:
    # Redis refuses scripts (a real permission error, as above) from the
    # moment the pre-finish hook agrees until 0.05 s after the completion
    # was refused ``refusals`` times. The file is published by then; the
    # server pauses before trying again (0.2 s, then 0.4 s), so the next
    # attempt records it and the client gets its 204. Without the pauses
    # the attempts left run into the same refusal and the upload stays
    # unrecorded; the third attempt is the last.
    admin = redis.Redis.from_url(private_redis.url, decode_responses=True)

    async def refuse_scripts(event: HookEvent) -> HookResponse | None:
        await anyio.to_thread.run_sync(
            admin.execute_command, "ACL", "SETUSER", "default", "-evalsha", "-eval"
        )
        return None

    storage = tmp_path / "storage"
    config = Config(storage=str(storage), redis_url=private_redis.url)
    server = served_apps.start(config, storage, hooks=Hooks(pre_finish=refuse_scripts))
    url = server.create(10)
    upload_id = upload_id_of(url)
    watcher = _AllowScriptsAfterRetries(admin, refusals, delay=0.05)
    finishing = logging.getLogger("tusserver.finishing")
    finishing.addHandler(watcher)
    try:
        patched = server.patch(url, 0, b"helloworld")
        record = admin.hgetall(f"tus:{{{upload_id}}}:info")
        locked = admin.exists(f"tus:{{{upload_id}}}:lock")
    finally:
        finishing.removeHandler(watcher)
        if watcher.timer is not None:
            watcher.timer.join()
        watcher.allow()
        admin.close()

    # At least: on a machine too busy to lift the refusal within the pause,
    # one attempt more is refused; with one refusal planned the last
    # attempt, 0.4 s later, still records it.
    assert watcher.retries >= refusals
    assert patched.status_code == 204, patched.text
    assert patched.headers["Upload-Offset"] == "10"
    assert record["state"] == "complete"
    assert record["location"] == upload_id
    assert record["sha256"] == hashlib.sha256(b"helloworld").hexdigest()
    assert not locked
    assert (server.storage / upload_id).read_bytes() == b"helloworld"


def test_head_when_redis_stops_answers_423_retryable_not_5xx(
    lone_server: Callable[[str], RunningServer], private_redis: EmbeddedRedis
) -> None:
    server = lone_server(private_redis.url)
    created = server.client.post(server.url + "/files/", headers={**TUS, "Upload-Length": "10"})
    assert created.status_code == 201
    url = server.url + created.headers["Location"]
    assert server.client.head(url, headers=TUS).status_code == 200

    private_redis.stop()
    head = server.client.head(url, headers=TUS)
    # X-HTTP-Method-Override lets the same HEAD carry a body to inspect.
    overridden = server.client.post(url, headers={**TUS, "X-HTTP-Method-Override": "HEAD"})
    patch = server.client.patch(
        url, headers={**TUS, "Content-Type": OCTETS, "Upload-Offset": "0"}, content=b"x"
    )

    assert head.status_code == 423
    assert head.headers["Tus-Resumable"] == "1.0.0"
    assert head.content == b""
    assert "Upload-Offset" not in head.headers
    error = assert_error_body(overridden, 423, server.storage, retryable=True)
    assert error["code"] == "upload_temporarily_unavailable"
    assert "redis" not in overridden.text.lower()
    error = assert_error_body(patch, 503, server.storage, retryable=True)
    assert error["code"] == "state_unavailable"
    assert private_redis.url not in patch.text


def test_while_redis_is_down_the_release_listener_reconnects_about_once_a_second(
    lone_server: Callable[[str], RunningServer],
    private_redis: EmbeddedRedis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = lone_server(private_redis.url)
    client = redis.Redis.from_url(private_redis.url)
    try:
        wait_until(lambda: dict(client.pubsub_numsub("tus:release")) != {}, "the listener")
        assert dict(client.pubsub_numsub("tus:release"))[b"tus:release"] == 1
    finally:
        client.close()

    with caplog.at_level(logging.WARNING, logger="tusserver.locking"):
        private_redis.stop()
        time.sleep(3)
    lost = [r for r in caplog.records if "release-request listener lost Redis" in r.getMessage()]

    assert 1 <= len(lost) <= 5
    assert server.head(f"{server.url}/files/{UNKNOWN_ID}").status_code == 423


def test_server_without_reachable_redis_starts_and_answers_head_423_and_post_503(
    lone_server: Callable[[str], RunningServer], caplog: pytest.LogCaptureFixture
) -> None:
    missing_socket = short_temp_dir()
    try:
        with caplog.at_level(logging.INFO, logger="tusserver.app"):
            server = lone_server(f"unix://{missing_socket}/no-such.sock")
            # The scripts it loads ahead, beside its start, cannot be loaded.
            wait_until(
                lambda: any("scripts not loaded" in r.getMessage() for r in caplog.records),
                "the scripts' loading to give up",
            )

        head = server.client.head(f"{server.url}/files/{UNKNOWN_ID}", headers=TUS)
        post = server.client.post(f"{server.url}/files/", headers={**TUS, "Upload-Length": "5"})

        assert head.status_code == 423
        assert head.headers["Tus-Resumable"] == "1.0.0"
        assert head.content == b""
        error = assert_error_body(post, 503, server.storage, retryable=True)
        assert error["code"] == "state_unavailable"
        assert "no-such.sock" not in post.text
        assert "Location" not in post.headers
        said = [r.getMessage() for r in caplog.records if "scripts not loaded" in r.getMessage()]
        assert said == [
            "scripts not loaded ahead (StateUnavailable (ConnectionError)):"
            " each loads at its first call"
        ]
        assert "no-such.sock" not in said[0]
    finally:
        shutil.rmtree(missing_socket, ignore_errors=True)

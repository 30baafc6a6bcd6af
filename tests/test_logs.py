"""Log lines and request ids: JSON lines that parse and carry the client's
request id, an id on every answer and in hook events, and no secret, token,
password or file content in anything a full run logs."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from tusclient.client import TusClient

from tests import jwt_tokens
from tests.process_fixtures import ServeProcess
from tests.redis_fixtures import short_temp_dir
from tests.server_fixtures import RunningServer, free_port
from tusserver.embedded_redis import find_redis_server
from tusserver.hook_events import HookEvent, HookResponse
from tusserver.hooks import Hooks

TUS = {"Tus-Resumable": "1.0.0"}
MADE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of the log as the JSON object it must be."""
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert lines and all(isinstance(line, dict) for line in lines)
    return lines


def test_json_log_lines_parse_and_carry_the_request_id_the_client_sent(
    serve_process: Callable[..., ServeProcess], tmp_path: Path
) -> None:
    server = serve_process(
        "--log-format", "json", "--access-log",
        "--storage", tmp_path / "uploads",
        "--data-dir", short_temp_dir() / "data",
    )  # fmt: skip
    created = httpx.post(
        server.endpoint,
        headers={**TUS, "Upload-Length": "5", "X-Request-ID": "proxy-7f3a.01:b_c"},
    )
    assert created.status_code == 201
    assert created.headers["x-request-id"] == "proxy-7f3a.01:b_c"
    upload_id = created.headers["location"].rsplit("/", 1)[1]
    server.stop()

    lines = json_lines(server.log_text())
    for line in lines:
        assert {"time", "level", "message"} <= line.keys()
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
    ours = [line for line in lines if line.get("request_id") == "proxy-7f3a.01:b_c"]
    creation = [line for line in ours if "created" in line["message"]]
    assert creation and creation[0]["upload_id"] == upload_id
    access = [line for line in ours if "status" in line]
    assert len(access) == 1
    assert access[0]["method"] == "POST"
    assert access[0]["path"] == "/files/"
    assert access[0]["status"] == 201
    assert access[0]["upload_id"] == upload_id
    assert isinstance(access[0]["duration"], float)


@pytest.mark.parametrize(
    "sent",
    ["has spaces", "x" * 129, 'quote"d', "", "semi;colon"],
    ids=["spaces", "too-long", "quote", "empty", "semicolon"],
)
def test_an_insane_request_id_is_replaced_by_one_made_by_the_server(
    tus_server: Callable[..., RunningServer], sent: str
) -> None:
    server = tus_server()
    response = server.client.options(server.endpoint, headers={"X-Request-ID": sent})
    returned = response.headers["x-request-id"]
    assert returned != sent
    assert MADE_ID.fullmatch(returned)


def test_every_answer_carries_a_request_id_errors_and_preflights_too(
    tus_server: Callable[..., RunningServer],
) -> None:
    server = tus_server(cors_origins=("https://app.example",))
    client = server.client
    answers = [
        client.head(server.endpoint + "0" * 32, headers=TUS),  # 404
        client.request("PUT", server.endpoint, headers=TUS),  # 405
        client.post(server.endpoint, headers={"Upload-Length": "5"}),  # 412
        client.options(  # a CORS preflight, answered by the CORS layer
            server.endpoint,
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
        ),
        client.get(server.url + "/metrics"),
    ]
    ids = [answer.headers.get("x-request-id") for answer in answers]
    assert all(request_id and MADE_ID.fullmatch(request_id) for request_id in ids), ids
    assert len(set(ids)) == len(ids)
    # Sent back as given when it is sane; readable by a page on another origin.
    page = {"Origin": "https://app.example", "X-Request-ID": "r1"}
    created = client.post(server.endpoint, headers={**TUS, "Upload-Length": "5", **page})
    assert created.headers["x-request-id"] == "r1"
    exposed = created.headers["access-control-expose-headers"].lower()
    assert "x-request-id" in exposed


def test_hook_events_carry_the_request_id(tus_server: Callable[..., RunningServer]) -> None:
    seen: list[HookEvent] = []

    async def record(event: HookEvent) -> HookResponse | None:
        seen.append(event)
        return None

    server = tus_server(hooks=Hooks(pre_create=record))
    sent = server.client.post(
        server.endpoint, headers={**TUS, "Upload-Length": "5", "X-Request-ID": "client.1"}
    )
    made = server.client.post(server.endpoint, headers={**TUS, "Upload-Length": "5"})

    assert [event.http_request.header["X-Request-Id"] for event in seen] == [
        ("client.1",),
        (made.headers["x-request-id"],),
    ]
    assert sent.headers["x-request-id"] == "client.1"


@pytest.fixture
def redis_with_password() -> Iterator[tuple[str, str]]:
    """A real Redis that needs a password: its URL (with the password) and the password."""
    password = "redis-pass-5e9c1b7d"
    port = free_port()
    data_dir = short_temp_dir()
    process = subprocess.Popen(
        [
            find_redis_server(), "--port", str(port), "--bind", "127.0.0.1",
            "--requirepass", password, "--save", "", "--appendonly", "no",
            "--dir", str(data_dir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "Redis did not start"
                time.sleep(0.05)
        client.close()
        yield url, password
    finally:
        process.terminate()
        process.wait(15)


def test_a_full_run_logs_no_secret_token_password_or_file_content(
    serve_process: Callable[..., ServeProcess],
    tmp_path: Path,
    redis_with_password: tuple[str, str],
) -> None:
    redis_url, redis_password = redis_with_password
    hook_secret = "hook-secret-0b8e2d4f6a"
    content = b"CONTENT-MARKER-91c3e7" * 5000
    source = tmp_path / "source.bin"
    source.write_bytes(content)
    token = jwt_tokens.token("alice")
    logs: list[str] = []
    for log_format in ("text", "json"):
        server = serve_process(
            "--log-format", log_format, "--log-level", "debug", "--access-log",
            "--storage", tmp_path / f"uploads-{log_format}",
            "--redis-url", redis_url,
            "--jwt-audience", jwt_tokens.AUDIENCE, "--jwt-issuer", jwt_tokens.ISSUER,
            # A receiver that is down: every hook fails, and its failures are logged.
            "--hooks-url", f"http://127.0.0.1:{free_port()}/hooks?key={hook_secret}",
            "--hooks-header", f"X-Hook-Secret: {hook_secret}",
            "--hooks-events", "post-create,post-receive,post-finish",
            "--hooks-retries", "0",
            env={"TUSSERVER_JWT_SECRET": jwt_tokens.SECRET},
        )  # fmt: skip
        client = TusClient(server.endpoint, headers={"Authorization": f"Bearer {token}"})
        uploader = client.uploader(
            file_path=str(source), chunk_size=40_000, metadata={"filename": "report.pdf"}
        )
        uploader.upload()
        assert uploader.url is not None
        # Refused credentials and a malformed token are logged too, if at all.
        httpx.head(uploader.url, headers={**TUS, "Authorization": f"Bearer {token}x"})
        httpx.delete(uploader.url, headers={**TUS, "Authorization": f"Bearer {token}"})
        server.stop()
        logs.append(server.log_text())

    text_log, json_log = logs
    json_lines(json_log)
    assert "finished" in text_log and "finished" in json_log  # the run was logged
    for log in logs:
        for secret in (
            jwt_tokens.SECRET,
            token,
            token.split(".")[2],  # the signature alone
            redis_password,
            hook_secret,
            "CONTENT-MARKER",
        ):
            assert secret not in log

"""HEAD on an upload URL: where to resume, answered from the upload record."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

import httpx
import pytest
import redis

from tests.helpers import upload_id_of
from tests.server_fixtures import TUS, RunningServer


def commands_processed(state: redis.Redis) -> int:
    return int(state.info("stats")["total_commands_processed"])


def wait_for_release_listener(state: redis.Redis) -> None:
    """The server subscribes in the background; let that command pass first."""
    deadline = time.monotonic() + 5
    while dict(state.pubsub_numsub("tus:release")).get("tus:release", 0) < 1:
        assert time.monotonic() < deadline, "the server never subscribed to tus:release"
        time.sleep(0.01)


def assert_head_error(response: httpx.Response, status: int) -> None:
    assert response.status_code == status
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert response.content == b""
    assert "Upload-Offset" not in response.headers


def test_head_returns_offset_length_no_store_and_tus_resumable(
    tus_server: Callable[..., RunningServer],
) -> None:
    server = tus_server()
    url = server.create(100)
    assert server.patch(url, 0, b"x" * 42).status_code == 204

    response = server.head(url)

    assert response.status_code == 200
    assert response.headers["Upload-Offset"] == "42"
    assert response.headers["Upload-Length"] == "100"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert "Upload-Defer-Length" not in response.headers
    assert response.content == b""


def test_head_of_a_new_upload_reports_offset_0(
    tus_server: Callable[..., RunningServer],
) -> None:
    server = tus_server()
    url = server.create(7)

    response = server.head(url)

    assert response.status_code == 200
    assert response.headers["Upload-Offset"] == "0"
    assert response.headers["Upload-Length"] == "7"


def test_head_of_a_deferred_upload_sends_defer_length_and_no_length(
    tus_server: Callable[..., RunningServer],
) -> None:
    server = tus_server()
    url = server.create(None)
    assert server.patch(url, 0, b"abc").status_code == 204

    response = server.head(url)

    assert response.status_code == 200
    assert response.headers["Upload-Defer-Length"] == "1"
    assert "Upload-Length" not in response.headers
    assert response.headers["Upload-Offset"] == "3"


def test_head_does_not_change_the_record_or_take_the_lock(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()
    url = server.create(10)
    upload_id = upload_id_of(url)
    before = state.hgetall(f"tus:{{{upload_id}}}:info")

    assert server.head(url).status_code == 200

    assert state.hgetall(f"tus:{{{upload_id}}}:info") == before
    assert state.exists(f"tus:{{{upload_id}}}:lock") == 0


# Kills the connections of every client of one Redis server.
@pytest.mark.standalone_redis
def test_a_head_after_redis_dropped_the_servers_connections_still_answers_from_the_record(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    # The state scripts go out on connections the server keeps, written
    # without waiting (tusserver/script_calls.py): one Redis closed meanwhile
    # (a restart, a timeout, CLIENT KILL) must show at the reply and be
    # retried on a fresh connection, never answer 423 or a stale record.
    server = tus_server()
    url = server.create(10)
    assert server.patch(url, 0, b"abc").status_code == 204
    for _ in range(3):  # connections kept in use
        assert server.head(url).status_code == 200

    for attempt in range(3):
        state.client_kill_filter(_type="normal", skipme=True)
        response = server.head(url)
        assert response.status_code == 200, attempt
        assert response.headers["Upload-Offset"] == "3"
    assert server.patch(url, 3, b"defg").status_code == 204
    assert server.head(url).headers["Upload-Offset"] == "7"


def test_head_of_an_unknown_id_returns_404(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()

    response = server.head(server.endpoint + "0123456789abcdef0123456789abcdef")

    assert_head_error(response, 404)
    assert state.keys("*") == []


# Counts commands on, or listens to, one Redis server.
@pytest.mark.standalone_redis
@pytest.mark.parametrize(
    "raw_id",
    [
        pytest.param("ABC", id="short uppercase"),
        pytest.param("0123456789ABCDEF0123456789ABCDEF", id="uppercase hex"),
        pytest.param("0123456", id="7 characters"),
        pytest.param("0123456789abcdef" * 4 + "0", id="65 characters"),
        pytest.param("tus{0123456789}", id="hash tag braces"),
        pytest.param("..", id="dot dot"),
        pytest.param("%2E%2E", id="encoded dot dot"),
        pytest.param("..%2F..%2Fetc", id="encoded traversal"),
        pytest.param("0123456789abcdef0123456789abcde%00", id="nul"),
        pytest.param("*", id="star"),
    ],
)
def test_head_of_a_malformed_id_returns_404_without_touching_redis(
    tus_server: Callable[..., RunningServer], state: redis.Redis, raw_id: str
) -> None:
    server = tus_server()
    wait_for_release_listener(state)
    commands_before = commands_processed(state)

    response = server.client.head(server.endpoint + raw_id, headers=TUS)

    assert response.status_code == 404
    assert response.content == b""
    # The only command in between is the INFO that read commands_before.
    assert commands_processed(state) - commands_before == 1
    assert state.keys("*") == []


def test_head_of_a_raw_traversal_path_returns_404_and_creates_no_key(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()

    # The request target is sent verbatim (httpx would otherwise collapse the dots).
    response = server.client.head(
        server.endpoint, headers=TUS, extensions={"target": b"/files/../../etc"}
    )

    assert response.status_code == 404
    assert state.keys("*") == []


def test_head_of_a_terminated_upload_returns_410(
    tus_server: Callable[..., RunningServer],
) -> None:
    server = tus_server()
    url = server.create(10)
    assert server.client.delete(url, headers=TUS).status_code == 204

    assert_head_error(server.head(url), 410)


def test_head_of_a_finished_upload_reports_offset_equal_to_length_after_finalize(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()
    url = server.create(6)
    assert server.patch(url, 0, b"abcdef").status_code == 204
    upload_id = upload_id_of(url)
    assert (server.storage / upload_id).read_bytes() == b"abcdef"
    assert state.hget(f"tus:{{{upload_id}}}:info", "state") == "complete"

    for _ in range(2):
        response = server.head(url)
        assert response.status_code == 200
        assert response.headers["Upload-Offset"] == "6"
        assert response.headers["Upload-Length"] == "6"


def test_a_head_after_a_publish_whose_completion_was_never_recorded_records_it_from_the_storage(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    # As if the process died between the publish and its record: the
    # partial is gone (moved to its final name), the storage's note of where
    # it went is still in staging, and the record says every byte is in but
    # nothing finished. The HEAD that finishes the upload finds the file from
    # the note and records it, with the digest of the published bytes; it
    # publishes no second copy.
    server = tus_server()
    url = server.create(5)
    upload_id = upload_id_of(url)
    assert server.patch(url, 0, b"hello").status_code == 204
    info = f"tus:{{{upload_id}}}:info"
    (server.partials / f"{upload_id}.final").write_text(upload_id)
    state.hset(info, "state", "partial")
    state.hdel(info, "location", "sha256", "completed")

    head = server.head(url)

    assert head.status_code == 200, head.text
    assert head.headers["Upload-Offset"] == head.headers["Upload-Length"] == "5"
    record = state.hgetall(info)
    assert record["state"] == "complete"
    assert record["location"] == upload_id
    assert record["sha256"] == hashlib.sha256(b"hello").hexdigest()
    assert sorted(path.name for path in server.storage.iterdir()) == [".partial", upload_id]
    assert (server.storage / upload_id).read_bytes() == b"hello"
    assert list(server.partials.iterdir()) == []


@pytest.mark.parametrize(
    ("version", "status"), [(None, 412), ("0.2.2", 412), ("1.0.0", 200)], ids=str
)
def test_head_requires_a_supported_tus_resumable(
    tus_server: Callable[..., RunningServer], version: str | None, status: int
) -> None:
    server = tus_server()
    url = server.create(10)
    headers = {} if version is None else {"Tus-Resumable": version}

    response = server.client.head(url, headers=headers)

    assert response.status_code == status
    assert response.headers["Tus-Resumable"] == "1.0.0"
    if status == 412:
        assert "1.0.0" in response.headers["Tus-Version"]
        assert response.content == b""

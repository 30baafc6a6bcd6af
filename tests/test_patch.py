"""PATCH: appending bytes at Upload-Offset, limits, deferred length and finalize."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import cast

import anyio
import httpx
import pytest
import redis

from storage_backends.base import Block, Storage
from storage_backends.local import LocalStorage
from tests.helpers import assert_tus_error, b64, upload_id_of
from tests.raw_http import chunked, raw_patch, send_in_pieces, wait_until
from tests.server_fixtures import OCTETS, TUS, RunningServer, ServedApps
from tusserver import Config, extensions

KIB = 1024
MIB = 1024 * KIB


def record(state: redis.Redis, url: str) -> dict[str, str]:
    return state.hgetall(f"tus:{{{upload_id_of(url)}}}:info")  # type: ignore[return-value]


def patch_stream(
    server: RunningServer, url: str, offset: int, pieces: Iterable[bytes], **headers: str
) -> httpx.Response:
    """PATCH with chunked transfer encoding (no Content-Length)."""
    sent = {**TUS, "Content-Type": OCTETS, "Upload-Offset": str(offset), **headers}
    return server.client.patch(url, headers=sent, content=iter(pieces))


def pattern(size: int, seed: int = 0) -> bytes:
    """Bytes whose every position differs from its neighbours', so shifts show."""
    block = hashlib.sha256(str(seed).encode()).digest() * 8  # 256 bytes
    return (block * (size // len(block) + 1))[:size]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- appending ---------------------------------------------------------------


def test_patch_appends_and_returns_204_with_the_new_offset(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()
    url = server.create(10)
    partial = server.partials / upload_id_of(url)

    first = server.patch(url, 0, b"hello")

    assert first.status_code == 204
    assert first.headers["Upload-Offset"] == "5"
    assert first.headers["Tus-Resumable"] == "1.0.0"
    assert record(state, url)["offset"] == "5"
    assert partial.read_bytes() == b"hello"
    assert state.exists(f"tus:{{{upload_id_of(url)}}}:lock") == 0

    second = server.patch(url, 5, b"world")

    assert second.status_code == 204
    assert second.headers["Upload-Offset"] == "10"
    assert (server.storage / upload_id_of(url)).read_bytes() == b"helloworld"
    assert not partial.exists()


def test_patch_with_an_empty_body_keeps_the_offset(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()
    url = server.create(10)
    assert server.patch(url, 0, b"abc").status_code == 204

    response = server.patch(url, 3, b"")

    assert response.status_code == 204
    assert response.headers["Upload-Offset"] == "3"
    assert record(state, url)["offset"] == "3"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length-0", "chunked"])
def test_an_empty_patch_without_upload_length_leaves_a_deferred_length_deferred(
    tus_server: Callable[..., RunningServer], state: redis.Redis, chunked: bool
) -> None:
    # Stores nothing and declares no length: nothing to record, and a length
    # the upload does not have is not recorded either. An empty chunked
    # body is read (it might have run past the length), a Content-Length
    # of 0 is not.
    server = tus_server()
    url = server.create(None)
    assert server.patch(url, 0, b"hello").status_code == 204

    response = patch_stream(server, url, 5, []) if chunked else server.patch(url, 5, b"")

    assert response.status_code == 204
    assert response.headers["Upload-Offset"] == "5"
    saved = record(state, url)
    assert (saved["length"], saved["offset"], saved["state"]) == ("", "5", "partial")
    assert server.head(url).headers["Upload-Defer-Length"] == "1"


def test_an_empty_chunked_patch_declaring_the_length_records_it(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    # The body stored nothing, so no commit recorded the length it declared:
    # it is recorded once the body ended within it.
    server = tus_server()
    url = server.create(None)
    assert server.patch(url, 0, b"hello").status_code == 204

    response = patch_stream(server, url, 5, [], **{"Upload-Length": "10"})

    assert response.status_code == 204
    assert record(state, url)["length"] == "10"
    head = server.head(url)
    assert head.headers["Upload-Length"] == "10"
    assert "Upload-Defer-Length" not in head.headers


def scripts_run(state: redis.Redis) -> int:
    """How many scripts Redis ran, on every primary of a Cluster. A script's
    first call on a server fails (NOSCRIPT) and is sent again: not counted."""
    return commands_run(state, "evalsha", "eval")


def commands_run(state: redis.Redis, *names: str) -> int:
    """How many of the commands ``names`` Redis ran and did not fail, on
    every primary of a Cluster."""
    if isinstance(state, redis.RedisCluster):
        by_node = state.info("commandstats", target_nodes=redis.RedisCluster.PRIMARIES)
        nodes = list(by_node.values())
    else:
        nodes = [state.info("commandstats")]
    return sum(
        int(stats.get("calls", 0)) - int(stats.get("failed_calls", 0))
        for node in nodes
        for stats in (node.get(f"cmdstat_{name}", {}) for name in names)
    )


@pytest.mark.parametrize("body", [b"hello", b""], ids=["bytes", "nothing-stored"])
def test_a_length_declared_with_a_content_length_is_recorded_once(
    tus_server: Callable[..., RunningServer], state: redis.Redis, body: bytes
) -> None:
    # A body whose size is announced fits the length or is refused before a
    # byte is read, so the length is recorded before the body: one script
    # more than the same PATCH without a length, not another one at its end
    # (whether the body stored bytes, or none: an empty body is read when it
    # carries a checksum, and ends with nothing to commit).
    server = tus_server(sweep_interval=3600.0)
    url = server.create(None)
    checksum = "sha1 " + b64(hashlib.sha1(body).digest())
    before = scripts_run(state)
    assert server.patch(url, 0, body, Upload_Checksum=checksum).status_code == 204
    plain = scripts_run(state) - before

    before = scripts_run(state)
    offset = len(body)
    declared = server.patch(url, offset, body, Upload_Checksum=checksum, Upload_Length="100")
    declaring = scripts_run(state) - before

    assert declared.status_code == 204
    assert declared.headers["Upload-Offset"] == str(2 * len(body))
    assert record(state, url)["length"] == "100"
    assert declaring == plain + 1


@pytest.mark.parametrize("outcome", ["finished", "failed", "concatenation-part"])
def test_the_script_that_records_an_upload_s_outcome_lets_go_of_its_lock(
    tus_server: Callable[..., RunningServer], state: redis.Redis, outcome: str
) -> None:
    # The completion (a file published, or a part kept staged) and the
    # failure each release the lock in the same script: the PATCH that ends
    # an upload runs one script more than one that leaves bytes to send
    # (claim and commit), never a release after it.
    server = tus_server(sweep_interval=3600.0)
    headers = {"Upload_Concat": "partial"} if outcome == "concatenation-part" else {}
    if outcome == "failed":  # the whole file's declared checksum is not its own
        declared = "sha256 " + b64(bytes(32))
        headers["Upload_Metadata"] = f"checksum {b64(declared.encode())}"
    url = server.create(10, **headers)
    before = scripts_run(state)
    assert server.patch(url, 0, b"hello").status_code == 204
    leaving_bytes = scripts_run(state) - before

    before = scripts_run(state)
    last = server.patch(url, 5, b"world")
    ending = scripts_run(state) - before

    assert last.status_code == (460 if outcome == "failed" else 204), last.text
    assert not state.exists(f"tus:{{{upload_id_of(url)}}}:lock")
    assert ending == leaving_bytes + 1


def test_without_replicas_to_wait_for_a_finish_sends_no_wait(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    # The final offset and the completion wait for the replicas asked for
    # (WAIT after their script); with none asked for, they are sent as any
    # other script, with no WAIT (a round trip on the same connection).
    server = tus_server(sweep_interval=3600.0, redis_replicas=0)
    url = server.create(10)
    before = commands_run(state, "wait")

    assert server.patch(url, 0, b"helloworld").status_code == 204

    assert server.head(url).headers["Upload-Offset"] == "10"
    assert commands_run(state, "wait") == before


def test_a_delete_takes_the_lock_and_its_termination_lets_go_of_it(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server(sweep_interval=3600.0)
    url = server.create(10)
    before = scripts_run(state)
    assert server.client.delete(url, headers=TUS).status_code == 204
    assert scripts_run(state) - before == 2  # the lock taken, the upload terminated


@pytest.mark.parametrize("sent_offset", [0, 3, 7], ids=["behind", "inside", "ahead"])
def test_patch_with_stale_offset_returns_409_with_current_offset_and_writes_nothing(
    tus_server: Callable[..., RunningServer], state: redis.Redis, sent_offset: int
) -> None:
    server = tus_server()
    url = server.create(20)
    assert server.patch(url, 0, b"hello").status_code == 204
    partial = server.partials / upload_id_of(url)

    response = server.patch(url, sent_offset, b"XXXXXXXX")

    assert_tus_error(response, 409, "mismatched_offset")
    assert response.json()["error"]["retryable"] is True
    assert response.headers["Upload-Offset"] == "5"
    assert record(state, url)["offset"] == "5"
    assert partial.stat().st_size == 5
    assert partial.read_bytes() == b"hello"


@pytest.mark.parametrize(
    "content_type",
    [None, "application/octet-stream", "text/plain", "application/offset+octet"],
    ids=["missing", "octet-stream", "text", "truncated"],
)
def test_patch_with_wrong_or_missing_content_type_returns_415_and_writes_nothing(
    tus_server: Callable[..., RunningServer], state: redis.Redis, content_type: str | None
) -> None:
    server = tus_server()
    url = server.create(10)
    headers = {**TUS, "Upload-Offset": "0"}
    if content_type is not None:
        headers["Content-Type"] = content_type

    response = server.client.patch(url, headers=headers, content=b"hello")

    assert_tus_error(response, 415, "unsupported_content_type")
    assert record(state, url)["offset"] == "0"
    assert (server.partials / upload_id_of(url)).stat().st_size == 0


def test_patch_accepts_content_type_with_parameters_and_any_case(
    tus_server: Callable[..., RunningServer],
) -> None:
    server = tus_server()
    url = server.create(5)

    response = server.client.patch(
        url,
        headers={
            **TUS,
            "Upload-Offset": "0",
            "Content-Type": "Application/Offset+Octet-Stream; charset=binary",
        },
        content=b"hello",
    )

    assert response.status_code == 204
    assert response.headers["Upload-Offset"] == "5"


def test_patch_without_upload_offset_returns_400_and_writes_nothing(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()
    url = server.create(10)

    response = server.client.patch(url, headers={**TUS, "Content-Type": OCTETS}, content=b"hello")

    assert_tus_error(response, 400, "upload_offset_missing")
    assert record(state, url)["offset"] == "0"
    assert (server.partials / upload_id_of(url)).stat().st_size == 0


@pytest.mark.parametrize("offset", ["-1", "abc", "1.0", "+0", "", "0x0", "1" * 20])
def test_patch_with_malformed_offset_returns_400_and_writes_nothing(
    tus_server: Callable[..., RunningServer], state: redis.Redis, offset: str
) -> None:
    server = tus_server()
    url = server.create(10)

    response = server.client.patch(
        url, headers={**TUS, "Content-Type": OCTETS, "Upload-Offset": offset}, content=b"hi"
    )

    assert_tus_error(response, 400, "invalid_header")
    assert "Upload-Offset" in response.json()["error"]["message"]
    assert record(state, url)["offset"] == "0"
    assert (server.partials / upload_id_of(url)).stat().st_size == 0


@pytest.mark.parametrize(
    ("version", "code"),
    [(None, "tus_resumable_missing"), ("0.2.2", "tus_version_unsupported")],
    ids=["missing", "0.2.2"],
)
def test_patch_without_a_supported_tus_resumable_returns_412_and_writes_nothing(
    tus_server: Callable[..., RunningServer],
    state: redis.Redis,
    version: str | None,
    code: str,
) -> None:
    server = tus_server()
    url = server.create(10)
    headers = {"Content-Type": OCTETS, "Upload-Offset": "0"}
    if version is not None:
        headers["Tus-Resumable"] = version

    response = server.client.patch(url, headers=headers, content=b"hello")

    assert_tus_error(response, 412, code)
    assert "1.0.0" in response.headers["Tus-Version"]
    assert record(state, url)["offset"] == "0"


# --- limits ------------------------------------------------------------------


def test_patch_past_upload_length_with_content_length_returns_413_and_keeps_the_offset(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()
    url = server.create(10)
    assert server.patch(url, 0, b"hello").status_code == 204
    partial = server.partials / upload_id_of(url)

    response = server.patch(url, 5, b"world!")

    assert_tus_error(response, 413, "body_exceeds_upload_length")
    assert record(state, url)["offset"] == "5"
    assert partial.read_bytes() == b"hello"
    assert server.head(url).headers["Upload-Offset"] == "5"
    assert server.patch(url, 5, b"world").status_code == 204
    assert (server.storage / upload_id_of(url)).read_bytes() == b"helloworld"


def test_patches_of_a_single_byte_each_store_it(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    # The smallest body there is: one byte, and the last one of the upload.
    server = tus_server()
    url = server.create(2)

    first = server.patch(url, 0, b"a")
    assert first.status_code == 204
    assert first.headers["Upload-Offset"] == "1"
    assert record(state, url)["offset"] == "1"
    last = server.patch(url, 1, b"b")

    assert last.status_code == 204
    assert last.headers["Upload-Offset"] == "2"
    assert (server.storage / upload_id_of(url)).read_bytes() == b"ab"


def test_a_patch_announcing_more_than_the_upload_has_left_stores_none_of_its_body(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    # The Content-Length alone decides: the body is refused before a byte of
    # it is stored, not written block by block until it runs past the length.
    server = tus_server(block_size=64 * KIB)
    length = 4 * 64 * KIB
    url = server.create(length)

    with raw_patch(url, 0, content_length=length + 1) as request:
        request.send(b"x" * (length + 1))  # cut short once the server has answered
        response = request.response()

    assert response.status == 413
    assert json.loads(response.body)["error"]["code"] == "body_exceeds_upload_length"
    assert record(state, url)["offset"] == "0"
    assert (server.partials / upload_id_of(url)).stat().st_size == 0


def test_patch_past_upload_length_chunked_returns_413_and_keeps_the_offset(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()
    url = server.create(10)
    assert server.patch(url, 0, b"hello").status_code == 204
    partial = server.partials / upload_id_of(url)

    response = patch_stream(server, url, 5, [b"wor", b"ld", b"!!!"])

    assert_tus_error(response, 413, "body_exceeds_upload_length")
    assert record(state, url)["offset"] == "5"
    assert partial.read_bytes()[:5] == b"hello"
    assert partial.stat().st_size <= 10
    assert server.patch(url, 5, b"WORLD").status_code == 204
    assert (server.storage / upload_id_of(url)).read_bytes() == b"helloWORLD"


def test_patch_past_upload_length_chunked_over_several_blocks_stores_nothing_beyond_the_limit(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    block_size = 64 * 1024
    length = 5 * block_size + 1000
    server = tus_server(block_size=block_size)
    url = server.create(length)
    partial = server.partials / upload_id_of(url)
    too_much = pattern(length + 20 * 1024, seed=1)

    response = patch_stream(
        server, url, 0, (too_much[i : i + 16 * 1024] for i in range(0, len(too_much), 16 * 1024))
    )

    assert_tus_error(response, 413, "body_exceeds_upload_length")
    assert record(state, url)["offset"] == "0"
    assert partial.stat().st_size <= length
    data = pattern(length, seed=2)
    resumed = server.patch(url, 0, data)
    assert resumed.status_code == 204
    assert resumed.headers["Upload-Offset"] == str(length)
    assert sha256((server.storage / upload_id_of(url)).read_bytes()) == sha256(data)


def test_patch_chunked_without_content_length_is_stored(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()
    url = server.create(11)

    response = patch_stream(server, url, 0, [b"hel", b"lo ", b"", b"wor", b"ld"])

    assert response.status_code == 204
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert response.headers["Upload-Offset"] == "11"
    assert (server.storage / upload_id_of(url)).read_bytes() == b"hello world"
    assert record(state, url)["state"] == "complete"


# --- deferred length ---------------------------------------------------------


def test_deferred_upload_is_finalized_by_a_patch_carrying_upload_length_with_data(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()
    url = server.create(None)

    first = server.patch(url, 0, b"hello")
    assert first.status_code == 204
    assert first.headers["Upload-Offset"] == "5"
    assert record(state, url)["length"] == ""

    last = server.patch(url, 5, b"world", Upload_Length="10")

    assert last.status_code == 204
    assert last.headers["Upload-Offset"] == "10"
    assert (server.storage / upload_id_of(url)).read_bytes() == b"helloworld"
    assert not (server.partials / upload_id_of(url)).exists()
    saved = record(state, url)
    assert (saved["length"], saved["offset"], saved["state"]) == ("10", "10", "complete")
    head = server.head(url)
    assert head.headers["Upload-Length"] == "10"
    assert "Upload-Defer-Length" not in head.headers


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length 0", "chunked empty"])
def test_deferred_upload_is_finalized_by_an_empty_patch_carrying_upload_length(
    tus_server: Callable[..., RunningServer], state: redis.Redis, chunked: bool
) -> None:
    server = tus_server()
    url = server.create(None)
    assert server.patch(url, 0, b"hello").status_code == 204
    assert server.patch(url, 5, b"world").status_code == 204

    if chunked:
        last = patch_stream(server, url, 10, [], **{"Upload-Length": "10"})
    else:
        last = server.patch(url, 10, b"", Upload_Length="10")

    assert last.status_code == 204
    assert last.headers["Upload-Offset"] == "10"
    assert (server.storage / upload_id_of(url)).read_bytes() == b"helloworld"
    assert record(state, url)["state"] == "complete"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("declared", [5, 7], ids=["no room left", "room for less"])
def test_a_patch_declaring_a_length_its_body_overruns_is_413_and_leaves_the_length_deferred(
    tus_server: Callable[..., RunningServer], state: redis.Redis, declared: int, chunked: bool
) -> None:
    # With a Content-Length the overrun is known before the body is read;
    # a chunked body shows it only as it streams, past the declared length.
    # Either way the refused PATCH records nothing: not its bytes (the
    # offset stays) and not its length (the upload stays deferred).
    server = tus_server()
    url = server.create(None)
    assert server.patch(url, 0, b"hello").status_code == 204

    if chunked:
        response = patch_stream(server, url, 5, [b"wo", b"rld"], **{"Upload-Length": str(declared)})
    else:
        response = server.patch(url, 5, b"world", Upload_Length=str(declared))

    assert_tus_error(response, 413, "body_exceeds_upload_length")
    saved = record(state, url)
    assert (saved["length"], saved["offset"], saved["state"]) == ("", "5", "partial")
    head = server.head(url)
    assert head.headers["Upload-Defer-Length"] == "1"
    assert "Upload-Length" not in head.headers
    assert head.headers["Upload-Offset"] == "5"
    assert not (server.storage / upload_id_of(url)).exists()
    last = server.patch(url, 5, b"world", Upload_Length="10")
    assert last.status_code == 204
    assert (server.storage / upload_id_of(url)).read_bytes() == b"helloworld"


def test_a_chunked_patch_declaring_a_length_it_fits_in_records_it_with_its_bytes(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()
    url = server.create(None)
    assert server.patch(url, 0, b"hello").status_code == 204

    response = patch_stream(server, url, 5, [b"wor", b"ld"], **{"Upload-Length": "12"})

    assert response.status_code == 204
    assert response.headers["Upload-Offset"] == "10"
    saved = record(state, url)
    assert (saved["length"], saved["offset"], saved["state"]) == ("12", "10", "partial")
    assert server.head(url).headers["Upload-Length"] == "12"
    assert server.patch(url, 10, b"!!").status_code == 204
    assert (server.storage / upload_id_of(url)).read_bytes() == b"helloworld!!"


def test_a_chunked_body_sent_to_an_upload_with_no_byte_left_is_413_not_dropped_behind_a_204(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()
    url = server.create(None)
    assert server.patch(url, 0, b"hello").status_code == 204

    response = patch_stream(server, url, 5, [b"world"], **{"Upload-Length": "5"})

    assert_tus_error(response, 413, "body_exceeds_upload_length")
    assert record(state, url)["offset"] == "5"
    assert not (server.storage / upload_id_of(url)).exists()


def test_deferred_upload_length_cannot_change_once_set(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()
    url = server.create(None)
    assert server.patch(url, 0, b"abc", Upload_Length="10").status_code == 204
    assert record(state, url)["length"] == "10"

    response = server.patch(url, 3, b"def", Upload_Length="12")

    assert_tus_error(response, 400, "upload_length_immutable")
    saved = record(state, url)
    assert (saved["length"], saved["offset"]) == ("10", "3")
    assert (server.partials / upload_id_of(url)).read_bytes() == b"abc"
    same = server.patch(url, 3, b"def", Upload_Length="10")
    assert same.status_code == 204
    assert same.headers["Upload-Offset"] == "6"


def test_upload_length_on_patch_of_an_upload_created_with_a_length_must_match(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()
    url = server.create(10)

    response = server.patch(url, 0, b"abc", Upload_Length="11")

    assert_tus_error(response, 400, "upload_length_immutable")
    assert record(state, url)["length"] == "10"
    assert record(state, url)["offset"] == "0"


def test_deferred_upload_length_below_the_offset_returns_400(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()
    url = server.create(None)
    assert server.patch(url, 0, b"hello").status_code == 204

    response = server.patch(url, 5, b"", Upload_Length="4")

    assert_tus_error(response, 400, "upload_length_too_small")
    assert record(state, url)["length"] == ""


def test_deferred_upload_length_over_max_size_returns_413(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server(max_size=100)
    url = server.create(None)

    response = server.patch(url, 0, b"abc", Upload_Length="101")

    assert_tus_error(response, 413, "upload_too_large")
    assert response.headers["Tus-Max-Size"] == "100"
    assert record(state, url)["length"] == ""
    assert record(state, url)["offset"] == "0"


def test_deferred_upload_length_equal_to_max_size_is_accepted(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    # The maximum is a size an upload may have, as on POST.
    server = tus_server(max_size=100)
    url = server.create(None)

    response = server.patch(url, 0, b"abc", Upload_Length="100")

    assert response.status_code == 204, response.text
    assert record(state, url)["length"] == "100"
    assert server.head(url).headers["Upload-Length"] == "100"


def test_deferred_upload_exceeding_max_size_while_streaming_returns_413_and_keeps_offset(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server(max_size=1000)
    url = server.create(None)
    assert server.patch(url, 0, b"a" * 600).status_code == 204
    partial = server.partials / upload_id_of(url)

    response = patch_stream(server, url, 600, [b"b" * 300, b"c" * 300])

    assert_tus_error(response, 413, "upload_too_large")
    assert response.headers["Tus-Max-Size"] == "1000"
    assert record(state, url)["offset"] == "600"
    assert partial.read_bytes()[:600] == b"a" * 600
    assert partial.stat().st_size <= 1000


def test_deferred_upload_exceeding_max_size_with_content_length_returns_413(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server(max_size=1000)
    url = server.create(None)
    assert server.patch(url, 0, b"a" * 600).status_code == 204

    response = server.patch(url, 600, b"b" * 401)

    assert_tus_error(response, 413, "upload_too_large")
    assert record(state, url)["offset"] == "600"
    assert (server.partials / upload_id_of(url)).read_bytes() == b"a" * 600


# --- finished, unknown and terminated uploads --------------------------------


def test_patch_on_a_finished_upload_is_409_with_the_final_offset_and_keeps_the_file(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()
    url = server.create(10)
    assert server.patch(url, 0, b"hello").status_code == 204
    assert server.patch(url, 5, b"world").status_code == 204
    final = server.storage / upload_id_of(url)
    before = final.stat()

    retried = server.patch(url, 5, b"WORLD")
    at_end = server.patch(url, 10, b"")

    # A repeated (or racing) PATCH is never told its bytes were accepted;
    # the offset it gets back says the upload is done. At the end: 204.
    assert retried.status_code == 409
    assert retried.json()["error"]["code"] == "mismatched_offset"
    assert at_end.status_code == 204
    for response in (retried, at_end):
        assert response.headers["Upload-Offset"] == "10"
    assert final.read_bytes() == b"helloworld"
    assert final.stat().st_mtime_ns == before.st_mtime_ns
    assert sorted(p.name for p in server.storage.iterdir()) == [".partial", upload_id_of(url)]
    assert record(state, url)["offset"] == "10"


def test_patch_of_an_unknown_upload_returns_404(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()

    response = server.patch(server.endpoint + "0123456789abcdef0123456789abcdef", 0, b"x")

    assert_tus_error(response, 404, "upload_not_found")
    assert state.keys("tus:*") == []
    assert list(server.partials.iterdir()) == []


@pytest.mark.parametrize("raw_id", ["ABC", "0123456789abcdef0123456789abcde", ".."])
def test_patch_of_a_malformed_id_returns_404_and_creates_nothing(
    tus_server: Callable[..., RunningServer], state: redis.Redis, raw_id: str
) -> None:
    server = tus_server()

    response = server.patch(server.endpoint + raw_id, 0, b"x")

    assert response.status_code == 404
    assert state.keys("tus:*") == []
    assert list(server.partials.iterdir()) == []


def test_patch_of_a_terminated_upload_returns_410(
    tus_server: Callable[..., RunningServer],
) -> None:
    server = tus_server()
    url = server.create(10)
    assert server.client.delete(url, headers=TUS).status_code == 204

    response = server.patch(url, 0, b"hello")

    assert_tus_error(response, 410, "upload_gone")
    assert not (server.partials / upload_id_of(url)).exists()


# --- locking -----------------------------------------------------------------


def test_patch_while_another_holder_keeps_the_lock_returns_423_after_the_lock_wait(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server(lock_wait=0.3)
    url = server.create(10)
    # A writer elsewhere (another host) that never answers release requests.
    state.set(f"tus:{{{upload_id_of(url)}}}:lock", "someone-else", px=60_000)

    started = time.monotonic()
    response = server.patch(url, 0, b"hello")
    waited = time.monotonic() - started

    assert_tus_error(response, 423, "upload_locked")
    assert response.json()["error"]["retryable"] is True
    assert 0.25 <= waited < 5
    assert record(state, url)["offset"] == "0"
    assert (server.partials / upload_id_of(url)).stat().st_size == 0
    # A HEAD reads the committed offset, whoever holds the lock.
    head = server.head(url)
    assert head.status_code == 200
    assert head.headers["Upload-Offset"] == "0"


# Counts commands on, or listens to, one Redis server.
@pytest.mark.standalone_redis
def test_a_patch_waiting_for_the_lock_asks_the_holder_again_every_half_second(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    # A release request published while the holder was between taking the
    # lock and listening is lost: the waiting request says it again.
    server = tus_server(lock_wait=1.2)
    url = server.create(10)
    upload_id = upload_id_of(url)
    listener = state.pubsub(ignore_subscribe_messages=True)
    listener.subscribe("tus:release")
    try:
        state.set(f"tus:{{{upload_id}}}:lock", "a-deaf-holder", px=60_000)

        response = server.patch(url, 0, b"hello")

        requests = []
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:  # the subscription's own reply reads as None
            message = listener.get_message(timeout=0.1)
            if message is not None:
                requests.append(message["data"])
    finally:
        listener.close()

    assert_tus_error(response, 423, "upload_locked")
    # At 0, 0.5 and 1.0 s of the 1.2 s wait (the last one late on a busy machine).
    assert requests in ([upload_id] * 2, [upload_id] * 3)
    assert record(state, url)["offset"] == "0"


# Counts commands on, or listens to, one Redis server.
@pytest.mark.standalone_redis
def test_a_patch_waiting_for_the_lock_polls_redis_at_a_bounded_rate(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    # Many clients may wait on locks at once: each must not hammer Redis.
    server = tus_server(lock_wait=1.0)
    url = server.create(10)
    state.set(f"tus:{{{upload_id_of(url)}}}:lock", "a-deaf-holder", px=60_000)
    before = int(state.info("stats")["total_commands_processed"])

    response = server.patch(url, 0, b"hello")

    commands = int(state.info("stats")["total_commands_processed"]) - before
    assert_tus_error(response, 423, "upload_locked")
    # One attempt every 20 ms: about 50 in the second, each a script of a few
    # commands (Redis counts those too), plus the release requests.
    assert 20 <= commands <= 600


def test_a_streaming_patch_extends_its_lock_a_few_times_per_ttl_not_at_every_check(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    # The PATCH checks on itself every 0.1 s here (a quarter of the idle
    # timeout), but Redis hears of it only every third of the TTL: many
    # uploads at once must not each hammer it.
    ttl = 6.0
    server = tus_server(lock_ttl=ttl, idle_timeout=0.4, block_size=64 * KIB)
    pieces = 40
    url = server.create(pieces * 64 * KIB)
    partial = server.partials / upload_id_of(url)

    def extends() -> int:
        # PEXPIRE runs in the lock's keep-alive script only.
        return int(state.info("commandstats").get("cmdstat_pexpire", {}).get("calls", 0))

    before = extends()
    started = time.monotonic()
    with raw_patch(url, 0, content_length=pieces * 64 * KIB) as request:
        for number in range(1, pieces + 1):
            assert request.send(b"x" * (64 * KIB))
            size = number * 64 * KIB
            wait_until(lambda size=size: partial.stat().st_size >= size, "the block stored")
            time.sleep(0.03)
        response = request.response()
    elapsed = time.monotonic() - started

    assert response.status == 204
    assert extends() - before <= elapsed / (ttl / 3) + 1


def test_each_patch_holds_the_lock_with_a_random_128_bit_token_of_its_own(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    # The token fences writers: a request whose lock lapsed must not commit
    # as the request that holds it now, so no request may guess another's.
    # 128 random bits, drawn afresh for every request.
    server = tus_server(block_size=64 * KIB)
    piece = 64 * KIB
    url = server.create(4 * piece)
    lock_key = f"tus:{{{upload_id_of(url)}}}:lock"
    partial = server.partials / upload_id_of(url)
    tokens = []
    for offset in (0, 2 * piece):
        with raw_patch(url, offset, content_length=2 * piece) as request:
            send_in_pieces(request, b"x" * piece)
            wait_until(lambda offset=offset: partial.stat().st_size >= offset + piece, "stored")
            tokens.append(state.get(lock_key))
            send_in_pieces(request, b"x" * piece)
            assert request.response().status == 204

    for token in tokens:
        assert isinstance(token, str)
        assert len(bytes.fromhex(token)) == 16, token
    assert tokens[0] != tokens[1]
    assert record(state, url)["offset"] == str(4 * piece)


def test_patch_whose_lock_was_taken_stops_writing_and_answers_423(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    # Another writer takes the lock straight in Redis, as one whose release
    # request was lost would: no release request reaches this PATCH, so only
    # its keep-alive learns that the upload is no longer its own.
    ttl = 3.0
    fence = ttl / 3 + 0.6  # one keep-alive period, one watchdog tick, slack
    server = tus_server(lock_ttl=ttl, idle_timeout=0.4, block_size=64 * KIB)
    length = 8 * MIB
    url = server.create(length)
    upload_id = upload_id_of(url)
    partial = server.partials / upload_id
    theirs = b"O" * (6 * MIB)  # the new owner's bytes, from the committed offset 0

    with raw_patch(url, 0, content_length=length) as loser:
        send_in_pieces(loser, b"L" * (64 * KIB))
        wait_until(lambda: partial.stat().st_size >= 64 * KIB, "the first block stored")
        state.set(f"tus:{{{upload_id}}}:lock", "the-new-owner", px=60_000)
        taken_at = time.monotonic()
        answered_at = None
        they_wrote = False
        # The losing client goes on sending; the new owner writes once the
        # loser had one keep-alive period to notice.
        while time.monotonic() - taken_at < 0.9 * ttl and not (answered_at and they_wrote):
            if answered_at is None and loser.answered():
                answered_at = time.monotonic()
            if answered_at is None:
                loser.send(b"L" * (8 * KIB))
            if not they_wrote and time.monotonic() - taken_at >= fence:
                with partial.open("r+b") as file:
                    file.write(theirs)
                they_wrote = True
            time.sleep(0.01)
        response = loser.response()

    assert answered_at is not None, "the PATCH went on writing after it lost its lock"
    assert answered_at - taken_at < fence
    assert response.status == 423
    assert response.headers["tus-resumable"] == "1.0.0"
    assert json.loads(response.body)["error"]["code"] == "upload_lock_lost"
    assert response.headers["upload-offset"] == "0"  # what it committed: nothing
    # The loser's commit was refused: the offset is still the new owner's 0,
    # and nothing the loser still had in flight landed on the new owner's bytes.
    assert record(state, url)["offset"] == "0"
    assert partial.read_bytes()[: len(theirs)] == theirs
    assert state.get(f"tus:{{{upload_id}}}:lock") == "the-new-owner"


def test_patch_whose_lock_was_taken_before_it_stored_a_block_answers_423(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    # No byte has arrived yet (a client slow to start its body): nothing
    # stored, nothing to commit, so no refused commit answers for it. It
    # must not answer 204 all the same (a client reads that as "accepted"),
    # and the new owner's record is left alone.
    ttl = 1.5
    server = tus_server(lock_ttl=ttl, idle_timeout=30, block_size=MIB)
    url = server.create(4 * MIB)
    upload_id = upload_id_of(url)

    with raw_patch(url, 0, content_length=4 * MIB) as loser:
        wait_until(lambda: state.exists(f"tus:{{{upload_id}}}:lock"), "the PATCH holds the lock")
        state.set(f"tus:{{{upload_id}}}:lock", "the-new-owner", px=60_000)
        wait_until(loser.answered, "the PATCH noticed", timeout=ttl + 2)
        response = loser.response()

    assert response.status == 423
    assert json.loads(response.body)["error"]["code"] == "upload_lock_lost"
    assert response.headers["tus-resumable"] == "1.0.0"
    assert response.headers["upload-offset"] == "0"
    assert record(state, url)["offset"] == "0"
    assert state.get(f"tus:{{{upload_id}}}:lock") == "the-new-owner"


def test_a_resumed_patch_commits_from_its_offset_while_its_body_streams(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    # Checkpoints count the bytes stored after the offset the PATCH began at.
    server = tus_server(checkpoint_bytes=256 * KIB, block_size=64 * KIB)
    start, length = 1 * MIB, 4 * MIB
    url = server.create(length)
    assert server.patch(url, 0, b"a" * start).status_code == 204

    with raw_patch(url, start, content_length=length - start) as request:
        send_in_pieces(request, b"b" * (2 * MIB))
        wait_until(
            lambda: int(record(state, url)["offset"]) >= start + MIB,
            "a checkpoint past the resumed offset",
        )
        mid_body = int(record(state, url)["offset"])
        # A checkpoint keeps the lock: the body still streams.
        assert state.exists(f"tus:{{{upload_id_of(url)}}}:lock")
        send_in_pieces(request, b"b" * (length - start - 2 * MIB))
        response = request.response()

    assert start + MIB <= mid_body <= start + 2 * MIB
    assert response.status == 204
    assert record(state, url)["offset"] == str(length)


def test_a_chunked_body_with_no_limit_to_run_past_commits_while_it_streams(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    # A deferred length and no size limit: nothing can make this body count
    # for nothing, so a crash mid-body must keep what it stored, as for a
    # body of known length.
    server = tus_server(checkpoint_bytes=256 * KIB, block_size=64 * KIB)
    url = server.create(None)
    body = pattern(2 * MIB)

    with raw_patch(url, 0, content_length=None) as request:
        assert request.send(chunked(body[:MIB]))
        wait_until(
            lambda: int(record(state, url)["offset"]) >= 256 * KIB,
            "a checkpoint while the chunked body streams",
        )
        assert state.exists(f"tus:{{{upload_id_of(url)}}}:lock")
        assert request.send(chunked(body[MIB:]) + b"0\r\n\r\n")
        response = request.response()

    assert response.status == 204
    assert record(state, url)["offset"] == str(len(body))
    assert (server.partials / upload_id_of(url)).read_bytes() == body


def test_a_chunked_body_under_a_size_limit_counts_for_nothing_when_it_runs_past_it(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    # Checkpoints would have committed the first megabytes of a body that
    # the 413 then refuses whole: the offset must stay where the PATCH found
    # it, so none runs while a body of unknown length may still overrun.
    server = tus_server(max_size=3 * MIB, checkpoint_bytes=256 * KIB, block_size=64 * KIB)
    url = server.create(None)
    partial = server.partials / upload_id_of(url)

    with raw_patch(url, 0, content_length=None) as request:
        assert request.send(chunked(b"a" * (2 * MIB)))
        wait_until(lambda: partial.stat().st_size >= 2 * MIB, "the first 2 MiB stored")
        assert record(state, url)["offset"] == "0"
        request.send(chunked(b"b" * (2 * MIB)) + b"0\r\n\r\n")
        response = request.response()

    assert response.status == 413
    assert json.loads(response.body)["error"]["code"] == "upload_too_large"
    assert record(state, url)["offset"] == "0"
    assert partial.stat().st_size <= 3 * MIB


def test_a_patch_whose_lock_was_taken_stops_at_its_next_checkpoint(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    # The keep-alive is a third of a long lock TTL away, so the checkpoint's
    # refused commit is the first to learn that the upload is another
    # writer's: it must stop the reading there, not let the PATCH write on
    # until its body ends or the keep-alive runs.
    server = tus_server(lock_ttl=60, checkpoint_bytes=256 * KIB, block_size=64 * KIB)
    length = 16 * MIB
    url = server.create(length)
    upload_id = upload_id_of(url)
    partial = server.partials / upload_id

    with raw_patch(url, 0, content_length=length) as loser:
        send_in_pieces(loser, b"L" * (64 * KIB))
        wait_until(lambda: partial.stat().st_size >= 64 * KIB, "the first block stored")
        state.set(f"tus:{{{upload_id}}}:lock", "the-new-owner", px=120_000)
        taken_at_size = partial.stat().st_size
        sent = 0
        # Bounded by bytes: up to 8 MiB more, 32 checkpoints' worth.
        while sent < 8 * MIB and not loser.answered():
            if not loser.send(b"L" * (64 * KIB)):
                break
            sent += 64 * KIB
            time.sleep(0.002)
        wait_until(loser.answered, "the PATCH answered", timeout=10)
        response = loser.response()

    assert response.status == 423
    assert json.loads(response.body)["error"]["code"] == "upload_lock_lost"
    assert response.headers["upload-offset"] == record(state, url)["offset"]
    # It stopped writing a checkpoint's worth after the loss, give or take
    # the blocks in flight: far from the 8 MiB the client went on sending.
    assert partial.stat().st_size < taken_at_size + 2 * MIB
    assert state.get(f"tus:{{{upload_id}}}:lock") == "the-new-owner"


def serve_on(
    served_apps: ServedApps, redis_url: str, storage: LocalStorage, **options: object
) -> RunningServer:
    """A tusserver whose local storage is the spec's own instance (a subclass
    that watches or holds its calls)."""
    config = Config(storage=str(storage.root), redis_url=redis_url, **options)  # type: ignore[arg-type]
    return served_apps.start(config, storage.root, backend=storage)


class BlockLog(LocalStorage):
    """Local storage that counts its writes and notes the size of each block
    it is handed."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.writes = 0
        self.block_sizes: list[int] = []

    async def write(self, upload_id: str, offset: int, blocks: AsyncIterator[Block]) -> int:
        self.writes += 1

        async def noted() -> AsyncIterator[Block]:
            async for block in blocks:
                self.block_sizes.append(sum(len(piece) for piece in block))
                yield block

        return await super().write(upload_id, offset, noted())


def test_a_patch_with_a_content_length_of_0_answers_from_the_record_without_the_storage(
    served_apps: ServedApps, redis_url: str, tmp_path: Path
) -> None:
    # Like a HEAD: a body known to be empty has nothing to store, and on an
    # SMB share even a write of nothing costs a round trip. (An empty
    # chunked body, or one with an Upload-Checksum, is read all the same.)
    storage = BlockLog(tmp_path / "files")
    server = serve_on(served_apps, redis_url, storage)
    url = server.create(10)
    assert server.patch(url, 0, b"abc").status_code == 204
    writes = storage.writes

    response = server.patch(url, 3, b"")

    assert response.status_code == 204
    assert response.headers["Upload-Offset"] == "3"
    assert storage.writes == writes == 1


def test_a_body_cut_short_is_logged_with_the_bytes_it_kept_and_a_whole_one_is_not(
    tus_server: Callable[..., RunningServer], state: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # An operator reading why an upload stalls sees each body that ended
    # early, why, and what it kept; a body sent whole is not one of them.
    server = tus_server(block_size=64 * KIB)
    url = server.create(MIB)
    upload_id = upload_id_of(url)
    partial = server.partials / upload_id

    def ended_early() -> list[str]:
        return [r.getMessage() for r in caplog.records if "body ended early" in r.getMessage()]

    with caplog.at_level(logging.INFO, logger="tusserver.receiving"):
        assert server.patch(url, 0, b"a" * (64 * KIB)).status_code == 204
        with raw_patch(url, 64 * KIB, content_length=512 * KIB) as request:
            send_in_pieces(request, b"b" * (128 * KIB))
            # A block of this body stored: the request is streaming.
            wait_until(lambda: partial.stat().st_size >= 128 * KIB, "a block stored")
        wait_until(lambda: bool(ended_early()), "the cut body logged")

    assert ended_early() == [
        f"upload {upload_id}: body ended early (disconnect); kept {128 * KIB} bytes"
    ]
    assert record(state, url)["offset"] == str(192 * KIB)


class ReadLog(LocalStorage):
    """Local storage that counts the reads of stored bytes (a download, or a
    digest read back from the file)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads = 0

    def read(
        self, upload_id: str, location: str | None, start: int, end: int
    ) -> AsyncIterator[bytes]:
        self.reads += 1
        return super().read(upload_id, location, start, end)


def test_an_upload_sent_in_several_patches_is_digested_as_it_streams_not_read_back(
    served_apps: ServedApps, redis_url: str, tmp_path: Path, state: redis.Redis
) -> None:
    # Each PATCH resumes the SHA-256 where the one before left it, in this
    # process: the finished file is never read back to digest it, which
    # would cost its whole length again at the end of the upload.
    storage = ReadLog(tmp_path / "files")
    server = serve_on(served_apps, redis_url, storage, block_size=256 * KIB)
    body = pattern(3 * MIB + 5)
    url = server.create(len(body))

    for start in range(0, len(body), MIB):
        response = server.patch(url, start, body[start : start + MIB])
        assert response.status_code == 204

    assert record(state, url)["sha256"] == sha256(body)
    assert storage.reads == 0


def test_local_storage_is_handed_blocks_of_half_a_mib_unless_the_configuration_sets_a_size(
    served_apps: ServedApps, redis_url: str, tmp_path: Path
) -> None:
    # The size the backend prefers: on local disk, blocks small enough that
    # those in flight stay in a core's cache (bench/README.md, "Block size").
    # A size in the configuration wins over it.
    body = os.urandom(3 * MIB)
    sizes: dict[int | None, list[int]] = {}
    for configured in (None, MIB):
        storage = BlockLog(tmp_path / f"files-{configured}")
        server = serve_on(served_apps, redis_url, storage, block_size=configured)
        url = server.create(len(body))
        assert server.patch(url, 0, body).status_code == 204
        assert (server.storage / upload_id_of(url)).read_bytes() == body
        sizes[configured] = storage.block_sizes

    # Whole blocks until the body's last quarter block (see the spec below):
    # all but the last two. How many there are depends on the size of the
    # body messages the HTTP server hands over (larger on a busy machine).
    assert len(sizes[None]) >= 4
    assert min(sizes[None][:-2]) >= 512 * KIB
    assert max(sizes[None]) < MIB
    assert min(sizes[MIB][:-2]) >= MIB


def test_a_backend_that_states_no_block_size_is_handed_blocks_of_4_mib() -> None:
    class Plain:  # no preferred_block_size
        pass

    assert extensions.block_size(cast(Storage, Plain()), None) == 4 * MIB
    assert extensions.block_size(cast(Storage, Plain()), 64 * KIB) == 64 * KIB
    assert extensions.block_size(LocalStorage(Path("unused")), None) == 512 * KIB


@pytest.mark.parametrize("sized", [True, False], ids=["content-length", "chunked"])
def test_the_last_bytes_of_a_body_of_known_length_go_to_storage_in_small_blocks(
    served_apps: ServedApps, redis_url: str, tmp_path: Path, sized: bool
) -> None:
    # What is left to write and hash once the last byte arrived is what the
    # client waits for before its 204: with a Content-Length, the body's last
    # quarter block goes in a block of its own; a chunked body's length is
    # not known in advance, so its blocks stay whole.
    storage = BlockLog(tmp_path / "files")
    block = 4 * MIB
    server = serve_on(served_apps, redis_url, storage, block_size=block)
    body = os.urandom(3 * block - 1000)
    url = server.create(len(body))

    pieces = [body[at : at + 64 * KIB] for at in range(0, len(body), 64 * KIB)]
    response = server.client.patch(
        url,
        content=body if sized else iter(pieces),
        headers={**TUS, "Content-Type": OCTETS, "Upload-Offset": "0"},
    )

    assert response.status_code == 204
    assert (server.storage / upload_id_of(url)).read_bytes() == body
    sizes = storage.block_sizes
    assert sum(sizes) == len(body)
    if sized:
        # Whole blocks, then the rest but the last quarter block, then that
        # quarter (one body message more at most: where the HTTP server cuts
        # the body decides where a block ends).
        assert min(sizes[:2]) >= block
        assert len(sizes) >= 3
        assert sizes[-1] <= block // 2
    else:
        assert min(sizes[:-1]) >= block
        assert sizes[-1] > block // 2


class HeldFinalize(LocalStorage):
    """Local storage whose finalize waits until the test lets it go on."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.entered = threading.Event()
        self.go_on = threading.Event()

    async def finalize(self, upload_id: str, final_name: str, length: int) -> str:
        self.entered.set()
        await anyio.to_thread.run_sync(self.go_on.wait, 10)
        return await super().finalize(upload_id, final_name, length)


def test_the_patch_that_completes_an_upload_holds_its_lock_until_the_file_is_published(
    served_apps: ServedApps, redis_url: str, state: redis.Redis, tmp_path: Path
) -> None:
    # Between the last byte's commit and the publishing, another request
    # (a HEAD that would finalize an upload left "fully received") must wait.
    storage = HeldFinalize(tmp_path / "files")
    server = serve_on(served_apps, redis_url, storage)
    url = server.create(5)
    lock = f"tus:{{{upload_id_of(url)}}}:lock"
    answers: list[httpx.Response] = []
    patching = threading.Thread(target=lambda: answers.append(server.patch(url, 0, b"hello")))
    patching.start()
    try:
        assert storage.entered.wait(10), "finalize never started"
        held_while_publishing = state.exists(lock)
        offset_while_publishing = record(state, url)["offset"]
    finally:
        storage.go_on.set()
        patching.join(10)

    assert offset_while_publishing == "5"
    assert held_while_publishing, "the lock was let go before the file was published"
    assert answers[0].status_code == 204
    assert not state.exists(lock)
    assert record(state, url)["state"] == "complete"


def test_patch_whose_upload_was_removed_mid_body_answers_410(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    # Removed behind the PATCH's back (an operator, a sweep elsewhere): its
    # bytes have nowhere to count, and the client must start over.
    server = tus_server(block_size=64 * KIB)
    length = 256 * KIB
    url = server.create(length)
    upload_id = upload_id_of(url)
    partial = server.partials / upload_id

    with raw_patch(url, 0, content_length=length) as request:
        send_in_pieces(request, b"x" * (64 * KIB))
        wait_until(lambda: partial.stat().st_size >= 64 * KIB, "the first block stored")
        state.delete(f"tus:{{{upload_id}}}:info")
        send_in_pieces(request, b"x" * (length - 64 * KIB))
        response = request.response()

    assert response.status == 410
    assert response.headers["tus-resumable"] == "1.0.0"
    assert json.loads(response.body)["error"]["code"] == "upload_gone"
    assert not state.exists(f"tus:{{{upload_id}}}:info")


def test_head_during_a_stalled_patch_answers_at_once_and_a_patch_takes_over(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    # No checkpoint during the test: the HEAD sees the offset from before the PATCH.
    server = tus_server(lock_wait=5, takeover_after=0.2, checkpoint_interval=60)
    url = server.create(10_000)
    resume = threading.Event()
    outcome: list[object] = []

    def stalled_body() -> Iterator[bytes]:
        yield b"z" * 1000
        resume.wait(20)

    def run_patch() -> None:
        with httpx.Client(timeout=30) as client:
            try:
                outcome.append(
                    client.patch(
                        url,
                        headers={**TUS, "Content-Type": OCTETS, "Upload-Offset": "0"},
                        content=stalled_body(),
                    )
                )
            except httpx.HTTPError as exc:
                outcome.append(exc)

    writer = threading.Thread(target=run_patch)
    writer.start()
    try:
        deadline = time.monotonic() + 10
        while not state.exists(f"tus:{{{upload_id_of(url)}}}:lock"):
            assert time.monotonic() < deadline, "the PATCH never took the lock"
            time.sleep(0.01)
        time.sleep(0.3)  # let the first bytes reach the server

        head = server.head(url)
        assert writer.is_alive()  # a HEAD never interrupts a PATCH
        taker = server.patch(url, 0, b"")
        writer.join(10)
    finally:
        resume.set()
        writer.join(30)

    assert head.status_code == 200
    assert head.headers["Upload-Offset"] == "0"
    # The PATCH took over; the stalled one committed what it had, so the
    # taker's offset is stale (409), and the stalled one hears 423, not 2xx.
    assert taker.status_code == 409, taker.text
    (stalled,) = outcome
    assert isinstance(stalled, httpx.Response)
    assert stalled.status_code == 423, stalled.text
    assert stalled.json()["error"]["code"] == "upload_taken_over"
    assert stalled.headers["Upload-Offset"] == "1000"
    assert server.head(url).headers["Upload-Offset"] == "1000"
    assert record(state, url)["offset"] == "1000"
    assert (server.partials / upload_id_of(url)).read_bytes() == b"z" * 1000
    assert not writer.is_alive()
    assert server.patch(url, 1000, b"y" * 9000).status_code == 204
    assert (server.storage / upload_id_of(url)).read_bytes() == b"z" * 1000 + b"y" * 9000


# --- large uploads -----------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [20 * MIB, MIB], ids=["one patch", "1 MIB chunks"])
def test_large_upload_is_stored_byte_identical(
    tus_server: Callable[..., RunningServer], state: redis.Redis, chunk_size: int
) -> None:
    server = tus_server()
    data = os.urandom(20 * MIB)
    url = server.create(len(data))

    offset = 0
    while offset < len(data):
        chunk = data[offset : offset + chunk_size]
        response = server.patch(url, offset, chunk)
        assert response.status_code == 204, response.text
        assert response.headers["Upload-Offset"] == str(offset + len(chunk))
        offset += len(chunk)
    assert offset == len(data)

    final = server.storage / upload_id_of(url)
    assert final.stat().st_size == len(data)
    assert sha256(final.read_bytes()) == sha256(data)
    assert record(state, url)["state"] == "complete"


def test_large_chunked_upload_without_content_length_is_stored_byte_identical(
    tus_server: Callable[..., RunningServer],
) -> None:
    server = tus_server()
    data = os.urandom(20 * MIB)
    url = server.create(len(data))
    piece = 100_000  # not a divisor of the block size

    response = patch_stream(
        server, url, 0, (data[i : i + piece] for i in range(0, len(data), piece))
    )

    assert response.status_code == 204
    assert response.headers["Upload-Offset"] == str(len(data))
    assert sha256((server.storage / upload_id_of(url)).read_bytes()) == sha256(data)


# --- final files -------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "mode"),
    [({}, 0o644), ({"file_mode": 0o600}, 0o600), ({"file_mode": 0o640}, 0o640)],
    ids=["default 0644", "0600", "0640"],
)
def test_final_file_permissions_follow_file_mode(
    tus_server: Callable[..., RunningServer], fields: dict[str, int], mode: int
) -> None:
    server = tus_server(**fields)
    url = server.create(4)

    assert server.patch(url, 0, b"data").status_code == 204

    final = server.storage / upload_id_of(url)
    assert stat.S_IMODE(final.stat().st_mode) == mode


def test_filename_template_names_the_file_and_never_overwrites_an_earlier_one(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server(final_name="{filename}")
    metadata = f"filename {b64(b'report.pdf')},filetype {b64(b'application/pdf')}"
    first = server.create(5, **{"Upload-Metadata": metadata})
    second = server.create(6, **{"Upload-Metadata": metadata})

    assert server.patch(first, 0, b"first").status_code == 204
    assert server.patch(second, 0, b"second").status_code == 204

    assert (server.storage / "report.pdf").read_bytes() == b"first"
    assert (server.storage / "report (1).pdf").read_bytes() == b"second"
    assert record(state, first)["location"] == "report.pdf"
    assert record(state, second)["location"] == "report (1).pdf"
    assert sorted(p.name for p in server.storage.iterdir()) == [
        ".partial",
        "report (1).pdf",
        "report.pdf",
    ]


def test_filename_template_falls_back_to_the_id_without_filename_metadata(
    tus_server: Callable[..., RunningServer],
) -> None:
    server = tus_server(final_name="{filename}")
    url = server.create(3)

    assert server.patch(url, 0, b"abc").status_code == 204

    assert (server.storage / upload_id_of(url)).read_bytes() == b"abc"


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("../../x", "x"),
        ("..\\..\\x", "x"),
        ("/etc/passwd", "passwd"),
        (".partial", "partial"),
        ("..", None),
    ],
)
def test_malicious_filename_stays_inside_storage(
    tus_server: Callable[..., RunningServer], filename: str, expected: str | None
) -> None:
    server = tus_server(final_name="{filename}")
    url = server.create(4, **{"Upload-Metadata": f"filename {b64(filename.encode())}"})

    assert server.patch(url, 0, b"evil").status_code == 204

    name = expected or upload_id_of(url)
    assert (server.storage / name).read_bytes() == b"evil"
    assert sorted(p.name for p in server.storage.iterdir()) == sorted([".partial", name])
    assert list(server.partials.iterdir()) == []
    outside = server.storage.parent
    assert sorted(p.name for p in outside.iterdir()) == [server.storage.name]

"""POST to the endpoint: creation, creation-defer-length, creation-with-upload,
plus the request checks every tus request goes through."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis

from tests.helpers import assert_tus_error, b64, upload_id_of
from tests.raw_http import RawRequest, wait_until
from tests.server_fixtures import OCTETS, TUS, RunningServer
from tests.test_patch import scripts_run
from tusserver import protocol, scripts


def info(state: redis.Redis, upload_id: str) -> dict[str, Any]:
    return state.hgetall(f"tus:{{{upload_id}}}:info")  # type: ignore[return-value]


def assert_nothing_created(server: RunningServer, state: redis.Redis) -> None:
    assert state.keys("tus:*") == []
    assert sorted(path.name for path in server.partials.iterdir()) == []
    assert sorted(path.name for path in server.storage.iterdir()) == [".partial"]


def post(server: RunningServer, content: bytes | None = None, **headers: str) -> httpx.Response:
    return server.client.post(server.endpoint, headers=headers, content=content)


def test_post_returns_201_with_relative_location_offset_0_record_and_empty_partial(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()

    response = post(server, **TUS, **{"Upload-Length": "100"})

    assert response.status_code == 201
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert response.headers["Upload-Offset"] == "0"
    location = response.headers["Location"]
    assert location.startswith("/files/")
    upload_id = location.removeprefix("/files/")
    assert protocol.is_upload_id(upload_id)
    record = info(state, upload_id)
    assert record["offset"] == "0"
    assert record["length"] == "100"
    assert record["state"] == "partial"
    partial = server.partials / upload_id
    assert partial.is_file()
    assert partial.stat().st_size == 0
    assert state.exists(f"tus:{{{upload_id}}}:lock") == 0


def test_each_post_creates_a_distinct_upload(
    tus_server: Callable[..., RunningServer],
) -> None:
    server = tus_server()

    urls = {server.create(1) for _ in range(5)}

    assert len(urls) == 5


def test_post_with_defer_length_creates_upload_without_length(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()

    response = post(server, **TUS, **{"Upload-Defer-Length": "1"})

    assert response.status_code == 201
    assert response.headers["Upload-Offset"] == "0"
    upload_id = upload_id_of(response.headers["Location"])
    assert info(state, upload_id)["length"] == ""
    head = server.head(server.url + response.headers["Location"])
    assert head.headers["Upload-Defer-Length"] == "1"
    assert "Upload-Length" not in head.headers


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        pytest.param(
            {"Upload-Length": "10", "Upload-Defer-Length": "1"},
            "upload_length_conflict",
            id="both length and defer",
        ),
        pytest.param({}, "upload_length_missing", id="neither length nor defer"),
        pytest.param({"Upload-Defer-Length": "2"}, "invalid_header", id="defer 2"),
        pytest.param({"Upload-Defer-Length": "0"}, "invalid_header", id="defer 0"),
        pytest.param({"Upload-Length": "-1"}, "invalid_header", id="negative length"),
        pytest.param({"Upload-Length": "abc"}, "invalid_header", id="non-numeric length"),
        pytest.param({"Upload-Length": "1.5"}, "invalid_header", id="fractional length"),
        pytest.param({"Upload-Length": "+5"}, "invalid_header", id="signed length"),
        pytest.param({"Upload-Length": "1" * 20}, "invalid_header", id="20-digit length"),
        pytest.param(
            {"Upload-Length": "10", "Upload-Metadata": "filename !!notbase64"},
            "invalid_upload_metadata",
            id="invalid base64 metadata",
        ),
        pytest.param(
            {"Upload-Length": "10", "Upload-Metadata": "a YQ==,a YQ=="},
            "invalid_upload_metadata",
            id="duplicate metadata key",
        ),
    ],
)
def test_post_with_malformed_headers_returns_400_and_creates_nothing(
    tus_server: Callable[..., RunningServer],
    state: redis.Redis,
    headers: dict[str, str],
    code: str,
) -> None:
    server = tus_server()

    response = post(server, **TUS, **headers)

    assert_tus_error(response, 400, code)
    assert "Location" not in response.headers
    assert_nothing_created(server, state)


def test_post_with_metadata_over_the_cap_returns_400_and_creates_nothing(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server(max_metadata_size=1024)
    metadata = "filename " + b64(b"x" * 1000)

    response = post(server, **TUS, **{"Upload-Length": "10", "Upload-Metadata": metadata})

    assert_tus_error(response, 400, "upload_metadata_too_large")
    assert_nothing_created(server, state)


def test_post_with_length_over_max_size_returns_413_with_tus_max_size_and_creates_nothing(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server(max_size=1000)

    response = post(server, **TUS, **{"Upload-Length": "1001"})

    assert_tus_error(response, 413, "upload_too_large")
    assert response.headers["Tus-Max-Size"] == "1000"
    assert_nothing_created(server, state)


def test_post_with_length_equal_to_max_size_is_accepted(
    tus_server: Callable[..., RunningServer],
) -> None:
    server = tus_server(max_size=1000)

    response = post(server, **TUS, **{"Upload-Length": "1000"})

    assert response.status_code == 201


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param(f"filename {b64(b'photo.jpg')},filetype {b64(b'image/jpeg')}", id="plain"),
        pytest.param(f"filename {b64(b'a.txt')},empty ,other {b64(b'x')}", id="tus-js-client"),
        pytest.param(f"filename {b64(b'a.txt')},is_confidential", id="key without value"),
        pytest.param(
            f"relativePath {b64(b'null')},name {b64('d/é.txt'.encode())},type {b64(b'text/plain')}",
            id="uppy",
        ),
        pytest.param(f"filename {b64(b'a.txt')[:-1]}", id="unpadded base64"),
    ],
)
def test_post_stores_metadata_as_sent_and_head_echoes_it(
    tus_server: Callable[..., RunningServer], state: redis.Redis, metadata: str
) -> None:
    server = tus_server()

    response = post(server, **TUS, **{"Upload-Length": "10", "Upload-Metadata": metadata})

    assert response.status_code == 201
    upload_id = upload_id_of(response.headers["Location"])
    assert info(state, upload_id)["metadata"] == metadata
    head = server.head(server.url + response.headers["Location"])
    assert head.status_code == 200
    assert head.headers["Upload-Metadata"] == metadata


def test_metadata_is_kept_parsed_in_the_record_and_names_the_finished_file(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server(final_name="{filename}")
    digest = b64(hashlib.sha256(b"hello").digest())
    declared = b64(f"sha256 {digest}".encode())
    metadata = f"filename {b64('résumé.txt'.encode())},empty,checksum {declared}"

    response = post(server, **TUS, **{"Upload-Length": "5", "Upload-Metadata": metadata})

    upload_id = upload_id_of(response.headers["Location"])
    record = info(state, upload_id)
    assert record["metadata"] == metadata
    assert json.loads(record["meta"])["filename"].encode("latin-1") == "résumé.txt".encode()
    assert json.loads(record["meta"])["empty"] == ""
    assert record["checksum"] == f"sha256 {digest}"
    url = server.url + response.headers["Location"]
    assert server.patch(url, 0, b"hello").status_code == 204
    assert (server.storage / "résumé.txt").read_bytes() == b"hello"


def test_an_upload_whose_record_predates_parsed_metadata_still_finishes_under_its_filename(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server(final_name="{filename}")
    metadata = f"filename {b64(b'old.bin')}"
    url = server.create(3, Upload_Metadata=metadata)
    # Records written before the parsed values were kept have only the header.
    state.hdel(f"tus:{{{upload_id_of(url)}}}:info", "meta")

    assert server.patch(url, 0, b"abc").status_code == 204

    assert (server.storage / "old.bin").read_bytes() == b"abc"
    assert server.head(url).headers["Upload-Metadata"] == metadata


def test_post_with_empty_metadata_header_is_accepted_as_tuspy_sends_it(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()

    response = post(server, **TUS, **{"Upload-Length": "10", "Upload-Metadata": ""})

    assert response.status_code == 201
    upload_id = upload_id_of(response.headers["Location"])
    assert info(state, upload_id)["metadata"] == ""
    head = server.head(server.url + response.headers["Location"])
    assert head.status_code == 200
    assert head.headers.get("Upload-Metadata", "") == ""


def test_post_with_data_stores_the_first_chunk_and_returns_its_size_as_offset(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()
    body = b"first chunk of bytes"

    response = post(server, body, **TUS, **{"Upload-Length": "100", "Content-Type": OCTETS})

    assert response.status_code == 201
    assert response.headers["Upload-Offset"] == str(len(body))
    upload_id = upload_id_of(response.headers["Location"])
    assert info(state, upload_id)["offset"] == str(len(body))
    assert (server.partials / upload_id).read_bytes() == body
    assert state.exists(f"tus:{{{upload_id}}}:lock") == 0
    head = server.head(server.url + response.headers["Location"])
    assert head.headers["Upload-Offset"] == str(len(body))


def test_post_with_the_whole_file_finalizes_it(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()
    body = bytes(range(256)) * 40

    response = post(
        server, body, **TUS, **{"Upload-Length": str(len(body)), "Content-Type": OCTETS}
    )

    assert response.status_code == 201
    assert response.headers["Upload-Offset"] == str(len(body))
    upload_id = upload_id_of(response.headers["Location"])
    assert (server.storage / upload_id).read_bytes() == body
    assert not (server.partials / upload_id).exists()
    record = info(state, upload_id)
    assert record["state"] == "complete"
    assert record["location"] == upload_id
    assert record["offset"] == str(len(body))
    assert state.exists(f"tus:{{{upload_id}}}:lock") == 0


def test_post_with_data_past_upload_length_returns_413_and_leaves_nothing_behind(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()

    response = post(server, b"x" * 20, **TUS, **{"Upload-Length": "10", "Content-Type": OCTETS})

    assert_tus_error(response, 413)
    assert "Location" not in response.headers
    assert state.keys("tus:*:info") == []
    assert list(server.partials.iterdir()) == []
    assert sorted(path.name for path in server.storage.iterdir()) == [".partial"]


def test_post_with_chunked_data_past_max_size_returns_413_and_leaves_nothing_behind(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server(max_size=1000)

    def body() -> Iterator[bytes]:
        for _ in range(5):
            yield b"y" * 300

    response = server.client.post(
        server.endpoint,
        headers={**TUS, "Upload-Defer-Length": "1", "Content-Type": OCTETS},
        content=body(),
    )

    assert_tus_error(response, 413, "upload_too_large")
    assert response.headers["Tus-Max-Size"] == "1000"
    assert state.keys("tus:*:info") == []
    assert list(server.partials.iterdir()) == []


@pytest.mark.parametrize(
    "content_type",
    [None, "application/octet-stream", "text/plain"],
    ids=["missing", "octet-stream", "text"],
)
def test_post_with_a_body_of_the_wrong_content_type_returns_415_and_creates_nothing(
    tus_server: Callable[..., RunningServer], state: redis.Redis, content_type: str | None
) -> None:
    server = tus_server()
    headers = {**TUS, "Upload-Length": "10"}
    if content_type is not None:
        headers["Content-Type"] = content_type

    response = post(server, b"0123456789", **headers)

    assert_tus_error(response, 415, "unsupported_content_type")
    assert_nothing_created(server, state)


def test_post_with_length_0_finishes_immediately_with_an_empty_file(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()

    response = post(server, **TUS, **{"Upload-Length": "0"})

    assert response.status_code == 201
    assert response.headers["Upload-Offset"] == "0"
    upload_id = upload_id_of(response.headers["Location"])
    final = server.storage / upload_id
    assert final.is_file()
    assert final.stat().st_size == 0
    assert not (server.partials / upload_id).exists()
    assert info(state, upload_id)["state"] == "complete"
    head = server.head(server.url + response.headers["Location"])
    assert head.headers["Upload-Offset"] == "0"
    assert head.headers["Upload-Length"] == "0"


@pytest.mark.parametrize(
    ("version", "code"),
    [(None, "tus_resumable_missing"), ("0.2.2", "tus_version_unsupported")],
    ids=["missing", "0.2.2"],
)
def test_post_without_a_supported_tus_resumable_returns_412_with_tus_version(
    tus_server: Callable[..., RunningServer],
    state: redis.Redis,
    version: str | None,
    code: str,
) -> None:
    server = tus_server()
    headers = {"Upload-Length": "10"}
    if version is not None:
        headers["Tus-Resumable"] = version

    response = post(server, **headers)

    assert_tus_error(response, 412, code)
    assert "1.0.0" in [v.strip() for v in response.headers["Tus-Version"].split(",")]
    assert_nothing_created(server, state)


def test_method_override_patch_on_post_appends_like_a_patch(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()
    url = server.create(10)

    response = server.client.post(
        url,
        headers={
            **TUS,
            "X-HTTP-Method-Override": "PATCH",
            "Content-Type": OCTETS,
            "Upload-Offset": "0",
        },
        content=b"hello",
    )

    assert response.status_code == 204
    assert response.headers["Upload-Offset"] == "5"
    upload_id = upload_id_of(url)
    assert info(state, upload_id)["offset"] == "5"
    assert (server.partials / upload_id).read_bytes() == b"hello"


def test_method_override_delete_on_post_terminates_the_upload(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()
    url = server.create(10)
    upload_id = upload_id_of(url)

    response = server.client.post(url, headers={**TUS, "X-HTTP-Method-Override": "DELETE"})

    assert response.status_code == 204
    assert info(state, upload_id) == {}
    assert not (server.partials / upload_id).exists()
    assert server.head(url).status_code == 410


def test_method_override_head_on_post_reports_the_offset(
    tus_server: Callable[..., RunningServer],
) -> None:
    server = tus_server()
    url = server.create(10)
    assert server.patch(url, 0, b"abc").status_code == 204

    response = server.client.post(url, headers={**TUS, "X-HTTP-Method-Override": "HEAD"})

    assert response.status_code == 200
    assert response.headers["Upload-Offset"] == "3"
    assert response.headers["Upload-Length"] == "10"
    assert response.content == b""


def test_a_creation_with_an_empty_chunked_body_lets_go_of_the_lock_it_took(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    # Chunked framing announces data, so the creation takes the upload's
    # lock; no byte arrives, so no commit lets it go: the request must.
    server = tus_server()
    response = server.client.post(
        server.endpoint,
        headers={**TUS, "Upload-Length": "5", "Content-Type": OCTETS},
        content=iter([]),
    )

    assert response.status_code == 201, response.text
    url = httpx.URL(server.endpoint).join(response.headers["Location"])
    upload_id = upload_id_of(str(url))
    assert info(state, upload_id)["offset"] == "0"
    assert not state.exists(f"tus:{{{upload_id}}}:lock")


def test_post_with_a_single_byte_of_data_stores_it(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    # The smallest body there is: a creation-with-upload of one byte is a
    # body, not an empty request.
    server = tus_server()

    response = post(server, b"x", **TUS, **{"Upload-Length": "3", "Content-Type": OCTETS})

    assert response.status_code == 201, response.text
    assert response.headers["Upload-Offset"] == "1"
    upload_id = upload_id_of(response.headers["Location"])
    assert (server.partials / upload_id).read_bytes() == b"x"
    assert info(state, upload_id)["offset"] == "1"


def test_post_with_one_byte_of_the_wrong_content_type_returns_415_and_creates_nothing(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()

    response = post(server, b"x", **TUS, **{"Upload-Length": "3", "Content-Type": "text/plain"})

    assert_tus_error(response, 415, "unsupported_content_type")
    assert_nothing_created(server, state)


def test_post_with_neither_content_length_nor_chunked_framing_has_no_body(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    # HTTP/1.1: a request with neither Content-Length nor Transfer-Encoding
    # has an empty body (as some clients send a bare POST), so no
    # Content-Type is needed and the creation takes no lock.
    server = tus_server(sweep_interval=3600.0)
    before = scripts_run(state)
    request = RawRequest(server.endpoint, "POST", {**TUS, "Upload-Length": "5"})
    try:
        response = request.response()
    finally:
        request.close()

    assert response.status == 201, response.body
    upload_id = upload_id_of(response.headers["location"])
    assert info(state, upload_id)["offset"] == "0"
    assert scripts_run(state) - before == 1  # the creation alone: no lock taken or released


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-content-type"),
        pytest.param({"Content-Type": OCTETS}, id="octet-stream"),
    ],
)
def test_a_creation_with_an_empty_body_takes_no_lock(
    tus_server: Callable[..., RunningServer], state: redis.Redis, headers: dict[str, str]
) -> None:
    # Only a creation that writes bytes, may write them (chunked framing) or
    # finishes the upload needs the upload's lock; one with Content-Length: 0
    # is the creation script alone, whatever its Content-Type says.
    server = tus_server(sweep_interval=3600.0)
    before = scripts_run(state)

    response = post(server, b"", **TUS, **{"Upload-Length": "5", "Content-Length": "0"}, **headers)

    assert response.status_code == 201, response.text
    assert response.headers["Upload-Offset"] == "0"
    assert scripts_run(state) - before == 1


@pytest.mark.parametrize("suffix", ["/", ""], ids=["with its slash", "without"])
def test_the_endpoint_creates_with_or_without_its_trailing_slash_and_no_upload_url_is_empty(
    tus_server: Callable[..., RunningServer], state: redis.Redis, suffix: str
) -> None:
    # The upload route is tried first (most requests are HEADs and PATCHes):
    # it must never take the endpoint itself, as an upload with an empty id.
    server = tus_server()
    endpoint = server.endpoint.removesuffix("/") + suffix

    created = server.client.post(endpoint, headers={**TUS, "Upload-Length": "3"})
    options = server.client.options(endpoint)
    head = server.client.head(endpoint, headers=TUS)

    assert created.status_code == 201, created.text
    assert state.exists(f"tus:{{{upload_id_of(created.headers['Location'])}}}:info") == 1
    assert options.status_code == 200
    assert "creation" in options.headers["Tus-Extension"]
    # The endpoint takes POST and OPTIONS: a HEAD there is the tus 405.
    assert head.status_code == 405
    assert head.headers["Tus-Resumable"] == "1.0.0"
    assert "POST" in head.headers["Allow"]


def test_a_server_loads_its_scripts_into_a_fresh_redis_before_their_first_calls(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    # Else every request of a first burst would meet NOSCRIPT and send its
    # script again (on every primary of a Cluster).
    texts = [text for name, text in vars(scripts).items() if name.isupper() and name[0] != "_"]
    shas = [hashlib.sha1(text.encode()).hexdigest() for text in texts]
    assert len(shas) == 11
    state.script_flush()
    assert not any(state.script_exists(*shas))

    tus_server()

    wait_until(lambda: all(state.script_exists(*shas)), "every script loaded", timeout=5)

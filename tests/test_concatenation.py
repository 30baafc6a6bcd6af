"""Concatenation: partial uploads, final uploads assembled from them, and
tus-js-client's parallelUploads end to end."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import pytest
import redis

from storage_backends.local import LocalStorage
from tests.helpers import assert_tus_error, b64, upload_id_of
from tests.js_fixtures import TusJs
from tests.server_fixtures import OCTETS, TUS, RunningServer, ServedApps
from tusserver import Config

MIB = 1024 * 1024


def pattern(size: int, seed: int) -> bytes:
    """Bytes that differ from part to part and position to position, so order shows."""
    block = hashlib.sha256(str(seed).encode()).digest() * 8  # 256 bytes
    return (block * (size // len(block) + 1))[:size]


def record(state: redis.Redis, url: str) -> dict[str, str]:
    return state.hgetall(f"tus:{{{upload_id_of(url)}}}:info")  # type: ignore[return-value]


def create_partial(server: RunningServer, data: bytes, **headers: str) -> str:
    """A complete partial upload holding ``data``; returns its absolute URL."""
    url = server.create(len(data), **{"Upload-Concat": "partial"}, **headers)
    if data:
        assert server.patch(url, 0, data).status_code == 204
    return url


def post_final(server: RunningServer, *urls: str, **headers: str) -> httpx.Response:
    sent = {**TUS, "Upload-Concat": "final;" + " ".join(urls), **headers}
    return server.client.post(server.endpoint, headers=sent)


def final_file(server: RunningServer, response: httpx.Response) -> Path:
    assert response.status_code == 201, response.text
    return server.storage / upload_id_of(response.headers["Location"])


def published(server: RunningServer) -> list[str]:
    return sorted(path.name for path in server.storage.iterdir() if path.name != ".partial")


def staged(server: RunningServer) -> list[str]:
    return sorted(path.name for path in server.partials.iterdir())


# --- the final upload --------------------------------------------------------


def test_final_of_three_partials_is_their_byte_exact_concatenation(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()
    parts = [pattern(MIB + 13, 1), pattern(777, 2), pattern(2 * MIB + 5, 3)]
    urls = [create_partial(server, data) for data in parts]

    response = post_final(server, *urls)

    assert response.status_code == 201
    assert response.headers["Tus-Resumable"] == "1.0.0"
    total = sum(len(data) for data in parts)
    assert response.headers["Upload-Offset"] == str(total)
    location = response.headers["Location"]
    assert location.startswith("/files/")
    final_id = upload_id_of(location)
    assert (server.storage / final_id).read_bytes() == b"".join(parts)
    assert published(server) == [final_id]
    final = record(state, location)
    assert final["concat"] == "final"
    assert final["state"] == "complete"
    assert final["offset"] == final["length"] == str(total)
    assert state.exists(f"tus:{{{final_id}}}:lock") == 0


def test_head_of_a_final_upload_echoes_upload_concat_with_offset_equal_to_length(
    tus_server: Callable[..., RunningServer],
) -> None:
    server = tus_server()
    urls = [create_partial(server, b"hello"), create_partial(server, b" world")]
    response = post_final(server, *urls)
    assert response.status_code == 201

    head = server.head(server.url + response.headers["Location"])

    assert head.status_code == 200
    # Spec: "its value as received in the upload creation request".
    assert head.headers["Upload-Concat"] == "final;" + " ".join(urls)
    assert head.headers["Upload-Length"] == "11"
    assert head.headers["Upload-Offset"] == "11"
    assert head.headers["Cache-Control"] == "no-store"
    assert "Upload-Metadata" not in head.headers


def unfinish(server: RunningServer, state: redis.Redis, url: str, offset: int) -> None:
    """Put a finished final upload back where a crash before its finalize left it."""
    final_id = upload_id_of(url)
    (server.storage / final_id).rename(server.partials / final_id)
    key = f"tus:{{{final_id}}}:info"
    state.hset(key, mapping={"state": "partial", "offset": str(offset)})
    state.hdel(key, "location")


def test_head_of_a_final_whose_assembly_did_not_finish_shows_no_offset(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    # Spec: no Upload-Offset on a final upload until its concatenation finished.
    server = tus_server()
    part = create_partial(server, b"abc")
    url = server.url + post_final(server, part).headers["Location"]
    unfinish(server, state, url, offset=0)

    head = server.head(url)

    assert head.status_code == 200
    assert "Upload-Offset" not in head.headers
    assert head.headers["Upload-Length"] == "3"
    assert head.headers["Upload-Concat"] == f"final;{part}"
    assert_tus_error(server.patch(url, 0, b"abc"), 403, "final_upload_immutable")
    assert published(server) == []


def test_head_finishes_a_final_that_was_assembled_but_not_finalized(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()
    part = create_partial(server, b"abc")
    url = server.url + post_final(server, part).headers["Location"]
    unfinish(server, state, url, offset=3)

    head = server.head(url)

    assert head.headers["Upload-Offset"] == "3"
    assert published(server) == [upload_id_of(url)]
    assert (server.storage / upload_id_of(url)).read_bytes() == b"abc"
    assert record(state, url)["state"] == "complete"


def test_final_takes_its_own_metadata_not_the_partials(
    tus_server: Callable[..., RunningServer],
) -> None:
    server = tus_server(final_name="{filename}")
    part = create_partial(server, b"abc", **{"Upload-Metadata": f"filename {b64(b'part.bin')}"})
    metadata = f"filename {b64(b'whole.txt')}"

    response = post_final(server, part, **{"Upload-Metadata": metadata})

    assert response.status_code == 201
    assert published(server) == ["whole.txt"]
    assert (server.storage / "whole.txt").read_bytes() == b"abc"
    head = server.head(server.url + response.headers["Location"])
    assert head.headers["Upload-Metadata"] == metadata


def test_part_urls_may_be_relative_paths_or_relative_references(
    tus_server: Callable[..., RunningServer],
) -> None:
    server = tus_server()
    first = create_partial(server, b"one ")
    second = create_partial(server, b"two")
    path_only = first.removeprefix(server.url)  # /files/<id>
    bare_id = upload_id_of(second)  # resolved against the POST's URL, /files/

    response = post_final(server, path_only, bare_id)

    assert final_file(server, response).read_bytes() == b"one two"


def test_part_urls_resolve_by_path_only_whatever_their_host(
    tus_server: Callable[..., RunningServer],
) -> None:
    server = tus_server()
    first = create_partial(server, b"left|")
    second = create_partial(server, b"right")
    foreign = f"https://proxy.example:8443/files/{upload_id_of(first)}?x=1#frag"

    response = post_final(server, foreign, second)

    assert final_file(server, response).read_bytes() == b"left|right"
    head = server.head(server.url + response.headers["Location"])
    assert head.headers["Upload-Concat"] == f"final;{foreign} {second}"


def test_a_partial_can_be_used_by_several_finals_and_twice_in_one(
    tus_server: Callable[..., RunningServer],
) -> None:
    server = tus_server()
    a = create_partial(server, b"AA")
    b = create_partial(server, b"b")

    first = post_final(server, a, b)
    second = post_final(server, b, a, b)

    assert final_file(server, first).read_bytes() == b"AAb"
    assert final_file(server, second).read_bytes() == b"bAAb"
    assert first.headers["Location"] != second.headers["Location"]


def test_partials_of_zero_bytes_are_complete_and_concatenate(
    tus_server: Callable[..., RunningServer],
) -> None:
    server = tus_server()
    empty = create_partial(server, b"")
    data = create_partial(server, b"data")

    assert final_file(server, post_final(server, empty, data, empty)).read_bytes() == b"data"
    assert final_file(server, post_final(server, empty)).read_bytes() == b""


def test_deleting_a_used_partial_leaves_the_final_intact_and_deleting_the_final_spares_parts(
    tus_server: Callable[..., RunningServer],
) -> None:
    server = tus_server()
    a = create_partial(server, b"keep ")
    b = create_partial(server, b"me")
    response = post_final(server, a, b)
    final = final_file(server, response)
    final_url = server.url + response.headers["Location"]

    assert server.client.delete(a, headers=TUS).status_code == 204

    assert final.read_bytes() == b"keep me"
    assert server.head(final_url).headers["Upload-Offset"] == "7"
    assert server.client.delete(final_url, headers=TUS).status_code == 204
    assert published(server) == []
    assert staged(server) == [upload_id_of(b)]
    assert server.head(b).status_code == 200


def test_patch_on_a_final_upload_returns_403_and_changes_nothing(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()
    part = create_partial(server, b"final")
    response = post_final(server, part)
    final = final_file(server, response)
    url = server.url + response.headers["Location"]
    before = record(state, url)

    for offset in (0, 5):
        assert_tus_error(server.patch(url, offset, b"more"), 403, "final_upload_immutable")

    assert final.read_bytes() == b"final"
    assert record(state, url) == before
    assert (server.partials / upload_id_of(part)).read_bytes() == b"final"


def test_final_with_data_in_its_creation_returns_403_and_creates_nothing(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()
    part = create_partial(server, b"abc")
    keys = sorted(state.keys("tus:*"))
    sent = {**TUS, "Upload-Concat": f"final;{part}", "Content-Type": OCTETS}

    response = server.client.post(server.endpoint, headers=sent, content=b"xyz")

    assert_tus_error(response, 403, "final_upload_immutable")
    assert sorted(state.keys("tus:*")) == keys
    assert staged(server) == [upload_id_of(part)]


@pytest.mark.parametrize(
    "header", [{"Upload-Length": "3"}, {"Upload-Defer-Length": "1"}], ids=["length", "defer"]
)
def test_final_with_a_length_header_returns_400(
    tus_server: Callable[..., RunningServer], header: dict[str, str]
) -> None:
    # Spec: "The Client MUST NOT include the Upload-Length header in the
    # final upload creation."
    server = tus_server()
    part = create_partial(server, b"abc")

    response = post_final(server, part, **header)

    assert_tus_error(response, 400, "final_upload_length_not_allowed")
    assert published(server) == []


# --- refused parts -----------------------------------------------------------


def assert_refused_without_trace(
    server: RunningServer, state: redis.Redis, response: httpx.Response, status: int, code: str
) -> None:
    keys = sorted(state.keys("tus:*"))
    staged_before = staged(server)
    assert_tus_error(response, status, code)
    assert response.json()["error"]["retryable"] is False
    assert sorted(state.keys("tus:*")) == keys
    assert staged(server) == staged_before
    assert published(server) == []


def test_an_incomplete_partial_is_refused_with_400_naming_it(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()
    done = create_partial(server, b"done")
    unfinished = server.create(10, **{"Upload-Concat": "partial"})
    assert server.patch(unfinished, 0, b"half").status_code == 204

    response = post_final(server, done, unfinished)

    assert_refused_without_trace(server, state, response, 400, "concat_part_incomplete")
    assert "Part 2" in response.json()["error"]["message"]


def test_a_deferred_partial_without_its_length_is_incomplete(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()
    deferred = server.create(None, **{"Upload-Concat": "partial"})
    assert server.patch(deferred, 0, b"abc").status_code == 204

    response = post_final(server, deferred)

    assert_refused_without_trace(server, state, response, 400, "concat_part_incomplete")


def test_an_unknown_or_deleted_part_is_refused_with_400(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()
    kept = create_partial(server, b"abc")
    deleted = create_partial(server, b"def")
    assert server.client.delete(deleted, headers=TUS).status_code == 204
    unknown = server.endpoint + "0123456789abcdef0123456789abcdef"

    for url in (unknown, deleted):
        response = post_final(server, kept, url)
        assert_refused_without_trace(server, state, response, 400, "concat_part_not_found")


def test_an_upload_that_is_not_a_partial_is_refused_as_a_part(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()
    plain = server.create(3)
    assert server.patch(plain, 0, b"abc").status_code == 204
    part = create_partial(server, b"xyz")
    final = server.url + post_final(server, part).headers["Location"]
    published_before = published(server)

    for url in (plain, final):
        response = post_final(server, part, url)
        assert_tus_error(response, 400, "concat_part_not_partial")
        assert published(server) == published_before


@pytest.mark.parametrize(
    "make_url",
    [
        pytest.param(lambda s, i: f"{s.url}/other/{i}", id="another base path"),
        pytest.param(lambda s, i: f"/files/x/{i}", id="a deeper path"),
        pytest.param(lambda s, i: f"/files/{i}/", id="trailing slash"),
        pytest.param(lambda s, i: f"/files/{i.upper()}", id="not an upload id"),
        pytest.param(lambda s, i: f"/files/%{i[:2]}{i[2:]}", id="percent-encoded"),
        pytest.param(lambda s, i: f"/files/../other/{i}", id="dot segments"),
        pytest.param(lambda s, i: "/files/", id="the endpoint itself"),
        pytest.param(lambda s, i: f"http://[::1/files/{i}", id="broken host"),
    ],
)
def test_a_part_url_outside_this_endpoint_is_refused_with_400(
    tus_server: Callable[..., RunningServer],
    state: redis.Redis,
    make_url: Callable[[RunningServer, str], str],
) -> None:
    server = tus_server()
    part = create_partial(server, b"abc")

    response = post_final(server, part, make_url(server, upload_id_of(part)))

    assert_refused_without_trace(server, state, response, 400, "invalid_concat_part")
    assert "Part 2" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("final", "invalid_header"),
        ("finale;/files/0123456789abcdef0123456789abcdef", "invalid_header"),
        ("partial;", "invalid_header"),
        ("parts", "invalid_header"),
        ("", "invalid_header"),
        ("final;", "concat_without_parts"),
    ],
)
def test_a_malformed_upload_concat_is_refused_with_400(
    tus_server: Callable[..., RunningServer], state: redis.Redis, value: str, code: str
) -> None:
    server = tus_server()
    sent = {**TUS, "Upload-Concat": value, "Upload-Length": "3"}

    response = server.client.post(server.endpoint, headers=sent)

    assert_tus_error(response, 400, code)
    assert state.keys("tus:*") == []
    assert staged(server) == []


def test_more_parts_than_the_cap_are_refused_with_400(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()
    part = create_partial(server, b"a")

    response = post_final(server, *[upload_id_of(part)] * 1001)

    assert_refused_without_trace(server, state, response, 400, "too_many_concat_parts")


def test_a_final_larger_than_max_size_returns_413(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server(max_size=10)
    urls = [create_partial(server, b"123456"), create_partial(server, b"12345")]

    response = post_final(server, *urls)

    assert_refused_without_trace(server, state, response, 413, "upload_too_large")
    assert response.headers["Tus-Max-Size"] == "10"


def test_a_final_of_exactly_max_size_is_created(
    tus_server: Callable[..., RunningServer],
) -> None:
    # The limit is the largest size allowed, not the first one refused.
    server = tus_server(max_size=10)
    urls = [create_partial(server, b"123456"), create_partial(server, b"1234")]

    response = post_final(server, *urls)

    assert response.status_code == 201, response.text
    assert final_file(server, response).read_bytes() == b"1234561234"


class ConcatFails(LocalStorage):
    """Local storage whose assembly of a final upload fails with ``failure``."""

    def __init__(self, root: Path, failure: OSError) -> None:
        super().__init__(root)
        self.failure = failure

    async def concat(self, upload_id: str, parts: Sequence[tuple[str, int]]) -> None:
        raise self.failure


@pytest.mark.parametrize(
    ("failure", "status", "code"),
    [
        pytest.param(FileNotFoundError(2, "gone"), 400, "concat_part_removed", id="part removed"),
        pytest.param(OSError(5, "I/O error"), 503, "storage_failed", id="storage fault"),
    ],
)
def test_a_final_whose_assembly_fails_answers_why_and_is_not_published(
    served_apps: ServedApps,
    redis_url: str,
    tmp_path: Path,
    failure: OSError,
    status: int,
    code: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A part removed between the checks and the copy tells the client to
    # upload it again (400); any other storage fault is passing trouble
    # (503). Either way nothing is published under the final's name, and
    # the final is never taken for assembled (its length committed, logged).
    storage = ConcatFails(tmp_path / "files", failure)
    config = Config(storage=str(storage.root), redis_url=redis_url)
    server = served_apps.start(config, storage.root, backend=storage)
    urls = [create_partial(server, b"abc"), create_partial(server, b"def")]

    with caplog.at_level(logging.INFO, logger="tusserver"):
        response = post_final(server, *urls)

    assert_tus_error(response, status, code)
    assert published(server) == []
    said = [record.getMessage() for record in caplog.records]
    assert any("a part vanished" in line or "assembly failed" in line for line in said), said
    assert not any("assembled from" in line for line in said), said


# --- partial uploads ---------------------------------------------------------


def test_a_complete_partial_stays_staged_and_is_never_published(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()

    url = create_partial(server, b"fragment")

    assert published(server) == []
    assert (server.partials / upload_id_of(url)).read_bytes() == b"fragment"
    fields = record(state, url)
    assert fields["concat"] == "partial"
    assert fields["state"] == "complete"
    assert fields.get("location", "") == ""
    # Idempotent completion holds for partials too.
    assert server.patch(url, 8, b"").status_code == 204
    assert published(server) == []


def test_a_partial_can_be_created_with_data_and_with_a_deferred_length(
    tus_server: Callable[..., RunningServer],
) -> None:
    server = tus_server()
    sent = {**TUS, "Upload-Concat": "partial", "Upload-Length": "5", "Content-Type": OCTETS}
    with_data = server.client.post(server.endpoint, headers=sent, content=b"first")
    assert with_data.status_code == 201
    assert with_data.headers["Upload-Offset"] == "5"
    deferred = server.create(None, **{"Upload-Concat": "partial"})
    assert server.patch(deferred, 0, b"-second", **{"Upload-Length": "7"}).status_code == 204

    response = post_final(server, server.url + with_data.headers["Location"], deferred)

    assert final_file(server, response).read_bytes() == b"first-second"


def test_head_of_a_partial_says_partial_with_its_offset_and_length(
    tus_server: Callable[..., RunningServer],
) -> None:
    server = tus_server()
    url = server.create(6, **{"Upload-Concat": "partial"})
    assert server.patch(url, 0, b"abc").status_code == 204

    unfinished = server.head(url)
    assert server.patch(url, 3, b"def").status_code == 204
    finished = server.head(url)

    assert unfinished.headers["Upload-Concat"] == "partial"
    assert unfinished.headers["Upload-Offset"] == "3"
    assert unfinished.headers["Upload-Length"] == "6"
    assert finished.headers["Upload-Concat"] == "partial"
    assert finished.headers["Upload-Offset"] == "6"


def test_plain_uploads_have_no_upload_concat_on_head(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()
    url = server.create(3)

    assert "Upload-Concat" not in server.head(url).headers
    assert "concat" not in record(state, url)


def test_options_advertises_concatenation(tus_server: Callable[..., RunningServer]) -> None:
    server = tus_server()

    response = server.client.options(server.endpoint)

    assert "concatenation" in response.headers["Tus-Extension"].split(",")


# --- mounted under a path ----------------------------------------------------


def test_when_mounted_part_urls_must_carry_the_mount_path(
    tus_server: Callable[..., RunningServer],
) -> None:
    server = tus_server(mount_at="/api")
    part = create_partial(server, b"mounted")
    assert part.startswith(server.url + "/api/files/")

    wrong = post_final(server, "/files/" + upload_id_of(part))
    right = post_final(server, part)

    assert_tus_error(wrong, 400, "invalid_concat_part")
    assert right.headers["Location"].startswith("/api/files/")
    assert final_file(server, right).read_bytes() == b"mounted"


# --- tus-js-client -----------------------------------------------------------


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tus_js_client_parallel_uploads_produce_the_byte_identical_file(
    tus_server: Callable[..., RunningServer],
    state: redis.Redis,
    tus_js: TusJs,
    tmp_path: Path,
) -> None:
    server = tus_server()
    source = tmp_path / "random.bin"
    source.write_bytes(os.urandom(10 * MIB + 12345))

    url = tus_js(server.endpoint, source, parallelUploads=4)

    final_id = upload_id_of(url)
    assert published(server) == [final_id]
    assert sha256_of(server.storage / final_id) == sha256_of(source)
    head = server.head(url)
    assert (
        head.headers["Upload-Offset"] == head.headers["Upload-Length"] == str(source.stat().st_size)
    )
    parts = head.headers["Upload-Concat"].removeprefix("final;").split(" ")
    assert len(parts) == 4
    # The four partials are fragments: staged, complete, never published.
    assert staged(server) == sorted(upload_id_of(part) for part in parts)
    assert all(record(state, part)["state"] == "complete" for part in parts)


def test_tus_js_client_parallel_uploads_with_chunks_and_metadata_name_the_final_file(
    tus_server: Callable[..., RunningServer], tus_js: TusJs, tmp_path: Path
) -> None:
    server = tus_server(final_name="{filename}")
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(3 * MIB + 7))

    url = tus_js(
        server.endpoint,
        source,
        parallelUploads=3,
        chunkSize=512 * 1024,
        metadata={"filename": "report.pdf", "filetype": "application/pdf"},
    )

    assert published(server) == ["report.pdf"]
    assert sha256_of(server.storage / "report.pdf") == sha256_of(source)
    assert server.head(url).headers["Upload-Offset"] == str(source.stat().st_size)


# --- stale bytes past a part's length ------------------------------------------


def part_with_a_stale_tail(server: RunningServer) -> str:
    """A complete deferred-length part of 100 bytes whose staging file also holds
    300 bytes of a chunk refused for its checksum (they lie past its offset)."""
    url = server.create(None, **{"Upload-Concat": "partial"})
    refused = server.patch(url, 0, b"X" * 300, Upload_Checksum="sha1 " + b64(bytes(20)))
    assert refused.status_code == 460
    done = server.patch(url, 0, b"A" * 100, Upload_Length="100")
    assert done.headers["Upload-Offset"] == "100"
    assert (server.partials / upload_id_of(url)).stat().st_size == 300
    return url


def test_a_part_s_stale_tail_never_reaches_the_final_file(
    tus_server: Callable[..., RunningServer],
) -> None:
    server = tus_server()
    first = part_with_a_stale_tail(server)
    second = create_partial(server, b"BBBBB")

    response = post_final(server, first, second)

    assert final_file(server, response).read_bytes() == b"A" * 100 + b"BBBBB"


def test_a_complete_part_downloads_as_its_committed_bytes(
    tus_server: Callable[..., RunningServer],
) -> None:
    server = tus_server()
    url = part_with_a_stale_tail(server)

    response = server.client.get(url)

    assert response.status_code == 200
    assert response.content == b"A" * 100


def test_a_final_with_malformed_checksum_metadata_is_refused_before_any_copy(
    tus_server: Callable[..., RunningServer],
) -> None:
    server = tus_server()
    part = create_partial(server, b"x" * 1000)

    response = post_final(
        server, *[part] * 50, **{"Upload-Metadata": f"checksum {b64(b'nonsense')}"}
    )

    assert_tus_error(response, 400, "invalid_upload_metadata")
    assert staged(server) == [upload_id_of(part)]

"""DELETE (termination): bytes removed, record replaced by a tombstone (410)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import redis

from tests.helpers import assert_tus_error as shared_assert_tus_error
from tests.helpers import upload_id_of
from tests.server_fixtures import TUS, RunningServer
from tusserver.state import Index, upload_index_key


def assert_tus_error(response: httpx.Response, status: int, code: str) -> None:
    shared_assert_tus_error(response, status, code)
    assert response.json()["error"]["retryable"] is False


def delete(server: RunningServer, url: str) -> httpx.Response:
    return server.client.delete(url, headers=TUS)


def test_delete_returns_204_removes_partial_bytes_and_leaves_a_tombstone(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()
    url = server.create(10)
    upload_id = upload_id_of(url)
    assert server.patch(url, 0, b"hello").status_code == 204
    assert (server.partials / upload_id).exists()
    expiry_index = upload_index_key(Index.EXPIRY, upload_id)
    assert state.zscore(expiry_index, upload_id) is not None

    response = delete(server, url)

    assert response.status_code == 204
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert response.content == b""
    assert not (server.partials / upload_id).exists()
    assert state.exists(f"tus:{{{upload_id}}}:info") == 0
    assert state.exists(f"tus:{{{upload_id}}}:lock") == 0
    assert state.exists(f"tus:{{{upload_id}}}:gone") == 1
    # Nothing left for the sweeper to find.
    assert state.zscore(expiry_index, upload_id) is None
    # README: the URL answers 410 for a day, then 404.
    assert 24 * 3600 - 5 <= state.ttl(f"tus:{{{upload_id}}}:gone") <= 24 * 3600


def test_after_delete_head_and_patch_answer_410(
    tus_server: Callable[..., RunningServer],
) -> None:
    server = tus_server()
    url = server.create(10)
    assert delete(server, url).status_code == 204

    head = server.head(url)
    patch = server.patch(url, 0, b"hello")

    assert head.status_code == 410
    assert head.headers["Tus-Resumable"] == "1.0.0"
    assert head.content == b""
    assert_tus_error(patch, 410, "upload_gone")
    assert not (server.partials / upload_id_of(url)).exists()


def test_delete_of_a_finished_upload_removes_the_final_file(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()
    url = server.create(5)
    upload_id = upload_id_of(url)
    assert server.patch(url, 0, b"hello").status_code == 204
    assert (server.storage / upload_id).read_bytes() == b"hello"

    response = delete(server, url)

    assert response.status_code == 204
    assert sorted(p.name for p in server.storage.iterdir()) == [".partial"]
    assert list(server.partials.iterdir()) == []
    assert state.exists(f"tus:{{{upload_id}}}:info") == 0
    assert server.head(url).status_code == 410


def test_delete_of_a_finished_upload_removes_only_its_own_named_file(
    tus_server: Callable[..., RunningServer],
) -> None:
    server = tus_server(final_name="{filename}")
    metadata = "filename YS50eHQ="  # a.txt
    first = server.create(5, **{"Upload-Metadata": metadata})
    second = server.create(6, **{"Upload-Metadata": metadata})
    assert server.patch(first, 0, b"first").status_code == 204
    assert server.patch(second, 0, b"second").status_code == 204

    assert delete(server, second).status_code == 204

    assert sorted(p.name for p in server.storage.iterdir()) == [".partial", "a.txt"]
    assert (server.storage / "a.txt").read_bytes() == b"first"
    assert server.head(first).headers["Upload-Offset"] == "5"


def test_delete_of_an_unknown_upload_returns_404(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()

    response = delete(server, server.endpoint + "0123456789abcdef0123456789abcdef")

    assert_tus_error(response, 404, "upload_not_found")
    assert state.keys("tus:*") == []


def test_second_delete_returns_410(
    tus_server: Callable[..., RunningServer],
) -> None:
    server = tus_server()
    url = server.create(10)
    assert delete(server, url).status_code == 204

    assert_tus_error(delete(server, url), 410, "upload_gone")


def test_delete_without_tus_resumable_returns_412_and_keeps_the_upload(
    tus_server: Callable[..., RunningServer],
) -> None:
    server = tus_server()
    url = server.create(10)

    response = server.client.delete(url)

    assert_tus_error(response, 412, "tus_resumable_missing")
    assert (server.partials / upload_id_of(url)).exists()
    assert server.head(url).status_code == 200


def test_delete_does_not_touch_other_uploads(
    tus_server: Callable[..., RunningServer],
) -> None:
    server = tus_server()
    doomed = server.create(10)
    kept = server.create(10)
    assert server.patch(kept, 0, b"keep").status_code == 204

    assert delete(server, doomed).status_code == 204

    assert (server.partials / upload_id_of(kept)).read_bytes() == b"keep"
    assert server.head(kept).headers["Upload-Offset"] == "4"

"""--min-size: a length below it is refused when it becomes known, with 400
``upload_too_small``: at creation, or on the PATCH that declares a deferred
length (the upload then fails, its bytes removed)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis

from tests.helpers import assert_tus_error, upload_id_of
from tests.server_fixtures import TUS, RunningServer
from tusserver import Config
from tusserver.config import ConfigError
from tusserver.options import config_from

StartServer = Callable[..., RunningServer]


def test_an_upload_length_below_the_minimum_is_refused_at_creation(
    tus_server: StartServer, state: redis.Redis
) -> None:
    server = tus_server(min_size=100, max_size=1000)

    response = server.client.post(server.endpoint, headers={**TUS, "Upload-Length": "99"})

    assert_tus_error(response, 400, "upload_too_small")
    assert response.json()["error"]["retryable"] is False
    assert state.keys("tus:*") == []
    assert list(server.partials.iterdir()) == []


def test_an_upload_of_exactly_the_minimum_is_accepted(tus_server: StartServer) -> None:
    server = tus_server(min_size=100)
    url = server.create(100)

    assert server.patch(url, 0, b"x" * 100).status_code == 204
    assert (server.storage / upload_id_of(url)).read_bytes() == b"x" * 100


def test_a_deferred_length_below_the_minimum_fails_the_upload(
    tus_server: StartServer, state: redis.Redis
) -> None:
    server = tus_server(min_size=100)
    url = server.create(None)
    assert server.patch(url, 0, b"x" * 10).status_code == 204

    response = server.patch(url, 10, b"y" * 5, **{"Upload-Length": "15"})

    assert_tus_error(response, 400, "upload_too_small")
    upload_id = upload_id_of(url)
    assert not (server.partials / upload_id).exists()
    record = state.hgetall(f"tus:{{{upload_id}}}:info")
    assert (record["state"], record["failcode"], record["length"]) == (
        "failed",
        "upload_too_small",
        "",
    )
    assert server.head(url).status_code == 400
    assert_tus_error(server.patch(url, 10, b"y" * 500), 400, "upload_too_small")


def test_a_deferred_length_at_or_above_the_minimum_finishes(tus_server: StartServer) -> None:
    server = tus_server(min_size=100)
    url = server.create(None)
    assert server.patch(url, 0, b"x" * 60).status_code == 204

    assert server.patch(url, 60, b"y" * 40, **{"Upload-Length": "100"}).status_code == 204
    assert (server.storage / upload_id_of(url)).read_bytes() == b"x" * 60 + b"y" * 40


def test_parts_may_be_small_but_a_final_upload_below_the_minimum_is_refused(
    tus_server: StartServer,
) -> None:
    server = tus_server(min_size=100)
    parts = []
    for _ in range(2):
        headers = {**TUS, "Upload-Length": "30", "Upload-Concat": "partial"}
        created = server.client.post(server.endpoint, headers=headers)
        assert created.status_code == 201, created.text
        part = server.url + created.headers["Location"]
        assert server.patch(part, 0, b"p" * 30).status_code == 204
        parts.append(part)

    final = server.client.post(
        server.endpoint, headers={**TUS, "Upload-Concat": "final;" + " ".join(parts)}
    )

    assert_tus_error(final, 400, "upload_too_small")


def test_the_minimum_is_a_size_option_and_must_not_exceed_the_maximum() -> None:
    assert config_from({"min_size": "1K"}).min_size == 1024
    assert config_from({"allow_types": ("image/*, Application/PDF",)}).allow_types == (
        "image/*",
        "application/pdf",
    )
    with pytest.raises(ConfigError, match="min size must not be larger than max size"):
        Config(min_size=2, max_size=1)
    with pytest.raises(ConfigError, match="allowed types"):
        Config(allow_types=("images",))
    with pytest.raises(ConfigError, match="allowed types"):
        Config(allow_types=("*/png",))

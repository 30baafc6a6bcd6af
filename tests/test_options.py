"""OPTIONS: server discovery, answered without Tus-Resumable on the request."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.server_fixtures import RunningServer

EXTENSIONS = {
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "termination",
    "checksum",
    "concatenation",
    "expiration",
}


def split_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",")]


@pytest.fixture(params=["endpoint", "upload url"])
def options_url(request: pytest.FixtureRequest) -> Callable[[RunningServer], str]:
    def url(server: RunningServer) -> str:
        if request.param == "endpoint":
            return server.endpoint
        return server.create(10)

    return url


def test_options_answers_200_with_version_and_exact_extensions_without_tus_resumable(
    tus_server: Callable[..., RunningServer], options_url: Callable[[RunningServer], str]
) -> None:
    server = tus_server()
    url = options_url(server)

    response = server.client.options(url)

    assert response.status_code == 200
    assert "1.0.0" in split_list(response.headers["Tus-Version"])
    extensions = split_list(response.headers["Tus-Extension"])
    assert sorted(extensions) == sorted(EXTENSIONS)
    assert "Tus-Max-Size" not in response.headers


def test_options_advertises_tus_max_size_when_max_size_is_set(
    tus_server: Callable[..., RunningServer], options_url: Callable[[RunningServer], str]
) -> None:
    server = tus_server(max_size=5000)

    response = server.client.options(options_url(server))

    assert response.status_code == 200
    assert response.headers["Tus-Max-Size"] == "5000"


def test_options_ignores_an_unsupported_tus_resumable(
    tus_server: Callable[..., RunningServer],
) -> None:
    server = tus_server()

    response = server.client.options(server.endpoint, headers={"Tus-Resumable": "0.2.2"})

    assert response.status_code == 200
    assert "1.0.0" in split_list(response.headers["Tus-Version"])


def test_options_on_an_upload_url_leaves_the_upload_untouched(
    tus_server: Callable[..., RunningServer],
) -> None:
    server = tus_server()
    url = server.create(10)
    assert server.patch(url, 0, b"abc").status_code == 204

    assert server.client.options(url).status_code == 200

    head = server.head(url)
    assert head.headers["Upload-Offset"] == "3"
    assert head.headers["Upload-Length"] == "10"

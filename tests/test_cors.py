"""CORS: pages on other origins may use the endpoint only when allowed, and
then see every tus header, on errors as much as on success (docs/clients.md,
"Browsers, proxies and CORS")."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.helpers import assert_tus_error
from tests.server_fixtures import TUS, RunningServer
from tests.test_cli import serve
from tusserver import Config
from tusserver.config import ConfigError

StartServer = Callable[..., RunningServer]

APP = "http://app.example"
OTHER = "http://evil.example"

TUS_REQUEST_HEADERS = {
    "tus-resumable",
    "upload-length",
    "upload-offset",
    "upload-metadata",
    "upload-defer-length",
    "upload-concat",
    "upload-checksum",
    "content-type",
    "x-http-method-override",
    # a download resumed or revalidated with fetch()
    "range",
    "if-range",
    "if-none-match",
    "if-modified-since",
}
TUS_RESPONSE_HEADERS = {
    "location",
    "upload-offset",
    "upload-length",
    "upload-metadata",
    "upload-defer-length",
    "upload-concat",
    "upload-expires",
    "tus-version",
    "tus-resumable",
    "tus-max-size",
    "tus-extension",
    "tus-checksum-algorithm",
}
# What a page needs to read a download (GET) across origins.
DOWNLOAD_RESPONSE_HEADERS = {"content-disposition", "content-range", "accept-ranges", "etag"}
# A 401's challenge, so a page tells an expired token from a missing one.
AUTH_RESPONSE_HEADERS = {"www-authenticate"}
# The request's id, which a page can quote when it reports a failure.
OPERATING_RESPONSE_HEADERS = {"x-request-id"}
EXPOSED_HEADERS = (
    TUS_RESPONSE_HEADERS
    | DOWNLOAD_RESPONSE_HEADERS
    | AUTH_RESPONSE_HEADERS
    | OPERATING_RESPONSE_HEADERS
)


def header_set(value: str) -> set[str]:
    return {item.strip().lower() for item in value.split(",") if item.strip()}


def preflight(server: RunningServer, url: str, origin: str, method: str) -> httpx.Response:
    return server.client.options(
        url,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": ",".join(sorted(TUS_REQUEST_HEADERS)),
        },
    )


def assert_cors_allowed(response: httpx.Response, origin: str) -> None:
    assert response.headers["Access-Control-Allow-Origin"] == origin
    assert header_set(response.headers["Access-Control-Expose-Headers"]) == EXPOSED_HEADERS
    assert "origin" in header_set(response.headers["Vary"])


def test_preflight_from_an_allowed_origin_answers_200_allowing_every_tus_method_and_header(
    tus_server: StartServer,
) -> None:
    server = tus_server(cors_origins=(APP,))
    upload_url = server.create(10)

    for url, method in [(server.endpoint, "POST"), (upload_url, "PATCH"), (upload_url, "HEAD")]:
        response = preflight(server, url, APP, method)

        assert response.status_code == 200
        assert response.headers["Access-Control-Allow-Origin"] == APP
        methods = header_set(response.headers["Access-Control-Allow-Methods"])
        assert {"post", "head", "patch", "delete", "options"} <= methods
        assert TUS_REQUEST_HEADERS <= header_set(response.headers["Access-Control-Allow-Headers"])
        assert int(response.headers["Access-Control-Max-Age"]) > 0
        assert "origin" in header_set(response.headers["Vary"])
        assert "Access-Control-Allow-Credentials" not in response.headers


def test_every_tus_response_header_is_exposed_on_success_and_error_responses(
    tus_server: StartServer,
) -> None:
    server = tus_server(cors_origins=(APP,), max_size=100)
    origin = {"Origin": APP}

    created = server.client.post(server.endpoint, headers={**TUS, **origin, "Upload-Length": "10"})
    assert created.status_code == 201
    assert_cors_allowed(created, APP)
    url = server.url + created.headers["Location"]

    responses = {
        "patch": server.patch(url, 0, b"abc", Origin=APP),
        "head": server.client.head(url, headers={**TUS, **origin}),
        "options": server.client.options(server.endpoint, headers=origin),
        "409": server.patch(url, 1, b"x", Origin=APP),
        "413": server.client.post(
            server.endpoint, headers={**TUS, **origin, "Upload-Length": "101"}
        ),
        "412": server.client.head(url, headers={"Tus-Resumable": "0.1", **origin}),
        "404": server.client.head(server.endpoint + "0" * 32, headers={**TUS, **origin}),
        "405": server.client.put(url, headers={**TUS, **origin}),
    }

    for name, response in responses.items():
        assert response.status_code == int(name) if name.isdigit() else response.is_success, name
        assert_cors_allowed(response, APP)
    # The values a browser page needs are really there to be read.
    assert responses["patch"].headers["Upload-Offset"] == "3"
    assert responses["409"].headers["Upload-Offset"] == "3"
    assert responses["412"].headers["Tus-Version"] == "1.0.0"


def test_a_preflight_from_an_origin_not_listed_is_refused(tus_server: StartServer) -> None:
    server = tus_server(cors_origins=(APP,))

    response = preflight(server, server.endpoint, OTHER, "POST")

    assert_tus_error(response, 400, "cors_preflight_refused")
    assert "Access-Control-Allow-Origin" not in response.headers
    actual = server.client.post(
        server.endpoint, headers={**TUS, "Origin": OTHER, "Upload-Length": "1"}
    )
    assert "Access-Control-Allow-Origin" not in actual.headers


def test_without_configured_origins_no_page_on_another_origin_is_allowed(
    tus_server: StartServer,
) -> None:
    server = tus_server()

    response = preflight(server, server.endpoint, APP, "POST")
    created = server.client.post(
        server.endpoint, headers={**TUS, "Origin": APP, "Upload-Length": "1"}
    )

    # The tus OPTIONS answer, but no permission: the browser stops there.
    assert response.status_code == 200
    assert not any(name.lower().startswith("access-control-") for name in response.headers)
    assert not any(name.lower().startswith("access-control-") for name in created.headers)


def test_a_wildcard_origin_allows_any_page_without_credentials(tus_server: StartServer) -> None:
    server = tus_server(cors_origins=("*",))

    response = preflight(server, server.endpoint, OTHER, "POST")
    created = server.client.post(
        server.endpoint, headers={**TUS, "Origin": OTHER, "Upload-Length": "1"}
    )

    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert created.headers["Access-Control-Allow-Origin"] == "*"
    assert header_set(created.headers["Access-Control-Expose-Headers"]) == EXPOSED_HEADERS
    assert "Access-Control-Allow-Credentials" not in created.headers


def test_credentials_are_allowed_only_for_the_listed_origin_it_echoes(
    tus_server: StartServer,
) -> None:
    server = tus_server(cors_origins=(APP,), cors_allow_credentials=True)

    response = preflight(server, server.endpoint, APP, "POST")
    created = server.client.post(
        server.endpoint, headers={**TUS, "Origin": APP, "Upload-Length": "1"}
    )

    for answer in (response, created):
        assert answer.headers["Access-Control-Allow-Origin"] == APP
        assert answer.headers["Access-Control-Allow-Credentials"] == "true"


@pytest.mark.parametrize(
    ("fields", "mentions"),
    [
        ({"cors_origins": ("*",), "cors_allow_credentials": True}, "explicit origins"),
        ({"cors_origins": ("https://app.example/",)}, "no path"),
        ({"cors_origins": ("app.example",)}, "scheme://host"),
        ({"public_url": "example.com/files/"}, "absolute http(s) url"),
        ({"public_url": "ftp://example.com/files/"}, "absolute http(s) url"),
    ],
    ids=["credentials-with-star", "origin-with-slash", "origin-without-scheme", "bare-host", "ftp"],
)
def test_unusable_cors_and_url_settings_are_refused_with_a_sentence(
    fields: dict[str, object], mentions: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        Config(**fields)  # type: ignore[arg-type]

    assert mentions in str(raised.value).lower()


def test_cli_takes_origins_from_a_comma_or_space_separated_variable_in_every_worker(
    tmp_path: Path,
) -> None:
    settings = {
        "TUSSERVER_CORS_ORIGIN": f"{APP}, http://second.example http://third.example",
        "TUSSERVER_WORKERS": "2",
    }
    with serve(tmp_path, env=settings) as server:
        # Several requests, on fresh connections, so both workers answer some.
        for origin in [APP, "http://second.example", "http://third.example"] * 2:
            response = httpx.options(
                server.endpoint,
                headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
                timeout=10,
            )
            assert response.status_code == 200
            assert response.headers["Access-Control-Allow-Origin"] == origin
        refused = httpx.options(
            server.endpoint,
            headers={"Origin": OTHER, "Access-Control-Request-Method": "POST"},
            timeout=10,
        )
        assert "Access-Control-Allow-Origin" not in refused.headers
        server.process.send_signal(signal.SIGTERM)
        assert server.wait_exit() == 0


def test_a_configured_origin_matches_as_browsers_spell_it(tus_server: StartServer) -> None:
    # Browsers send Origin in lower case and without a default port.
    server = tus_server(cors_origins=("HTTPS://App.Example:443",))

    response = preflight(server, server.endpoint, "https://app.example", "POST")

    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"

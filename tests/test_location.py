"""The Location of a new upload: relative by default, absolute from a public
URL, from forwarded headers only when told to trust them, and right when the
app is mounted under a path of another app (docs/clients.md, "Browsers, proxies
and CORS")."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tests.server_fixtures import TUS, RunningServer

StartServer = Callable[..., RunningServer]
UPLOAD_PATH = r"/files/[0-9a-f]{32}"


def location(server: RunningServer, **headers: str) -> str:
    sent = {name.replace("_", "-"): value for name, value in headers.items()}
    response = server.client.post(server.endpoint, headers={**TUS, "Upload-Length": "3", **sent})
    assert response.status_code == 201, response.text
    return response.headers["Location"]


def matches(pattern: str, value: str) -> bool:
    return re.fullmatch(pattern, value) is not None


def test_location_is_a_relative_path_by_default_whatever_forwarded_headers_say(
    tus_server: StartServer,
) -> None:
    server = tus_server()

    plain = location(server)
    forged = location(
        server,
        Forwarded="proto=https;host=evil.example",
        X_Forwarded_Host="evil.example",
        X_Forwarded_Proto="https",
        X_Forwarded_Prefix="/evil",
    )

    assert matches(UPLOAD_PATH, plain)
    assert matches(UPLOAD_PATH, forged)
    # The relative URL works as the client resolves it.
    assert server.patch(server.url + plain, 0, b"abc").status_code == 204
    assert (server.storage / plain.rsplit("/", 1)[1]).read_bytes() == b"abc"


def test_location_is_absolute_under_a_configured_public_url(tus_server: StartServer) -> None:
    server = tus_server(public_url="https://uploads.example/api/tus", behind_proxy=True)

    url = location(server, X_Forwarded_Host="evil.example")

    assert matches(r"https://uploads\.example/api/tus/[0-9a-f]{32}", url)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (
            {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "tus.example"},
            r"https://tus\.example" + UPLOAD_PATH,
        ),
        (
            # Of a list, the last element counts: the one our proxy appended
            # (the first may be anything a client sent along).
            {"Forwarded": 'proto=http;host="evil.example", proto=https;host="tus.example:8443"'},
            r"https://tus\.example:8443" + UPLOAD_PATH,
        ),
        (
            # X-Forwarded-* win: proxies overwrite them but often pass a
            # client's Forwarded through untouched.
            {
                "Forwarded": "proto=http;host=evil.example",
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "evil.example, tus.example",
            },
            r"https://tus\.example" + UPLOAD_PATH,
        ),
        (
            {"X-Forwarded-Proto": "https", "X-Forwarded-Prefix": "/tus/"},
            r"https://127\.0\.0\.1:\d+/tus" + UPLOAD_PATH,
        ),
        ({"X-Forwarded-Prefix": "/tus"}, "/tus" + UPLOAD_PATH),
        # Malformed values never reach the Location.
        (
            {
                "X-Forwarded-Host": "evil.example/path",
                "X-Forwarded-Proto": "javascript",
                "X-Forwarded-Prefix": "//evil.example",
            },
            UPLOAD_PATH,
        ),
    ],
    ids=["x-forwarded", "forwarded", "precedence", "prefix-absolute", "prefix-only", "malformed"],
)
def test_behind_a_trusted_proxy_location_follows_the_forwarded_headers(
    tus_server: StartServer, headers: dict[str, str], expected: str
) -> None:
    server = tus_server(behind_proxy=True)

    response = server.client.post(server.endpoint, headers={**TUS, "Upload-Length": "3", **headers})

    assert response.status_code == 201
    assert matches(expected, response.headers["Location"]), response.headers["Location"]


def test_mounted_under_a_sub_path_the_location_includes_the_mount_path(
    tus_server: StartServer,
) -> None:
    async def home(request: object) -> PlainTextResponse:
        return PlainTextResponse("the rest of the app")

    # Mounted at /api/uploads of a Starlette app that runs its lifespan.
    server = tus_server(base_path="/", mount_at="/api/uploads", beside=[Route("/", home)])

    created = server.client.post(server.endpoint, headers={**TUS, "Upload-Length": "5"})
    assert created.status_code == 201, created.text
    upload = created.headers["Location"]
    assert matches(r"/api/uploads/[0-9a-f]{32}", upload)
    patched = server.patch(server.url + upload, 0, b"hello")
    head = server.head(server.url + upload)
    home_page = server.client.get(server.url + "/")

    assert patched.status_code == 204
    assert head.headers["Upload-Offset"] == "5"
    assert (server.storage / upload.rsplit("/", 1)[1]).read_bytes() == b"hello"
    assert home_page.text == "the rest of the app"

"""examples/nginx.conf, run in a real nginx in front of tusserver --behind-proxy:
uploads go through it byte-identically, request bodies stream through it
(nothing is held back until a PATCH ends), and the Locations tusserver builds
from what nginx forwards lead back through nginx (docs/clients.md, "Browsers,
proxies and CORS").
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from tusclient.client import TusClient

from tests.js_fixtures import TusJs
from tests.nginx_fixtures import NginxProxy
from tests.server_fixtures import OCTETS, TUS, RunningServer

StartServer = Callable[..., RunningServer]
StartNginx = Callable[..., NginxProxy]
MiB = 1024 * 1024
PREFIXES = [pytest.param(None, id="as-shipped"), pytest.param("/uploads", id="under-a-prefix")]


def upstream_port(server: RunningServer) -> int:
    return int(server.url.rsplit(":", 1)[1])


def stored(server: RunningServer, url: str) -> Path:
    return server.storage / url.rsplit("/", 1)[1]


def digest(data: bytes) -> bytes:
    """Compared instead of 64 MiB, so that a failure report stays readable."""
    return hashlib.sha256(data).digest()


def create(proxy: NginxProxy, client: httpx.Client, length: int, **headers: str) -> str:
    response = client.post(proxy.endpoint, headers={**TUS, "Upload-Length": str(length), **headers})
    assert response.status_code == 201, response.text
    location: str = response.headers["Location"]
    return location


def patch(client: httpx.Client, url: str, offset: int, body: bytes) -> httpx.Response:
    headers = {**TUS, "Content-Type": OCTETS, "Upload-Offset": str(offset)}
    return client.patch(url, headers=headers, content=body)


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60) as client:
        yield client


@pytest.mark.parametrize("prefix", PREFIXES)
def test_tuspy_uploads_through_nginx_byte_identically_at_the_urls_nginx_serves(
    tus_server: StartServer, nginx_proxy: StartNginx, tmp_path: Path, prefix: str | None
) -> None:
    server = tus_server(behind_proxy=True)
    proxy = nginx_proxy(upstream_port(server), prefix)
    source = tmp_path / "scan.tiff"
    source.write_bytes(random.Random(1).randbytes(5 * MiB + 123))

    uploader = TusClient(proxy.endpoint).uploader(
        file_path=str(source), chunk_size=2 * MiB, metadata={"filename": "scan.tiff"}
    )
    uploader.upload()

    # Every PATCH went to the Location, which named nginx, not tusserver.
    assert str(uploader.url).startswith(proxy.endpoint)
    assert stored(server, str(uploader.url)).read_bytes() == source.read_bytes()


@pytest.mark.parametrize("prefix", PREFIXES)
def test_location_names_the_host_the_client_addressed_whatever_forwarding_headers_it_sends(
    tus_server: StartServer, nginx_proxy: StartNginx, client: httpx.Client, prefix: str | None
) -> None:
    server = tus_server(behind_proxy=True)
    proxy = nginx_proxy(upstream_port(server), prefix)
    spoofed = {
        "Forwarded": "host=evil.example;proto=https",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Prefix": "/evil",
    }

    plain = create(proxy, client, 10)
    named = create(proxy, client, 10, Host="uploads.example.com:8443", **spoofed)

    assert plain.startswith(f"http://127.0.0.1:{proxy.port}{prefix or ''}/files/")
    assert named.startswith(f"http://uploads.example.com:8443{prefix or ''}/files/")
    # And the plain one is where the upload is, through nginx.
    assert client.head(plain, headers=TUS).headers["Upload-Offset"] == "0"


def test_a_64_mib_patch_reaches_tusserver_while_the_client_is_still_sending(
    tus_server: StartServer, nginx_proxy: StartNginx, client: httpx.Client
) -> None:
    server = tus_server(behind_proxy=True)
    proxy = nginx_proxy(upstream_port(server))
    size, piece = 64 * MiB, MiB
    data = random.Random(2).randbytes(size)
    url = create(proxy, client, size)
    partial = server.partials / url.rsplit("/", 1)[1]
    # After sending this many bytes the client pauses until tusserver has
    # stored at least the second number: only a streaming proxy gets there.
    checkpoints = {16 * MiB: 8 * MiB, 40 * MiB: 32 * MiB}
    seen: dict[int, int] = {}

    def body() -> Iterator[bytes]:
        for start in range(0, size, piece):
            if start in checkpoints:
                deadline = time.monotonic() + 30
                while (on_disk := partial.stat().st_size) < checkpoints[start]:
                    assert time.monotonic() < deadline, f"{on_disk} bytes stored of {start} sent"
                    time.sleep(0.05)
                seen[start] = on_disk
            yield data[start : start + piece]

    headers = {**TUS, "Content-Type": OCTETS, "Upload-Offset": "0", "Content-Length": str(size)}
    response = client.patch(url, headers=headers, content=body())

    assert response.status_code == 204, response.text
    assert response.headers["Upload-Offset"] == str(size)
    assert seen.keys() == checkpoints.keys()
    assert all(seen[sent] <= sent for sent in seen)
    assert digest(stored(server, url).read_bytes()) == digest(data)


class ClientGone(Exception):
    """The client stops sending mid-PATCH and drops its connection."""


def test_a_patch_cut_off_between_client_and_nginx_keeps_what_arrived_and_resumes(
    tus_server: StartServer, nginx_proxy: StartNginx, client: httpx.Client
) -> None:
    server = tus_server(behind_proxy=True)
    proxy = nginx_proxy(upstream_port(server))
    size, sent = 64 * MiB, 24 * MiB
    data = random.Random(3).randbytes(size)
    url = create(proxy, client, size)
    partial = server.partials / url.rsplit("/", 1)[1]

    def body() -> Iterator[bytes]:
        yield data[:sent]
        # Gone once tusserver holds most of it, so there is something to keep.
        deadline = time.monotonic() + 30
        while partial.stat().st_size < sent // 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        raise ClientGone

    headers = {**TUS, "Content-Type": OCTETS, "Upload-Offset": "0", "Content-Length": str(size)}
    with pytest.raises(ClientGone):
        client.patch(url, headers=headers, content=body())
    deadline = time.monotonic() + 30
    while (offset := int(client.head(url, headers=TUS).headers["Upload-Offset"])) == 0:
        assert time.monotonic() < deadline, "nothing of the cut-off PATCH was kept"
        time.sleep(0.1)

    assert 0 < offset <= sent
    # As a tus client does: a 409 (the cut PATCH committed more since the
    # HEAD) means HEAD again and resume from there. So does a 502: that
    # 409, answered before the body was read, reaches the client as
    # nginx's 502 about one time in five (docs/clients.md, "Proxies that buffer").
    for _ in range(5):
        resumed = patch(client, url, offset, data[offset:])
        if resumed.status_code not in (409, 502):
            break
        offset = int(client.head(url, headers=TUS).headers["Upload-Offset"])
    assert 0 < offset <= sent
    assert resumed.status_code == 204, resumed.text
    assert digest(stored(server, url).read_bytes()) == digest(data)


@pytest.mark.parametrize("prefix", PREFIXES)
def test_a_final_names_its_parts_by_the_urls_nginx_gave_and_concatenates_them(
    tus_server: StartServer, nginx_proxy: StartNginx, client: httpx.Client, prefix: str | None
) -> None:
    server = tus_server(behind_proxy=True)
    proxy = nginx_proxy(upstream_port(server), prefix)
    pieces = [random.Random(seed).randbytes(MiB + seed) for seed in (4, 5, 6)]
    parts = []
    for piece in pieces:
        part = create(proxy, client, len(piece), **{"Upload-Concat": "partial"})
        assert patch(client, part, 0, piece).status_code == 204
        parts.append(part)

    final = client.post(
        proxy.endpoint, headers={**TUS, "Upload-Concat": "final;" + " ".join(parts)}
    )

    assert all(part.startswith(proxy.endpoint) for part in parts)
    assert final.status_code == 201, final.text
    assert final.headers["Location"].startswith(proxy.endpoint)
    head = client.head(final.headers["Location"], headers=TUS)
    assert head.headers["Upload-Offset"] == str(sum(map(len, pieces)))
    assert stored(server, final.headers["Location"]).read_bytes() == b"".join(pieces)


def test_tus_js_client_parallel_upload_through_nginx_is_byte_identical(
    tus_server: StartServer, nginx_proxy: StartNginx, tus_js: TusJs, tmp_path: Path
) -> None:
    server = tus_server(behind_proxy=True)
    proxy = nginx_proxy(upstream_port(server))
    source = tmp_path / "parts.bin"
    source.write_bytes(random.Random(7).randbytes(3 * MiB + 1))

    # Three partials, then a final naming them by the Locations nginx carried.
    url = tus_js(proxy.endpoint, source, parallelUploads=3)

    assert url.startswith(proxy.endpoint)
    assert stored(server, url).read_bytes() == source.read_bytes()

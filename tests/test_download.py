"""GET on an upload URL: the finished file, whole or one byte range, with
validators, a safe Content-Type and a sanitized Content-Disposition."""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import redis
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from storage_backends.local import LocalStorage
from tests.helpers import (
    CutsRequestsOnRequest,
    assert_tus_error,
    b64,
    descriptors_of,
    upload_id_of,
)
from tests.raw_http import wait_until
from tests.server_fixtures import OCTETS, TUS, RunningServer, ServedApps, mounted
from tests.test_expiry import wait_until_expired
from tests.test_patch import ReadLog, serve_on
from tusserver import Config, create_app
from tusserver.config import ConfigError
from tusserver.embedded_redis import EmbeddedRedis

DATA = b"0123456789abcdefghij"  # 20 bytes, every one distinct
Server = Callable[..., RunningServer]


def finished(server: RunningServer, data: bytes = DATA, **metadata: bytes) -> str:
    """A finished upload's URL, created with ``metadata``."""
    encoded = ",".join(f"{key} {b64(value)}" for key, value in metadata.items())
    url = server.create(len(data), **({"Upload-Metadata": encoded} if metadata else {}))
    response = server.patch(url, 0, data)
    assert response.status_code == 204, response.text
    return url


def get(server: RunningServer, url: str, **headers: str) -> httpx.Response:
    """A plain GET, as a browser following a link sends it: no Tus-Resumable."""
    return server.client.get(url, headers={k.replace("_", "-"): v for k, v in headers.items()})


def test_get_of_a_finished_upload_returns_its_bytes_with_length_and_validators(
    tus_server: Server,
) -> None:
    server = tus_server()
    url = finished(server)
    stored = server.storage / upload_id_of(url)

    response = get(server, url)

    assert response.status_code == 200
    assert response.content == DATA
    assert response.headers["Content-Length"] == str(len(DATA))
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "private, no-cache"
    etag = response.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"') and upload_id_of(url) in etag
    modified = int(stored.stat().st_mtime)
    assert response.headers["Last-Modified"] == time.strftime(
        "%a, %d %b %Y %H:%M:%S GMT", time.gmtime(modified)
    )
    assert "Content-Range" not in response.headers


def test_the_etag_is_stable_across_requests_and_differs_between_uploads(
    tus_server: Server,
) -> None:
    server = tus_server()
    first, second = finished(server), finished(server)

    assert get(server, first).headers["ETag"] == get(server, first).headers["ETag"]
    assert get(server, first).headers["ETag"] != get(server, second).headers["ETag"]


def test_a_finished_file_changed_behind_the_servers_back_gets_new_validators(
    tus_server: Server,
) -> None:
    # Size and modification time name a finished file's bytes: a copy put
    # over it (same size, another time) is not the one a client has cached.
    server = tus_server()
    url = finished(server)
    stored = server.storage / upload_id_of(url)
    before = get(server, url)
    modified = stored.stat().st_mtime
    stored.write_bytes(DATA[::-1])
    os.utime(stored, (modified + 1, modified + 1))

    after = get(server, url, If_None_Match=before.headers["ETag"])

    assert after.status_code == 200
    assert after.content == DATA[::-1]
    assert after.headers["ETag"] != before.headers["ETag"]
    assert after.headers["Last-Modified"] != before.headers["Last-Modified"]


@pytest.mark.parametrize(
    ("range_header", "start", "end"),
    [
        ("bytes=0-4", 0, 5),
        ("bytes=5-9", 5, 10),
        ("bytes=7-7", 7, 8),
        ("bytes=15-", 15, 20),
        ("bytes=0-", 0, 20),
        ("bytes=-3", 17, 20),
        ("bytes=12-999", 12, 20),
        ("bytes=-999", 0, 20),
        ("BYTES = 2-3", 2, 4),
        ("bytes=19-19", 19, 20),
    ],
)
def test_a_range_request_returns_exactly_the_requested_bytes(
    tus_server: Server, range_header: str, start: int, end: int
) -> None:
    server = tus_server()
    url = finished(server)

    response = get(server, url, Range=range_header)

    assert response.status_code == 206
    assert response.content == DATA[start:end]
    assert response.headers["Content-Range"] == f"bytes {start}-{end - 1}/{len(DATA)}"
    assert response.headers["Content-Length"] == str(end - start)
    assert response.headers["ETag"] == get(server, url).headers["ETag"]


@pytest.mark.parametrize("range_header", ["bytes=20-", "bytes=25-30", "bytes=-0"])
def test_an_unsatisfiable_range_returns_416_with_the_size(
    tus_server: Server, range_header: str
) -> None:
    server = tus_server()
    url = finished(server)

    response = get(server, url, Range=range_header)

    assert_tus_error(response, 416, "range_not_satisfiable")
    assert response.headers["Content-Range"] == f"bytes */{len(DATA)}"


@pytest.mark.parametrize(
    "range_header",
    ["bytes=0-1,5-6", "bytes=abc", "items=0-4", "bytes=5-2", "bytes=", "0-4", "bytes=1-2-3"],
)
def test_a_multi_range_or_malformed_range_is_ignored_and_the_whole_file_served(
    tus_server: Server, range_header: str
) -> None:
    server = tus_server()
    url = finished(server)

    response = get(server, url, Range=range_header)

    assert response.status_code == 200
    assert response.content == DATA
    assert "Content-Range" not in response.headers


def test_a_range_on_an_empty_file_serves_the_empty_file(tus_server: Server) -> None:
    server = tus_server()
    url = server.create(0)

    whole = get(server, url)
    ranged = get(server, url, Range="bytes=0-")

    for response in (whole, ranged):
        assert response.status_code == 200
        assert response.content == b""
        assert response.headers["Content-Length"] == "0"


def test_an_empty_file_is_answered_without_opening_it(
    served_apps: ServedApps, redis_url: str, tmp_path: Path
) -> None:
    # The answer is complete with its headers: a client may go on (and
    # remove the upload through another instance) before a stream would
    # have opened the file, and the failed open would cut the connection
    # it reuses.
    storage = ReadLog(tmp_path / "files")
    server = serve_on(served_apps, redis_url, storage)
    url = server.create(0)

    response = get(server, url)

    assert response.status_code == 200
    assert response.content == b""
    assert storage.reads == 0


@pytest.mark.parametrize("form", ["{etag}", "W/{etag}", '"other", {etag}', "*"])
def test_if_none_match_with_the_current_etag_returns_304_without_a_body(
    tus_server: Server, form: str
) -> None:
    server = tus_server()
    url = finished(server)
    first = get(server, url)
    etag = first.headers["ETag"]

    response = get(server, url, If_None_Match=form.format(etag=etag))

    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["ETag"] == etag
    assert response.headers["Last-Modified"] == first.headers["Last-Modified"]
    assert response.headers["Cache-Control"] == "private, no-cache"
    assert "Content-Disposition" not in response.headers


def test_if_none_match_with_another_etag_returns_the_file(tus_server: Server) -> None:
    server = tus_server()
    url = finished(server)

    response = get(server, url, If_None_Match='"something-else"')

    assert response.status_code == 200
    assert response.content == DATA


def test_if_modified_since_last_modified_returns_304_and_an_older_date_the_file(
    tus_server: Server,
) -> None:
    server = tus_server()
    url = finished(server)
    last_modified = get(server, url).headers["Last-Modified"]

    unchanged = get(server, url, If_Modified_Since=last_modified)
    older = get(server, url, If_Modified_Since="Thu, 01 Jan 2015 00:00:00 GMT")
    garbage = get(server, url, If_Modified_Since="yesterday")

    assert unchanged.status_code == 304
    assert older.status_code == 200 and older.content == DATA
    assert garbage.status_code == 200 and garbage.content == DATA


def test_if_none_match_takes_precedence_over_if_modified_since(tus_server: Server) -> None:
    server = tus_server()
    url = finished(server)
    last_modified = get(server, url).headers["Last-Modified"]

    response = get(server, url, If_None_Match='"other"', If_Modified_Since=last_modified)

    assert response.status_code == 200
    assert response.content == DATA


def test_if_range_with_the_current_validators_honours_the_range(tus_server: Server) -> None:
    server = tus_server()
    url = finished(server)
    first = get(server, url)

    by_etag = get(server, url, Range="bytes=2-5", If_Range=first.headers["ETag"])
    by_date = get(server, url, Range="bytes=2-5", If_Range=first.headers["Last-Modified"])

    for response in (by_etag, by_date):
        assert response.status_code == 206
        assert response.content == DATA[2:6]


@pytest.mark.parametrize(
    "if_range", ['"stale"', "W/{etag}", "Thu, 01 Jan 2015 00:00:00 GMT", "not a date"]
)
def test_if_range_that_does_not_match_strongly_returns_the_whole_file(
    tus_server: Server, if_range: str
) -> None:
    server = tus_server()
    url = finished(server)
    etag = get(server, url).headers["ETag"]

    response = get(server, url, Range="bytes=2-5", If_Range=if_range.format(etag=etag))

    assert response.status_code == 200
    assert response.content == DATA
    assert "Content-Range" not in response.headers


@pytest.mark.parametrize(
    ("metadata", "content_type"),
    [
        ({"filetype": b"image/png"}, "image/png"),
        ({"filetype": b"Image/JPEG"}, "image/jpeg"),
        ({"type": b"video/mp4"}, "video/mp4"),  # Uppy's own key
        ({"filetype": b"audio/ogg; codecs=opus"}, "audio/ogg"),
        ({"filetype": b"text/plain; charset=utf-8"}, "text/plain; charset=utf-8"),
        ({"filetype": b"text/plain"}, "text/plain"),
    ],
)
def test_a_safe_type_from_metadata_is_served_inline(
    tus_server: Server, metadata: dict[str, bytes], content_type: str
) -> None:
    server = tus_server()
    url = finished(server, **metadata)

    response = get(server, url)

    assert response.headers["Content-Type"] == content_type
    assert response.headers["Content-Disposition"] == "inline"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    "metadata",
    [
        {},
        {"filetype": b"text/html"},
        {"filetype": b"image/svg+xml"},
        {"filetype": b"application/pdf"},
        {"filetype": b"application/javascript"},
        {"filetype": b"text/plain\r\nSet-Cookie: x=1"},
        {"filetype": b"image/png, text/html"},
        {"filetype": b"", "type": b"text/html"},
    ],
)
def test_an_unsafe_or_missing_type_is_served_as_an_octet_stream_attachment(
    tus_server: Server, metadata: dict[str, bytes]
) -> None:
    server = tus_server()
    url = finished(server, **metadata)

    response = get(server, url)

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["Content-Disposition"] == "attachment"
    assert "set-cookie" not in response.headers


@pytest.mark.parametrize(
    ("metadata", "ascii_name", "encoded_name"),
    [
        ({"filename": b"report.txt"}, "report.txt", "report.txt"),
        ({"name": b"photo.png"}, "photo.png", "photo.png"),  # Uppy's own key
        ({"filename": b"../../etc/passwd"}, "passwd", "passwd"),
        ({"filename": b"C:\\Users\\me\\notes.txt"}, "notes.txt", "notes.txt"),
        ({"filename": b'say "hi".txt'}, "say _hi_.txt", "say%20_hi_.txt"),
        ({"filename": b"a\r\nSet-Cookie: x=1"}, "a__Set-Cookie_ x_1", "a__Set-Cookie_%20x%3D1"),
        ({"filename": b"100%.txt"}, "100_.txt", "100%25.txt"),
        (
            {"filename": "résumé 日本.txt".encode()},
            "resume __.txt",
            "r%C3%A9sum%C3%A9%20%E6%97%A5%E6%9C%AC.txt",
        ),
    ],
)
def test_the_filename_is_sanitized_with_an_ascii_fallback_and_the_exact_utf8_name(
    tus_server: Server, metadata: dict[str, bytes], ascii_name: str, encoded_name: str
) -> None:
    server = tus_server()
    url = finished(server, **metadata)

    response = get(server, url)

    assert response.headers["Content-Disposition"] == (
        f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{encoded_name}"
    )
    assert "set-cookie" not in response.headers


@pytest.mark.parametrize(
    "name",
    ["x\uff02; filename\uff1d\uff02evil.html", "report\uff3c", "a\uff1bb\uff0fc"],
    ids=["full-width quote and equals", "full-width backslash", "full-width ; and /"],
)
def test_full_width_characters_cannot_break_out_of_the_fallback_filename(
    tus_server: Server, name: str
) -> None:
    # NFKD turns full-width forms back into ASCII quotes, backslashes and
    # separators: the fallback must not let them end or escape its string.
    server = tus_server()
    url = finished(server, filename=name.encode())

    disposition = server.client.get(url).headers["Content-Disposition"]

    fallback = disposition.split('filename="', 1)[1].split('"', 1)[0]
    assert not set(fallback) & set('"\\;=/')
    assert disposition.count("filename=") == 1 and disposition.count("filename*=") == 1
    assert disposition.endswith("filename*=UTF-8''" + quote(name, safe="!#$&+-.^_`|~"))


def test_a_filename_accompanies_an_inline_type(tus_server: Server) -> None:
    server = tus_server()
    url = finished(server, filename=b"cat.png", filetype=b"image/png")

    response = get(server, url)

    assert response.headers["Content-Type"] == "image/png"
    assert response.headers["Content-Disposition"] == (
        "inline; filename=\"cat.png\"; filename*=UTF-8''cat.png"
    )


def test_a_filename_that_sanitizes_to_nothing_is_left_out(tus_server: Server) -> None:
    server = tus_server()
    url = finished(server, filename=b"../..")

    assert get(server, url).headers["Content-Disposition"] == "attachment"


def test_the_file_is_found_under_its_final_name(tus_server: Server) -> None:
    server = tus_server(final_name="{filename}")
    first = finished(server, b"first", filename=b"a.txt")
    second = finished(server, b"second", filename=b"a.txt")

    assert (server.storage / "a (1).txt").read_bytes() == b"second"
    assert get(server, first).content == b"first"
    assert get(server, second).content == b"second"


def test_get_of_an_unfinished_upload_returns_404_with_a_hint(tus_server: Server) -> None:
    server = tus_server()
    url = server.create(len(DATA))
    assert server.patch(url, 0, DATA[:8]).status_code == 204

    response = get(server, url)

    assert_tus_error(response, 404, "upload_not_finished")
    assert "Upload-Offset" in response.json()["error"]["hint"]
    assert DATA[:8].decode() not in response.text


def test_download_unfinished_serves_the_bytes_received_so_far_without_caching(
    tus_server: Server,
) -> None:
    server = tus_server(download_unfinished=True)
    url = server.create(len(DATA), **{"Upload-Metadata": f"filename {b64(b'part.bin')}"})
    assert server.patch(url, 0, DATA[:8]).status_code == 204
    # Storage may hold bytes past the committed offset (a crash between
    # writing and committing): they are not served.
    with (server.partials / upload_id_of(url)).open("ab") as partial:
        partial.write(b"uncommitted")

    whole = get(server, url)
    ranged = get(server, url, Range="bytes=-3")
    beyond = get(server, url, Range="bytes=8-")

    assert whole.status_code == 200
    assert whole.content == DATA[:8]
    assert whole.headers["Content-Length"] == "8"
    assert whole.headers["Cache-Control"] == "no-store"
    assert "ETag" not in whole.headers
    assert "Last-Modified" not in whole.headers
    assert whole.headers["Content-Disposition"].startswith('attachment; filename="part.bin"')
    assert ranged.status_code == 206
    assert ranged.content == DATA[5:8]
    assert ranged.headers["Content-Range"] == "bytes 5-7/8"
    assert_tus_error(beyond, 416, "range_not_satisfiable")
    assert beyond.headers["Content-Range"] == "bytes */8"


def test_download_unfinished_ignores_if_range_as_nothing_can_match(tus_server: Server) -> None:
    server = tus_server(download_unfinished=True)
    url = server.create(len(DATA))
    assert server.patch(url, 0, DATA[:8]).status_code == 204

    response = get(server, url, Range="bytes=0-1", If_Range='"anything"')

    assert response.status_code == 200
    assert response.content == DATA[:8]


def test_download_unfinished_also_serves_finished_uploads_with_validators(
    tus_server: Server,
) -> None:
    server = tus_server(download_unfinished=True)
    url = finished(server)

    response = get(server, url)

    assert response.content == DATA
    assert "ETag" in response.headers


def test_with_downloads_disabled_get_answers_405_and_the_tus_methods_still_work(
    tus_server: Server,
) -> None:
    server = tus_server(downloads=False)
    url = finished(server)

    response = get(server, url)

    assert_tus_error(response, 405, "method_not_allowed")
    assert "GET" not in response.headers["Allow"]
    assert DATA.decode() not in response.text
    assert server.head(url).headers["Upload-Offset"] == str(len(DATA))


def test_download_unfinished_without_downloads_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match="downloads"):
        Config(downloads=False, download_unfinished=True)


def test_get_of_a_terminated_upload_returns_410(tus_server: Server) -> None:
    server = tus_server()
    url = finished(server)
    assert server.client.delete(url, headers=TUS).status_code == 204

    assert_tus_error(get(server, url), 410, "upload_gone")


@pytest.mark.parametrize("upload_id", ["0123456789abcdef0123456789abcdef", "..%2Fsecret", "x/y"])
def test_get_of_an_unknown_or_malformed_id_returns_404(tus_server: Server, upload_id: str) -> None:
    server = tus_server()

    assert_tus_error(get(server, server.endpoint + upload_id), 404, "upload_not_found")


def test_a_malformed_upload_id_answers_404_without_asking_redis(
    served_apps: ServedApps, private_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    # No upload has such an id: the answer is final, even while Redis is
    # down, not a retryable one that would have a client ask again.
    storage = tmp_path / "files"
    config = Config(storage=str(storage), redis_url=private_redis.url)
    server = served_apps.start(config, storage)
    private_redis.stop()

    for upload_id in ("x/y", "Upper-Case-Id", "short"):
        response = get(server, server.endpoint + upload_id)
        assert_tus_error(response, 404, "upload_not_found")


def test_a_finished_file_removed_behind_the_servers_back_answers_410_and_is_logged(
    tus_server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    server = tus_server()
    url = finished(server)
    (server.storage / upload_id_of(url)).unlink()

    response = get(server, url)

    assert_tus_error(response, 410, "upload_gone")
    assert str(server.storage) not in response.text
    # A published file does not move: its loss is for the operator to see.
    assert [r.getMessage() for r in caplog.records if "is missing" in r.getMessage()] == [
        f"upload {upload_id_of(url)}: finished file {upload_id_of(url)} is missing"
    ]


def test_get_of_an_expired_upload_answers_410_even_before_it_is_swept(
    tus_server: Server, state: redis.Redis
) -> None:
    # As HEAD and PATCH answer once Upload-Expires has passed.
    server = tus_server(download_unfinished=True, expire_after=1)
    url = server.create(len(DATA))
    assert server.patch(url, 0, DATA[:8]).status_code == 204

    wait_until_expired(state, upload_id_of(url))
    response = get(server, url)

    assert_tus_error(response, 410, "upload_gone")
    assert (server.partials / upload_id_of(url)).read_bytes() == DATA[:8]


def test_an_unfinished_upload_whose_bytes_were_removed_answers_410(tus_server: Server) -> None:
    server = tus_server(download_unfinished=True)
    url = server.create(len(DATA))
    assert server.patch(url, 0, DATA[:8]).status_code == 204
    (server.partials / upload_id_of(url)).unlink()

    response = get(server, url)

    assert_tus_error(response, 410, "upload_gone")
    assert str(server.storage) not in response.text


def test_head_on_the_upload_url_stays_the_tus_head(tus_server: Server) -> None:
    server = tus_server()
    url = finished(server, filename=b"a.txt", filetype=b"text/plain")

    response = server.head(url)

    assert response.status_code == 200
    assert response.headers["Upload-Offset"] == str(len(DATA))
    assert response.headers["Upload-Length"] == str(len(DATA))
    assert "Content-Disposition" not in response.headers
    assert "ETag" not in response.headers


def test_a_20_mib_file_streams_whole_and_in_ranges_across_block_boundaries(
    tus_server: Server,
) -> None:
    server = tus_server()
    data = os.urandom(20 * 1024 * 1024 + 7)
    url = finished(server, data)
    mib = 1024 * 1024

    digest = hashlib.sha256()
    with server.client.stream("GET", url) as response:
        assert response.status_code == 200
        assert response.headers["Content-Length"] == str(len(data))
        for piece in response.iter_bytes():
            digest.update(piece)
    middle = get(server, url, Range=f"bytes={mib - 3}-{3 * mib + 2}")
    tail = get(server, url, Range="bytes=-10")

    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    assert middle.status_code == 206
    assert middle.content == data[mib - 3 : 3 * mib + 3]
    assert tail.content == data[-10:]


def test_a_download_abandoned_by_the_client_closes_its_file(tus_server: Server) -> None:
    server = tus_server()
    data = os.urandom(32 * 1024 * 1024)
    url = finished(server, data)
    stored = server.storage / upload_id_of(url)

    with server.client.stream("GET", url) as response:
        assert response.status_code == 200
        first = next(response.iter_raw())
        assert len(first) < int(response.headers["Content-Length"])  # abandoned mid-way
    # Leaving the block closes the connection with most of the body unsent.

    assert descriptors_closed_soon(stored)


class MemoryReads(LocalStorage):
    """Local storage whose reads hand out the file's bytes from memory, a
    MiB a block with no wait between them (as a backend with the bytes at
    hand would). It keeps each block iterator it hands out, so none is
    collected early, and counts those closed."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.handed: list[AsyncIterator[bytes]] = []
        self.closed = 0

    def read(
        self, upload_id: str, location: str | None, start: int, end: int
    ) -> AsyncIterator[bytes]:
        data = self._existing(upload_id, location).read_bytes()[start:end]

        async def blocks() -> AsyncIterator[bytes]:
            try:
                for at in range(0, len(data), 1024 * 1024):
                    yield data[at : at + 1024 * 1024]
            finally:
                self.closed += 1

        self.handed.append(blocks())
        return self.handed[-1]


def test_a_download_cut_while_the_client_is_slow_closes_the_storages_iterator(
    served_apps: ServedApps, redis_url: str, tmp_path: Path, server: str
) -> None:
    # The response closes the iterator itself, however it ends. Cut while it
    # waits for a client that reads nothing, it leaves the iterator at a
    # block, which would hold what it opened until it happens to be collected.
    storage = MemoryReads(tmp_path / "files")
    config = Config(storage=str(storage.root), redis_url=redis_url)

    async def cut(request: Request) -> Response:
        cutter.cut_all()
        return Response(status_code=204)

    routes = [Route("/cut", cut, methods=["POST"])]
    cutter = CutsRequestsOnRequest(
        mounted(create_app(config, storage=storage), "/app", routes), "GET"
    )
    url, client = served_apps.serve(cutter)
    data = os.urandom(32 * 1024 * 1024)
    created = client.post(url + "/app/files/", headers={**TUS, "Upload-Length": str(len(data))})
    upload = httpx.URL(url + created.headers["Location"])
    stored = client.patch(
        upload, headers={**TUS, "Content-Type": OCTETS, "Upload-Offset": "0"}, content=data
    )
    assert stored.status_code == 204

    with socket.create_connection((upload.host, upload.port)) as slow:
        request = (
            f"GET {upload.raw_path.decode()} HTTP/1.1\r\nHost: {upload.netloc.decode()}\r\n\r\n"
        )
        slow.sendall(request.encode())
        wait_until(lambda: len(storage.handed) == 1, "the download started")
        assert client.post(url + "/cut").status_code == 204

        wait_until(lambda: storage.closed == 1, "the iterator closed")


def test_a_download_leaves_its_connection_open_for_the_next_request(
    tus_server: Server, server: str
) -> None:
    # A download ends its response as a complete message, so the client
    # may send its next request on the same connection.
    running = tus_server()
    url = httpx.URL(finished(running))
    connection = http.client.HTTPConnection(url.host, url.port, timeout=30)
    try:
        for _ in range(3):
            connection.request("GET", url.raw_path.decode())
            response = connection.getresponse()
            assert response.status == 200
            assert response.read() == DATA
    finally:
        connection.close()


def test_a_file_that_shrinks_mid_download_ends_the_connection_short(
    tus_server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    server = tus_server()
    data = os.urandom(32 * 1024 * 1024)
    url = finished(server, data)
    stored = server.storage / upload_id_of(url)

    received = 0
    with server.client.stream("GET", url) as response:
        pieces = response.iter_raw()
        received += len(next(pieces))
        os.truncate(stored, 0)
        with pytest.raises(httpx.RemoteProtocolError):
            for piece in pieces:
                received += len(piece)

    assert received < len(data)
    assert any("download failed mid-stream" in r.getMessage() for r in caplog.records)
    assert descriptors_closed_soon(stored)


def descriptors_closed_soon(path: Path) -> bool:
    deadline = time.monotonic() + 10
    while descriptors_of(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    return descriptors_of(path) == 0

"""The extensions meet: concatenation parts and checksum failures expire like
any unpublished upload, a final upload is verified and hashed like any other,
and what is published can be downloaded."""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import httpx
import pytest
import redis

from tests.helpers import assert_tus_error, b64, upload_id_of
from tests.server_fixtures import TUS, RunningServer
from tests.test_concatenation import create_partial, final_file, post_final, published, record
from tests.test_expiry import LATER, sweep
from tusserver import integrity

StartServer = Callable[..., RunningServer]
KiB = 1024


def declared(algorithm: str, data: bytes) -> str:
    digest = base64.b64encode(hashlib.new(algorithm, data).digest()).decode("ascii")
    return b64(f"{algorithm} {digest}".encode())


def test_a_complete_concatenation_part_is_never_published_and_expires_with_its_bytes(
    tus_server: StartServer, redis_url: str, state: redis.Redis
) -> None:
    server = tus_server()
    part = create_partial(server, os.urandom(10 * KiB))
    assert record(state, part)["state"] == "complete"
    assert "expires" in record(state, part)
    assert published(server) == []

    report = sweep(server, redis_url, now=time.time() + LATER)

    assert upload_id_of(part) in report.expired
    assert not (server.partials / upload_id_of(part)).exists()
    assert record(state, part) == {}
    assert server.head(part).status_code == 410


def test_an_upload_that_failed_its_declared_checksum_expires_with_its_bytes(
    tus_server: StartServer, redis_url: str, state: redis.Redis
) -> None:
    server = tus_server()
    data = os.urandom(10 * KiB)
    url = server.create(len(data), Upload_Metadata=f"checksum {declared('sha256', b'other')}")
    assert_tus_error(server.patch(url, 0, data), 460, "upload_checksum_mismatch")
    assert record(state, url)["state"] == "failed"

    report = sweep(server, redis_url, now=time.time() + LATER)

    assert upload_id_of(url) in report.expired
    assert not (server.partials / upload_id_of(url)).exists()
    assert published(server) == []
    assert server.head(url).status_code == 410


def test_a_final_upload_records_the_sha256_of_its_bytes_and_downloads_byte_exact(
    tus_server: StartServer, state: redis.Redis
) -> None:
    server = tus_server()
    contents = [os.urandom(300 * KiB + n) for n in range(3)]
    parts = [create_partial(server, content) for content in contents]
    whole = b"".join(contents)

    response = post_final(
        server, *parts, **{"Upload-Metadata": f"checksum {declared('md5', whole)}"}
    )

    assert final_file(server, response).read_bytes() == whole
    final_url = server.url + response.headers["Location"]
    assert record(state, final_url)["sha256"] == hashlib.sha256(whole).hexdigest()
    download = server.client.get(final_url, headers={"Range": "bytes=307200-307299"})
    assert download.status_code == 206
    assert download.content == whole[307200:307300]


def test_a_final_upload_whose_declared_checksum_differs_is_460_and_not_published(
    tus_server: StartServer,
) -> None:
    server = tus_server()
    parts = [create_partial(server, os.urandom(KiB)) for _ in range(2)]

    response = post_final(
        server, *parts, **{"Upload-Metadata": f"checksum {declared('sha1', b'not these')}"}
    )

    assert_tus_error(response, 460, "upload_checksum_mismatch")
    assert published(server) == []
    # Its URL was never given out: nothing of the final is left, parts stay.
    assert sorted(p.name for p in server.partials.iterdir()) == sorted(
        upload_id_of(part) for part in parts
    )


def test_a_download_of_a_failed_upload_is_refused(tus_server: StartServer) -> None:
    server = tus_server()
    data = os.urandom(KiB)
    url = server.create(len(data), Upload_Metadata=f"checksum {declared('sha1', b'other')}")
    assert server.patch(url, 0, data).status_code == 460

    response = server.client.get(url, headers=TUS)

    assert response.status_code == 404


def test_a_finalize_longer_than_the_lock_ttl_keeps_the_upload_locked(
    tus_server: StartServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The last PATCH lands on another instance, which reads the file back to
    # hash it (slowed down here, as a large file on a share would be). A
    # DELETE meanwhile must wait for the finalize, not cut it short.
    real = integrity.digest_stored_bytes

    async def slow(blocks: AsyncIterator[bytes], algorithms: tuple[str, ...]) -> dict[str, bytes]:
        await anyio.sleep(1.5)
        return await real(blocks, algorithms)

    monkeypatch.setattr(integrity, "digest_stored_bytes", slow)
    storage = tmp_path / "shared"
    first = tus_server(storage=str(storage), lock_ttl=0.3)
    second = tus_server(storage=str(storage), lock_ttl=0.3)
    url = first.create(10)
    assert first.patch(url, 0, b"01234").status_code == 204
    results: dict[str, httpx.Response] = {}

    def last_patch() -> None:
        results["patch"] = second.patch(url.replace(first.url, second.url), 5, b"56789")

    finishing = threading.Thread(target=last_patch)
    finishing.start()
    time.sleep(0.8)  # the finalize is reading back; the lock's TTL has passed
    deleted = first.client.delete(url, headers=TUS)
    finishing.join(30)

    assert results["patch"].status_code == 204, results["patch"].text
    # The DELETE came after the finalize: it removed a finished upload.
    assert deleted.status_code == 204
    assert not (storage / upload_id_of(url)).exists()


def test_a_concatenation_part_is_verified_against_its_declared_checksum(
    tus_server: StartServer, state: redis.Redis
) -> None:
    server = tus_server()
    data = os.urandom(KiB)
    part = server.create(
        len(data),
        **{"Upload-Concat": "partial", "Upload-Metadata": f"checksum {declared('md5', b'x')}"},
    )

    assert_tus_error(server.patch(part, 0, data), 460, "upload_checksum_mismatch")
    assert record(state, part)["state"] == "failed"
    assert_tus_error(post_final(server, part), 400, "concat_part_failed")

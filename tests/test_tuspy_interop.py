"""tuspy (the ``tusclient`` package), unchanged, uploads to tusserver.

tuspy sends the whole file in one PATCH by default, or ``chunk_size`` bytes
per PATCH, and resumes from a URL it stored under the file's fingerprint
(docs/clients.md, "Resuming").
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from tusclient.client import TusClient
from tusclient.storage.filestorage import FileStorage
from tusclient.uploader import Uploader

from tests.server_fixtures import RunningServer

# Every spec runs on each HTTP server `tusserver serve` offers.
pytestmark = pytest.mark.usefixtures("server")

MiB = 1024 * 1024
METADATA = {"filename": "x.bin"}

StartServer = Callable[..., RunningServer]


def random_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def upload_id(uploader: Uploader) -> str:
    assert uploader.url is not None
    return str(uploader.url).rstrip("/").rsplit("/", 1)[1]


def assert_finished(server: RunningServer, uploader: Uploader, source: Path) -> None:
    """The finished file, named by the upload id, is byte-identical to the source."""
    final = server.storage / upload_id(uploader)
    assert final.is_file()
    assert sha256(final) == sha256(source)
    head = server.head(str(uploader.url))
    assert head.status_code == 200
    assert (
        head.headers["Upload-Offset"] == head.headers["Upload-Length"] == str(source.stat().st_size)
    )


def test_tuspy_uploads_a_file_in_one_patch(tus_server: StartServer, tmp_path: Path) -> None:
    server = tus_server()
    source = random_file(tmp_path / "x.bin", 3 * MiB + 17)

    uploader = TusClient(server.endpoint).uploader(file_path=str(source), metadata=METADATA)
    uploader.upload()

    assert uploader.offset == source.stat().st_size
    assert_finished(server, uploader, source)


def test_tuspy_uploads_a_file_in_1_mib_chunks(tus_server: StartServer, tmp_path: Path) -> None:
    server = tus_server()
    source = random_file(tmp_path / "x.bin", 4 * MiB + 5)
    chunk_starts: list[int] = []

    uploader = TusClient(server.endpoint).uploader(
        file_path=str(source), chunk_size=MiB, metadata=METADATA
    )
    upload_chunk = uploader.upload_chunk

    def recording_upload_chunk() -> None:
        chunk_starts.append(uploader.offset)
        upload_chunk()

    uploader.upload_chunk = recording_upload_chunk  # type: ignore[method-assign]
    uploader.upload()

    assert chunk_starts == [0, MiB, 2 * MiB, 3 * MiB, 4 * MiB]
    assert_finished(server, uploader, source)


def test_tuspy_resumes_from_its_stored_url_at_the_server_offset(
    tus_server: StartServer, tmp_path: Path
) -> None:
    server = tus_server()
    source = random_file(tmp_path / "x.bin", 4 * MiB + 9)
    url_storage = FileStorage(str(tmp_path / "tus-urls.json"))
    try:
        client = TusClient(server.endpoint)
        first = client.uploader(
            file_path=str(source),
            chunk_size=MiB,
            metadata=METADATA,
            store_url=True,
            url_storage=url_storage,
        )
        first.upload_chunk()
        first.upload_chunk()
        assert first.offset == 2 * MiB
        # The client goes away here (a crash, a closed laptop).

        resumed = client.uploader(
            file_path=str(source),
            chunk_size=MiB,
            metadata=METADATA,
            store_url=True,
            url_storage=url_storage,
        )
        # Found by fingerprint, and positioned by the server's HEAD.
        assert resumed.url == first.url
        assert resumed.offset == 2 * MiB
        chunk_starts: list[int] = []
        upload_chunk = resumed.upload_chunk

        def recording_upload_chunk() -> None:
            chunk_starts.append(resumed.offset)
            upload_chunk()

        resumed.upload_chunk = recording_upload_chunk  # type: ignore[method-assign]
        resumed.upload()
    finally:
        url_storage.close()

    assert chunk_starts == [2 * MiB, 3 * MiB, 4 * MiB]
    assert_finished(server, resumed, source)

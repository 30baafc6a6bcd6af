"""Uploads through HTTP onto an SMB share served by a real Samba.

tuspy uploads land byte-identical; a Samba that crashes or hangs in the
middle of a PATCH costs the client a retry, never a byte; settings that
cannot work stop the server at start-up with one sentence.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis
from tusclient.client import TusClient
from tusclient.uploader import Uploader

from tests.helpers import assert_tus_error, upload_id_of
from tests.js_fixtures import TusJs
from tests.samba_fixtures import SambaServer
from tests.server_fixtures import OCTETS, TUS, RunningServer, free_port
from tests.test_cli import cli_env, tusserver

MiB = 1024 * 1024

StartServer = Callable[..., RunningServer]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def uploaded_id(uploader: Uploader) -> str:
    assert uploader.url is not None
    return str(uploader.url).rstrip("/").rsplit("/", 1)[1]


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def partial_size(server: RunningServer, url: str) -> int:
    try:
        return (server.partials / upload_id_of(url)).stat().st_size
    except FileNotFoundError:
        return 0


def test_tuspy_upload_lands_byte_identical_on_the_share(
    smb_tus_server: StartServer, tmp_path: Path
) -> None:
    server = smb_tus_server()
    source = tmp_path / "x.bin"
    source.write_bytes(os.urandom(9 * MiB + 321))

    uploader = TusClient(server.endpoint).uploader(
        file_path=str(source), metadata={"filename": "x.bin"}
    )
    uploader.upload()

    final = server.storage / uploaded_id(uploader)
    assert sha256(final.read_bytes()) == sha256(source.read_bytes())
    assert sorted(p.name for p in server.storage.iterdir()) == [".partial", final.name]
    assert list(server.partials.iterdir()) == []


def test_tus_js_client_uploads_land_byte_identical_on_the_share(
    smb_tus_server: StartServer, tus_js: TusJs, tmp_path: Path
) -> None:
    # Chunked, then in parallel parts: the second assembles its final upload
    # on the share by a server-side copy.
    server = smb_tus_server()
    source = tmp_path / "js.bin"
    source.write_bytes(os.urandom(6 * MiB + 77))

    chunked = tus_js(server.endpoint, source, chunkSize=2 * MiB)
    parallel = tus_js(server.endpoint, source, parallelUploads=3)

    for url in (chunked, parallel):
        final = server.storage / upload_id_of(url)
        assert sha256(final.read_bytes()) == sha256(source.read_bytes())
    published = sorted(p.name for p in server.storage.iterdir() if p.name != ".partial")
    assert published == sorted(upload_id_of(url) for url in (chunked, parallel))


def test_tuspy_upload_in_chunks_is_named_from_metadata_without_overwriting(
    smb_tus_server: StartServer, tmp_path: Path
) -> None:
    server = smb_tus_server(final_name="{filename}")
    sources = []
    for index in range(2):
        source = tmp_path / f"{index}" / "report.pdf"
        source.parent.mkdir()
        source.write_bytes(os.urandom(2 * MiB + index))
        uploader = TusClient(server.endpoint).uploader(
            file_path=str(source), chunk_size=MiB, metadata={"filename": "report.pdf"}
        )
        uploader.upload()
        sources.append(source)

    assert (server.storage / "report.pdf").read_bytes() == sources[0].read_bytes()
    assert (server.storage / "report (1).pdf").read_bytes() == sources[1].read_bytes()


def test_uploads_beyond_the_connection_count_all_complete(smb_tus_server: StartServer) -> None:
    # Twelve uploads at once on two connections: the limiter queues the
    # calls; none fails for want of a connection (or SMB credits).
    server = smb_tus_server(options="connections=2")
    payloads = [os.urandom(MiB + n * 1000) for n in range(12)]

    def upload(data: bytes) -> str:
        with httpx.Client(timeout=60) as client:
            created = client.post(server.endpoint, headers={**TUS, "Upload-Length": str(len(data))})
            url = server.url + created.headers["Location"]
            sent = {**TUS, "Content-Type": OCTETS, "Upload-Offset": "0"}
            response = client.patch(url, headers=sent, content=data)
            assert response.status_code == 204, response.text
            return upload_id_of(url)

    with ThreadPoolExecutor(12) as pool:
        ids = list(pool.map(upload, payloads))

    for upload_id, data in zip(ids, payloads, strict=True):
        assert (server.storage / upload_id).read_bytes() == data


def test_smbd_crash_mid_patch_gives_a_retryable_error_and_the_upload_resumes_intact(
    smb_tus_server: StartServer, samba_scratch: SambaServer, state: redis.Redis
) -> None:
    server = smb_tus_server(samba_scratch)
    data = os.urandom(24 * MiB)
    url = server.create(len(data))
    crashed = threading.Event()

    def body() -> Iterator[bytes]:
        for start in range(0, len(data), MiB):
            if start == 9 * MiB:
                # A second block is being written, so the first is stored.
                wait_for(lambda: partial_size(server, url) >= 8 * MiB, 30, "8 MiB on the share")
                samba_scratch.kill()
                crashed.set()
            yield data[start : start + MiB]

    headers = {**TUS, "Content-Type": OCTETS, "Upload-Offset": "0"}
    try:
        response = server.client.patch(url, headers=headers, content=body())
    except httpx.TransportError:
        response = None  # the server answered and closed before the body was sent
    assert crashed.is_set()
    if response is not None:
        assert_tus_error(response, 503, "storage_failed")
        assert response.json()["error"]["retryable"] is True

    # While Samba is down, HEAD still answers from the record.
    head = server.head(url)
    assert head.status_code == 200
    offset = int(head.headers["Upload-Offset"])
    assert 4 * MiB <= offset < len(data)
    assert offset == int(state.hget(f"tus:{{{upload_id_of(url)}}}:info", "offset") or -1)
    stored = (server.partials / upload_id_of(url)).read_bytes()
    assert stored[:offset] == data[:offset], "the offset counts only bytes on the share"

    samba_scratch.start()
    resumed = server.patch(url, offset, data[offset:])

    assert resumed.status_code == 204, resumed.text
    assert resumed.headers["Upload-Offset"] == str(len(data))
    assert sha256((server.storage / upload_id_of(url)).read_bytes()) == sha256(data)


def test_tuspy_upload_completes_across_an_smbd_restart(
    smb_tus_server: StartServer, samba_scratch: SambaServer, tmp_path: Path
) -> None:
    server = smb_tus_server(samba_scratch)
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(6 * MiB + 5))
    uploader = TusClient(server.endpoint).uploader(
        file_path=str(source), chunk_size=MiB, retries=5, retry_delay=1
    )
    upload_chunk = uploader.upload_chunk
    chunks = 0

    def chunk_then_restart_samba_once() -> None:
        nonlocal chunks
        upload_chunk()
        chunks += 1
        if chunks == 2:
            samba_scratch.restart()

    uploader.upload_chunk = chunk_then_restart_samba_once  # type: ignore[method-assign]
    uploader.upload()

    assert chunks >= 6
    final = server.storage / uploaded_id(uploader)
    assert sha256(final.read_bytes()) == sha256(source.read_bytes())


def test_a_hung_share_fails_the_patch_retryably_within_the_smb_timeout(
    smb_tus_server: StartServer, samba_scratch: SambaServer
) -> None:
    server = smb_tus_server(samba_scratch, options="timeout=2s")
    data = os.urandom(3 * MiB)
    url = server.create(len(data))
    assert server.patch(url, 0, data[:MiB]).status_code == 204

    samba_scratch.pause()
    started = time.monotonic()
    try:
        response = server.patch(url, MiB, data[MiB : 2 * MiB])
    finally:
        elapsed = time.monotonic() - started
        samba_scratch.resume()

    assert_tus_error(response, 503, "storage_failed")
    assert elapsed < 15, f"a hung share held the PATCH for {elapsed:.1f} s"
    head = server.head(url)
    assert head.headers["Upload-Offset"] == str(MiB)
    resumed = server.patch(url, MiB, data[MiB:])
    assert resumed.status_code == 204, resumed.text
    assert (server.storage / upload_id_of(url)).read_bytes() == data


# --- start-up ------------------------------------------------------------------


def refused_start(samba: SambaServer, tmp_path: Path, url: str, **env: str) -> str:
    """Run ``tusserver serve`` against ``url``; return its one line of stderr."""
    argv = tusserver(
        "serve", "--port", str(free_port()), "--storage", url, "--data-dir", str(tmp_path / "d")
    )
    result = subprocess.run(
        argv, env=cli_env(**env), cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert samba.password not in result.stderr + result.stdout
    return lines[0]


@pytest.mark.parametrize(
    ("case", "mentions"),
    [
        ("wrong-password", "refused the login of user 'tus'"),
        ("no-password", "tusserver_smb_password"),
        ("password-in-url", "must not carry a password"),
        ("no-such-share", "no share named 'nosuch'"),
        ("nobody-listening", "cannot connect to smb server"),
    ],
)
def test_unusable_smb_storage_stops_the_start_with_one_sentence(
    samba: SambaServer, tmp_path: Path, case: str, mentions: str
) -> None:
    env = {"TUSSERVER_SMB_PASSWORD": samba.password}
    url = samba.url("startup")
    if case == "wrong-password":
        env["TUSSERVER_SMB_PASSWORD"] = "not-" + samba.password
    elif case == "no-password":
        env = {}
    elif case == "password-in-url":
        url = url.replace("tus@", f"tus:{samba.password}@")
    elif case == "no-such-share":
        url = f"smb://tus@127.0.0.1:{samba.port}/nosuch/x"
    else:
        url = f"smb://tus@127.0.0.1:{free_port()}/uploads"

    line = refused_start(samba, tmp_path, url, **env)

    assert mentions in line.lower(), line
    assert not (tmp_path / "d").exists(), "nothing starts for a refused storage"


def test_serve_stores_on_the_share_with_the_password_from_the_environment(
    samba: SambaServer, tmp_path: Path
) -> None:
    port = free_port()
    argv = tusserver(
        "serve",
        "--port",
        str(port),
        "--storage",
        samba.url("cli"),
        "--data-dir",
        str(tmp_path / "d"),
    )
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        argv,
        env=cli_env(TUSSERVER_SMB_PASSWORD=samba.password, TUSSERVER_LOG_LEVEL="debug"),
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        endpoint = f"http://127.0.0.1:{port}/files/"

        def answers() -> bool:
            try:
                return httpx.options(endpoint, timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(answers, 30, "tusserver to answer")
        data = os.urandom(MiB + 1)
        created = httpx.post(endpoint, headers={**TUS, "Upload-Length": str(len(data))})
        url = f"http://127.0.0.1:{port}" + created.headers["Location"]
        patched = httpx.patch(
            url, headers={**TUS, "Content-Type": OCTETS, "Upload-Offset": "0"}, content=data
        )
        assert patched.status_code == 204
        assert (samba.share_dir / "cli" / upload_id_of(url)).read_bytes() == data
    finally:
        process.terminate()
        process.wait(30)
        log.close()
    output = (tmp_path / "serve.log").read_text(errors="replace")
    assert samba.password not in output
    assert "password" not in " ".join(process.args)  # type: ignore[arg-type]


def test_sweep_removes_an_orphaned_partial_on_the_share(
    samba: SambaServer, redis_url: str, tmp_path: Path
) -> None:
    # A staging file with no record, older than the expiry: a lost Redis's orphan.
    staging = samba.share_dir / "sweep" / ".partial"
    staging.mkdir(parents=True)
    orphan = staging / ("ab" * 16)
    orphan.write_bytes(b"left behind")
    old = time.time() - 7200
    os.utime(orphan, (old, old))

    result = subprocess.run(
        tusserver(
            "sweep",
            "--storage",
            samba.url("sweep"),
            "--redis-url",
            redis_url,
            "--expire-after",
            "1h",
        ),
        env=cli_env(TUSSERVER_SMB_PASSWORD=samba.password),
        capture_output=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert f"orphan {'ab' * 16}" in result.stdout.decode()
    assert not orphan.exists()

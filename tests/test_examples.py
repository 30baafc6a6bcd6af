"""The shipped examples and deployment files work as documented."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from tusclient.client import TusClient

from storage_backends.smb_location import SMBLocation, SMBOptions
from tests.e2e_clients import CuttingProxy
from tests.server_fixtures import RunningServer, ServedApps, ThreadedUvicorn, free_port

ROOT = Path(__file__).resolve().parent.parent


def test_tuspy_example_uploads_a_file_byte_identically(
    tus_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    server = tus_server()
    source = tmp_path / "photo.jpg"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "tuspy_upload.py"),
            str(source),
            "--endpoint",
            server.endpoint,
            "--chunk-size",
            str(1024 * 1024),
            "--url-storage",
            str(tmp_path / "urls.json"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    upload_id = result.stdout.strip().rsplit("/", 1)[-1]
    stored = server.storage / upload_id
    assert (
        hashlib.sha256(stored.read_bytes()).digest() == hashlib.sha256(source.read_bytes()).digest()
    )


def test_compose_wires_tusserver_to_a_persistent_redis_and_a_samba_share() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    redis, samba, tus = services["redis"], services["samba"], services["tusserver"]

    assert "--appendonly" in redis["command"] and "yes" in redis["command"]
    assert any(volume.endswith(":/data") for volume in redis["volumes"])
    assert "redis-cli" in redis["healthcheck"]["test"]
    assert tus["environment"]["TUSSERVER_REDIS_URL"].startswith("redis://redis:6379")

    # The storage URL names the samba service, its account and its share.
    storage = urlsplit(tus["environment"]["TUSSERVER_STORAGE"])
    assert (storage.scheme, storage.hostname, storage.port) == ("smb", "samba", 445)
    assert storage.password is None, "the password never goes into the URL"
    options = SMBLocation.parse(tus["environment"]["TUSSERVER_STORAGE"]).options
    assert options == SMBOptions(timeout=30, connections=8)
    user, share = storage.username, storage.path.strip("/").split("/")[0]
    samba_env = samba["environment"]
    share_config = samba_env[f"SAMBA_VOLUME_CONFIG_{share}"]
    assert f"[{share}]" in share_config and f"valid users = {user}" in share_config
    assert "read only = no" in share_config
    share_path = share_config.split("path=", 1)[1].split(";")[0].strip()
    assert any(volume.endswith(":" + share_path) for volume in samba["volumes"])
    # One password, from the environment, on both sides; none written here.
    password = tus["environment"]["TUSSERVER_SMB_PASSWORD"]
    assert password.startswith("${TUS_SMB_PASSWORD:?")
    assert samba_env[f"ACCOUNT_{user}"] == password
    assert "smbclient" in " ".join(samba["healthcheck"]["test"])
    assert f"{user}%$$ACCOUNT_{user}" in " ".join(samba["healthcheck"]["test"])

    for dependency in ("redis", "samba"):
        assert tus["depends_on"][dependency]["condition"] == "service_healthy"
        assert "healthcheck" in services[dependency]
    assert tus["build"]["context"] == "."
    assert tus["build"]["args"]["EXTRAS"] == "smb", "the image must carry the SMB backend"
    assert all(port.startswith("127.0.0.1:") for port in tus["ports"])
    assert "healthcheck" in tus

    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'CMD ["tusserver", "serve"]' in dockerfile
    assert "TUSSERVER_HOST=0.0.0.0" in dockerfile and "TUSSERVER_PORT=8080" in dockerfile
    assert "ARG EXTRAS=smb" in dockerfile


def test_fastapi_example_serves_tus_under_its_mount_path_and_calls_back_on_finish(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, served_apps: ServedApps
) -> None:
    monkeypatch.setenv("TUSSERVER_STORAGE", str(tmp_path / "uploads"))
    monkeypatch.setenv("TUSSERVER_REDIS_URL", redis_url)
    spec = importlib.util.spec_from_file_location(
        "fastapi_app", ROOT / "examples" / "fastapi_app.py"
    )
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    port = free_port()
    server = ThreadedUvicorn(example.app, port)
    server.start()
    try:
        source = tmp_path / "report.pdf"
        source.write_bytes(os.urandom(2 * 1024 * 1024 + 5))
        uploader = TusClient(f"http://127.0.0.1:{port}/uploads/files/").uploader(
            file_path=str(source), metadata={"filename": "report.pdf"}
        )
        uploader.upload()
        # post-finish is delivered from Redis just after the client's answer.
        deadline = time.monotonic() + 10
        while not example.finished and time.monotonic() < deadline:
            time.sleep(0.02)
        listed = httpx.get(f"http://127.0.0.1:{port}/uploads-finished", timeout=10).json()
    finally:
        server.stop()

    assert str(uploader.url).startswith(f"http://127.0.0.1:{port}/uploads/files/")
    [(upload_id, event)] = example.finished.items()
    assert str(uploader.url).endswith(upload_id)
    assert event.upload.metadata["filename"] == "report.pdf"
    assert event.upload.offset == source.stat().st_size
    location = event.upload.storage["Location"]
    assert (tmp_path / "uploads" / location).read_bytes() == source.read_bytes()
    assert listed == [{"id": upload_id, "length": event.upload.offset, "location": location}]


def test_node_example_resumes_after_ctrl_c_and_uploads_byte_identically(
    tus_server: Callable[..., RunningServer],
    cutting_proxy: Callable[..., CuttingProxy],
    js_examples: Path,
    tmp_path: Path,
) -> None:
    server = tus_server()
    # Frozen 3 MiB into its first 8 MiB chunk, the client gets Ctrl-C.
    proxy = cutting_proxy(int(server.url.rsplit(":", 1)[1]), limit=3 * 1024 * 1024, stall=True)
    source = tmp_path / "video.mp4"
    source.write_bytes(os.urandom(10 * 1024 * 1024 + 3))
    command = ["node", str(js_examples / "upload.mjs"), str(source), proxy.url("/files/")]

    first = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        assert proxy.stalled.wait(60), "the example never started sending"
        first.send_signal(signal.SIGINT)
        output, _ = first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
    assert first.returncode == 130, output
    assert "run the same command again to resume" in output
    url = output.split("upload URL: ", 1)[1].split()[0]
    proxy.release()
    deadline = time.monotonic() + 10
    while int(server.head(url).headers["Upload-Offset"]) == 0:
        assert time.monotonic() < deadline, "the bytes before Ctrl-C were not kept"
        time.sleep(0.05)

    second = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )

    assert second.returncode == 0, second.stdout + second.stderr
    assert f"resuming {url}" in second.stdout
    assert f"done: {url}" in second.stdout
    assert (server.storage / url.rsplit("/", 1)[1]).read_bytes() == source.read_bytes()
    assert (js_examples / "dashboard" / "dist" / "main.js").stat().st_size > 0


# examples/nginx.conf runs in a real nginx in tests/test_proxy.py, and
# examples/nginx-multi.conf in tests/test_multi_instance.py.


def test_hook_receiver_example_refuses_unnamed_uploads_chooses_ids_and_records_finishes(
    tus_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    spec = importlib.util.spec_from_file_location(
        "hook_receiver", ROOT / "examples" / "hook_receiver.py"
    )
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    receiver = ThreadedUvicorn(example.app, free_port())
    receiver.start()
    receiver_url = f"http://127.0.0.1:{receiver.server.config.port}"
    try:
        server = tus_server(
            hooks_url=receiver_url + "/tus-hooks", hooks_headers=("X-Hook-Secret:change-me",)
        )
        # Only pre-create: instances sharing a Redis share the post-finish
        # deliveries too, and this one could never deliver.
        wrong_secret = tus_server(
            hooks_url=receiver_url + "/tus-hooks",
            hooks_headers=("X-Hook-Secret:wrong",),
            hooks_events=("pre-create",),
        )
        unnamed = server.client.post(
            server.endpoint, headers={"Tus-Resumable": "1.0.0", "Upload-Length": "1"}
        )
        refused = wrong_secret.client.post(
            wrong_secret.endpoint,
            headers={
                "Tus-Resumable": "1.0.0",
                "Upload-Length": "1",
                "Upload-Metadata": "filename eA==",
            },
        )
        source = tmp_path / "report.pdf"
        source.write_bytes(os.urandom(50_000))
        uploader = TusClient(server.endpoint).uploader(
            file_path=str(source), metadata={"filename": "report.pdf"}
        )
        uploader.upload()
        deadline = time.monotonic() + 10
        while not example.finished and time.monotonic() < deadline:
            time.sleep(0.02)
        listed = httpx.get(receiver_url + "/finished", timeout=10).json()
    finally:
        receiver.stop()

    assert unnamed.status_code == 400
    assert unnamed.json() == {"message": "name the file (metadata 'filename')"}
    assert refused.status_code == 503  # a receiver that says no to the caller is a failed hook
    assert str(uploader.url).endswith("/files/upload-00000001")
    assert listed == {
        "upload-00000001": {
            "size": 50_000,
            "filename": "report.pdf",
            "storage": {
                "Type": "tusserver",
                "Location": "upload-00000001",
                "SHA256": hashlib.sha256(source.read_bytes()).hexdigest(),
            },
        }
    }

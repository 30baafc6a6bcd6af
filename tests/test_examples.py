"""The shipped examples and deployment files work as documented."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from tests.server_fixtures import RunningServer

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


def test_compose_runs_tusserver_on_a_persistent_healthy_redis() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    redis, tus = services["redis"], services["tusserver"]

    assert "--appendonly" in redis["command"] and "yes" in redis["command"]
    assert any(volume.endswith(":/data") for volume in redis["volumes"])
    assert "redis-cli" in redis["healthcheck"]["test"]

    assert tus["environment"]["TUSSERVER_REDIS_URL"].startswith("redis://redis:6379")
    assert tus["depends_on"]["redis"]["condition"] == "service_healthy"
    storage = tus["environment"]["TUSSERVER_STORAGE"]
    assert any(volume.endswith(":" + storage) for volume in tus["volumes"])
    assert tus["build"] == "."
    assert all(port.startswith("127.0.0.1:") for port in tus["ports"])

    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'CMD ["tusserver", "serve"]' in dockerfile
    assert "TUSSERVER_STORAGE=" + storage in dockerfile

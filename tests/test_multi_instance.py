"""Three instances behind nginx, every request round-robined (no sticky sessions).

The instances share one Redis and one storage (a local folder, or a real
Samba share); nginx runs examples/nginx-multi.conf. The real clients upload
through it: tus-js-client with parallel uploads (four partial uploads and a
concatenation, each PATCH of which may land on any instance), tuspy, and
Uppy in headless Chromium on a page from another origin. An
instance may die (SIGKILL) or be stopped (SIGTERM) mid-upload: the clients
retry, another instance takes the upload over, and every file is still
byte-exact.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tusclient.client import TusClient

from tests.deployment_fixtures import Deployment, StartDeployment, ThrottlingProxy
from tests.e2e_clients import StaticSite, pseudo_random_bytes
from tests.js_fixtures import TusJs
from tests.samba_fixtures import SambaServer
from tests.test_browser_clients import uppy_upload

MiB = 1024 * 1024
# Clients that may meet a dead or stopping instance: they retry for a while.
JS_RETRIES = [0, 300, 1000, 1000, 1000, 2000, 2000, 2000, 3000, 3000, 3000, 3000]
TUSPY_RETRIES = 40
TUSPY_RETRY_DELAY = 0.5
RECEIVED = "tusserver_received_bytes_total"


@dataclass
class SharedStorage:
    url: str  # the --storage of every instance
    shown_at: Path  # where its files show on this machine
    env: dict[str, str]


@pytest.fixture(params=["local-folder", "samba-share"])
def shared_storage(request: pytest.FixtureRequest, tmp_path: Path) -> SharedStorage:
    if request.param == "local-folder":
        return SharedStorage(str(tmp_path / "files"), tmp_path / "files", {})
    samba: SambaServer = request.getfixturevalue("samba")
    folder = f"multi-{uuid.uuid4().hex[:12]}"
    return SharedStorage(
        samba.url(folder), samba.share_dir / folder, {"TUSSERVER_SMB_PASSWORD": samba.password}
    )


def random_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_published(deployment: Deployment, url: str, source: Path) -> None:
    """The finished file, named by the upload id, is byte-identical to the source."""
    final = deployment.storage / url.rstrip("/").rsplit("/", 1)[1]
    assert final.is_file(), f"{url} was not published"
    assert digest(final) == digest(source)


def tuspy_upload(endpoint: str, source: Path, chunk_size: int) -> str:
    uploader = TusClient(endpoint).uploader(
        file_path=str(source),
        chunk_size=chunk_size,
        metadata={"filename": source.name},
        retries=TUSPY_RETRIES,
        retry_delay=TUSPY_RETRY_DELAY,
    )
    uploader.upload()
    assert uploader.url is not None
    return str(uploader.url)


def test_parallel_tus_js_client_and_tuspy_finish_byte_exact_through_three_round_robined_instances(
    deployment: StartDeployment, shared_storage: SharedStorage, tus_js: TusJs, tmp_path: Path
) -> None:
    three = deployment(3, shared_storage.url, shared_storage.shown_at, env=shared_storage.env)
    received_before = [instance.metric(RECEIVED) for instance in three.instances]
    js_source = random_file(tmp_path / "js.bin", 24 * MiB + 7)
    py_source = random_file(tmp_path / "py.bin", 12 * MiB + 3)

    js_url = tus_js(three.endpoint, js_source, parallelUploads=4, chunkSize=MiB)
    py_url = tuspy_upload(three.endpoint, py_source, chunk_size=MiB)

    assert_published(three, js_url, js_source)
    assert_published(three, py_url, py_source)
    # Round robin, not one instance doing it all: each received a share of the bytes.
    for instance, before in zip(three.instances, received_before, strict=True):
        assert instance.metric(RECEIVED) - before > 2 * MiB


def test_uppy_in_chromium_finishes_byte_exact_through_three_round_robined_instances(
    deployment: StartDeployment,
    shared_storage: SharedStorage,
    static_site: StaticSite,
    browser_harness: Path,
    tmp_path: Path,
) -> None:
    # Cross-origin, so every preflight too goes to whichever instance is next.
    three = deployment(
        3,
        shared_storage.url,
        shared_storage.shown_at,
        "--cors-origin",
        static_site.origin,
        env=shared_storage.env,
    )
    size, seed = 6 * MiB + 5, 37
    url = uppy_upload(
        static_site,
        browser_harness,
        tmp_path / "profile",
        endpoint=three.endpoint,
        size=size,
        seed=seed,
        name="uppy.bin",
        chunkSize=MiB,
    )

    source = tmp_path / "uppy.bin"
    source.write_bytes(pseudo_random_bytes(size, seed))
    assert_published(three, url, source)


class Background(threading.Thread):
    """An upload run in a thread; ``result()`` is its URL or its exception."""

    def __init__(self, upload: Callable[[], str]) -> None:
        super().__init__(daemon=True)
        self._upload = upload
        self._url: str | None = None
        self._error: BaseException | None = None

    def run(self) -> None:
        try:
            self._url = self._upload()
        except BaseException as exc:  # reported by result()
            self._error = exc

    def result(self, timeout: float = 180) -> str:
        self.join(timeout)
        assert not self.is_alive(), "the upload did not finish"
        if self._error is not None:
            raise self._error
        assert self._url is not None
        return self._url


@pytest.fixture
def uploads() -> Iterator[list[Background]]:
    started: list[Background] = []
    yield started
    for upload in started:
        upload.join(180)


def test_uploads_finish_byte_exact_when_one_instance_is_killed_and_another_stopped_mid_upload(
    deployment: StartDeployment,
    throttling_proxy: Callable[[int, int], ThrottlingProxy],
    uploads: list[Background],
    shared_storage: SharedStorage,
    tus_js: TusJs,
    tmp_path: Path,
) -> None:
    # A short lock TTL: the killed instance's locks lapse soon; the stopped
    # one releases its own at once.
    three = deployment(
        3, shared_storage.url, shared_storage.shown_at, "--lock-ttl", "3s",
        "--shutdown-grace", "1s", env=shared_storage.env,
    )  # fmt: skip
    uplink = throttling_proxy(three.proxy.port, 12 * MiB)  # about 5 s for both files
    endpoint = uplink.url("/files/")
    js_source = random_file(tmp_path / "js.bin", 32 * MiB + 5)
    py_source = random_file(tmp_path / "py.bin", 32 * MiB + 9)
    total = 64 * MiB
    options = {"parallelUploads": 4, "chunkSize": 2 * MiB, "retryDelays": JS_RETRIES}
    uploads += [
        Background(lambda: tus_js(endpoint, js_source, **options)),
        Background(lambda: tuspy_upload(endpoint, py_source, chunk_size=2 * MiB)),
    ]
    for upload in uploads:
        upload.start()

    def both_running() -> bool:
        return all(upload.is_alive() for upload in uploads)

    uplink.wait_for(total // 4, both_running)
    killed, stopped = three.instances[0], three.instances[1]
    killed.kill()
    uplink.wait_for(total // 2, both_running)
    assert stopped.process is not None
    stopped.process.send_signal(signal.SIGTERM)
    assert stopped.process.wait(30) == 0

    assert_published(three, uploads[0].result(), js_source)
    assert_published(three, uploads[1].result(), py_source)

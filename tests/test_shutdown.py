"""A stopped instance hands its uploads over at once (``--shutdown-grace``).

On SIGTERM, ``tusserver serve`` stops accepting connections, lets running
PATCHes go on receiving for the grace, then cuts them: each commits the
bytes it stored and releases its lock, and the process exits 0. Another
instance on the same Redis and storage takes the upload over at once,
without waiting for the lock's TTL. These specs run real ``tusserver
serve`` processes against the session's real Redis and stream bodies by
hand, so the moment of the signal is known.
"""

from __future__ import annotations

import hashlib
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from tusclient.client import TusClient

from tests.deployment_fixtures import StartDeployment, ThrottlingProxy
from tests.helpers import CutsRequestsOnRequest, assert_tus_error, upload_id_of
from tests.process_fixtures import ServeProcess
from tests.raw_http import raw_patch, send_in_pieces, wait_until
from tests.server_fixtures import OCTETS, TUS, ServedApps, mounted
from tusserver import Config, create_app
from tusserver.draining import Draining

StartProcess = Callable[..., ServeProcess]
MiB = 1024 * 1024
PIECE = 64 * 1024
# Long, so that a lock the stopped instance left behind would block its upload
# (the resuming PATCH would get 423 after --lock-wait) instead of lapsing.
LOCK_OPTIONS = ["--lock-ttl", "60s", "--lock-wait", "1s"]
# How long the process may take beyond its grace to commit, answer and exit:
# a bound for a hung shutdown, not a measure of speed.
EXIT_MARGIN = 15.0


def source(start: int, end: int) -> Iterator[bytes]:
    """Bytes [start, end) of a file of pseudo-random bytes, the same every time."""
    position = start
    while position < end:
        block, within = divmod(position, MiB)
        data = random.Random(block).randbytes(MiB)
        stop = min(MiB, within + end - position)
        for at in range(within, stop, PIECE):
            yield data[at : min(stop, at + PIECE)]
        position += stop - within


def source_pieces(length: int) -> Iterator[bytes]:
    return source(0, length)


def source_sha256(length: int) -> str:
    digest = hashlib.sha256()
    for piece in source(0, length):
        digest.update(piece)
    return digest.hexdigest()


class SlowPatch(threading.Thread):
    """A PATCH of ``length - offset`` bytes sent by hand at ``rate`` bytes per
    second on a connection of its own, until the body ends, the server closes
    the connection, or ``halt`` is called; ``answer`` is what came back."""

    def __init__(self, port: int, path: str, offset: int, length: int, rate: int) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.path, self.offset, self.length, self.rate = path, offset, length, rate
        self.sent = 0
        self.answer = b""
        self._halt = threading.Event()

    def run(self) -> None:
        head = (
            f"PATCH {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
            f"Content-Type: {OCTETS}\r\nUpload-Offset: {self.offset}\r\n"
            f"Content-Length: {self.length - self.offset}\r\n\r\n"
        ).encode()
        started = time.monotonic()
        try:
            self.sock.sendall(head)
            for piece in source(self.offset, self.length):
                ahead = self.sent / self.rate - (time.monotonic() - started)
                if ahead > 0 and self._halt.wait(ahead):
                    return
                if self._halt.is_set():
                    return
                self.sock.sendall(piece)
                self.sent += len(piece)
            self.sock.settimeout(30)
            while chunk := self.sock.recv(65536):
                self.answer += chunk
        except OSError:
            return  # the server closed the connection

    def wait_until_sent(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.sent < count:
            assert self.is_alive() and time.monotonic() < deadline, "the body stopped going out"
            time.sleep(0.02)

    def halt(self) -> None:
        self._halt.set()
        self.join(30)
        self.sock.close()


def create(server: ServeProcess, length: int) -> str:
    response = httpx.post(server.endpoint, headers={**TUS, "Upload-Length": str(length)})
    assert response.status_code == 201, response.text
    location: str = response.headers["Location"]
    return location


def stop_and_wait(server: ServeProcess, grace: float) -> int:
    """SIGTERM, then the exit status (failing if it does not come in time)."""
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    try:
        return server.process.wait(grace + EXIT_MARGIN)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {grace + EXIT_MARGIN} s after SIGTERM")


def committed(state: redis.Redis, upload_id: str) -> int:
    return int(state.hget(f"tus:{{{upload_id}}}:info", "offset") or 0)


def lock_held(state: redis.Redis, upload_id: str) -> bool:
    return bool(state.exists(f"tus:{{{upload_id}}}:lock"))


def finish(server: ServeProcess, path: str, offset: int, length: int) -> httpx.Response:
    return httpx.patch(
        server.url + path,
        headers={**TUS, "Content-Type": OCTETS, "Upload-Offset": str(offset)},
        content=source(offset, length),
        timeout=120,
    )


@pytest.fixture
def options(tmp_path: Path, redis_url: str) -> list[str]:
    """What every instance of one deployment shares: the storage and the Redis;
    with the access log, which tells what each request was answered."""
    return [
        "--storage",
        str(tmp_path / "files"),
        "--redis-url",
        redis_url,
        "--access-log",
        *LOCK_OPTIONS,
    ]


def assert_cut_cleanly(
    server: ServeProcess, patch: SlowPatch, state: redis.Redis, storage: Path, grace: float
) -> int:
    """SIGTERM mid-body: exit 0, the bytes stored committed, the lock gone; the offset."""
    upload_id = upload_id_of(patch.path)
    patch.wait_until_sent(2 * MiB)
    assert stop_and_wait(server, grace) == 0
    assert not lock_held(state, upload_id)
    patch.halt()
    offset = committed(state, upload_id)
    assert 0 < offset < patch.length
    # Every byte stored counts, and no byte counts that was not stored.
    assert offset == (storage / ".partial" / upload_id).stat().st_size
    log = server.log_text()
    assert "cut by shutdown" in log
    # Never a 2xx for a cut body: a retryable 503 (the client may not have
    # read it, as it was still sending; the server's access line has it).
    assert f"PATCH {patch.path} 503" in log
    assert "Traceback" not in log  # not cancelled by uvicorn: cut by the app
    return offset


def test_sigterm_mid_patch_commits_what_was_stored_and_another_instance_resumes_at_once(
    serve_process: StartProcess, options: list[str], state: redis.Redis, tmp_path: Path
) -> None:
    length = 64 * MiB
    grace = 2.0
    first = serve_process(*options, "--shutdown-grace", "2s")
    second = serve_process(*options)
    path = create(first, length)
    # Never ends within the grace: it is cut.
    patch = SlowPatch(first.port, path, 0, length, rate=4 * MiB)
    patch.start()
    offset = assert_cut_cleanly(first, patch, state, tmp_path / "files", grace)

    # No 423: the lock was released, not left to its 60 s TTL.
    response = finish(second, path, offset, length)
    assert response.status_code == 204, response.text
    assert int(response.headers["Upload-Offset"]) == length
    upload_id = upload_id_of(path)
    assert state.hget(f"tus:{{{upload_id}}}:info", "sha256") == source_sha256(length)
    finished = tmp_path / "files" / upload_id
    assert hashlib.sha256(finished.read_bytes()).hexdigest() == source_sha256(length)


def test_a_short_grace_cuts_a_never_ending_patch_and_still_exits_0(
    serve_process: StartProcess, options: list[str], state: redis.Redis, tmp_path: Path
) -> None:
    length = 1024**4  # a body that does not end before the test does
    server = serve_process(*options, "--shutdown-grace", "0.5s")
    path = create(server, length)
    patch = SlowPatch(server.port, path, 0, length, rate=8 * MiB)
    patch.start()
    assert_cut_cleanly(server, patch, state, tmp_path / "files", 0.5)


def test_with_two_workers_sigterm_cuts_the_patch_commits_and_exits_0(
    serve_process: StartProcess, options: list[str], state: redis.Redis, tmp_path: Path
) -> None:
    length = 1024**4
    server = serve_process(*options, "--workers", "2", "--shutdown-grace", "1s")
    path = create(server, length)
    patch = SlowPatch(server.port, path, 0, length, rate=8 * MiB)
    patch.start()
    assert_cut_cleanly(server, patch, state, tmp_path / "files", 1.0)


def test_a_patch_that_ends_inside_the_grace_gets_its_204(
    serve_process: StartProcess, options: list[str], state: redis.Redis, tmp_path: Path
) -> None:
    length = 6 * MiB
    server = serve_process(*options, "--shutdown-grace", "20s")
    path = create(server, length)
    patch = SlowPatch(server.port, path, 0, length, rate=2 * MiB)  # about 3 s
    patch.start()
    patch.wait_until_sent(MiB)
    assert stop_and_wait(server, 20.0) == 0
    patch.join(30)
    status_line, _, rest = patch.answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 204 No Content", patch.answer[:300]
    assert f"upload-offset: {length}".encode() in rest.lower()
    assert b"connection: close" in rest.lower()  # the server is leaving
    upload_id = upload_id_of(path)
    assert committed(state, upload_id) == length
    assert not lock_held(state, upload_id)
    assert (tmp_path / "files" / upload_id).stat().st_size == length


def test_after_the_stop_began_a_request_on_an_open_connection_gets_a_retryable_503(
    served_apps: ServedApps, redis_url: str, tmp_path: Path
) -> None:
    """As an embedding application stops tusserver: it begins the ``Draining``
    it gave ``create_app``. Requests that take a lock or write now get a 503
    that says when to retry and closes its connection; HEAD still answers."""
    draining = Draining()

    async def stop(request: Request) -> Response:
        draining.begin()  # on the event loop, as the Draining asks
        return Response(status_code=204)

    config = Config(storage=str(tmp_path / "files"), redis_url=redis_url)
    beside = [Route("/stop", stop, methods=["POST"])]
    app = mounted(create_app(config, draining=draining), "/app", beside)
    url, client = served_apps.serve(app)
    endpoint = url + "/app/files/"
    created = client.post(endpoint, headers={**TUS, "Upload-Length": "10"})
    assert created.status_code == 201
    upload = url + created.headers["Location"]

    with httpx.Client(timeout=10) as keep_alive:
        assert keep_alive.head(upload, headers=TUS).status_code == 200
        assert client.post(url + "/stop").status_code == 204
        # The same connection, open before the stop.
        refused = keep_alive.patch(
            upload,
            headers={**TUS, "Content-Type": OCTETS, "Upload-Offset": "0"},
            content=b"0123456789",
        )
    assert_tus_error(refused, 503, "server_shutting_down")
    assert refused.json()["error"]["retryable"] is True
    assert refused.headers["Retry-After"] == "1"
    assert refused.headers["Connection"] == "close"
    assert_tus_error(client.post(endpoint, headers={**TUS, "Upload-Length": "10"}), 503)
    head = client.head(upload, headers=TUS)
    assert head.status_code == 200
    assert head.headers["Upload-Offset"] == "0"


def test_a_patch_cancelled_by_the_embedding_application_commits_what_it_stored(
    served_apps: ServedApps, redis_url: str, state: redis.Redis, tmp_path: Path
) -> None:
    """The commit at the end of a body is shielded: a PATCH cancelled
    mid-body counts the bytes it stored, and the client resumes after them."""
    config = Config(storage=str(tmp_path / "files"), redis_url=redis_url, block_size=64 * 1024)

    async def cut(request: Request) -> Response:
        cutter.cut_all()
        return Response(status_code=204)

    beside = [Route("/cut", cut, methods=["POST"])]
    cutter = CutsRequestsOnRequest(mounted(create_app(config), "/app", beside), "PATCH")
    url, client = served_apps.serve(cutter)
    length = 4 * MiB
    created = client.post(url + "/app/files/", headers={**TUS, "Upload-Length": str(length)})
    assert created.status_code == 201
    upload = url + created.headers["Location"]
    upload_id = upload_id_of(upload)
    partial = tmp_path / "files" / ".partial" / upload_id
    data = b"".join(source(0, length))

    with raw_patch(upload, 0, content_length=length) as request:
        send_in_pieces(request, data[:MiB])
        wait_until(lambda: partial.stat().st_size >= MiB // 2, "half the bytes sent stored")
        assert client.post(url + "/cut").status_code == 204
        wait_until(lambda: committed(state, upload_id) > 0, "the cut PATCH's commit")

    # Counted bytes are stored bytes; a block whose write was under way at
    # the cut may be stored and not counted, and is written again.
    offset = committed(state, upload_id)
    assert offset <= partial.stat().st_size <= MiB
    finished = client.patch(
        upload,
        headers={**TUS, "Content-Type": OCTETS, "Upload-Offset": str(offset)},
        content=data[offset:],
    )
    assert finished.status_code == 204
    assert (tmp_path / "files" / upload_id).read_bytes() == data


def test_tuspy_whose_instance_is_stopped_mid_patch_finishes_on_the_other_one(
    deployment: StartDeployment,
    throttling_proxy: Callable[[int, int], ThrottlingProxy],
    tmp_path: Path,
) -> None:
    """Two instances behind nginx; the one receiving tuspy's single long PATCH
    gets SIGTERM. tuspy retries (HEAD, then PATCH from the offset), nginx
    sends it to the other instance, and the lock is free at once."""
    length = 48 * MiB
    source = tmp_path / "source.bin"
    source.write_bytes(b"".join(source_pieces(length)))
    two = deployment(
        2, str(tmp_path / "files"), tmp_path / "files", *LOCK_OPTIONS, "--shutdown-grace", "1s"
    )
    uplink = throttling_proxy(two.proxy.port, 8 * MiB)
    uploader = TusClient(uplink.url("/files/")).uploader(
        file_path=str(source), chunk_size=length, retries=10, retry_delay=0.5
    )
    done = threading.Thread(target=uploader.upload, daemon=True)
    done.start()
    uplink.wait_for(8 * MiB, done.is_alive)
    # The instance receiving the PATCH is the one reading bytes.
    before = [instance.socket_bytes_read() for instance in two.instances]
    time.sleep(0.5)
    grown = [
        instance.socket_bytes_read() - b for instance, b in zip(two.instances, before, strict=True)
    ]
    receiving = two.instances[grown.index(max(grown))]
    assert stop_and_wait(receiving, 1.0) == 0
    done.join(120)
    assert not done.is_alive(), "tuspy did not finish"

    assert uploader.url is not None
    final = tmp_path / "files" / upload_id_of(str(uploader.url))
    assert hashlib.sha256(final.read_bytes()).hexdigest() == source_sha256(length)

"""A server killed mid-PATCH keeps what it stored.

The offset used to move only when a PATCH ended, so a process killed mid-body
(SIGKILL, the OOM killer, a node drained without grace) lost every byte of
the request. Now the bytes stored are committed while the body streams
(``Config.checkpoint_bytes`` / ``checkpoint_interval``). These specs kill a
real ``tusserver serve`` at random points of a body streamed at a steady
rate, resume on a restarted or another instance, and check what survived.
"""

from __future__ import annotations

import base64
import hashlib
import random
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

from tests.helpers import upload_id_of
from tests.process_fixtures import ServeProcess
from tests.samba_fixtures import SambaServer
from tests.server_fixtures import OCTETS, TUS

# Every spec runs on each HTTP server `tusserver serve` offers.
pytestmark = pytest.mark.usefixtures("server")

MiB = 1024 * 1024
LENGTH = 1536 * MiB
RATE = 32 * MiB  # bytes per second, steady, as a client on a fast link sends
KILLS = 10
PIECE = 256 * 1024
# Short, so that the dead writer's lock lapses soon after each kill.
LOCK_OPTIONS = ["--lock-ttl", "2s", "--lock-wait", "1s"]


def source(start: int, end: int) -> Iterator[bytes]:
    """Bytes [start, end) of a file of pseudo-random bytes, the same every time."""
    position = start
    while position < end:
        block, within = divmod(position, MiB)
        data = random.Random(block).randbytes(MiB)
        piece = data[within : min(MiB, within + end - position)]
        yield piece
        position += len(piece)


def source_sha256() -> str:
    digest = hashlib.sha256()
    for piece in source(0, LENGTH):
        digest.update(piece)
    return digest.hexdigest()


@dataclass
class Survival:
    """What one kill kept: bytes that reached the server, bytes the offset kept."""

    reached: list[int] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)

    @property
    def share_kept(self) -> float:
        return sum(self.kept) / sum(self.reached)


def patch_head(path: str, offset: int, length: int, extra: str = "") -> bytes:
    """A PATCH's request line and headers, for a body sent by hand."""
    return (
        f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
        f"Content-Type: {OCTETS}\r\nUpload-Offset: {offset}\r\n{extra}"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def stream_until_killed(server: ServeProcess, path: str, offset: int, seconds: float) -> int:
    """PATCH from ``offset`` at RATE, SIGKILL the server after ``seconds``;
    returns how many bytes the server process read meanwhile."""
    head = patch_head(path, offset, LENGTH - offset)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        read_before = server.socket_bytes_read()
        sock.sendall(head)
        started = time.monotonic()
        sent = 0
        for piece in source(offset, LENGTH):
            ahead = sent / RATE - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
            if time.monotonic() - started >= seconds:
                break
            sock.sendall(piece)
            sent += len(piece)
        reached = server.socket_bytes_read() - read_before
        server.kill()
    return reached


def offset_once_free(server: ServeProcess, path: str) -> int:
    """What a client does after the crash: HEAD (never a 5xx), then PATCH from
    its offset, retrying the 423 it gets until the dead writer's lock lapsed.
    The PATCH here is empty: it only shows the upload is writable again."""
    deadline = time.monotonic() + 30
    while True:
        head = httpx.head(server.url + path, headers=TUS)
        assert head.status_code == 200, head.status_code
        offset = int(head.headers["Upload-Offset"])
        probe = httpx.patch(
            server.url + path,
            headers={**TUS, "Content-Type": OCTETS, "Upload-Offset": str(offset)},
            content=b"",
            timeout=30,
        )
        assert probe.status_code in (204, 423), probe.status_code
        if probe.status_code == 204:
            return offset
        assert time.monotonic() < deadline, "the dead writer's lock never lapsed"


def finish(server: ServeProcess, path: str, offset: int) -> httpx.Response:
    def body() -> Iterator[bytes]:
        yield from source(offset, LENGTH)

    return httpx.patch(
        server.url + path,
        headers={**TUS, "Content-Type": OCTETS, "Upload-Offset": str(offset)},
        content=body(),
        timeout=120,
    )


def run_kills(
    servers: list[ServeProcess], state: redis.Redis, stored: Callable[[str], int]
) -> None:
    """Create an upload on servers[0], then KILLS times: stream to one server,
    kill it, resume on the next one (restarting the killed one); finish the
    upload and check every survival and the recorded SHA-256."""
    created = httpx.post(servers[0].endpoint, headers={**TUS, "Upload-Length": str(LENGTH)})
    assert created.status_code == 201
    path = created.headers["Location"]
    upload_id = upload_id_of(path)
    timing = random.Random(20261205)
    survival = Survival()
    offset = 0
    for kill in range(KILLS):
        victim = servers[kill % len(servers)]
        survivor = servers[(kill + 1) % len(servers)]
        reached = stream_until_killed(victim, path, offset, timing.uniform(1.5, 4.0))
        if survivor is victim:
            victim.start()
        new_offset = offset_once_free(survivor, path)
        # Never a byte that was not stored: the partial holds at least the offset.
        assert offset <= new_offset <= stored(upload_id)
        survival.reached.append(reached)
        survival.kept.append(new_offset - offset)
        offset = new_offset
        if survivor is not victim:
            victim.start()
    print(f"\nkept {survival.share_kept:.3f} of the bytes that reached the server")
    assert survival.share_kept >= 0.9, survival

    response = finish(servers[-1], path, offset)
    assert response.status_code == 204, response.text
    assert int(response.headers["Upload-Offset"]) == LENGTH
    record = state.hgetall(f"tus:{{{upload_id}}}:info")
    assert record["sha256"] == source_sha256()


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    return tmp_path / "files"


def partial_size(storage: Path) -> Callable[[str], int]:
    return lambda upload_id: (storage / ".partial" / upload_id).stat().st_size


def test_sigkill_mid_patch_keeps_what_was_stored_and_the_resumed_upload_is_byte_exact(
    serve_process: Callable[..., ServeProcess], redis_url: str, state: redis.Redis, storage: Path
) -> None:
    server = serve_process(
        "--storage", storage, "--redis-url", redis_url, *LOCK_OPTIONS
    )  # fmt: skip

    run_kills([server], state, partial_size(storage))


def test_another_instance_takes_over_from_a_killed_one_without_a_restart(
    serve_process: Callable[..., ServeProcess], redis_url: str, state: redis.Redis, storage: Path
) -> None:
    options = ["--storage", storage, "--redis-url", redis_url, *LOCK_OPTIONS]
    first, second = serve_process(*options), serve_process(*options)

    run_kills([first, second], state, partial_size(storage))


def test_on_an_smb_share_a_sigkill_mid_patch_keeps_what_was_stored(
    serve_process: Callable[..., ServeProcess],
    redis_url: str,
    state: redis.Redis,
    samba: SambaServer,
) -> None:
    folder = f"crash-{uuid.uuid4().hex[:12]}"
    server = serve_process(
        "--storage", samba.url(folder), "--redis-url", redis_url, *LOCK_OPTIONS,
        env={"TUSSERVER_SMB_PASSWORD": samba.password},
    )  # fmt: skip

    run_kills([server], state, partial_size(samba.share_dir / folder))


def test_a_checksummed_chunk_cut_by_sigkill_counts_for_nothing(
    serve_process: Callable[..., ServeProcess], redis_url: str, state: redis.Redis, storage: Path
) -> None:
    server = serve_process("--storage", storage, "--redis-url", redis_url, *LOCK_OPTIONS)
    chunk = b"".join(source(0, 64 * MiB))
    created = httpx.post(server.endpoint, headers={**TUS, "Upload-Length": str(len(chunk))})
    path = created.headers["Location"]
    checksum = base64.b64encode(hashlib.sha1(chunk).digest()).decode()
    head = patch_head(path, 0, len(chunk), f"Upload-Checksum: sha1 {checksum}\r\n")
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head)
        # Well past any checkpoint, well short of the whole chunk.
        for start in range(0, 48 * MiB, PIECE):
            sock.sendall(chunk[start : start + PIECE])
        time.sleep(1.5)
        assert partial_size(storage)(upload_id_of(path)) >= 16 * MiB
        server.kill()
    server.start()

    assert offset_once_free(server, path) == 0
    assert state.hget(f"tus:{{{upload_id_of(path)}}}:info", "offset") == "0"

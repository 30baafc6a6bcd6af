"""Behaviour that depends on the transport: bodies cut short, stalled, raced or chunked.

The requests here are written by hand on raw sockets, so a test decides exactly
which body bytes reach the server and when, and can leave a request half sent
(as a dropped mobile connection or a half-dead proxy does).
"""

from __future__ import annotations

import hashlib
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import redis

from tests.server_fixtures import OCTETS, TUS, RunningServer

KiB = 1024
MiB = 1024 * KiB

StartServer = Callable[..., RunningServer]


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes


class RawRequest:
    """One HTTP/1.1 request written by hand on its own connection."""

    def __init__(self, url: str, method: str, headers: dict[str, str]) -> None:
        parts = urlsplit(url)
        assert parts.hostname == "127.0.0.1" and parts.port is not None
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
        lines = [f"{method} {parts.path} HTTP/1.1", f"Host: {parts.netloc}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        self._received = b""

    def send(self, data: bytes) -> bool:
        """Send body bytes; False when the server no longer takes them."""
        try:
            self.sock.sendall(data)
        except OSError:
            return False
        return True

    def answered(self) -> bool:
        """Whether the server has started to answer (or closed the connection)."""
        readable, _, _ = select.select([self.sock], [], [], 0)
        return bool(readable)

    def response(self, timeout: float = 15.0) -> RawResponse:
        """Read the response head and its Content-Length body."""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self._received:
            self._recv(deadline)
        head, _, body = self._received.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            body += self._recv(deadline)
        return RawResponse(int(status_line.split()[1]), headers, body[:length])

    def close(self) -> None:
        self.sock.close()

    def _recv(self, deadline: float) -> bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no complete response in time")
        self.sock.settimeout(remaining)
        data = self.sock.recv(64 * KiB)
        if not data:
            raise ConnectionError("the server closed the connection without a full response")
        self._received += data
        return data


@contextmanager
def raw_patch(upload_url: str, offset: int, *, content_length: int | None) -> Iterator[RawRequest]:
    """A PATCH whose body the test sends itself; chunked when content_length is None."""
    headers = {**TUS, "Content-Type": OCTETS, "Upload-Offset": str(offset)}
    if content_length is None:
        headers["Transfer-Encoding"] = "chunked"
    else:
        headers["Content-Length"] = str(content_length)
    request = RawRequest(upload_url, "PATCH", headers)
    try:
        yield request
    finally:
        request.close()


def send_in_pieces(request: RawRequest, data: bytes, piece: int = 64 * KiB) -> None:
    for start in range(0, len(data), piece):
        assert request.send(data[start : start + piece]), "the server stopped reading early"


def chunked(data: bytes, piece: int = 64 * KiB) -> bytes:
    """``data`` in HTTP/1.1 chunked framing, without the terminating chunk."""
    framed = bytearray()
    for start in range(0, len(data), piece):
        part = data[start : start + piece]
        framed += b"%x\r\n" % len(part) + part + b"\r\n"
    return bytes(framed)


def upload_id(upload_url: str) -> str:
    return upload_url.rsplit("/", 1)[1]


def partial_bytes(server: RunningServer, upload_url: str) -> bytes:
    return (server.partials / upload_id(upload_url)).read_bytes()


def partial_range(server: RunningServer, upload_url: str, start: int, end: int) -> bytes:
    with open(server.partials / upload_id(upload_url), "rb") as partial:
        partial.seek(start)
        return partial.read(end - start)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def head_offset(server: RunningServer, upload_url: str) -> int:
    response = server.head(upload_url)
    assert response.status_code == 200, response.text
    return int(response.headers["Upload-Offset"])


def finish_upload(server: RunningServer, upload_url: str, source: bytes, offset: int) -> None:
    """PATCH the rest of ``source`` from ``offset``; the finished file must equal it."""
    response = server.patch(upload_url, offset, source[offset:])
    assert response.status_code == 204, response.text
    assert int(response.headers["Upload-Offset"]) == len(source)
    final = server.storage / upload_id(upload_url)
    assert file_sha256(final) == sha256(source)
    assert not (server.partials / upload_id(upload_url)).exists()


def trickle(request: RawRequest, body: bytes, piece: int, pause: float) -> None:
    """Send ``body`` slowly, stopping early once the server answers."""
    for start in range(0, len(body), piece):
        if request.answered() or not request.send(body[start : start + piece]):
            return
        time.sleep(pause)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.001)


def describe_mismatch(stored: bytes, source: bytes, start: int) -> str:
    """Where ``stored`` (read from ``start``) departs from ``source``, and what is there."""
    first = next(i for i in range(len(stored)) if stored[i] != source[start + i])
    found = source.find(stored[first : first + 4096])
    where = "bytes never sent" if found < 0 else f"the bytes sent at {found}"
    return f"stored byte {start + first} onwards holds {where}"


def test_client_disconnect_mid_patch_keeps_received_bytes_and_upload_resumes_to_identical_file(
    tus_server: StartServer, redis_url: str
) -> None:
    server = tus_server(block_size=256 * KiB, lock_ttl=30)
    source = os.urandom(8 * MiB)
    sent = 3 * MiB
    upload_url = server.create(len(source))
    lock_key = f"tus:{{{upload_id(upload_url)}}}:lock"

    with raw_patch(upload_url, 0, content_length=len(source)) as request:
        send_in_pieces(request, source[:sent])
    # The socket is closed: the server sees the body end early. It must end
    # the PATCH by itself (no HEAD asking it to), long before the lock lapses.
    state = redis.Redis.from_url(redis_url)
    try:
        wait_until(lambda: not state.exists(lock_key), "the PATCH ended after the disconnect")
    finally:
        state.close()

    offset = -1
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        current = head_offset(server, upload_url)
        if current > 0 and current == offset:
            break
        offset = current
        time.sleep(0.3)
    else:
        raise AssertionError(f"the offset did not settle above 0 (last {offset})")

    assert 0 < offset <= sent
    assert partial_bytes(server, upload_url)[:offset] == source[:offset]
    finish_upload(server, upload_url, source, offset)


def test_head_taking_over_a_streaming_patch_never_stores_a_byte_twice(
    tus_server: StartServer, redis_url: str
) -> None:
    # A HEAD that arrives while the PATCH is busy handing blocks to storage
    # makes it stop mid-stream; what it commits must be exactly the bytes it
    # received, once each. Repeated because the hand-over moment varies.
    server = tus_server(block_size=256 * KiB)
    rounds, burst = 16, 2 * MiB
    source = os.urandom(rounds * burst + 1)
    upload_url = server.create(len(source))
    lock_key = f"tus:{{{upload_id(upload_url)}}}:lock"
    state = redis.Redis.from_url(redis_url)
    offset = 0
    try:
        for _ in range(rounds):
            with raw_patch(upload_url, offset, content_length=len(source) - offset) as request:
                send_in_pieces(request, source[offset : offset + burst])
                wait_until(lambda: bool(state.exists(lock_key)), "the PATCH took the lock")
                taken_over = head_offset(server, upload_url)
                answer = request.response(timeout=10)
            assert offset < taken_over <= offset + burst, (offset, taken_over)
            assert answer.status == 204, answer
            assert int(answer.headers["upload-offset"]) == taken_over
            stored = partial_range(server, upload_url, offset, taken_over)
            assert stored == source[offset:taken_over], describe_mismatch(stored, source, offset)
            offset = taken_over
    finally:
        state.close()
    finish_upload(server, upload_url, source, offset)


def test_two_concurrent_patches_never_interleave_bytes(tus_server: StartServer) -> None:
    server = tus_server(block_size=64 * KiB)
    size = 1 * MiB
    bodies = {"A": b"A" * size, "B": b"B" * size}
    # B starts later but sends faster: two writers that were not kept apart
    # would each leave the last word on part of the range.
    pace = {"A": (32 * KiB, 0.03), "B": (64 * KiB, 0.02)}
    # Longer than either body, so neither finishes the upload.
    upload_url = server.create(4 * size)
    responses: dict[str, RawResponse] = {}
    failures: dict[str, BaseException] = {}

    def patch(name: str) -> None:
        try:
            with raw_patch(upload_url, 0, content_length=size) as request:
                piece, pause = pace[name]
                trickle(request, bodies[name], piece, pause)
                responses[name] = request.response(timeout=20)
        except BaseException as exc:
            failures[name] = exc

    threads = {name: threading.Thread(target=patch, args=(name,)) for name in bodies}
    threads["A"].start()
    time.sleep(0.15)
    threads["B"].start()
    for thread in threads.values():
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads.values()), "a PATCH never finished"
    assert not failures, failures

    offset = head_offset(server, upload_url)
    stored = partial_bytes(server, upload_url)[:offset]
    assert offset > 0, "neither PATCH stored anything"
    assert stored in (bodies["A"][:offset], bodies["B"][:offset]), (
        f"the committed {offset} bytes mix both bodies: "
        f"{stored.count(b'A')} x 'A', {stored.count(b'B')} x 'B'"
    )
    for name, response in responses.items():
        assert response.status in (204, 409, 423), (name, response)
        if response.status in (204, 409):
            answered = int(response.headers["upload-offset"])
            assert answered <= offset, (name, response)
    assert any(
        response.status == 204 and int(response.headers["upload-offset"]) == offset
        for response in responses.values()
    ), responses


def test_reconnecting_client_head_takes_over_from_stale_patch_within_seconds(
    tus_server: StartServer,
) -> None:
    lock_wait = 3.0
    server = tus_server(block_size=64 * KiB, idle_timeout=60, lock_wait=lock_wait)
    source = os.urandom(4 * MiB)
    sent = 1 * MiB + 12345
    upload_url = server.create(len(source))

    with raw_patch(upload_url, 0, content_length=len(source)) as stalled:
        send_in_pieces(stalled, source[:sent])
        time.sleep(0.5)  # the server has read what was sent; the client now stays silent

        started = time.monotonic()
        with httpx.Client(timeout=30) as reconnected:
            head = reconnected.head(upload_url, headers=TUS)
        elapsed = time.monotonic() - started

        assert head.status_code == 200, head.text
        assert elapsed < lock_wait + 2, f"HEAD took {elapsed:.1f} s"
        offset = int(head.headers["Upload-Offset"])
        assert offset == sent
        assert partial_bytes(server, upload_url)[:offset] == source[:offset]
        # The stalled PATCH was asked to stop and says how far it got.
        answer = stalled.response(timeout=10)
        assert answer.status == 204
        assert int(answer.headers["upload-offset"]) == sent

    finish_upload(server, upload_url, source, offset)


def test_idle_patch_is_ended_after_idle_timeout_and_bytes_are_kept(
    tus_server: StartServer, redis_url: str
) -> None:
    idle_timeout = 1.0
    # A lock TTL far beyond the idle timeout: the lock must go because the
    # server ended the PATCH, not because it lapsed.
    server = tus_server(block_size=64 * KiB, idle_timeout=idle_timeout, lock_ttl=30)
    source = os.urandom(2 * MiB)
    sent = 300 * KiB + 7
    upload_url = server.create(len(source))
    lock_key = f"tus:{{{upload_id(upload_url)}}}:lock"
    state = redis.Redis.from_url(redis_url)
    try:
        with raw_patch(upload_url, 0, content_length=len(source)) as idle:
            send_in_pieces(idle, source[:sent])
            last_byte_at = time.monotonic()
            # The server takes the lock once it has read the request head;
            # only then does "the lock is gone" mean the PATCH was ended.
            wait_until(lambda: state.exists(lock_key), "the PATCH took the lock", timeout=5)
            wait_until(
                lambda: not state.exists(lock_key),
                "the idle PATCH let go of the lock",
                timeout=idle_timeout + 5,
            )
            released_after = time.monotonic() - last_byte_at

            assert released_after >= idle_timeout * 0.9, (
                f"the PATCH was ended {released_after:.2f} s after its last byte, "
                f"before the idle timeout"
            )
            answer = idle.response(timeout=10)
            assert answer.status == 204
            assert int(answer.headers["upload-offset"]) == sent
    finally:
        state.close()

    assert head_offset(server, upload_url) == sent
    assert partial_bytes(server, upload_url)[:sent] == source[:sent]
    finish_upload(server, upload_url, source, sent)


def test_patch_waiting_for_a_busy_lock_gets_423_after_lock_wait(
    tus_server: StartServer, redis_url: str
) -> None:
    lock_wait = 0.5
    server = tus_server(lock_wait=lock_wait)
    upload_url = server.create(1000)
    lock_key = f"tus:{{{upload_id(upload_url)}}}:lock"
    state = redis.Redis.from_url(redis_url)
    try:
        # A holder in no server process: nobody answers the release request.
        assert state.set(lock_key, "other", px=60000)

        started = time.monotonic()
        response = server.patch(upload_url, 0, b"x" * 1000)
        elapsed = time.monotonic() - started

        assert response.status_code == 423, response.text
        assert response.json()["error"]["retryable"] is True
        assert response.headers["Tus-Resumable"] == "1.0.0"
        assert lock_wait * 0.9 <= elapsed < lock_wait + 2, f"423 after {elapsed:.2f} s"
        assert state.get(lock_key) == b"other"
        state.delete(lock_key)
    finally:
        state.close()

    assert head_offset(server, upload_url) == 0
    assert partial_bytes(server, upload_url) == b""


def test_chunked_patch_without_content_length_is_streamed(tus_server: StartServer) -> None:
    server = tus_server(block_size=64 * KiB)
    source = os.urandom(2 * MiB + 1)
    first = 1 * MiB
    upload_url = server.create(len(source))
    partial = server.partials / upload_id(upload_url)

    with raw_patch(upload_url, 0, content_length=None) as request:
        assert request.send(chunked(source[:first]))
        # Bytes reach storage while the body is still arriving: no buffering
        # of a whole body whose length nobody announced.
        deadline = time.monotonic() + 10
        while partial.stat().st_size < first // 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        on_disk = partial.read_bytes()
        assert len(on_disk) >= first // 2, f"only {len(on_disk)} bytes stored mid-body"
        assert on_disk == source[: len(on_disk)]
        assert not request.answered()

        assert request.send(chunked(source[first:]) + b"0\r\n\r\n")
        answer = request.response()

    assert answer.status == 204, answer
    assert int(answer.headers["upload-offset"]) == len(source)
    assert file_sha256(server.storage / upload_id(upload_url)) == sha256(source)


def test_chunked_patch_running_past_upload_length_is_refused_with_413_and_commits_nothing(
    tus_server: StartServer,
) -> None:
    server = tus_server(block_size=64 * KiB)
    length = 256 * KiB
    upload_url = server.create(length)

    with raw_patch(upload_url, 0, content_length=None) as request:
        # Without Content-Length the limit can only be enforced while reading.
        trickle(request, chunked(os.urandom(length + 64 * KiB)), piece=16 * KiB, pause=0)
        if not request.answered():
            request.send(b"0\r\n\r\n")
        answer = request.response()

    assert answer.status == 413, answer
    assert head_offset(server, upload_url) == 0


def test_patch_pausing_longer_than_the_lock_ttl_keeps_its_lock_and_its_bytes(
    tus_server: StartServer, redis_url: str
) -> None:
    # The client pauses (laptop lid, network switch) for longer than the lock
    # TTL but less than the idle timeout: its PATCH is alive, so the lock
    # must still be its own, and a HEAD must take over from it rather than
    # find no lock and report the offset from before the PATCH.
    server = tus_server(block_size=64 * KiB, lock_ttl=1.5, idle_timeout=30)
    source = os.urandom(4 * MiB)
    sent = 2 * MiB
    upload_url = server.create(len(source))
    lock_key = f"tus:{{{upload_id(upload_url)}}}:lock"
    state = redis.Redis.from_url(redis_url)
    try:
        with raw_patch(upload_url, 0, content_length=len(source)) as paused:
            send_in_pieces(paused, source[:sent])
            wait_until(lambda: bool(state.exists(lock_key)), "the PATCH took the lock", timeout=5)
            time.sleep(3.0)  # twice the TTL, well inside the idle timeout
            assert state.exists(lock_key), "the live PATCH lost its lock"

            assert head_offset(server, upload_url) == sent
            answer = paused.response(timeout=10)
            assert answer.status == 204
            assert int(answer.headers["upload-offset"]) == sent
    finally:
        state.close()
    finish_upload(server, upload_url, source, sent)

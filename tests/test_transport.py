"""Behaviour that depends on the transport: bodies cut short, stalled, raced or chunked.

The requests here are written by hand on raw sockets, so a test decides exactly
which body bytes reach the server and when, and can leave a request half sent
(as a dropped mobile connection or a half-dead proxy does).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.raw_http import RawRequest, RawResponse, chunked, raw_patch, send_in_pieces, wait_until
from tests.server_fixtures import RunningServer
from tusserver import redis_topology, redis_urls

# Every spec runs on each HTTP server `tusserver serve` offers.
pytestmark = pytest.mark.usefixtures("server")

KiB = 1024
MiB = 1024 * KiB

StartServer = Callable[..., RunningServer]


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
    state = redis_topology.connect_sync(redis_urls.parse(redis_url))
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


def test_a_patch_taking_over_a_stalled_patch_never_stores_a_byte_twice(
    tus_server: StartServer, redis_url: str
) -> None:
    # A PATCH whose client went silent mid-stream is taken over by the next
    # PATCH; what it commits must be exactly the bytes it received, once
    # each, even when the take-over lands while blocks are still on their
    # way to storage. Repeated because that moment varies.
    server = tus_server(block_size=256 * KiB, takeover_after=0.05)
    rounds, burst = 16, 2 * MiB
    source = os.urandom(rounds * burst + 1)
    upload_url = server.create(len(source))
    lock_key = f"tus:{{{upload_id(upload_url)}}}:lock"
    state = redis_topology.connect_sync(redis_urls.parse(redis_url))
    offset = 0
    try:
        for _ in range(rounds):
            with raw_patch(upload_url, offset, content_length=len(source) - offset) as request:
                send_in_pieces(request, source[offset : offset + burst])
                wait_until(lambda: bool(state.exists(lock_key)), "the PATCH took the lock")
                taker = server.patch(upload_url, offset, b"")
                answer = request.response(timeout=10)
            # The stalled PATCH is told it lost the upload, never a 2xx,
            # with how far it got.
            assert answer.status == 423, answer
            assert b"upload_taken_over" in answer.body
            taken_over = int(answer.headers["upload-offset"])
            assert offset <= taken_over <= offset + burst, (offset, taken_over)
            # The taker finds the offset moved if the stalled PATCH kept bytes.
            assert taker.status_code == (409 if taken_over > offset else 204), taker.text
            assert head_offset(server, upload_url) == taken_over
            stored = partial_range(server, upload_url, offset, taken_over)
            assert stored == source[offset:taken_over], describe_mismatch(stored, source, offset)
            offset = taken_over
    finally:
        state.close()
    assert offset > 0
    finish_upload(server, upload_url, source, offset)


def test_head_polling_never_interrupts_a_patch_that_is_receiving(
    tus_server: StartServer, redis_url: str
) -> None:
    # A progress page polls HEAD while the PATCH streams: every HEAD answers
    # at once with a committed offset that only grows, the PATCH keeps its
    # lock (same holder) and its connection (no early answer, every piece
    # taken) the whole time, and it runs to the end in one piece.
    server = tus_server(block_size=64 * KiB, checkpoint_bytes=256 * KiB)
    source = os.urandom(8 * MiB)
    upload_url = server.create(len(source))
    lock_key = f"tus:{{{upload_id(upload_url)}}}:lock"
    state = redis_topology.connect_sync(redis_urls.parse(redis_url))
    offsets: list[int] = []
    holders: set[object] = set()
    try:
        with raw_patch(upload_url, 0, content_length=len(source)) as request:
            for start in range(0, len(source), 256 * KiB):
                assert request.send(source[start : start + 256 * KiB]), "the PATCH was cut"
                if start == 0:
                    wait_until(lambda: bool(state.exists(lock_key)), "the PATCH took the lock")
                # Several polls per piece, as a page polling every 20 ms
                # does while a slow uplink sends.
                body_ended = start + 256 * KiB >= len(source)
                for _ in range(3):
                    offsets.append(head_offset(server, upload_url))
                    if not body_ended:  # after its last byte, the PATCH may finish and let go
                        holders.add(state.get(lock_key))
                        assert not request.answered(), f"the PATCH was answered at {start}"
            answer = request.response(timeout=30)
    finally:
        state.close()
    assert answer.status == 204, answer
    assert int(answer.headers["upload-offset"]) == len(source)
    # One holder from first poll to last: no HEAD took, released or broke the lock.
    assert len(holders) == 1 and None not in holders, holders
    assert offsets == sorted(offsets)
    assert 0 < offsets[-1] <= len(source)
    assert head_offset(server, upload_url) == len(source)
    assert file_sha256(server.storage / upload_id(upload_url)) == sha256(source)


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

    # A keeps the upload while its bytes arrive (B waits, never interrupts
    # it): A's whole body counts, and B, which finds the offset moved, is
    # told so. Exactly one 204.
    offset = head_offset(server, upload_url)
    assert offset == size
    assert partial_bytes(server, upload_url)[:offset] == bodies["A"]
    assert responses["A"].status == 204, responses["A"]
    assert int(responses["A"].headers["upload-offset"]) == size
    assert responses["B"].status in (409, 423), responses["B"]


def test_eight_patches_racing_at_one_offset_give_exactly_one_204(
    tus_server: StartServer,
) -> None:
    # Eight clients PATCH the same upload at offset 0 at once, each at a
    # steady pace. One gets the lock and keeps it while it receives; every
    # other one waits and is then refused. None is told 2xx without its
    # bytes counting, and the bytes counted are one body, whole.
    server = tus_server(block_size=64 * KiB, lock_wait=5)
    size = 256 * KiB
    upload_url = server.create(size)
    bodies = {number: bytes([65 + number]) * size for number in range(8)}
    responses: dict[int, RawResponse] = {}
    failures: dict[int, BaseException] = {}
    start = threading.Barrier(len(bodies))

    def patch(number: int) -> None:
        try:
            with raw_patch(upload_url, 0, content_length=size) as request:
                start.wait(10)
                trickle(request, bodies[number], 16 * KiB, 0.02)
                responses[number] = request.response(timeout=30)
        except BaseException as exc:
            failures[number] = exc

    threads = [threading.Thread(target=patch, args=(number,)) for number in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "a PATCH never finished"
    assert not failures, failures

    winners = [number for number, answer in responses.items() if answer.status == 204]
    assert len(winners) == 1, responses
    assert all(answer.status in (204, 409, 423) for answer in responses.values()), responses
    assert head_offset(server, upload_url) == size
    final = server.storage / upload_id(upload_url)
    assert final.read_bytes() == bodies[winners[0]]


def test_reconnecting_client_takes_over_its_stalled_patch_within_the_lock_wait(
    tus_server: StartServer,
) -> None:
    # What tus-js-client does after its connection died unseen by the
    # server: HEAD (answered at once), then PATCH from that offset. The
    # PATCH takes the upload over from the stalled one within the lock wait;
    # if the stalled one kept bytes the HEAD had not seen yet, the client
    # learns it from a 409 and HEADs again, as tus clients do.
    lock_wait = 3.0
    server = tus_server(block_size=64 * KiB, idle_timeout=60, lock_wait=lock_wait)
    source = os.urandom(4 * MiB)
    sent = 1 * MiB + 12345
    upload_url = server.create(len(source))

    with raw_patch(upload_url, 0, content_length=len(source)) as stalled:
        send_in_pieces(stalled, source[:sent])
        time.sleep(0.5)  # the server has read what was sent; the client now stays silent

        offset = head_offset(server, upload_url)
        assert 0 <= offset <= sent
        started = time.monotonic()
        resumed = server.patch(upload_url, offset, source[offset:])
        elapsed = time.monotonic() - started
        if resumed.status_code == 409:
            offset = head_offset(server, upload_url)
            resumed = server.patch(upload_url, offset, source[offset:])
        # The stalled PATCH was told it lost the upload, and how far it got.
        answer = stalled.response(timeout=10)

    assert resumed.status_code == 204, resumed.text
    assert elapsed < lock_wait + 2, f"the take-over took {elapsed:.1f} s"
    assert answer.status == 423, answer
    assert int(answer.headers["upload-offset"]) == sent
    final = server.storage / upload_id(upload_url)
    assert file_sha256(final) == sha256(source)


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
    state = redis_topology.connect_sync(redis_urls.parse(redis_url))
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
    state = redis_topology.connect_sync(redis_urls.parse(redis_url))
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
        assert state.get(lock_key) == "other"
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
    # must still be its own, and it finishes when the client goes on.
    server = tus_server(block_size=64 * KiB, lock_ttl=1.5, idle_timeout=30)
    source = os.urandom(4 * MiB)
    sent = 2 * MiB
    upload_url = server.create(len(source))
    lock_key = f"tus:{{{upload_id(upload_url)}}}:lock"
    state = redis_topology.connect_sync(redis_urls.parse(redis_url))
    try:
        with raw_patch(upload_url, 0, content_length=len(source)) as paused:
            send_in_pieces(paused, source[:sent])
            wait_until(lambda: bool(state.exists(lock_key)), "the PATCH took the lock", timeout=5)
            time.sleep(3.0)  # twice the TTL, well inside the idle timeout
            assert state.exists(lock_key), "the live PATCH lost its lock"

            # Its bytes were committed while it paused (a checkpoint), and the
            # HEAD reads them without interrupting it. All but what is short
            # of a block: bytes are stored a block at a time, and where the
            # server cut the body into pieces decides what the last block
            # held when the client paused.
            assert sent - 64 * KiB < head_offset(server, upload_url) <= sent
            assert paused.send(source[sent:])
            answer = paused.response(timeout=10)
            assert answer.status == 204
            assert int(answer.headers["upload-offset"]) == len(source)
    finally:
        state.close()
    assert file_sha256(server.storage / upload_id(upload_url)) == sha256(source)

"""Memory stays flat under bad requests: an error answer keeps nothing alive.

A shared exception instance, raised again and again, grows its traceback on
every raise and pins each request's frames for the life of the process; that
turned every 404 into a leak anyone could drive. This spec drives 100,000
error answers of every kind through a real ``tusserver serve`` (uvicorn, in
its own process) and bounds the growth of its resident memory.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections import Counter
from collections.abc import Callable

import httpx
import pytest
import redis

from tests.process_fixtures import ServeProcess
from tests.redis_fixtures import short_temp_dir

# Every spec runs on each HTTP server `tusserver serve` offers (RSS is the
# server's whole tree: granian serves in a worker process).
pytestmark = pytest.mark.usefixtures("server")

ANSWERS = 100_000
WARM_UP = 5_000
CONNECTIONS = 16
MAX_GROWTH_MIB = 16


@pytest.fixture
def served(redis_url: str, serve_process: Callable[..., ServeProcess]) -> ServeProcess:
    """``tusserver serve`` in a process of its own, on the session's Redis."""
    folder = short_temp_dir()
    return serve_process(
        "--storage", folder / "files",
        "--data-dir", folder / "data",
        "--redis-url", redis_url,
        # A 423 waits this long for the lock: short, so that 100,000 answers
        # take seconds, not hours.
        "--lock-wait", "1ms",
        "--log-level", "error",
    )  # fmt: skip


def _request(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


Requests = list[tuple[int, bool, bytes]]


def _error_requests(server: ServeProcess, state: redis.Redis) -> Requests:
    """One request per error kind: (expected status, is HEAD, raw bytes), on
    uploads of their own, so that connections never contend for a lock."""
    tus = {"Tus-Resumable": "1.0.0"}
    octets = {**tus, "Content-Type": "application/offset+octet-stream"}

    def create() -> str:
        response = httpx.post(server.endpoint, headers={**tus, "Upload-Length": "100"})
        assert response.status_code == 201, response.text
        return "/files/" + response.headers["Location"].rstrip("/").rsplit("/", 1)[-1]

    plain = create()
    gone = create()
    assert httpx.delete(server.url + gone, headers=tus).status_code == 204
    locked = create()
    # Held by a writer that never lets go: every PATCH waits, then answers 423.
    state.set(f"tus:{{{locked.rsplit('/', 1)[-1]}}}:lock", "someone-else", ex=3600)
    wrong_sum = base64.b64encode(hashlib.sha1(b"other").digest()).decode()
    unknown = "/files/0123456789abcdef0123456789abcdef"
    return [
        (404, False, _request("GET", unknown, tus)),
        (404, True, _request("HEAD", unknown, tus)),
        (410, True, _request("HEAD", gone, tus)),
        (412, False, _request("PATCH", plain, {"Upload-Offset": "0"}, b"hello")),
        (400, False, _request("PATCH", plain, {**octets, "Upload-Offset": "x"}, b"hello")),
        (409, False, _request("PATCH", plain, {**octets, "Upload-Offset": "7"}, b"hello")),
        (415, False, _request("PATCH", plain, {**tus, "Upload-Offset": "0"}, b"hello")),
        (423, False, _request("PATCH", locked, {**octets, "Upload-Offset": "0"}, b"hello")),
        (
            460,
            False,
            _request(
                "PATCH",
                plain,
                {**octets, "Upload-Offset": "0", "Upload-Checksum": f"sha1 {wrong_sum}"},
                b"hello",
            ),
        ),
    ]


async def _read_response(reader: asyncio.StreamReader, head_request: bool) -> int:
    status_line = await reader.readline()
    status = int(status_line.split()[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length and not head_request:
        await reader.readexactly(length)
    return status


async def _drive(server: ServeProcess, requests: list[Requests], count: int) -> Counter[int]:
    """``count`` requests on keep-alive connections, each cycling through its
    own ``requests``."""
    seen: Counter[int] = Counter()
    per_connection = count // CONNECTIONS

    async def connection(own: Requests) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            for number in range(per_connection):
                expected, head_request, raw = own[number % len(own)]
                writer.write(raw)
                status = await _read_response(reader, head_request)
                assert status == expected, (status, expected, raw[:80])
                seen[status] += 1
        finally:
            writer.close()

    await asyncio.wait_for(
        asyncio.gather(*(connection(own) for own in requests)),
        timeout=600,
    )
    return seen


def test_100000_error_answers_of_every_kind_grow_rss_by_less_than_16_mib(
    served: ServeProcess, state: redis.Redis
) -> None:
    requests = [_error_requests(served, state) for _ in range(CONNECTIONS)]
    asyncio.run(_drive(served, requests, WARM_UP))  # allocator and caches settle
    before = served.rss_mib()
    seen = asyncio.run(_drive(served, requests, ANSWERS))
    after = served.rss_mib()
    assert set(seen) == {404, 410, 412, 400, 409, 415, 423, 460}
    assert sum(seen.values()) >= ANSWERS - CONNECTIONS
    assert after - before < MAX_GROWTH_MIB, f"RSS {before:.0f} -> {after:.0f} MiB"

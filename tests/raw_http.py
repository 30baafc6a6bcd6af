"""HTTP/1.1 requests written by hand on raw sockets, so a test decides exactly
which body bytes reach the server and when, and can leave a request half sent
(as a dropped mobile connection or a half-dead proxy does).
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

from tests.server_fixtures import OCTETS, TUS

KiB = 1024


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
def raw_patch(
    upload_url: str, offset: int, *, content_length: int | None, **extra: str
) -> Iterator[RawRequest]:
    """A PATCH whose body the test sends itself; chunked when content_length is None.

    ``extra`` headers are sent as given (e.g. ``{"Upload-Checksum": ...}``).
    """
    headers = {**TUS, "Content-Type": OCTETS, "Upload-Offset": str(offset), **extra}
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


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.001)

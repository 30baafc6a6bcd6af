"""Fixtures for the end-to-end specs with the real JavaScript clients.

``browser_harness``: tests/browser installed with ``npm ci`` (its lock file)
and its test page bundled with esbuild, once per session. ``static_site``:
that page served on its own loopback port, i.e. another origin than any
tusserver. ``js_examples`` and ``dashboard_example``: the same for
examples/js and its Uppy Dashboard page. (Node scripts are run with a
bounded time by ``run_node`` in tests/test_node_clients.py.)
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.server_fixtures import free_port

HARNESS = Path(__file__).resolve().parent / "browser"
EXAMPLES_JS = Path(__file__).resolve().parent.parent / "examples" / "js"
CHROMIUM = Path("/usr/bin/chromium")
NPM_TIMEOUT = 300


def pseudo_random_bytes(size: int, seed: int) -> bytes:
    """xorshift32, four bytes little-endian per step: the page's generator."""
    x = seed & 0xFFFFFFFF or 1
    out = bytearray()
    for _ in range((size + 3) // 4):
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        out += x.to_bytes(4, "little")
    return bytes(out[:size])


def node_major() -> int:
    node = shutil.which("node")
    assert node is not None, "Node.js is needed for the end-to-end specs (.ci/run installs it)"
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True)
    return int(version.stdout.strip().lstrip("v").split(".")[0])


def npm_install_and_build(folder: Path, build: bool) -> None:
    """``npm ci`` from the lock file, then ``npm run build`` if asked."""
    assert node_major() >= 20, "Node.js 20 or newer is needed (playwright-core, tus-js-client)"
    npm = shutil.which("npm")
    assert npm is not None, "npm is needed for the end-to-end specs (.ci/run installs it)"
    commands = [[npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"]]
    if build:
        commands.append([npm, "run", "--silent", "build"])
    for command in commands:
        done = subprocess.run(
            command, cwd=folder, capture_output=True, text=True, timeout=NPM_TIMEOUT, check=False
        )
        assert done.returncode == 0, f"{' '.join(command[1:])} failed:\n{done.stdout}{done.stderr}"


@pytest.fixture(scope="session")
def browser_harness() -> Path:
    npm_install_and_build(HARNESS, build=True)
    return HARNESS


@dataclass
class StaticSite:
    origin: str  # e.g. http://127.0.0.1:PORT

    @property
    def page(self) -> str:
        return self.origin + "/index.html"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve_directory(directory: Path) -> Iterator[StaticSite]:
    """``directory`` served on a port of its own (an origin of its own)."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield StaticSite(f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def static_site(browser_harness: Path) -> Iterator[StaticSite]:
    """The bundled test page, served from its own port (its own origin)."""
    with serve_directory(browser_harness / "dist") as site:
        yield site


@pytest.fixture(scope="session")
def js_examples() -> Path:
    """examples/js installed with ``npm ci`` and its Dashboard page bundled."""
    npm_install_and_build(EXAMPLES_JS, build=True)
    return EXAMPLES_JS


@pytest.fixture
def dashboard_example(js_examples: Path) -> Iterator[StaticSite]:
    """The example's Uppy Dashboard page, laid out as ``npm run dashboard``
    serves it (index.html at the root, the bundle under dist/), on its own
    port (its own origin)."""
    with serve_directory(js_examples / "dashboard") as site:
        yield site


class CuttingProxy:
    """A loopback TCP proxy that lets ``limit`` client-to-server bytes through
    (over all its connections), then either drops that connection
    (``stall=False``: a network failure mid-PATCH) or holds it open without
    forwarding (``stall=True``, until ``release()``: a client frozen
    mid-PATCH). Later connections pass freely.
    """

    def __init__(self, target_port: int, limit: int, *, stall: bool = False) -> None:
        self.target_port = target_port
        self.limit: int | None = limit
        self.stall = stall
        self.forwarded = 0
        self.connections = 0
        self.stalled = threading.Event()
        self.released = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            upstream.settimeout(None)
            with self._lock:
                self.connections += 1
                self._sockets += [client, upstream]
            for source, sink, counted in ((client, upstream, True), (upstream, client, False)):
                thread = threading.Thread(
                    target=self._pump, args=(source, sink, counted), daemon=True
                )
                self._threads.append(thread)
                thread.start()

    def _pump(self, source: socket.socket, sink: socket.socket, counted: bool) -> None:
        try:
            while data := source.recv(65536):
                if counted:
                    data = self._admit(data, source, sink)
                    if data is None:
                        return
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _admit(self, data: bytes, source: socket.socket, sink: socket.socket) -> bytes | None:
        """The part of ``data`` to forward; None once this connection is cut."""
        with self._lock:
            if self.limit is None or self.forwarded + len(data) <= self.limit:
                self.forwarded += len(data)
                return data
            allowed = data[: self.limit - self.forwarded]
            self.forwarded = self.limit
            self.limit = None
        sink.sendall(allowed)
        if self.stall:
            self.stalled.set()
            self.released.wait(60)
        return None

    def release(self) -> None:
        """End every connection now (a held one included)."""
        self.released.set()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.release()
        self._listener.close()
        for thread in self._threads:
            thread.join(10)
        for sock in self._sockets:
            sock.close()


@pytest.fixture
def cutting_proxy() -> Iterator[Callable[..., CuttingProxy]]:
    """Factory: ``cutting_proxy(target_port, limit, stall=...)``; all closed at the end."""
    proxies: list[CuttingProxy] = []

    def start(target_port: int, limit: int, *, stall: bool = False) -> CuttingProxy:
        proxies.append(CuttingProxy(target_port, limit, stall=stall))
        return proxies[-1]

    yield start
    for proxy in proxies:
        proxy.close()

"""Fixtures for the end-to-end specs with the real JavaScript clients.

``browser_harness``: tests/browser installed with ``npm ci`` (its lock file)
and its test page bundled with esbuild, once per session. ``static_site``:
that page served on its own loopback port, i.e. another origin than any
tusserver. ``run_node``: a Node script with a bounded run time.
"""

from __future__ import annotations

import functools
import http.server
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.server_fixtures import free_port

HARNESS = Path(__file__).resolve().parent / "browser"
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


@pytest.fixture
def static_site(browser_harness: Path) -> Iterator[StaticSite]:
    """The bundled test page, served from its own port (its own origin)."""
    handler = functools.partial(_QuietHandler, directory=str(browser_harness / "dist"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield StaticSite(f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)

"""``tusserver serve`` in a process of its own, as an operator runs it.

For specs about the process itself: its memory, and what survives when it is
killed. ``serve_process(*options)`` starts one on a free 127.0.0.1 port and
waits until it answers; every process a test started is stopped after it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.server_fixtures import free_port


class ServeProcess:
    def __init__(self, options: list[str], env: dict[str, str]) -> None:
        self.options = options
        self.env = env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.endpoint = self.url + "/files/"
        self.process: subprocess.Popen[bytes] | None = None
        # A file, not a pipe: a server that logs more than a pipe holds
        # would block on a pipe nobody reads. Restarts append to it.
        self.log: IO[bytes] = tempfile.TemporaryFile()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 30) -> None:
        """Start (again, on the same port) and wait until OPTIONS answers."""
        command = [
            sys.executable, "-m", "tusserver", "serve", "--port", str(self.port), *self.options
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, env=self.env, stdout=subprocess.DEVNULL, stderr=self.log
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                httpx.options(self.endpoint, timeout=1)
                return
            except httpx.TransportError:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"tusserver serve exited: {self.log_text()[-2000:]}"
                    ) from None
                if time.monotonic() > deadline:
                    raise RuntimeError("tusserver serve did not start") from None
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no commit, no lock released."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(15)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_text(self) -> str:
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")

    def serving_processes(self) -> list[psutil.Process]:
        """The process and its workers: granian serves in a worker process
        even with one worker (an embedded redis-server is not counted)."""
        main = psutil.Process(self.pid)
        workers = [p for p in main.children(recursive=True) if "redis" not in p.name()]
        return [main, *workers]

    def rss_mib(self) -> float:
        return sum(p.memory_info().rss for p in self.serving_processes()) / 2**20

    def bytes_read(self) -> int:
        """Everything the processes have read so far with read(2): files, and
        sockets on uvicorn. Not sockets on granian, which reads them with
        recv(2), which the kernel's I/O accounting does not count: for bytes
        from clients, ``socket_bytes_read`` or the metrics."""
        return sum(int(p.io_counters().read_chars) for p in self.serving_processes())

    def socket_bytes_read(self) -> int:
        """What the server has read so far from its open client connections,
        whatever the HTTP server: the kernel's count of bytes each received,
        less what still waits in its receive queue (``ss``). A connection
        that closed no longer counts."""
        listing = subprocess.run(
            ["ss", "-tinH", "state", "established", f"sport = :{self.port}"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
        total, queued = 0, 0
        for line in listing.splitlines():
            if line[:1].isspace():
                match = re.search(r"\bbytes_received:(\d+)", line)
                total += int(match.group(1)) if match else 0
            elif line.strip():
                queued += int(line.split()[0])  # Recv-Q: received, not yet read
        return total - queued

    def metric(self, name: str) -> float:
        """An unlabelled sample of the server's /metrics (its workers summed)."""
        response = httpx.get(self.url + "/metrics", timeout=10)
        response.raise_for_status()
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                if sample.name == name and not sample.labels:
                    return float(sample.value)
        return 0.0


@pytest.fixture
def serve_process() -> Iterator[Callable[..., ServeProcess]]:
    """Factory: ``serve_process("--storage", dir, ..., env={...})`` -> a started server."""
    started: list[ServeProcess] = []

    def start(*options: str | Path, env: dict[str, str] | None = None) -> ServeProcess:
        server = ServeProcess([str(option) for option in options], {**os.environ, **(env or {})})
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()
        server.log.close()

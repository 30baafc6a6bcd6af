"""What the side-by-side benches (auth_bench, commit_bench, hook_bench) share
about the servers they start: a free loopback port, waiting until one
answers, and the CPU time of its whole process tree (uvicorn and its Redis).
"""

from __future__ import annotations

import socket
import subprocess
import time

import httpx
import psutil


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_up(process: subprocess.Popen[bytes], url: str, what: str) -> None:
    """Return once ``url`` answers; RuntimeError if ``process`` exits or 60 s pass."""
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.options(url, timeout=1)
            return
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what}: did not start") from None
            time.sleep(0.1)


def tree_cpu_seconds(process: subprocess.Popen[bytes]) -> float:
    """User and system CPU seconds of ``process`` and all its descendants."""
    parent = psutil.Process(process.pid)
    total = 0.0
    for member in [parent, *parent.children(recursive=True)]:
        times = member.cpu_times()
        total += times.user + times.system
    return total

#!/usr/bin/env python3
"""What the metrics cost: HEAD requests/s and one-PATCH MB/s with metrics on and off.

Starts `tusserver serve` twice, side by side, each in its own process with
its own embedded Redis, pinned to CPU 0 (the client on CPU 1): once as it
runs by default (metrics on, `/metrics` on the main port), once with
`--no-metrics`. Both log at warning level without an access log, so
neither pays for log lines. Each round, in alternating order:

- HEAD: the same number of HEAD requests over a few keep-alive connections
  (each its own upload): requests/s and the server tree's CPU time per request;
- PATCH: one upload of `--patch-mib` MiB sent as one PATCH from memory over
  one connection: MB/s and CPU time per MiB.

It prints, per setting, the best and median of the rounds, and the cost of
metrics two ways: the median over the rounds of "on" against "off" measured
back to back in that round (paired, so load from other work on the machine
moves both sides of a pair alike), and the server tree's CPU time per request
or MiB (the lowest of the rounds). Last, the recording alone, in this
process: the outermost layer (tusserver/observing.py) around an app that
answers at once, with metrics on and off, in microseconds per request, and
what that is of a HEAD's CPU time. The budget is 3 %. It asserts nothing
about speed; it exits 1 only if a server answers something unexpected or a
scrape does not show the requests it served.

Usage: python bench/metrics_bench.py [--requests 5000] [--connections 8]
       [--patch-mib 128] [--repeat 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

# Run as `python bench/<name>.py`: this folder is on sys.path.
from served_process import free_port, tree_cpu_seconds, wait_until_up

REPO_DIR = Path(__file__).resolve().parent.parent
SERVER_CPU, CLIENT_CPU = 0, 1
MIB = 1024 * 1024
SETTINGS = {"on": [], "off": ["--no-metrics"]}


@dataclass
class Served:
    setting: str
    process: subprocess.Popen[bytes]
    port: int
    head_rates: list[float] = field(default_factory=list)
    head_cpu_us: list[float] = field(default_factory=list)
    patch_rates: list[float] = field(default_factory=list)
    patch_cpu_ms: list[float] = field(default_factory=list)  # per MiB

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/files/"


def start(setting: str, workdir: Path) -> Served:
    port = free_port()
    folder = workdir / setting
    process = subprocess.Popen(
        [sys.executable, "-m", "tusserver", "serve", "--port", str(port),
         "--storage", str(folder / "files"), "--data-dir", str(folder / "data"),
         "--log-level", "warning", *SETTINGS[setting]],
        cwd=REPO_DIR,
        preexec_fn=lambda: os.sched_setaffinity(0, {SERVER_CPU}),
    )  # fmt: skip
    wait_until_up(process, f"http://127.0.0.1:{port}/files/", f"metrics {setting}: the server")
    return Served(setting, process, port)


def create_upload(served: Served, length: int) -> str:
    headers = {"Tus-Resumable": "1.0.0", "Upload-Length": str(length)}
    created = httpx.post(served.endpoint, headers=headers)
    if created.status_code != 201:
        raise RuntimeError(f"{served.setting}: POST answered {created.status_code}")
    return str(created.headers["Location"])


async def head_rate(served: Served, requests: int, connections: int) -> tuple[float, float]:
    """HEAD requests/s over keep-alive connections, and server CPU us per request."""
    paths = [create_upload(served, 1024) for _ in range(connections)]
    streams = [await asyncio.open_connection("127.0.0.1", served.port) for _ in paths]
    remaining = requests

    async def worker(path: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal remaining
        request = f"HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n\r\n"
        while remaining > 0:
            remaining -= 1
            writer.write(request.encode())
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"{served.setting}: HEAD answered {head[:40]!r}")

    cpu_before = tree_cpu_seconds(served.process)
    started = time.perf_counter()
    await asyncio.gather(*(worker(p, r, w) for p, (r, w) in zip(paths, streams, strict=True)))
    elapsed = time.perf_counter() - started
    cpu = tree_cpu_seconds(served.process) - cpu_before
    for _, writer in streams:
        writer.close()
    return requests / elapsed, cpu / requests * 1e6


async def patch_rate(served: Served, mib: int) -> tuple[float, float]:
    """One PATCH of ``mib`` MiB: MB/s, and server CPU ms per MiB."""
    length = mib * MIB
    path = create_upload(served, length)
    block = os.urandom(MIB)
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    head = (
        f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
        f"Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n"
        f"Content-Length: {length}\r\n\r\n"
    )
    cpu_before = tree_cpu_seconds(served.process)
    started = time.perf_counter()
    writer.write(head.encode())
    for _ in range(mib):
        writer.write(block)
        await writer.drain()
    answer = await reader.readuntil(b"\r\n\r\n")
    elapsed = time.perf_counter() - started
    cpu = tree_cpu_seconds(served.process) - cpu_before
    writer.close()
    if not answer.startswith(b"HTTP/1.1 204"):
        raise RuntimeError(f"{served.setting}: PATCH answered {answer[:40]!r}")
    return length / elapsed / 1e6, cpu / mib * 1e3


def check_scrape(served: Served) -> None:
    """Metrics on: the scrape shows the HEADs; off: there is no /metrics."""
    scraped = httpx.get(f"http://127.0.0.1:{served.port}/metrics")
    if served.setting == "off":
        if scraped.status_code != 404:
            raise RuntimeError(f"metrics off: /metrics answered {scraped.status_code}")
        return
    if 'tusserver_requests_total{method="HEAD",status="200"}' not in scraped.text:
        raise RuntimeError("metrics on: the scrape does not count the HEAD requests")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--patch-mib", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    os.sched_setaffinity(0, {CLIENT_CPU})

    with tempfile.TemporaryDirectory(prefix="metrics-bench-") as tmp:
        served = [start(setting, Path(tmp)) for setting in SETTINGS]
        try:
            for one in served:  # warm-up: imports, Redis scripts, caches
                asyncio.run(head_rate(one, 500, args.connections))
                asyncio.run(patch_rate(one, 16))
            for round_number in range(args.repeat):
                order = served if round_number % 2 == 0 else served[::-1]
                for one in order:
                    rate, cpu_us = asyncio.run(head_rate(one, args.requests, args.connections))
                    one.head_rates.append(rate)
                    one.head_cpu_us.append(cpu_us)
                for one in order:
                    mbs, cpu_ms = asyncio.run(patch_rate(one, args.patch_mib))
                    one.patch_rates.append(mbs)
                    one.patch_cpu_ms.append(cpu_ms)
            for one in served:
                check_scrape(one)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            for one in served:
                one.process.terminate()
                one.process.wait(30)

    on, off = served
    recording_on, recording_off = recording_us()
    print(f"HEAD: {args.connections} keep-alive connections, {args.requests} requests a round;")
    print(f"PATCH: one of {args.patch_mib} MiB a round; {args.repeat} rounds;")
    print(f"server on CPU {SERVER_CPU}, client on CPU {CLIENT_CPU}\n")
    head_pairs = [o / f for o, f in zip(on.head_rates, off.head_rates, strict=True)]
    patch_pairs = [o / f for o, f in zip(on.patch_rates, off.patch_rates, strict=True)]
    rows = [
        ("HEAD req/s, best", max(on.head_rates), max(off.head_rates)),
        ("HEAD req/s, median", statistics.median(on.head_rates),
         statistics.median(off.head_rates)),
        ("HEAD CPU us/req, lowest", min(on.head_cpu_us), min(off.head_cpu_us)),
        ("PATCH MB/s, best", max(on.patch_rates), max(off.patch_rates)),
        ("PATCH MB/s, median", statistics.median(on.patch_rates),
         statistics.median(off.patch_rates)),
        ("PATCH CPU ms/MiB, lowest", min(on.patch_cpu_ms), min(off.patch_cpu_ms)),
    ]  # fmt: skip
    print(f"{'figure':26} {'metrics on':>11} {'off':>11}")
    for label, with_metrics, without in rows:
        print(f"{label:26} {with_metrics:11.1f} {without:11.1f}")
    print("\ncost of metrics (positive: slower, or more CPU, with them)")
    head_cpu = (min(on.head_cpu_us) - min(off.head_cpu_us)) / min(off.head_cpu_us) * 100
    patch_cpu = (min(on.patch_cpu_ms) - min(off.patch_cpu_ms)) / min(off.patch_cpu_ms) * 100
    head_paired = (1 - statistics.median(head_pairs)) * 100
    patch_paired = (1 - statistics.median(patch_pairs)) * 100
    print(f"  HEAD req/s, median of paired rounds   {head_paired:+6.1f}%")
    print(f"  HEAD CPU per request                  {head_cpu:+6.1f}%")
    print(f"  PATCH MB/s, median of paired rounds   {patch_paired:+6.1f}%")
    print(f"  PATCH CPU per MiB                     {patch_cpu:+6.1f}%")
    extra = recording_on - recording_off
    share = extra / min(off.head_cpu_us) * 100
    print(
        f"\nrecording alone, in-process: {recording_on:.1f} us per request on,"
        f" {recording_off:.1f} off: {extra:+.1f} us, {share:.1f} % of a HEAD's CPU"
    )
    return 0


def recording_us(requests: int = 100_000) -> tuple[float, float]:
    """Microseconds per request of the outermost layer around an app that
    answers at once, metrics on and off: the best of 5 runs each."""
    from tusserver import metrics  # the package under test, from this checkout
    from tusserver.observing import Observed

    async def answer(scope: object, receive: object, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def send(message: object) -> None:
        return None

    async def receive() -> dict[str, str]:
        return {"type": "http.request"}

    scope = {
        "type": "http",
        "method": "HEAD",
        "path": "/files/0123456789abcdef0123456789abcdef",
        "headers": [(b"host", b"127.0.0.1"), (b"tus-resumable", b"1.0.0")],
    }

    async def run(recorder: metrics.Recorder) -> float:
        layer = Observed(answer, recorder, access_log=False)
        started = time.perf_counter()
        for _ in range(requests):
            await layer(scope, receive, send)
        return (time.perf_counter() - started) / requests * 1e6

    on: list[float] = []
    off: list[float] = []
    for _ in range(5):
        on.append(asyncio.run(run(metrics.new_recorder())))
        off.append(asyncio.run(run(metrics.Recorder())))
    return min(on), min(off)


if __name__ == "__main__":
    sys.exit(main())

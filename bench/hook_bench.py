#!/usr/bin/env python3
"""What an enabled HTTP hook costs per request: HEAD requests/s and upload
cycles/s with and without hooks.

Serves the same app side by side, each setting in its own process with its
own embedded Redis, pinned to CPU 0 (the client on CPU 1):

- no hooks: the server as it is by default;
- ``--hooks-events pre-access`` only: one blocking hook call before every
  HEAD (and PATCH);
- the upload events only (pre-create, pre-finish, post-create, post-receive,
  post-finish, post-terminate): no hook on a HEAD;
- every event (the default of ``--hooks-url``).

The hooks go to one minimal receiver shared by all servers: a Starlette app
on uvicorn (uvloop, httptools, no access log) that answers every POST with
200 and ``{}``, in its own process, pinned to CPU 1 with the client. Not on
CPU 0: the server's CPU figure is then the server's alone, and the server
is not slowed by a neighbour it would not have in a deployment (where the
receiver is another service). The receiver's latency still adds to each
blocking request, which the requests/s show.

Each round sends the same number of HEAD requests to an upload of each
server over a few keep-alive connections (each connection its own upload),
then runs upload cycles (POST ``Upload-Length: 65536``, then one PATCH of
64 KiB) over the same number of connections, the order of the servers
rotating from round to round. It prints requests/s and cycles/s (best and
median of the rounds) and the CPU time the server's process tree (uvicorn
and its Redis, not the receiver) spent per request or cycle (the lowest of
the rounds), and how much more that is than without hooks: on a machine
shared with other work, CPU time per request moves much less than
requests/s. For the cycles the CPU time is read once the receiver has got
every post-finish of the round (they are delivered in the background, from
a Redis stream), so it includes their delivery. It asserts nothing about
speed; it exits 1 only if a server answers something unexpected.

Usage: python bench/hook_bench.py [--requests 20000] [--cycles 1000] [--connections 8] [--repeat 3]
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

import httpx

# Run as `python bench/<name>.py`: this folder is on sys.path.
from served_process import free_port, tree_cpu_seconds, wait_until_up

REPO_DIR = Path(__file__).resolve().parent.parent
SERVER_CPU, CLIENT_CPU = 0, 1
UPLOAD_SIZE = 64 * 1024

# argv: port. Counts the events it got, by type, for GET /counts.
RECEIVER = """
import sys, uvicorn
from collections import Counter
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
counts = Counter()
async def hook(request):
    body = await request.json()
    counts[body["Type"]] += 1
    return JSONResponse({})
async def seen(request):
    return JSONResponse(dict(counts))
app = Starlette(routes=[Route("/hooks", hook, methods=["POST"]), Route("/counts", seen)])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
            access_log=False)
"""

# argv: port, storage, data dir, hooks URL (or "-"), events (comma-separated).
LAUNCHER = """
import sys, uvicorn
from pathlib import Path
from tusserver import Config, create_app
port, storage, data, url, events = sys.argv[1:6]
fields = {}
if url != "-":
    fields = {"hooks_url": url, "hooks_events": tuple(events.split(","))}
config = Config(storage=storage, data_dir=Path(data), **fields)
uvicorn.run(create_app(config), host="127.0.0.1", port=int(port), log_level="warning",
            access_log=False)
"""

UPLOAD_EVENTS = "pre-create,pre-finish,post-create,post-receive,post-finish,post-terminate"
ALL_EVENTS = UPLOAD_EVENTS + ",pre-terminate,pre-access"

# setting: (label, events or None for no hooks)
SETTINGS: dict[str, tuple[str, str | None]] = {
    "none": ("no hooks", None),
    "pre-access": ("pre-access only (blocking, every HEAD)", "pre-access"),
    "uploads": ("pre-create, pre-finish, post-*", UPLOAD_EVENTS),
    "all": ("every event", ALL_EVENTS),
}


@dataclass
class Served:
    setting: str
    process: subprocess.Popen[bytes]
    port: int
    rates: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)  # server CPU per HEAD
    cycle_rates: list[float] = field(default_factory=list)
    cycle_cpu_us: list[float] = field(default_factory=list)  # server CPU per cycle

    @property
    def events(self) -> str | None:
        return SETTINGS[self.setting][1]

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.process)


def start_receiver() -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", RECEIVER, str(port)],
        preexec_fn=lambda: os.sched_setaffinity(0, {CLIENT_CPU}),
    )
    wait_until_up(process, f"http://127.0.0.1:{port}/counts", "the hook receiver")
    return process, port


def received(receiver_port: int, event: str) -> int:
    counts = httpx.get(f"http://127.0.0.1:{receiver_port}/counts", timeout=5).json()
    return int(counts.get(event, 0))


def start(setting: str, workdir: Path, receiver_port: int) -> Served:
    port = free_port()
    folder = workdir / setting
    events = SETTINGS[setting][1]
    url = "-" if events is None else f"http://127.0.0.1:{receiver_port}/hooks"
    process = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(port), str(folder / "files"), str(folder / "data"),
         url, events or "-"],
        cwd=REPO_DIR,
        preexec_fn=lambda: os.sched_setaffinity(0, {SERVER_CPU}),
    )  # fmt: skip
    wait_until_up(process, f"http://127.0.0.1:{port}/files/", setting)
    return Served(setting, process, port)


async def read_response(reader: asyncio.StreamReader, *, body: bool) -> bytes:
    """The response head; its body (by Content-Length) is read and dropped."""
    head = await reader.readuntil(b"\r\n\r\n")
    if body:
        length = int(header(head, b"content-length") or 0)
        if length > 0:
            await reader.readexactly(length)
    return head


def header(head: bytes, wanted: bytes) -> str | None:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == wanted:
            return value.strip().decode()
    return None


def location_of(head: bytes) -> str:
    location = header(head, b"location")
    if location is None:
        raise RuntimeError("POST answered without a Location")
    return location


def offset_of(head: bytes) -> int | None:
    offset = header(head, b"upload-offset")
    return None if offset is None else int(offset)


async def head_rate(served: Served, requests: int, connections: int) -> tuple[float, float]:
    """HEAD requests/s over ``connections`` keep-alive connections, each on its
    own upload, and the server's CPU microseconds per request."""
    streams = [await asyncio.open_connection("127.0.0.1", served.port) for _ in range(connections)]
    paths = []
    for reader, writer in streams:
        writer.write(
            b"POST /files/ HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
            b"Upload-Length: 1024\r\nContent-Length: 0\r\n\r\n"
        )
        head = await read_response(reader, body=True)
        if not head.startswith(b"HTTP/1.1 201"):
            raise RuntimeError(f"{served.setting}: POST answered {head[:40]!r}")
        paths.append(location_of(head))
    remaining = requests

    async def worker(path: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal remaining
        request = (
            f"HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n\r\n".encode()
        )
        while remaining > 0:
            remaining -= 1
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"{served.setting}: HEAD answered {head[:40]!r}")

    cpu_before = served.cpu_seconds()
    started = time.perf_counter()
    await asyncio.gather(*(worker(p, r, w) for p, (r, w) in zip(paths, streams, strict=True)))
    elapsed = time.perf_counter() - started
    cpu = served.cpu_seconds() - cpu_before
    for _, writer in streams:
        writer.close()
    return requests / elapsed, cpu / requests * 1e6


async def cycle_rate(
    served: Served, cycles: int, connections: int, receiver_port: int, body: bytes
) -> tuple[float, float]:
    """Upload cycles/s (POST, then one PATCH of the whole 64 KiB) over
    ``connections`` keep-alive connections, and the server's CPU microseconds
    per cycle, post-finish deliveries included."""
    streams = [await asyncio.open_connection("127.0.0.1", served.port) for _ in range(connections)]
    create = (
        b"POST /files/ HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
        b"Upload-Length: %d\r\nContent-Length: 0\r\n\r\n" % len(body)
    )
    finishes = served.events is not None and "post-finish" in served.events
    finished_before = received(receiver_port, "post-finish") if finishes else 0
    remaining = cycles

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            writer.write(create)
            head = await read_response(reader, body=True)
            if not head.startswith(b"HTTP/1.1 201"):
                raise RuntimeError(f"{served.setting}: POST answered {head[:40]!r}")
            writer.write(
                f"PATCH {location_of(head)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Tus-Resumable: 1.0.0\r\nContent-Type: application/offset+octet-stream\r\n"
                f"Upload-Offset: 0\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            )
            writer.write(body)
            head = await read_response(reader, body=True)
            if not head.startswith(b"HTTP/1.1 204") or offset_of(head) != len(body):
                raise RuntimeError(f"{served.setting}: PATCH answered {head[:80]!r}")

    cpu_before = served.cpu_seconds()
    started = time.perf_counter()
    await asyncio.gather(*(worker(r, w) for r, w in streams))
    elapsed = time.perf_counter() - started
    deadline = time.monotonic() + 30
    while finishes and received(receiver_port, "post-finish") < finished_before + cycles:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{served.setting}: post-finish not delivered within 30 s")
        await asyncio.sleep(0.05)
    cpu = served.cpu_seconds() - cpu_before
    for _, writer in streams:
        writer.close()
    return cycles / elapsed, cpu / cycles * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000, help="HEAD requests a round")
    parser.add_argument("--cycles", type=int, default=1_000, help="upload cycles a round")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    os.sched_setaffinity(0, {CLIENT_CPU})
    body = os.urandom(UPLOAD_SIZE)

    with tempfile.TemporaryDirectory(prefix="hook-bench-") as tmp:
        workdir = Path(tmp)
        receiver, receiver_port = start_receiver()
        served: list[Served] = []
        try:
            served = [start(setting, workdir, receiver_port) for setting in SETTINGS]
            # A first pass warms every server up (imports, Redis scripts, caches).
            for one in served:
                asyncio.run(head_rate(one, 500, args.connections))
                asyncio.run(cycle_rate(one, 50, args.connections, receiver_port, body))
            for round_number in range(args.repeat):
                shift = round_number % len(served)
                for one in served[shift:] + served[:shift]:
                    rate, cpu_us = asyncio.run(head_rate(one, args.requests, args.connections))
                    one.rates.append(rate)
                    one.cpu_us.append(cpu_us)
                    rate, cpu_us = asyncio.run(
                        cycle_rate(one, args.cycles, args.connections, receiver_port, body)
                    )
                    one.cycle_rates.append(rate)
                    one.cycle_cpu_us.append(cpu_us)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            for process in [one.process for one in served] + [receiver]:
                process.terminate()
                process.wait(30)

    head_base, cycle_base = min(served[0].cpu_us), min(served[0].cycle_cpu_us)
    print(
        f"{args.connections} keep-alive connections; a round: {args.requests} HEAD, then"
        f" {args.cycles} cycles of POST + PATCH {UPLOAD_SIZE // 1024} KiB;"
    )
    print(
        f"{args.repeat} rounds; server on CPU {SERVER_CPU}, client and hook receiver on"
        f" CPU {CLIENT_CPU}; CPU = the server's process tree (uvicorn + Redis)\n"
    )
    print(
        f"{'setting':40} {'HEAD/s':>7} {'median':>7} {'CPU us':>7} {'extra':>6}"
        f" {'cycles/s':>9} {'median':>7} {'CPU us':>7} {'extra':>6}"
    )
    for one in served:
        head_us, cycle_us = min(one.cpu_us), min(one.cycle_cpu_us)
        first = one is served[0]
        head_extra = "-" if first else f"{head_us - head_base:+.0f}"
        cycle_extra = "-" if first else f"{cycle_us - cycle_base:+.0f}"
        print(
            f"{SETTINGS[one.setting][0]:40} {max(one.rates):7.0f}"
            f" {statistics.median(one.rates):7.0f} {head_us:7.0f} {head_extra:>6}"
            f" {max(one.cycle_rates):9.0f} {statistics.median(one.cycle_rates):7.0f}"
            f" {cycle_us:7.0f} {cycle_extra:>6}"
        )
    print("\nHEAD/s, cycles/s: best of the rounds, then the median; CPU us: per HEAD or")
    print("per cycle, lowest of the rounds; extra: CPU us more than without hooks")
    return 0


if __name__ == "__main__":
    sys.exit(main())

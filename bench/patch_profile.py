#!/usr/bin/env python3
"""Fixed costs of tusserver per request: server CPU per HEAD, per POST, and
per PATCH beyond its bytes, with the Redis commands each request sends.

One tusserver (``python -m tusserver serve --workers 1``, embedded Redis) is
started pinned to CPU 0; the client, a blocking keep-alive HTTP/1.1 client on
raw sockets, runs on CPU 1. For each phase the script reads the CPU time of
the server's process tree (Python and Redis apart) before and after, and
the embedded Redis's ``INFO commandstats``, so that it prints:

* CPU µs per HEAD and per POST (``--connections N``: N at a time, each on
  its own keep-alive connection), and Redis commands per request;
* for PATCHes of 4 KiB (as many as POSTs: next to nothing but the fixed
  cost of a PATCH), 1 MiB and 8 MiB (one upload, each PATCH waiting for the
  204 of the one before): MB/s and CPU per PATCH, and a fit of the 1 and
  8 MiB figures to "fixed + size x per byte" (noisy: writeback makes the
  per-byte cost move);
* with ``--py-spy PHASE``, a py-spy profile of the server's Python
  processes during that phase (``head``, ``post``, ``patch0``, ``patch1``, ``patch8``),
  printed as the top functions by own time and by total time.

Figures on a shared machine move by 10-30 % from one run to the next; the
script asserts nothing about speed (exit 1 only when a server answers
wrongly or does not start).

Usage: python bench/patch_profile.py [--server granian|uvicorn] [--file-digest none|sha256]
       [--heads N] [--posts N] [--connections N] [--patch-total MiB] [--py-spy patch8]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import redis

MiB = 1024 * 1024
HOST = "127.0.0.1"
SERVER_CPU = 0
CLIENT_CPU = 1
PATH = "/files/"


class BenchError(RuntimeError):
    """The server answered something the tus protocol does not allow."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class Connection:
    """One keep-alive HTTP/1.1 connection; responses are read head only (no
    tus answer measured here has a body)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def request(
        self, method: str, path: str, headers: dict[str, str], body: memoryview | None = None
    ) -> tuple[int, dict[str, str]]:
        self.send(method, path, headers, body)
        return self.response(method)

    def send(
        self, method: str, path: str, headers: dict[str, str], body: memoryview | None = None
    ) -> None:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}", "Tus-Resumable: 1.0.0"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if body is not None:
            self.sock.sendall(body)

    def response(self, method: str) -> tuple[int, dict[str, str]]:
        while b"\r\n\r\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise BenchError("connection closed before an answer")
            self.buffer += data
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if method == "HEAD" else int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            self.buffer += self.sock.recv(65536)
        self.buffer = self.buffer[length:]
        return status, headers

    def close(self) -> None:
        self.sock.close()


@dataclass
class Usage:
    python: float  # CPU seconds of the server's Python processes
    redis: float  # CPU seconds of the embedded Redis
    commands: collections.Counter[str]


class Server:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.port = free_port()
        self.storage = workdir / "files"
        self.data_dir = workdir / "data"
        command = [
            sys.executable,
            "-m",
            "tusserver",
            "serve",
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--storage",
            str(self.storage),
            "--data-dir",
            str(self.data_dir),
            "--workers",
            "1",
            "--server",
            args.server,
            "--file-digest",
            args.file_digest,
        ]
        self.process = subprocess.Popen(
            command,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=lambda: os.sched_setaffinity(0, {SERVER_CPU}),
        )
        self._wait_ready()
        self.redis = redis.Redis(unix_socket_path=str(self.data_dir / "redis.sock"))

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError("tusserver exited at its start")
            with contextlib.suppress(OSError, BenchError):
                conn = Connection(self.port)
                status, _ = conn.request("OPTIONS", PATH, {})
                conn.close()
                if status == 200:
                    return
            time.sleep(0.2)
        raise BenchError("tusserver did not answer within 60 s")

    def tree(self) -> list[psutil.Process]:
        root = psutil.Process(self.process.pid)
        return [root, *root.children(recursive=True)]

    def python_pids(self) -> list[int]:
        return [proc.pid for proc in self.tree() if "redis" not in proc.name()]

    def usage(self) -> Usage:
        python = redis_cpu = 0.0
        for proc in self.tree():
            with contextlib.suppress(psutil.NoSuchProcess):
                times = proc.cpu_times()
                if "redis" in proc.name():
                    redis_cpu += times.user + times.system
                else:
                    python += times.user + times.system
        stats = self.redis.info("commandstats")
        commands = collections.Counter(
            {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}
        )
        return Usage(python, redis_cpu, commands)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@dataclass
class Phase:
    name: str
    requests: int
    seconds: float
    python: float
    redis: float
    commands: collections.Counter[str]
    nbytes: int = 0


def measure(
    server: Server, name: str, requests: int, run: Callable[[], int], profile: str | None
) -> Phase:
    spy = _start_py_spy(server) if profile == name else None
    before = server.usage()
    started = time.perf_counter()
    nbytes = run()
    seconds = time.perf_counter() - started
    after = server.usage()
    if spy is not None:
        _report_py_spy(*spy)
    commands = after.commands - before.commands
    commands.pop("info", None)  # this script's own
    return Phase(
        name,
        requests,
        seconds,
        after.python - before.python,
        after.redis - before.redis,
        commands,
        nbytes,
    )


def create(conn: Connection, length: int) -> str:
    status, headers = conn.request("POST", PATH, {"Upload-Length": str(length)})
    if status != 201:
        raise BenchError(f"POST answered {status}")
    return urlsplit(headers["location"]).path


def in_flight(
    conns: list[Connection], requests: int, method: str, path: str, expected: int
) -> None:
    """``requests`` requests, one in flight on each connection at a time:
    each round sends one on every connection, then reads every answer, so
    that the server sees as many at once as there are connections (as
    ``bench.py``'s request rates do)."""
    sent = 0
    headers = {"Upload-Length": "1"} if method == "POST" else {}
    while sent < requests:
        batch = conns[: requests - sent]
        for conn in batch:
            conn.send(method, path, headers)
        for conn in batch:
            status, _ = conn.response(method)
            if status != expected:
                raise BenchError(f"{method} answered {status}")
        sent += len(batch)


def upload(conn: Connection, payload: memoryview, total: int, chunk: int) -> int:
    path = create(conn, total)
    offset = 0
    while offset < total:
        size = min(chunk, total - offset)
        status, headers = conn.request(
            "PATCH",
            path,
            {"Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"},
            payload[:size],
        )
        offset += size
        if status != 204 or int(headers["upload-offset"]) != offset:
            raise BenchError(f"PATCH answered {status} at {offset}")
    return total


def _py_spy() -> str:
    return shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))


def _start_py_spy(server: Server) -> tuple[list[subprocess.Popen[bytes]], list[Path]]:
    spies, outputs = [], []
    for pid in server.python_pids():
        output = Path(tempfile.mkstemp(suffix=".txt")[1])
        spies.append(
            subprocess.Popen(
                [
                    _py_spy(),
                    "record",
                    "--pid",
                    str(pid),
                    "--format",
                    "raw",
                    "--threads",
                    "--rate",
                    "250",
                    "--output",
                    str(output),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        outputs.append(output)
    time.sleep(1.0)  # py-spy attaches
    return spies, outputs


def _report_py_spy(spies: list[subprocess.Popen[bytes]], outputs: list[Path]) -> None:
    for spy in spies:
        spy.send_signal(signal.SIGINT)
    for spy in spies:
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for output in outputs:
        with contextlib.suppress(FileNotFoundError):
            for line in output.read_text().splitlines():
                stack, _, count_text = line.rpartition(" ")
                if not count_text.isdigit():
                    continue
                count = int(count_text)
                frames = [_short(frame) for frame in stack.split(";")[1:]]  # [0]: the thread
                if not frames or frames[-1].split(" ")[0] in _WAITS:
                    continue
                samples += count
                own[frames[-1]] += count
                for frame in set(frames):
                    total[frame] += count
        output.unlink(missing_ok=True)
    print(f"\npy-spy: {samples} samples of working threads (waiting ones left out)")
    print("  own time:")
    for frame, count in own.most_common(25):
        print(f"    {100 * count / max(samples, 1):5.1f}%  {frame}")
    print("  total time:")
    for frame, count in total.most_common(40):
        print(f"    {100 * count / max(samples, 1):5.1f}%  {frame}")


# Leaf frames of threads that wait rather than work (py-spy's idle
# detection misses some of them).
_WAITS = frozenset(
    {
        "Condition.wait",
        "Queue.get",
        "Popen.poll",
        "main",  # multiprocessing's resource tracker
        "MPServer._spawn_asgi_lifespan_worker",  # granian's Rust loop, blocked
        "select",
        "poll",
        "_run_once",
        # A pool thread waiting for work: its queue's get() is C, so the
        # thread's own frame is the leaf (a thread at work has a deeper one).
        "_worker",
    }
)


def _short(frame: str) -> str:
    # "function (path/to/module.py:123)" -> "function (module.py)"
    function, _, where = frame.partition(" (")
    module = where.rsplit("/", 1)[-1].split(":", 1)[0]
    return f"{function} ({module})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--server", choices=("uvicorn", "granian"), default="granian")
    parser.add_argument("--file-digest", choices=("none", "sha256"), default="none")
    parser.add_argument("--heads", type=int, default=5000)
    parser.add_argument("--posts", type=int, default=2000)
    parser.add_argument(
        "--connections",
        type=int,
        default=1,
        help="HEADs and POSTs in flight at a time, each on its own connection",
    )
    parser.add_argument("--patch-total", type=int, default=512, help="MiB per PATCH phase")
    parser.add_argument("--py-spy", choices=("head", "post", "patch0", "patch1", "patch8"))
    args = parser.parse_args()
    if not 1 <= args.heads <= 100_000 or not 1 <= args.posts <= 100_000:
        parser.error("--heads and --posts: 1 to 100000")
    if not 1 <= args.connections <= 64:
        parser.error("--connections: 1 to 64")
    if not 8 <= args.patch_total <= 4096:
        parser.error("--patch-total: 8 to 4096 MiB")
    if args.py_spy and not Path(_py_spy()).exists():
        parser.error("--py-spy needs py-spy: pip install -e '.[bench]'")
    os.sched_setaffinity(0, {CLIENT_CPU})
    payload = memoryview(os.urandom(64 * MiB))
    total = args.patch_total * MiB

    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tus-profile-")))
        server = Server(args, workdir)
        stack.callback(server.stop)
        conn = Connection(server.port)
        stack.callback(conn.close)

        def cleanup() -> None:
            for entry in server.storage.iterdir():
                with contextlib.suppress(OSError):
                    entry.unlink()

        upload(conn, payload, 32 * MiB, 8 * MiB)  # warm-up
        heads_path = create(conn, 1)
        for _ in range(200):
            conn.request("HEAD", heads_path, {})
        cleanup()

        def big() -> int:
            return upload(conn, payload, total, 64 * MiB)

        # The first is the one the PATCH phases use.
        conns = [conn] + [Connection(server.port) for _ in range(args.connections - 1)]
        for extra in conns[1:]:
            stack.callback(extra.close)

        def heads() -> int:
            in_flight(conns, args.heads, "HEAD", heads_path, 200)
            return 0

        def posts() -> int:
            in_flight(conns, args.posts, "POST", PATH, 201)
            return 0

        phases: list[Phase] = []
        big_phase = measure(server, "bytes", total // (64 * MiB) + 1, big, args.py_spy)
        cleanup()
        phases.append(measure(server, "head", args.heads, heads, args.py_spy))
        phases.append(measure(server, "post", args.posts, posts, args.py_spy))
        # 4 KiB PATCHes: next to nothing but the fixed cost of a PATCH.
        tiny = measure(
            server,
            "patch0",
            args.posts,
            lambda: upload(conn, payload, args.posts * 4096, 4096),
            args.py_spy,
        )
        phases.append(tiny)
        cleanup()
        for chunk_mib in (1, 8):
            name = f"patch{chunk_mib}"
            count = total // (chunk_mib * MiB)
            phase = measure(
                server,
                name,
                count,
                lambda chunk=chunk_mib * MiB: upload(conn, payload, total, chunk),
                args.py_spy,
            )
            phase.requests = count  # the POST is counted in, as one PATCH more
            phases.append(phase)
            cleanup()

    print(f"tusserver on {args.server}, file digest {args.file_digest}")
    big_rate = big_phase.nbytes / big_phase.seconds / 1e6
    big_cost = (big_phase.python + big_phase.redis) / big_phase.nbytes * 2**30
    print(f"{args.patch_total} MiB in 64 MiB PATCHes: {big_rate:.0f} MB/s, {big_cost:.2f} s/GiB")
    # CPU per PATCH = fixed + size x per byte: the two chunk sizes give both.
    small, large = phases[-2], phases[-1]
    cost = {p.name: (p.python + p.redis) / p.requests for p in (small, large)}
    size = {p.name: p.nbytes / p.requests for p in (small, large)}
    per_byte_cost = (cost[large.name] - cost[small.name]) / (size[large.name] - size[small.name])
    fixed = cost[small.name] - per_byte_cost * size[small.name]
    print(
        f"PATCH cost = {fixed * 1e3:.2f} ms fixed + {per_byte_cost * 2**30:.2f} CPU s/GiB"
        " (fitted to the 1 and 8 MiB phases)"
    )
    for phase in phases:
        python_us = phase.python / phase.requests * 1e6
        redis_us = phase.redis / phase.requests * 1e6
        scripts = phase.commands["evalsha"] / phase.requests
        mix = ", ".join(
            f"{name} {count / phase.requests:.2g}" for name, count in phase.commands.most_common(8)
        )
        line = f"{phase.name:7}: CPU {python_us:8.0f} µs + Redis {redis_us:5.0f} µs per request"
        if phase.nbytes:
            line += f", {phase.nbytes / phase.seconds / 1e6:5.0f} MB/s"
        else:
            line += f", {phase.requests / phase.seconds:6.0f} req/s"
        print(line)
        print(f"         scripts/request {scripts:.2f}; commands, scripts' own included: {mix}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)

#!/usr/bin/env python3
"""Upload throughput, request rates and memory of tusserver, next to two reference servers.

One client, every server, one run:

* ``tusserver``: ``python -m tusserver serve`` with its embedded Redis, one worker, on
  uvicorn (``--server uvicorn``); ``tusserver-granian`` the same on granian, and
  ``tusserver-nodigest`` / ``tusserver-granian-nodigest`` each with ``--file-digest none``
  (the same work as the other servers, which hash nothing);
* ``bare``: ``bench/bare_sink.py``, the simplest Starlette app on uvicorn that streams request
  bodies to files: what receiving bytes through uvicorn costs, without any protocol;
  ``bare-granian`` the same app on granian;
* ``node``: ``@tus/server`` with ``@tus/file-store`` on node's http server
  (``bench/node/tus-server.mjs``, installed with ``npm ci``);
* ``tuspy``: the ``tuspyserver`` package's FastAPI router on uvicorn
  (``bench/tuspy/tuspy_server.py``, installed from ``bench/tuspy/requirements.txt`` into its
  own virtualenv).

All servers run at once, pinned to CPU 0, and are measured in turn, one at a time, in
rounds (``--repeat``); the client runs on CPU 1. The client is an asyncio HTTP/1.1 keep-alive
client on raw sockets that sends bodies from one preallocated random buffer, so it costs
little next to the server. The script prints figures and the project's target ratios; it
asserts nothing about speed (exit code 0 whatever the figures; 1 only if a server could not
be started, answered wrongly or stored the wrong number of bytes).

Every figure is taken ``--repeat`` times (3 by default); the tables give the median, and the
best next to it. Before each server's measurements in a round, the page cache is warmed up the
way ``smb_bench.py`` does it (see ``warm_page_cache``).

Usage: python bench/bench.py [--only tusserver,bare,node,tuspy,...] [--quick] [--repeat N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
MB = 1_000_000  # throughput unit: 1 MB = 10^6 bytes

HOST = "127.0.0.1"  # every byte of traffic stays on loopback
BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
NODE_DIR = BENCH_DIR / "node"
TUSPY_DIR = BENCH_DIR / "tuspy"
TUSPY_VENV = TUSPY_DIR / ".venv"

SERVER_CPU = 0
CLIENT_CPU = 1
PAYLOAD_SIZE = 64 * MiB  # random bytes generated once; bodies are slices of it
SEND_SLICE = 4 * MiB  # bytes handed to the transport per write
WRITE_HIGH_WATER = 8 * MiB
RSS_SAMPLE_INTERVAL = 0.02
STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
MIN_RATE = 10 * MB  # a phase moving less than this per second is considered hung
MIN_REQUEST_RATE = 50  # requests per second, likewise
BUSY_MACHINE = 0.25  # other processes using more than this share of a core spoil a figure
QUIET_PROBE = 0.25  # before each measurement, look this long at what else runs...
QUIET_WAIT = 10.0  # ...and wait up to this long for it to calm down,
QUIET_BUDGET = 90.0  # but no more than this in a whole run

# Extra flags of each tusserver variant, after --tusserver-cmd's.
TUSSERVER_VARIANTS = {
    "tusserver": ["--server", "uvicorn"],
    "tusserver-nodigest": ["--server", "uvicorn", "--file-digest", "none"],
    "tusserver-granian": ["--server", "granian"],
    "tusserver-granian-nodigest": ["--server", "granian", "--file-digest", "none"],
}
# The HTTP server of each bare sink (bench/bare_sink.py --server).
BARE_SINKS = {"bare": "uvicorn", "bare-granian": "granian"}
SERVERS = (*TUSSERVER_VARIANTS, *BARE_SINKS, "node", "tuspy")
LABELS = {
    "tusserver": "tusserver",
    "tusserver-nodigest": "tusserver, no digest",
    "tusserver-granian": "tusserver on granian",
    "tusserver-granian-nodigest": "tusserver on granian, no digest",
    "bare": "bare sink",
    "bare-granian": "bare sink on granian",
    "node": "@tus/server",
    "tuspy": "tuspyserver",
}
# The tusserver variants that hash every upload (the default SHA-256), and those that do not.
DIGEST_ON = ("tusserver", "tusserver-granian")
DIGEST_OFF = ("tusserver-nodigest", "tusserver-granian-nodigest")
# Sent with every creation, to every tus server: what browser clients send. tuspyserver answers
# a HEAD with 400 when an upload has no filename and filetype in its metadata.
UPLOAD_METADATA = (
    "Upload-Metadata: filename YmVuY2guYmlu,filetype YXBwbGljYXRpb24vb2N0ZXQtc3RyZWFt\r\n"
)
HASH_SIZE = 1 * GiB  # what the bench hashes itself, for the cost of SHA-256 alone
DEFAULT_TUSSERVER_CMD = (
    "{python} -m tusserver serve --host {host} --port {port} --storage {storage}"
    " --data-dir {data_dir} --workers 1"
)


class BenchError(RuntimeError):
    """A server answered something other than what the tus protocol asks for."""


def human_size(n: int) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"


# --------------------------------------------------------------------------------------------
# Sizes


@dataclass(frozen=True)
class Sizes:
    single: int  # one upload, one PATCH
    chunked: int  # one upload, sent in chunks of each size in `chunks`
    chunks: tuple[int, ...]
    concurrent_uploads: int
    concurrent_size: int
    connections: int  # keep-alive connections for the HEAD and POST rates
    head_requests: int
    post_requests: int
    rss: int  # one upload, one PATCH, while the server's RSS is sampled
    # Fewer uploads of concurrent_size at once, measured before the concurrent_uploads; 0: not.
    concurrent_few: int = 0


FULL = Sizes(
    single=1 * GiB,
    chunked=1 * GiB,
    chunks=(8 * MiB, 1 * MiB),
    concurrent_uploads=64,
    concurrent_size=32 * MiB,
    connections=16,
    head_requests=20_000,
    post_requests=5_000,
    rss=2 * GiB,
    concurrent_few=16,
)
QUICK = Sizes(
    single=64 * MiB,
    chunked=64 * MiB,
    chunks=(8 * MiB, 1 * MiB),
    concurrent_uploads=8,
    concurrent_size=8 * MiB,
    connections=16,
    head_requests=2_000,
    post_requests=500,
    rss=256 * MiB,
    concurrent_few=4,
)


# --------------------------------------------------------------------------------------------
# The client: HTTP/1.1 keep-alive on raw asyncio streams


@dataclass
class Response:
    status: int
    headers: dict[bytes, bytes]
    body: bytes


class Connection:
    """One keep-alive connection; one request at a time."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.host_line = f"Host: {HOST}:{port}\r\n"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.reconnects = 0

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(HOST, self.port, limit=1 * MiB)
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.writer.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    async def close(self) -> None:
        writer, self.reader, self.writer = self.writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def request(
        self,
        method: str,
        path: str,
        headers: str = "",
        body: tuple[memoryview, int, int] | None = None,
    ) -> Response:
        """Send one request; ``body`` is (payload, start offset in payload, size)."""
        if self.writer is None:
            await self.connect()
        assert self.reader is not None and self.writer is not None
        size = body[2] if body is not None else 0
        length = "" if method == "HEAD" else f"Content-Length: {size}\r\n"
        head = f"{method} {path} HTTP/1.1\r\n{self.host_line}{headers}{length}\r\n"
        self.writer.write(head.encode("latin-1"))
        if body is None:
            return await self._read_response(method)
        # Read the response while sending, so a server that answers early is noticed.
        answer = asyncio.ensure_future(self._read_response(method))
        try:
            early = await self._send_body(*body, answer)
        except (ConnectionError, OSError) as exc:
            if answer.done() and answer.exception() is None:
                status = answer.result().status
                raise BenchError(f"{method} {path}: server answered {status} mid-body") from exc
            answer.cancel()
            raise
        except BaseException:
            answer.cancel()
            raise
        if early:
            response = await answer
            await self.close()
            raise BenchError(
                f"{method} {path}: server answered {response.status} before the body was sent:"
                f" {response.body[:200]!r}"
            )
        return await answer

    async def _send_body(
        self, payload: memoryview, start: int, size: int, answer: asyncio.Future[Response]
    ) -> bool:
        assert self.writer is not None
        writer = self.writer
        pos = start % len(payload)
        left = size
        while left > 0:
            n = min(left, SEND_SLICE, len(payload) - pos)
            writer.write(payload[pos : pos + n])
            await writer.drain()
            left -= n
            pos = (pos + n) % len(payload)
            if left > 0 and answer.done():
                return True
        return False

    async def _read_response(self, method: str) -> Response:
        assert self.reader is not None
        reader = self.reader
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head[:-4].split(b"\r\n")
        if not lines[0].startswith(b"HTTP/1.") or len(lines[0]) < 12:
            raise BenchError(f"not an HTTP/1.x status line: {lines[0][:100]!r}")
        status = int(lines[0][9:12])
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        keep_alive = headers.get(b"connection", b"").lower() != b"close"
        if method == "HEAD" or status in (204, 304) or status < 200:
            body = b""
        elif b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            body = await self._read_chunked()
        elif b"content-length" in headers:
            n = int(headers[b"content-length"])
            body = await reader.readexactly(n) if n else b""
        else:  # body delimited by the end of the connection
            parts = []
            for _ in range(1024):
                part = await reader.read(64 * KiB)
                if not part:
                    break
                parts.append(part)
            body = b"".join(parts)
            keep_alive = False
        if not keep_alive:
            self.reconnects += 1
            await self.close()
        return Response(status, headers, body)

    async def _read_chunked(self) -> bytes:
        assert self.reader is not None
        parts = []
        for _ in range(100_000):
            size_line = await self.reader.readuntil(b"\r\n")
            n = int(size_line.split(b";", 1)[0].strip(), 16)
            if n == 0:
                for _ in range(100):  # trailer fields, up to the blank line
                    if await self.reader.readuntil(b"\r\n") == b"\r\n":
                        return b"".join(parts)
                raise BenchError("chunked response body with too many trailer fields")
            parts.append(await self.reader.readexactly(n))
            await self.reader.readexactly(2)
        raise BenchError("chunked response body with too many chunks")


def expect(response: Response, status: int, what: str) -> None:
    if response.status != status:
        raise BenchError(
            f"{what}: expected {status}, got {response.status}: {response.body[:300]!r}"
        )


# --------------------------------------------------------------------------------------------
# Servers


class ProcessTree:
    """A server process and all its descendants (uvicorn, workers, an embedded redis)."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self._procs: dict[int, psutil.Process] = {pid: self.root}
        self._refreshed = 0.0

    def processes(self, refresh: bool = False) -> list[psutil.Process]:
        if refresh or time.monotonic() - self._refreshed > 0.5:
            with contextlib.suppress(psutil.Error):
                for child in self.root.children(recursive=True):
                    self._procs.setdefault(child.pid, child)
            self._refreshed = time.monotonic()
        return list(self._procs.values())

    def alive(self) -> list[psutil.Process]:
        result = []
        for proc in self.processes(refresh=True):
            with contextlib.suppress(psutil.Error):
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    result.append(proc)
        return result

    def rss(self) -> int:
        total = 0
        for proc in self.processes():
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total

    def cpu_seconds(self) -> float:
        total = 0.0
        for proc in self.processes():
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
        return total


@dataclass
class Server:
    name: str  # tusserver | bare | node
    argv: list[str]
    port: int
    storage: Path  # where the server writes upload data
    base_path: str  # /files/ or /sink/
    log_path: Path
    cwd: Path
    pin: bool
    proc: subprocess.Popen[bytes] | None = None
    tree: ProcessTree | None = None
    pinned: list[str] = field(default_factory=list)
    _log: Any = None

    @property
    def label(self) -> str:
        return LABELS[self.name]

    @property
    def is_tus(self) -> bool:
        return self.name not in BARE_SINKS

    def start(self) -> None:
        argv = list(self.argv)
        if self.pin and shutil.which("taskset"):
            argv = ["taskset", "-c", str(SERVER_CPU), *argv]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            argv,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in the terminal reaches the script, not the server
        )
        self.tree = ProcessTree(self.proc.pid)

    def wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(
                    f"{self.label} exited with code {self.proc.returncode} while starting:\n"
                    + self.log_tail()
                )
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise BenchError(f"{self.label} did not accept connections within {STARTUP_TIMEOUT:.0f} s")

    def pin_tree(self) -> None:
        """Pin every thread of every process of the tree to the server CPU."""
        if not self.pin or self.tree is None:
            return
        self.pinned = []
        for proc in self.tree.processes(refresh=True):
            with contextlib.suppress(psutil.Error, OSError):
                for thread in proc.threads():
                    with contextlib.suppress(OSError):
                        os.sched_setaffinity(thread.id, {SERVER_CPU})
                cpus = sorted(os.sched_getaffinity(proc.pid))
                self.pinned.append(f"{proc.name()}[{proc.pid}] -> CPU {','.join(map(str, cpus))}")

    def unpin_tree(self) -> None:
        """Let every thread of the tree run on any CPU (until the next ``pin_tree``)."""
        if self.tree is None:
            return
        everywhere = set(range(os.cpu_count() or 1))
        for proc in self.tree.processes(refresh=True):
            with contextlib.suppress(psutil.Error, OSError):
                for thread in proc.threads():
                    with contextlib.suppress(OSError):
                        os.sched_setaffinity(thread.id, everywhere)

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace").splitlines()
            return "\n".join("    " + line for line in text[-lines:])
        return ""

    def stop(self) -> None:
        """SIGTERM the server, then anything left of its tree; SIGKILL what remains."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        known = self.tree.alive() if self.tree is not None else []
        # Also whatever still runs in the server's session, should something have detached
        # from the tree (start_new_session made the server the leader of its own session).
        for p in psutil.process_iter():
            with contextlib.suppress(psutil.Error, OSError):
                if p.pid != os.getpid() and os.getsid(p.pid) == proc.pid:
                    known.append(p)
        try:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(STOP_TIMEOUT)
            leftovers = []
            for p in known:
                with contextlib.suppress(psutil.Error):
                    if p.pid != proc.pid and p.is_running():
                        p.terminate()
                        leftovers.append(p)
            _, alive = psutil.wait_procs(leftovers, timeout=STOP_TIMEOUT)
            for p in alive:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            psutil.wait_procs(alive, timeout=STOP_TIMEOUT)
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    # Where an upload's bytes ended up, for the size check.

    def stored_files(self, upload_path: str) -> list[Path]:
        """The file named after the upload id (and its ``<id>.json`` or ``<id>.info``, and
        tuspyserver's ``.locks/<id>.lock``) in the storage folder; failing that, files named
        ``<id>`` or ``<id>.*`` anywhere under it."""
        upload_id = upload_path.rstrip("/").rsplit("/", 1)[-1]
        if not upload_id or upload_id.startswith("."):
            return []

        def ours(name: str) -> bool:
            return name == upload_id or name.startswith(upload_id + ".")

        direct = self.storage / upload_id
        if direct.is_file():
            sidecars = [
                self.storage / (upload_id + ".json"),  # @tus/file-store's metadata
                self.storage / (upload_id + ".info"),  # tuspyserver's
                self.storage / ".locks" / (upload_id + ".lock"),  # tuspyserver's lock file
            ]
            return [direct] + [p for p in sidecars if p.is_file()]
        found = []
        for root, _dirs, files in os.walk(self.storage):
            found += [Path(root, f) for f in files if ours(f)]
        return found

    def stored_size(self, upload_path: str) -> int | None:
        for _ in range(40):  # a server may finish moving the file just after its 204
            data = [p for p in self.stored_files(upload_path) if p.suffix not in SIDECARS]
            if len(data) == 1:
                with contextlib.suppress(OSError):
                    return data[0].stat().st_size
            time.sleep(0.05)
        return None

    def remove_upload(self, upload_path: str) -> None:
        for path in self.stored_files(upload_path):
            with contextlib.suppress(OSError):
                path.unlink()


SIDECARS = (".json", ".info", ".lock")  # suffixes of the files next to an upload's data


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def make_server(name: str, workdir: Path, args: argparse.Namespace) -> Server:
    port = free_port()
    pin = args.pin
    if name in TUSSERVER_VARIANTS:
        storage = workdir / name / "uploads"
        # Short: it holds the embedded redis's unix socket.
        data_dir = workdir / f"d{list(TUSSERVER_VARIANTS).index(name)}"
        storage.mkdir(parents=True)
        argv = [
            part.format(
                python=sys.executable, host=HOST, port=port, storage=storage, data_dir=data_dir
            )
            for part in shlex.split(args.tusserver_cmd)
        ] + TUSSERVER_VARIANTS[name]
        base = args.tusserver_path
    elif name in BARE_SINKS:
        storage = workdir / name
        storage.mkdir()
        argv = [
            sys.executable,
            str(BENCH_DIR / "bare_sink.py"),
            "--host",
            HOST,
            "--port",
            str(port),
            "--dir",
            str(storage),
            "--server",
            BARE_SINKS[name],
        ]
        base = "/sink/"
    elif name == "tuspy":
        storage = workdir / "tuspy"
        storage.mkdir()
        argv = [str(tuspy_python()), str(TUSPY_DIR / "tuspy_server.py"), "--host", HOST]
        argv += ["--port", str(port), "--dir", str(storage)]
        base = "/files/"
    else:
        storage = workdir / "node"
        storage.mkdir()
        node = shutil.which("node") or "node"
        argv = [node, str(NODE_DIR / "tus-server.mjs"), "--host", HOST, "--port", str(port)]
        argv += ["--dir", str(storage)]
        base = "/files/"
    # tusserver runs in its scratch folder, not in this repository: started
    # with ``-m`` in the repository, Python would import the checkout there
    # ahead of one that ``--tusserver-cmd`` puts on PYTHONPATH.
    cwd = storage.parent if name in TUSSERVER_VARIANTS else REPO_DIR
    return Server(name, argv, port, storage, base, workdir / f"{name}.log", cwd, pin)


def npm_ci() -> None:
    """Install the node server's dependencies from the lock file, unless already installed."""
    lock = NODE_DIR / "package-lock.json"
    installed = NODE_DIR / "node_modules" / ".package-lock.json"
    if (
        installed.is_file()
        and installed.stat().st_mtime >= lock.stat().st_mtime
        and (NODE_DIR / "node_modules" / "@tus" / "server").is_dir()
    ):
        return
    npm = shutil.which("npm")
    if npm is None:
        raise BenchError("npm is not installed; it is needed for the @tus/server comparison")
    print("installing @tus/server with npm ci ...", flush=True)
    done = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"npm ci failed:\n{done.stdout}\n{done.stderr}")


def tuspy_python() -> Path:
    """The python of the tuspyserver virtualenv."""
    return TUSPY_VENV / "bin" / "python"


def tuspy_venv() -> None:
    """Install the tuspyserver comparison server into its own virtualenv, from its pinned
    requirements, unless that virtualenv already holds exactly them."""
    requirements = TUSPY_DIR / "requirements.txt"
    installed = TUSPY_VENV / "requirements.installed"  # a copy, written once pip succeeded
    wanted = requirements.read_text()
    if tuspy_python().is_file() and installed.is_file() and installed.read_text() == wanted:
        return
    print("installing tuspyserver into bench/tuspy/.venv ...", flush=True)
    shutil.rmtree(TUSPY_VENV, ignore_errors=True)
    for argv in (
        [sys.executable, "-m", "venv", str(TUSPY_VENV)],
        [str(tuspy_python()), "-m", "pip", "install", "-q", "-r", str(requirements)],
    ):
        done = subprocess.run(
            argv, cwd=TUSPY_DIR, capture_output=True, text=True, timeout=900, check=False
        )
        if done.returncode != 0:
            errors = [line for line in done.stderr.splitlines() if "WARNING" not in line]
            raise BenchError(f"{shlex.join(argv[:3])} failed:\n" + "\n".join(errors[-20:]))
    installed.write_text(wanted)


def tuspy_versions() -> str:
    """The versions of tuspyserver and the stack it runs on, from its virtualenv."""
    code = (
        "import importlib.metadata as m;"
        "print(', '.join(f'{p} {m.version(p)}' for p in"
        " ('tuspyserver', 'fastapi', 'starlette', 'uvicorn', 'uvloop', 'httptools')))"
    )
    done = subprocess.run(
        [str(tuspy_python()), "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    return done.stdout.strip() or "tuspyserver (version unknown)"


def tusserver_available(args: argparse.Namespace) -> str | None:
    """None if the tusserver command answers --help, else why not."""
    command = args.tusserver_cmd.split(" --", 1)[0]
    argv = [
        part.format(python=sys.executable, host=HOST, port=0, storage="", data_dir="")
        for part in shlex.split(command)
    ]
    try:
        done = subprocess.run(
            [*argv, "--help"], cwd=REPO_DIR, capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip().splitlines()
        return output[-1] if output else f"exit code {done.returncode}"
    return None


# --------------------------------------------------------------------------------------------
# Measurements


@dataclass
class Figure:
    value: float
    unit: str
    seconds: float
    client_cpu: float  # share of one core used by the client process
    server_cpu: float  # share of one core used by the server's process tree
    other_cpu: float  # busy CPU time of everything else on the machine (incl. steal, irqs)
    note: str = ""


@dataclass
class Results:
    figures: dict[str, dict[str, Figure]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)
    check_failures: int = 0
    quiet_waited: float = 0.0  # seconds spent waiting for other processes to calm down
    # Every try of every figure, in order; `figures` holds the median try of each.
    samples: dict[str, dict[str, list[Figure]]] = field(default_factory=dict)
    hash_cost: float | None = None  # CPU seconds of hashlib.sha256 per GiB on the server CPU


class Meter:
    """Wall time and CPU use of client and server over one measurement."""

    def __init__(self, server: Server) -> None:
        assert server.tree is not None
        self.tree = server.tree

    def __enter__(self) -> Meter:
        self.tree.processes(refresh=True)
        self.busy0 = machine_busy_seconds()
        self.server0 = self.tree.cpu_seconds()
        self.client0 = time.process_time()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.t0
        self.client_cpu = (time.process_time() - self.client0) / self.seconds
        self.server_cpu = (self.tree.cpu_seconds() - self.server0) / self.seconds
        busy = (machine_busy_seconds() - self.busy0) / self.seconds
        self.other_cpu = max(0.0, busy - self.client_cpu - self.server_cpu)

    def figure(self, value: float, unit: str, note: str = "") -> Figure:
        return Figure(
            value, unit, self.seconds, self.client_cpu, self.server_cpu, self.other_cpu, note
        )


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent not idle since boot (steal included: a busy host)."""
    t = psutil.cpu_times()
    return float(
        sum(t)
        - t.idle
        - getattr(t, "iowait", 0.0)
        - getattr(t, "guest", 0.0)
        - getattr(t, "guest_nice", 0.0)
    )


class RssSampler(threading.Thread):
    """Samples the RSS of a process tree every RSS_SAMPLE_INTERVAL until stopped."""

    def __init__(self, tree: ProcessTree, max_seconds: float) -> None:
        super().__init__(daemon=True)
        self.tree = tree
        self.max_seconds = max_seconds
        self.peak = 0
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop_event.is_set() and time.monotonic() < deadline:
            self.peak = max(self.peak, self.tree.rss())
            self.samples += 1
            self._stop_event.wait(RSS_SAMPLE_INTERVAL)

    def stop(self) -> int:
        self._stop_event.set()
        self.join(5)
        self.peak = max(self.peak, self.tree.rss())
        return self.peak


class Bench:
    def __init__(self, server: Server, payload: memoryview, sizes: Sizes, results: Results):
        self.server = server
        self.payload = payload
        self.sizes = sizes
        self.results = results
        self.counter = 0
        self.figures = results.figures.setdefault(server.name, {})

    # -- protocol steps

    async def create(self, conn: Connection, length: int) -> str:
        """POST an upload of `length` bytes; its URL path (for the sink: a fresh name)."""
        self.counter += 1
        if not self.server.is_tus:
            return f"{self.server.base_path}u{self.counter}"
        response = await conn.request(
            "POST",
            self.server.base_path,
            f"Tus-Resumable: 1.0.0\r\nUpload-Length: {length}\r\n{UPLOAD_METADATA}",
        )
        expect(response, 201, f"POST {self.server.base_path}")
        location = response.headers.get(b"location")
        if not location:
            raise BenchError("POST answered 201 without a Location header")
        path = urlsplit(location.decode("latin-1")).path
        if not path.startswith("/"):
            raise BenchError(f"unexpected Location {location!r}")
        return path

    async def send(self, conn: Connection, path: str, offset: int, size: int) -> None:
        body = (self.payload, offset, size)
        if not self.server.is_tus:
            response = await conn.request("POST", path, f"Upload-Offset: {offset}\r\n", body)
            expect(response, 204, f"POST {path}")
            return
        response = await conn.request(
            "PATCH",
            path,
            "Tus-Resumable: 1.0.0\r\nContent-Type: application/offset+octet-stream\r\n"
            f"Upload-Offset: {offset}\r\n",
            body,
        )
        expect(response, 204, f"PATCH {path} at offset {offset}")
        got = response.headers.get(b"upload-offset")
        if got is None or int(got) != offset + size:
            raise BenchError(f"PATCH {path}: Upload-Offset {got!r}, expected {offset + size}")

    async def upload(self, conn: Connection, total: int, chunk: int) -> str:
        path = await self.create(conn, total)
        offset = 0
        while offset < total:
            n = min(chunk, total - offset)
            await self.send(conn, path, offset, n)
            offset += n
        return path

    async def head(self, conn: Connection, path: str) -> None:
        response = await conn.request("HEAD", path, "Tus-Resumable: 1.0.0\r\n")
        expect(response, 200, f"HEAD {path}")

    # -- bookkeeping

    def check_size(self, path: str, sent: int) -> None:
        stored = self.server.stored_size(path)
        ok = stored == sent
        self.results.checks.append(
            f"{self.server.label}: {path} stored {stored} bytes, sent {sent}: "
            + ("OK" if ok else "MISMATCH")
        )
        if not ok:
            self.results.check_failures += 1
            print(f"    SIZE MISMATCH: {self.results.checks[-1]}", flush=True)
        self.server.remove_upload(path)

    def record(self, key: str, title: str, figure: Figure) -> None:
        self.figures[key] = figure
        print(
            f"  {self.server.label:<12} {title:<44} {figure.value:>10.1f} {figure.unit:<6}"
            f" ({figure.seconds:6.2f} s, client CPU {figure.client_cpu:4.0%},"
            f" server CPU {figure.server_cpu:4.0%}, other CPU {figure.other_cpu:4.0%})"
            f"{figure.note}",
            flush=True,
        )

    @staticmethod
    def settle() -> None:
        """Flush dirty pages between measurements, so one does not pay for the last."""
        os.sync()

    async def timed(self, seconds_limit: float, coro: Awaitable[Any]) -> Any:
        async with asyncio.timeout(seconds_limit):
            return await coro

    async def wait_for_quiet(self) -> None:
        """Give other processes on the machine (a test suite, a build) a moment to finish."""
        assert self.server.tree is not None
        tree = self.server.tree
        budget = min(QUIET_WAIT, QUIET_BUDGET - self.results.quiet_waited)
        start = time.monotonic()
        for _ in range(int(QUIET_WAIT / QUIET_PROBE) + 1):
            busy0, server0 = machine_busy_seconds(), tree.cpu_seconds()
            client0, t0 = time.process_time(), time.perf_counter()
            await asyncio.sleep(QUIET_PROBE)
            elapsed = time.perf_counter() - t0
            own = tree.cpu_seconds() - server0 + time.process_time() - client0
            if (machine_busy_seconds() - busy0 - own) / elapsed <= BUSY_MACHINE:
                break
            if time.monotonic() - start >= budget:
                break
        waited = time.monotonic() - start
        if waited > 2 * QUIET_PROBE:
            self.results.quiet_waited += waited
            print(f"  (waited {waited:.1f} s for other processes to calm down)", flush=True)

    # -- measurements

    async def warm_up(self) -> None:
        conn = Connection(self.server.port)
        try:
            for _ in range(2):
                path = await self.upload(conn, 16 * MiB, 4 * MiB)
                self.check_size(path, 16 * MiB)
            if self.server.is_tus:
                path = await self.create(conn, 1)
                for _ in range(200):
                    await self.head(conn, path)
        finally:
            await conn.close()

    async def single(self, key: str, title: str, total: int, chunk: int) -> None:
        conn = Connection(self.server.port)
        await conn.connect()
        try:
            with Meter(self.server) as meter:
                path = await self.timed(60 + total / MIN_RATE, self.upload(conn, total, chunk))
        finally:
            await conn.close()
        self.record(key, title, meter.figure(total / MB / meter.seconds, "MB/s"))
        self.check_size(path, total)
        self.settle()

    async def rss(self, total: int) -> None:
        assert self.server.tree is not None
        tree = self.server.tree
        conn = Connection(self.server.port)
        await conn.connect()
        tree.processes(refresh=True)
        before = tree.rss()
        sampler = RssSampler(tree, max_seconds=60 + total / MIN_RATE)
        try:
            with Meter(self.server) as meter:
                sampler.start()
                path = await self.timed(60 + total / MIN_RATE, self.upload(conn, total, total))
        finally:
            peak = sampler.stop()
            await conn.close()
        growth = max(0, peak - before) / MiB
        note = (
            f" [before {before / MiB:.1f} MiB, peak {peak / MiB:.1f} MiB,"
            f" {sampler.samples} samples, {len(tree.processes())} processes]"
        )
        title = f"peak RSS growth, {human_size(total)} in one PATCH"
        self.record("rss", title, meter.figure(growth, "MiB", note))
        self.check_size(path, total)
        self.settle()

    async def concurrent(self, uploads: int, size: int, key: str = "concurrent") -> None:
        conns = [Connection(self.server.port) for _ in range(uploads)]
        await asyncio.gather(*(c.connect() for c in conns))
        total = uploads * size
        try:
            with Meter(self.server) as meter:
                paths = await self.timed(
                    60 + total / MIN_RATE,
                    asyncio.gather(*(self.upload(c, size, size) for c in conns)),
                )
        finally:
            await asyncio.gather(*(c.close() for c in conns))
        title = f"{uploads} concurrent uploads of {human_size(size)}, aggregate"
        self.record(key, title, meter.figure(total / MB / meter.seconds, "MB/s"))
        for path in paths:
            self.check_size(path, size)
        self.settle()

    async def rate(
        self,
        key: str,
        title: str,
        count: int,
        step: Callable[[Connection, int], Awaitable[None]],
        setup: Callable[[Connection], Awaitable[None]] | None = None,
    ) -> None:
        conns = [Connection(self.server.port) for _ in range(self.sizes.connections)]
        await asyncio.gather(*(c.connect() for c in conns))
        if setup is not None:
            for c in conns:
                await setup(c)
        remaining = count

        async def worker(conn: Connection, index: int) -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await step(conn, index)

        try:
            with Meter(self.server) as meter:
                await self.timed(
                    60 + count / MIN_REQUEST_RATE,
                    asyncio.gather(*(worker(c, i) for i, c in enumerate(conns))),
                )
        finally:
            reconnects = sum(c.reconnects for c in conns)
            await asyncio.gather(*(c.close() for c in conns))
        note = f" [{reconnects} reconnects]" if reconnects else ""
        self.record(key, title, meter.figure(count / meter.seconds, "req/s", note))

    async def head_rate(self) -> None:
        # One upload per connection (16 bytes of 1 KiB received), so that servers that lock an
        # upload for a HEAD are not measured waiting on each other.
        paths: dict[int, str] = {}

        async def setup(conn: Connection) -> None:
            path = await self.create(conn, 1024)
            await self.send(conn, path, 0, 16)
            paths[id(conn)] = path

        async def step(conn: Connection, _index: int) -> None:
            await self.head(conn, paths[id(conn)])

        title = f"HEAD, {self.sizes.connections} connections, {self.sizes.head_requests} requests"
        await self.rate("head", title, self.sizes.head_requests, step, setup)

    async def post_rate(self) -> None:
        base = self.server.base_path

        async def step(conn: Connection, _index: int) -> None:
            response = await conn.request(
                "POST", base, f"Tus-Resumable: 1.0.0\r\nUpload-Length: 1\r\n{UPLOAD_METADATA}"
            )
            expect(response, 201, f"POST {base}")

        title = f"POST (creation), {self.sizes.connections} connections,"
        title += f" {self.sizes.post_requests} requests"
        await self.rate("post", title, self.sizes.post_requests, step)

    async def single_unpinned(self, key: str, title: str, total: int) -> None:
        """One upload in one PATCH with server and client free to run on any CPU, as with
        --no-pin: the figure a server gets when it shares the cores with its client."""
        pinned = self.server.pin
        if pinned:
            self.server.unpin_tree()
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        try:
            await self.single(key, title, total, total)
        finally:
            if pinned:
                os.sched_setaffinity(0, {CLIENT_CPU})
                self.server.pin_tree()

    async def measure(self, key: str, measurement: Callable[[], Awaitable[None]]) -> None:
        """Run a measurement (again); keep every try, and the median one as the figure."""
        await self.wait_for_quiet()
        await measurement()
        tries = self.results.samples.setdefault(self.server.name, {}).setdefault(key, [])
        tries.append(self.figures[key])
        self.figures[key] = median_figure(tries)

    async def keep_max(self, key: str, measurement: Callable[[], Awaitable[None]]) -> None:
        """Run a measurement (again); keep the highest value (best rate, worst RSS growth)."""
        previous = self.figures.get(key)
        await self.wait_for_quiet()
        await measurement()
        if previous is not None and previous.value > self.figures[key].value:
            self.figures[key] = previous


def median_figure(tries: list[Figure]) -> Figure:
    """The try with the median value (of an even number, the lower of the two middle ones)."""
    ordered = sorted(tries, key=lambda f: f.value)
    return ordered[(len(ordered) - 1) // 2]


def best_figure(key: str, tries: list[Figure]) -> Figure:
    """The highest rate, or for memory the highest growth (the worst)."""
    return max(tries, key=lambda f: f.value)


def cpu_per_gib(figure: Figure) -> float | None:
    """Server CPU seconds per GiB moved, from a throughput figure in MB/s."""
    if figure.unit != "MB/s" or figure.value <= 0:
        return None
    return figure.server_cpu * GiB / MB / figure.value


def cpu_per_request(figure: Figure) -> float | None:
    """Server CPU microseconds per request, from a rate figure in req/s."""
    if figure.unit != "req/s" or figure.value <= 0:
        return None
    return figure.server_cpu / figure.value * 1e6


def median(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def warm_page_cache(directory: Path, size: int) -> None:
    """Write and remove ``size`` bytes in ``directory``, so later writes reuse warm pages.

    As in smb_bench.py: on a virtual machine the first touch of a guest page the host has not
    backed yet is expensive (a plain pwrite loop into the page cache measured 0.24 to 2.6 system
    CPU s/GiB, depending only on whether the pages had been used before), and every server
    pays it when it writes. Freed page cache pages are handed out again first, so writing (and
    deleting) more than the next measurements hold at once makes servers and rounds comparable.
    """
    block = bytes(64 * MiB)
    path = directory / "warm-up.bin"
    with path.open("wb") as f:
        for _ in range(-(-size // len(block))):
            f.write(block)
    path.unlink()


def hash_cost(
    payload: memoryview, size: int = HASH_SIZE, tries: int = 3, cpu: int | None = SERVER_CPU
) -> float:
    """CPU seconds per GiB of ``hashlib.sha256`` in this thread, on ``cpu`` (the server's;
    None: wherever the kernel runs it), the median of ``tries``: the digest's own cost, next to
    which a digest-on server's CPU per GiB is judged."""
    before = os.sched_getaffinity(0)
    if cpu is not None and cpu in before:
        os.sched_setaffinity(0, {cpu})
    try:
        figures = []
        for _ in range(tries):
            digest = hashlib.sha256()
            t0 = time.thread_time()
            done = 0
            while done < size:
                n = min(SEND_SLICE, size - done, len(payload) - done % len(payload))
                start = done % len(payload)
                digest.update(payload[start : start + n])
                done += n
            figures.append((time.thread_time() - t0) * GiB / size)
    finally:
        os.sched_setaffinity(0, before)
    return median(figures) or 0.0


@dataclass(frozen=True)
class Step:
    key: str
    run: Callable[[Bench], Awaitable[None]]
    tus_only: bool = False  # the bare sink has no creation (its HEAD is a bare stat)
    only: tuple[str, ...] = ()  # if set, only these servers take it


def plan(sizes: Sizes) -> list[Step]:
    """The measurements of one round, in order. Memory comes first: in the first round it is
    taken on servers that have only been warmed up."""
    one = f"{human_size(sizes.single)} in one PATCH"
    steps = [
        Step("rss", lambda b: b.rss(sizes.rss)),
        Step("single", lambda b: b.single("single", one, sizes.single, sizes.single)),
        Step(
            "single_unpinned",
            lambda b: b.single_unpinned("single_unpinned", one + ", unpinned", sizes.single),
            only=DIGEST_ON,
        ),
    ]
    for chunk in sizes.chunks:
        key = f"chunk_{chunk}"
        title = f"{human_size(sizes.chunked)} in {human_size(chunk)} chunks"
        steps.append(Step(key, lambda b, k=key, t=title, c=chunk: b.single(k, t, sizes.chunked, c)))
    if sizes.concurrent_few:
        few = f"concurrent_{sizes.concurrent_few}"
        steps.append(
            Step(few, lambda b: b.concurrent(sizes.concurrent_few, sizes.concurrent_size, few))
        )
    steps += [
        Step("concurrent", lambda b: b.concurrent(sizes.concurrent_uploads, sizes.concurrent_size)),
        Step("head", lambda b: b.head_rate()),
        Step("post", lambda b: b.post_rate(), tus_only=True),
    ]
    return steps


# --------------------------------------------------------------------------------------------
# Report


def row_titles(sizes: Sizes) -> list[tuple[str, str]]:
    rows = [
        ("single", f"{human_size(sizes.single)} upload, one PATCH (MB/s)"),
        ("single_unpinned", f"{human_size(sizes.single)} upload, one PATCH, unpinned (MB/s)"),
    ]
    rows += [
        (f"chunk_{c}", f"{human_size(sizes.chunked)} upload, {human_size(c)} chunks (MB/s)")
        for c in sizes.chunks
    ]
    if sizes.concurrent_few:
        rows.append(
            (
                f"concurrent_{sizes.concurrent_few}",
                f"{sizes.concurrent_few} concurrent uploads of"
                f" {human_size(sizes.concurrent_size)}, one PATCH each (MB/s, aggregate)",
            )
        )
    rows += [
        (
            "concurrent",
            f"{sizes.concurrent_uploads} concurrent uploads of"
            f" {human_size(sizes.concurrent_size)}, one PATCH each (MB/s, aggregate)",
        ),
        ("head", f"HEAD (requests/s, {sizes.connections} keep-alive connections)"),
        ("post", f"POST creation (requests/s, {sizes.connections} keep-alive connections)"),
        ("rss", f"peak RSS growth of the server tree, {human_size(sizes.rss)} one PATCH (MiB)"),
    ]
    return rows


def ratio(results: Results, a: tuple[str, str], b: tuple[str, str] | None) -> float | None:
    fa = results.figures.get(a[0], {}).get(a[1])
    if fa is None:
        return None
    if b is None:
        return fa.value
    fb = results.figures.get(b[0], {}).get(b[1])
    if fb is None or fb.value == 0:
        return None
    return fa.value / fb.value


# --------------------------------------------------------------------------------------------
# The issue's table and targets


def transfer_keys(sizes: Sizes) -> list[tuple[str, str]]:
    """The upload scenarios of the table: key and title."""
    keys = [("single", f"{human_size(sizes.single)} one PATCH")]
    keys += [
        (f"chunk_{c}", f"{human_size(sizes.chunked)} in {human_size(c)} PATCHes")
        for c in sizes.chunks
    ]
    if sizes.concurrent_few:
        keys.append(
            (
                f"concurrent_{sizes.concurrent_few}",
                f"{sizes.concurrent_few} x {human_size(sizes.concurrent_size)} in parallel",
            )
        )
    keys.append(
        (
            "concurrent",
            f"{sizes.concurrent_uploads} x {human_size(sizes.concurrent_size)} in parallel",
        )
    )
    return keys


def cpu_keys(sizes: Sizes) -> list[tuple[str, str]]:
    """The scenarios whose server CPU per GiB the table gives."""
    keys = [("single", "one PATCH")]
    keys += [(f"chunk_{c}", human_size(c)) for c in sizes.chunks]
    keys.append(("concurrent", f"{sizes.concurrent_uploads} parallel"))
    return keys


def tries_of(results: Results, server: str, key: str) -> list[Figure]:
    return results.samples.get(server, {}).get(key) or (
        [results.figures[server][key]] if key in results.figures.get(server, {}) else []
    )


def value_of(results: Results, server: str, key: str, pick: str) -> float | None:
    """A figure's median ("median") or best ("best": highest rate, worst RSS growth)."""
    values = [f.value for f in tries_of(results, server, key)]
    if not values:
        return None
    return max(values) if pick == "best" else median(values)


def cpu_of(
    results: Results, server: str, key: str, pick: str, per: Callable[[Figure], float | None]
) -> float | None:
    """Server CPU per unit of a figure over its tries: the median, or the lowest ("best")."""
    values = [v for v in (per(f) for f in tries_of(results, server, key)) if v is not None]
    if not values:
        return None
    return min(values) if pick == "best" else median(values)


def issue_table(results: Results, cols: list[str], sizes: Sizes, pick: str) -> None:
    """Rows: the scenarios; columns: the servers."""
    print("| | " + " | ".join(LABELS[s] for s in cols) + " |")
    print("|---|" + "---:|" * len(cols))

    def row(title: str, cell: Callable[[str], str]) -> None:
        print(f"| {title} | " + " | ".join(cell(s) for s in cols) + " |")

    def number(value: float | None, fmt: str) -> str:
        return "—" if value is None else format(value, fmt)

    for key, title in transfer_keys(sizes):
        row(f"{title}, MB/s", lambda s, k=key: number(value_of(results, s, k, pick), ",.1f"))
    if any(value_of(results, s, "single_unpinned", pick) is not None for s in cols):
        row(
            f"{human_size(sizes.single)} one PATCH, unpinned, MB/s",
            lambda s: number(value_of(results, s, "single_unpinned", pick), ",.1f"),
        )
    for key, title in cpu_keys(sizes):
        row(
            f"CPU s/GiB: {title}",
            lambda s, k=key: number(cpu_of(results, s, k, pick, cpu_per_gib), ".2f"),
        )

    def head(s: str) -> str:
        rate = value_of(results, s, "head", pick)
        cpu = cpu_of(results, s, "head", pick, cpu_per_request)
        if rate is None:
            return "—"
        return f"{rate:,.0f} ({number(cpu, ',.0f')} µs)"

    row(f"HEAD, {sizes.connections} connections, req/s (CPU µs/req)", head)
    row(
        f"POST, {sizes.connections} connections, req/s",
        lambda s: number(value_of(results, s, "post", pick), ",.0f"),
    )
    row(
        f"RSS growth, one {human_size(sizes.rss)} PATCH, MiB",
        lambda s: number(value_of(results, s, "rss", pick), ".1f"),
    )
    print()


@dataclass
class Target:
    title: str
    measured: str
    needed: str
    ok: bool | None  # None: a figure is missing, or the line only reports


def best_of(results: Results, candidates: tuple[str, ...], key: str) -> tuple[str, float] | None:
    """The candidate server with the highest median for ``key``, and that median."""
    found = [(s, v) for s in candidates if (v := value_of(results, s, key, "median")) is not None]
    return max(found, key=lambda sv: sv[1]) if found else None


def targets(results: Results, sizes: Sizes) -> list[Target]:
    """The project's targets, from the medians of this run."""
    out: list[Target] = []

    def versus(key: str, what: str, candidates: tuple[str, ...], peer: str, factor: float) -> None:
        best = best_of(results, candidates, key)
        theirs = value_of(results, peer, key, "median")
        if best is None or not theirs:
            out.append(Target(f"{what}: tusserver / {LABELS[peer]}", "n/a", f">= {factor:g}", None))
            return
        r = best[1] / theirs
        out.append(
            Target(
                f"{what}: {LABELS[best[0]]} / {LABELS[peer]}",
                f"{r:.2f} ({best[1]:,.0f} / {theirs:,.0f})",
                f">= {factor:g}",
                r >= factor,
            )
        )

    chunk8, chunk1 = f"chunk_{8 * MiB}", f"chunk_{1 * MiB}"
    titles = dict(transfer_keys(sizes))
    for key, peer, factor in (
        ("single", "node", 1.8),
        ("single", "tuspy", 1.5),
        (chunk8, "node", 2),
        (chunk8, "tuspy", 2),
        (chunk1, "node", 3),
        ("concurrent", "tuspy", 1.5),
    ):
        if key in titles:
            versus(key, f"{titles[key]}, no digest", DIGEST_OFF, peer, factor)
    for key, title in transfer_keys(sizes):
        versus(key, f"{title}, no digest", DIGEST_OFF, "bare-granian", 0.85)

    cost = results.hash_cost
    for on, off in zip(DIGEST_ON, DIGEST_OFF, strict=True):
        for key, title in cpu_keys(sizes):
            with_digest = cpu_of(results, on, key, "median", cpu_per_gib)
            without = cpu_of(results, off, key, "median", cpu_per_gib)
            name = f"{LABELS[on]}, CPU s/GiB, {title}"
            if with_digest is None or without is None or cost is None:
                out.append(Target(name, "n/a", "<= no digest + SHA-256", None))
                continue
            limit = without + cost
            out.append(
                Target(
                    name,
                    f"{with_digest:.2f}",
                    f"<= {without:.2f} + {cost:.2f} = {limit:.2f}",
                    with_digest <= limit,
                )
            )
    for on in DIGEST_ON:
        pinned = value_of(results, on, "single", "median")
        free = value_of(results, on, "single_unpinned", "median")
        if pinned is not None or free is not None:
            out.append(
                Target(
                    f"{LABELS[on]}, {human_size(sizes.single)} one PATCH, MB/s pinned / unpinned",
                    f"{'n/a' if pinned is None else f'{pinned:,.0f}'}"
                    f" / {'n/a' if free is None else f'{free:,.0f}'}",
                    "reported",
                    None,
                )
            )

    every = (*DIGEST_ON, *DIGEST_OFF)
    versus("head", "HEAD/s", every, "node", 2)
    versus("post", "POST/s", every, "node", 3)
    for s in every:
        worst = value_of(results, s, "rss", "best")
        if worst is not None:
            out.append(
                Target(
                    f"{LABELS[s]}, RSS growth, {human_size(sizes.rss)} one PATCH (worst try), MiB",
                    f"{worst:.1f}",
                    "<= 16",
                    worst <= 16,
                )
            )
    return out


def report(results: Results, servers: list[str], sizes: Sizes, command: str) -> None:
    cols = [s for s in servers if results.figures.get(s)]
    counts = [len(t) for per in results.samples.values() for t in per.values()]
    repeat = max(counts, default=1)
    print()
    print(f"## Results: medians of {repeat}" if repeat > 1 else "## Results: one try")
    print()
    issue_table(results, cols, sizes, "median")
    if repeat > 1:
        print(f"Best of {repeat} (rates: the highest; CPU: the lowest; RSS growth: the worst):")
        print()
        issue_table(results, cols, sizes, "best")
    if results.hash_cost is not None:
        print(
            f"hashlib.sha256 alone, in the bench process on the server's CPU:"
            f" {results.hash_cost:.2f} CPU s/GiB."
        )
        print()
    print(
        "CPU use during the median figures, in shares of one core: server tree (pinned to one"
        " core) / client / everything else on the machine:"
    )
    print()
    print("| measurement | " + " | ".join(LABELS[s] for s in cols) + " |")
    print("|---|" + "---:|" * len(cols))
    busy = []
    for key, title in row_titles(sizes):
        cells = []
        for s in cols:
            fig = results.figures[s].get(key)
            if fig is None:
                cells.append("—")
                continue
            cells.append(f"{fig.server_cpu:.0%} / {fig.client_cpu:.0%} / {fig.other_cpu:.0%}")
            if fig.other_cpu > BUSY_MACHINE:
                busy.append(f"{LABELS[s]}: {title.split(' (')[0]}")
        print(f"| {title.split(' (')[0]} | " + " | ".join(cells) + " |")
    print()
    if results.quiet_waited:
        print(
            f"Before some measurements the script waited {results.quiet_waited:.0f} s in all for"
            " other processes on the machine to calm down."
        )
        print()
    if busy:
        print(
            f"NOTE: other processes used more than {BUSY_MACHINE:.0%} of a core during: "
            + "; ".join(busy)
            + ". Those figures are likely low; run again on a quieter machine."
        )
        print()
    chunk = f"chunk_{1 * MiB}"
    # What the same stack gives with no protocol at all: a target above the
    # bare sink's own ratio cannot be reached by any tus server on it.
    ceilings = [
        (
            f"{LABELS[sink]} 1 MiB chunks / {LABELS[peer]} 1 MiB chunks",
            ratio(results, (sink, chunk), (peer, chunk)) if 1 * MiB in sizes.chunks else None,
        )
        for sink in BARE_SINKS
        for peer in ("node", "tuspy")
    ]
    print("## Ceilings of the stack (no tus, no state: bare Starlette)")
    print()
    print("| ratio | measured |")
    print("|---|---:|")
    for title, value in ceilings:
        if value is not None:
            print(f"| {title} | {value:.2f} |")
    print()
    side_by_side(results, cols, sizes)
    print("## Targets (informational; from the medians of this run)")
    print()
    print("| target | measured | needed | result |")
    print("|---|---:|---:|---|")
    for t in targets(results, sizes):
        result = (
            "—"
            if t.needed == "reported"
            else "n/a"
            if t.ok is None
            else ("PASS" if t.ok else "MISS")
        )
        print(f"| {t.title} | {t.measured} | {t.needed} | {result} |")
    print()
    print("1 MB = 10^6 bytes; KiB, MiB and GiB are binary (2^10, 2^20, 2^30 bytes).")
    print(f"Command: {command}")
    if results.checks:
        failed = results.check_failures
        print(
            f"Stored sizes: {len(results.checks) - failed} of {len(results.checks)} uploads"
            " stored exactly the bytes sent."
        )
    for name, error in results.errors.items():
        print(f"ERROR in {LABELS[name]}: {error}")


# Pairs compared figure by figure: the HTTP servers, and the file digest.
PAIRS = [
    ("bare-granian", "bare", "bare sink on granian / on uvicorn"),
    ("tusserver-granian", "tusserver", "tusserver on granian / on uvicorn"),
    ("tusserver-granian-nodigest", "bare-granian", "tusserver on granian, no digest / its sink"),
    ("tusserver-nodigest", "bare", "tusserver on uvicorn, no digest / its sink"),
    ("tusserver-nodigest", "tusserver", "tusserver no digest / with digest, uvicorn"),
    ("tusserver-granian-nodigest", "tusserver-granian", "no digest / with digest, granian"),
]
TRANSFERS = ("single", "chunk_", "concurrent")  # keys of the rows that move bytes


def side_by_side(results: Results, cols: list[str], sizes: Sizes) -> None:
    """Server CPU per GiB moved, and the ratios of PAIRS, in the same run."""
    rows = [(k, t) for k, t in row_titles(sizes) if k.startswith(TRANSFERS)]
    print("Server CPU seconds per GiB moved (a share of one core over MB/s; median of the tries):")
    print()
    print("| measurement | " + " | ".join(LABELS[s] for s in cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for key, title in rows:
        cells = []
        for s in cols:
            value = cpu_of(results, s, key, "median", cpu_per_gib)
            cells.append("—" if value is None else f"{value:.2f}")
        print(f"| {title.split(' (')[0]} | " + " | ".join(cells) + " |")
    print()
    if not any(a in cols and b in cols for a, b, _ in PAIRS):
        return
    print("## HTTP servers and file digest side by side (ratios of figures above)")
    print()
    print("| ratio | " + " | ".join(t.split(" (")[0] for k, t in row_titles(sizes)[:-1]) + " |")
    print("|---|" + "---:|" * (len(row_titles(sizes)) - 1))
    for a, b, what in PAIRS:
        if a not in cols or b not in cols:
            continue
        cells = []
        for key, _ in row_titles(sizes)[:-1]:
            value = ratio(results, (a, key), (b, key))
            cells.append("—" if value is None else f"{value:.2f}")
        print(f"| {what} | " + " | ".join(cells) + " |")
    print()


def environment(servers: list[str]) -> list[str]:
    lines = [
        f"python {platform.python_version()}, uvicorn {pkg_version('uvicorn')},"
        f" starlette {pkg_version('starlette')}, uvloop {pkg_version('uvloop')},"
        f" httptools {pkg_version('httptools')}, granian {pkg_version('granian')}",
        f"{os.cpu_count()} CPUs ({cpu_model()}), {psutil.virtual_memory().total / GiB:.0f} GiB"
        f" memory, {platform.system()} {platform.release()}",
    ]
    if "node" in servers:
        node_version = "?"
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            node_version = subprocess.run(
                ["node", "--version"], capture_output=True, text=True, timeout=30, check=False
            ).stdout.strip()
        tus = {}
        for pkg in ("server", "file-store"):
            with contextlib.suppress(OSError, ValueError):
                meta = NODE_DIR / "node_modules" / "@tus" / pkg / "package.json"
                tus[pkg] = json.loads(meta.read_text())["version"]
        lines.append(
            f"node {node_version}, @tus/server {tus.get('server', '?')},"
            f" @tus/file-store {tus.get('file-store', '?')}"
        )
    if "tuspy" in servers and tuspy_python().is_file():
        lines.append(tuspy_versions())
    return lines


def pkg_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


# --------------------------------------------------------------------------------------------
# Main


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Upload throughput, request rates and memory of tusserver next to a bare"
        " uvicorn sink and @tus/server. Prints figures; asserts nothing about speed."
    )
    parser.add_argument(
        "--only",
        default=",".join(SERVERS),
        help=f"comma-separated servers to measure, from: {', '.join(SERVERS)} (default: all)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes (64 MiB uploads, 8 concurrent, fewer requests) to check that it runs",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        choices=range(1, 6),
        metavar="N",
        help="run every measurement N times (1-5) and keep the best (for RSS: the worst);"
        " default 3, with --quick 1",
    )
    parser.add_argument(
        "--tusserver-cmd",
        default=DEFAULT_TUSSERVER_CMD,
        help="command that starts tusserver; {python} {host} {port} {storage} {data_dir} are"
        f" filled in (default: {DEFAULT_TUSSERVER_CMD!r})",
    )
    parser.add_argument(
        "--tusserver-path", default="/files/", help="URL path of the tus endpoint of tusserver"
    )
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="do not pin the server to CPU 0 and the client to CPU 1",
    )
    args = parser.parse_args(argv)
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    args.servers = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(args.servers) - set(SERVERS))
    if unknown or not args.servers:
        parser.error(f"--only takes a comma-separated list from {', '.join(SERVERS)}")
    return args


def command_line(argv: list[str]) -> str:
    script = os.path.relpath(Path(__file__).resolve(), Path.cwd())
    if script.startswith(".."):
        script = "bench/bench.py"
    return shlex.join(["python", script, *argv])


def pin_client(args: argparse.Namespace) -> None:
    if args.pin and (os.cpu_count() or 1) < 2:
        print("only one CPU: not pinning server and client")
        args.pin = False
    if args.pin:
        os.sched_setaffinity(0, {CLIENT_CPU})
        print(f"client pinned to CPU {CLIENT_CPU}; servers will be pinned to CPU {SERVER_CPU}")


def fail(server: Server, exc: BaseException, results: Results, during: str = "") -> None:
    """Record why a server failed (and in which measurement), show its log, stop it."""
    detail = "".join(traceback.format_exception_only(exc)).strip()
    if during:
        detail = f"during {during}: {detail}"
    results.errors[server.name] = detail
    print(f"  {server.label} FAILED: {detail}", flush=True)
    tail = server.log_tail()
    if tail:
        print(f"  last lines of its log:\n{tail}")
    server.stop()


async def run_servers(
    servers: list[Server], payload: memoryview, sizes: Sizes, repeat: int, results: Results
) -> None:
    """Start every server, then run the rounds. In a round every server in turn is warmed up
    and takes all the measurements back to back; the order of the servers rotates from round
    to round. Rounds are short, so a machine whose speed drifts over minutes moves every
    server's figures alike. Only one server is busy at a time. Before its measurements, each
    server's turn writes and removes twice the largest upload of the turn in its storage folder
    (``warm_page_cache``)."""
    benches = []
    for server in servers:
        try:
            server.start()
            await asyncio.to_thread(server.wait_ready)
            server.pin_tree()
            pid = server.proc.pid if server.proc else "?"
            print(f"{server.label}: pid {pid}: {shlex.join(server.argv)}", flush=True)
            for line in server.pinned:
                print(f"  pinned {line}")
            benches.append(Bench(server, payload, sizes, results))
        except Exception as exc:
            fail(server, exc, results)
    steps = plan(sizes)
    for round_no in range(repeat):
        print(f"\nround {round_no + 1} of {repeat}", flush=True)
        shift = round_no % max(1, len(benches))  # nobody always goes first
        for bench in benches[shift:] + benches[:shift]:
            server = bench.server
            during = "the warm-up"
            try:
                if server.name not in results.errors:
                    await bench.warm_up()
                    await asyncio.to_thread(warm_page_cache, server.storage, 2 * sizes.rss)
                    bench.settle()
                for step in steps:
                    if server.name in results.errors or (step.tus_only and not server.is_tus):
                        continue
                    if step.only and server.name not in step.only:
                        continue
                    during = f"the {step.key!r} measurement of round {round_no + 1}"
                    await bench.measure(step.key, lambda b=bench, st=step: st.run(b))
            except Exception as exc:
                fail(server, exc, results, during)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    command = command_line(argv)
    results = Results()
    servers: list[Server] = []
    workdir = Path(tempfile.mkdtemp(prefix="tb", dir="/tmp"))
    try:
        with sigterm_as_interrupt():
            pin_client(args)
            variants = [name for name in args.servers if name in TUSSERVER_VARIANTS]
            why = tusserver_available(args) if variants else None
            if why is not None:
                for name in variants:
                    results.errors[name] = f"not available: {why}"
                print(f"tusserver is not available ({why}); skipping it")
            if "node" in args.servers:
                try:
                    npm_ci()
                except (BenchError, OSError, subprocess.SubprocessError) as exc:
                    results.errors["node"] = str(exc)
                    print(f"@tus/server is not available: {exc}")
            if "tuspy" in args.servers:
                try:
                    tuspy_venv()
                except (BenchError, OSError, subprocess.SubprocessError) as exc:
                    results.errors["tuspy"] = str(exc)
                    print(f"tuspyserver is not available: {exc}")
            # After the installs, so that the versions installed are the ones printed.
            for line in environment(args.servers):
                print(line)
            payload = memoryview(os.urandom(PAYLOAD_SIZE))
            if any(name in args.servers for name in DIGEST_ON):
                results.hash_cost = hash_cost(payload, cpu=SERVER_CPU if args.pin else None)
                where = f"on CPU {SERVER_CPU}" if args.pin else "unpinned"
                print(
                    f"hashlib.sha256 in this process, {where}: {results.hash_cost:.2f} CPU s/GiB"
                    f" (median of 3 x {human_size(HASH_SIZE)})"
                )
            try:
                import uvloop

                runner: Callable[[Awaitable[None]], None] = uvloop.run  # type: ignore[assignment]
                print("client: asyncio on uvloop")
            except ImportError:
                runner = asyncio.run  # type: ignore[assignment]
                print("client: asyncio (uvloop is not installed)")
            servers += [
                make_server(name, workdir, args)
                for name in args.servers
                if name not in results.errors
            ]
            print()
            runner(run_servers(servers, payload, sizes, args.repeat, results))
            for server in servers:
                server.stop()
            report(results, args.servers, sizes, command)
    except KeyboardInterrupt:
        print("\ninterrupted; stopping servers", file=sys.stderr)
        return 130
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if results.errors or results.check_failures else 0


if __name__ == "__main__":
    sys.exit(main())

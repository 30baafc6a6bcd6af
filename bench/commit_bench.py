#!/usr/bin/env python3
"""What committing while a body streams costs: one PATCH, with and without.

tusserver commits the bytes a PATCH stored every ``checkpoint_bytes`` or
``checkpoint_interval`` (so a killed process keeps them), and with
``durable_commits`` flushes them to stable storage first. This script serves
the same app with each setting side by side, each in its own process with its
own embedded Redis, pinned to CPU 0 (the client on CPU 1), and uploads 1 GiB
in one PATCH to each in turn, round after round (the order rotates). It prints
MB/s and server CPU seconds per GiB (the whole process tree: uvicorn and its
Redis), best of the rounds, and each setting's throughput relative to the one
without checkpoints. Each round starts by writing and removing a few GiB on
the storage's file system, so that no setting is timed on pages the kernel
touches for the first time. It asserts nothing about speed.

Usage: python bench/commit_bench.py [--size-mib 1024] [--repeat 3] [--dir /dev/shm]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
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

MiB = 1024 * 1024
MB = 1_000_000
REPO_DIR = Path(__file__).resolve().parent.parent
SERVER_CPU, CLIENT_CPU = 0, 1
PAYLOAD = os.urandom(64 * MiB)
WARM_UP_BYTES = 3 * 1024 * MiB

# Each setting: the Config keywords it adds to the defaults.
SETTINGS: dict[str, str] = {
    "no checkpoints": "checkpoint_bytes=2**62, checkpoint_interval=1e9",
    "checkpoints (default)": "",
    "checkpoints, durable": "durable_commits=True",
}

LAUNCHER = """
import sys, uvicorn
from pathlib import Path
from tusserver import Config, create_app
config = Config(storage=sys.argv[2], data_dir=Path(sys.argv[3]), {settings})
uvicorn.run(create_app(config), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


@dataclass
class Served:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    mb_per_s: list[float] = field(default_factory=list)
    cpu_per_gib: list[float] = field(default_factory=list)

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.process)


def start(name: str, settings: str, workdir: Path) -> Served:
    port = free_port()
    folder = workdir / name.replace(" ", "-").replace(",", "").replace("(", "").replace(")", "")
    launcher = LAUNCHER.format(settings=settings)
    process = subprocess.Popen(
        [sys.executable, "-c", launcher, str(port), str(folder / "files"), str(folder / "data")],
        cwd=REPO_DIR,
        preexec_fn=lambda: os.sched_setaffinity(0, {SERVER_CPU}),
    )
    wait_until_up(process, f"http://127.0.0.1:{port}/files/", f"{name}: the server")
    return Served(name, process, port)


def upload(served: Served, size: int) -> None:
    """POST, then one PATCH with ``size`` bytes; records MB/s and CPU s/GiB."""
    base = f"http://127.0.0.1:{served.port}"
    created = httpx.post(
        base + "/files/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": str(size)}
    )
    created.raise_for_status()
    path = created.headers["Location"]
    head = (
        f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
        "Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n"
        f"Content-Length: {size}\r\n\r\n"
    ).encode()
    view = memoryview(PAYLOAD)
    cpu_before = served.cpu_seconds()
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", served.port)) as sock:
        sock.sendall(head)
        sent = 0
        while sent < size:
            piece = view[: min(len(view), size - sent)]
            sock.sendall(piece)
            sent += len(piece)
        answer = sock.recv(65536)
    elapsed = time.perf_counter() - started
    cpu = served.cpu_seconds() - cpu_before
    if not answer.startswith(b"HTTP/1.1 204"):
        raise RuntimeError(f"{served.name}: PATCH answered {answer[:60]!r}")
    served.mb_per_s.append(size / elapsed / MB)
    served.cpu_per_gib.append(cpu / (size / 1024**3))


def warm_page_cache(folder: Path) -> None:
    """Write and remove a few GiB: the VM's first touch of a page is costly."""
    scratch = folder / "warm-up"
    with open(scratch, "wb") as file:
        for _ in range(WARM_UP_BYTES // len(PAYLOAD)):
            file.write(PAYLOAD)
    scratch.unlink()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where the servers store (default: a new temporary directory); a tmpfs such as "
        "/dev/shm takes the disk's writeback out of the figures, leaving the mechanism's cost "
        "(there a flush costs nothing, so the durable row means nothing)",
    )
    args = parser.parse_args()
    os.sched_setaffinity(0, {CLIENT_CPU})
    workdir = Path(tempfile.mkdtemp(prefix="tus-commit-bench-", dir=args.dir))
    running: list[Served] = []
    try:
        for name, settings in SETTINGS.items():
            running.append(start(name, settings, workdir))
        size = args.size_mib * MiB
        for served in running:
            upload(served, 16 * MiB)  # warm-up
            served.mb_per_s.clear()
            served.cpu_per_gib.clear()
        for round_number in range(args.repeat):
            warm_page_cache(workdir)
            order = running[round_number % len(running) :] + running[: round_number % len(running)]
            for served in order:
                upload(served, size)
        report(running, args)
    finally:
        for served in running:
            served.process.terminate()
            served.process.wait(15)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def report(running: list[Served], args: argparse.Namespace) -> None:
    print(f"one PATCH of {args.size_mib} MiB, {args.repeat} rounds; server pinned to CPU 0")
    print(
        f"{'setting':<24} {'best MB/s':>10} {'median':>8} {'CPU s/GiB':>10} "
        f"{'best vs none':>13} {'median vs none':>15}"
    )
    baseline = max(running[0].mb_per_s)
    baseline_median = statistics.median(running[0].mb_per_s)
    for served in running:
        best = max(served.mb_per_s)
        median = statistics.median(served.mb_per_s)
        cpu = min(served.cpu_per_gib)
        print(
            f"{served.name:<24} {best:>10.0f} {median:>8.0f} {cpu:>10.2f} "
            f"{best / baseline:>13.3f} {median / baseline_median:>15.3f}"
        )
        rounds = ", ".join(f"{figure:.0f}" for figure in served.mb_per_s)
        print(f"{'':<24} rounds: {rounds}")


if __name__ == "__main__":
    sys.exit(main())

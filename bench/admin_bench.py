#!/usr/bin/env python3
"""How long ``tusserver uploads list`` takes over many uploads.

Starts a real redis-server (tusserver's embedded Redis, on a unix socket in
a temporary folder), writes ``--count`` upload records (100,000 by default)
with the store's own ``CREATE`` script and record fields
(``tusserver.record.to_fields``), pipelined 1,000 at a time: a mix of
incomplete, finished, failed and running (locked) uploads, with file names
and owners. Then it runs ``python -m tusserver uploads list`` as an operator
would, as a process, with and without ``--json``, ``--repeat`` times each,
and prints the time to the first row, the total time (Python's start-up
included), uploads per second, best and median, and the CPU seconds of the
listing process (what other work on a shared machine does not inflate),
and the peak memory (RSS) of the listing processes.
It checks that every upload was listed once; it asserts nothing about speed.

Usage: python bench/admin_bench.py [--count 100000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import base64
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tusserver import scripts
from tusserver.embedded_redis import EmbeddedRedis
from tusserver.protocol import Metadata
from tusserver.record import COMPLETE, FAILED, Upload, to_fields
from tusserver.state import EXPIRY_INDEX, gone_key, info_key, lock_key

REPO_DIR = Path(__file__).resolve().parent.parent
BATCH = 1000
OWNERS = ("alice", "bob", "carol", None)


def upload_number(n: int, now: float) -> tuple[Upload, bool]:
    """The ``n``-th upload of the bench, and whether a request holds its lock."""
    name = f"file-{n}.bin".encode()
    length = 1_000_000 + n
    upload = Upload(
        id=f"{n:032x}",
        offset=(n * 7919) % length,
        length=length,
        metadata=Metadata(f"filename {base64.b64encode(name).decode()}", {"filename": name}),
        created=now - n % 86400,
        expires=now + 86400 - n % 86400,
        owner=OWNERS[n % len(OWNERS)],
    )
    kind = n % 10
    if kind == 0:
        upload.state, upload.offset, upload.expires = COMPLETE, length, None
    elif kind == 1:
        upload.state, upload.offset = FAILED, length
    return upload, kind == 2


def fill(client: redis.Redis, count: int) -> None:
    """``count`` records, as ``UploadStore.create`` writes them, in pipelines."""
    create = client.register_script(scripts.CREATE)
    now = time.time()
    for start in range(0, count, BATCH):
        with client.pipeline(transaction=False) as pipe:
            for n in range(start, min(start + BATCH, count)):
                upload, locked = upload_number(n, now)
                fields = to_fields(upload)
                pairs = [item for pair in fields.items() for item in pair]
                if upload.expires is not None:
                    pipe.zadd(EXPIRY_INDEX, {upload.id: upload.expires}, lt=True)
                token = "bench-writer" if locked else ""
                keys = [info_key(upload.id), lock_key(upload.id), gone_key(upload.id)]
                create(keys=keys, args=[token, 600_000, fields["created"], *pairs], client=pipe)
            pipe.execute()


@dataclass
class Timings:
    first_row: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def list_once(redis_url: str, *flags: str) -> tuple[float, float, float, int]:
    """One ``tusserver uploads list`` process: seconds to its first row, in
    all, its CPU seconds, and the uploads it listed."""
    argv = [sys.executable, "-m", "tusserver", "uploads", "list", "--redis-url", redis_url]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSSERVER_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_DIR), env.get("PYTHONPATH")]))
    cpu_before = children_cpu_seconds()
    started = time.perf_counter()
    first_row = 0.0
    rows = 0
    with subprocess.Popen(argv, stdout=subprocess.PIPE, env=env) as process:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith(b"ID "):
                continue  # the table's header
            if rows == 0:
                first_row = time.perf_counter() - started
            rows += 1
        if process.wait(600) != 0:
            raise RuntimeError(f"tusserver uploads list exited with {process.returncode}")
    elapsed = time.perf_counter() - started
    return first_row, elapsed, children_cpu_seconds() - cpu_before, rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="tus-admin-bench-", dir="/tmp"))
    server = EmbeddedRedis(folder)
    try:
        redis_url = server.start()
        client = redis.Redis.from_url(redis_url)
        try:
            started = time.perf_counter()
            fill(client, args.count)
            print(f"wrote {args.count:,} records in {time.perf_counter() - started:.1f} s")
        finally:
            client.close()
        results: dict[str, Timings] = {"table": Timings(), "--json": Timings()}
        for _ in range(args.repeat):
            for name, flags in (("table", ()), ("--json", ("--json",))):
                first_row, total, cpu, rows = list_once(redis_url, *flags)
                if rows != args.count:
                    raise RuntimeError(f"{name}: listed {rows} uploads of {args.count}")
                results[name].first_row.append(first_row)
                results[name].total.append(total)
                results[name].cpu.append(cpu)
        report(results, args)
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    return 0


def report(results: dict[str, Timings], args: argparse.Namespace) -> None:
    # ru_maxrss: KiB on Linux, the largest of the children waited for (the listings).
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"tusserver uploads list over {args.count:,} uploads, {args.repeat} runs each")
    print(
        f"{'output':<8} {'first row s':>12} {'best s':>8} {'median s':>9} {'uploads/s':>10}"
        f" {'CPU s':>6}"
    )
    for name, timings in results.items():
        best = min(timings.total)
        print(
            f"{name:<8} {min(timings.first_row):>12.2f} {best:>8.2f} "
            f"{statistics.median(timings.total):>9.2f} {args.count / best:>10,.0f}"
            f" {min(timings.cpu):>6.2f}"
        )
    print(f"peak RSS of a listing process: {peak_mib:.0f} MiB")


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""How much HEAD polling on an upload slows the PATCH that is writing it.

A progress page asks for an upload's offset (HEAD) while the upload's PATCH
streams. The project's figure: polling at 50 requests/s slows the PATCH by
less than 10 %. Here, in the deployment of bench/deployment.py (a Redis
Cluster, three ``tusserver serve`` instances sharing it and one storage, and
nginx round-robining over them), each measurement is a pair:

* **plain**: POST, then the whole upload in one PATCH, nothing else running;
* **polled**: the same, while another connection sends a HEAD on that upload
  every 20 ms (50/s) from just after the POST until the PATCH's 204.

The pairs are taken for two scenarios: ``one`` upload of ``--size-mib``, and
``four`` uploads of a quarter of it at once, each polled every 20 ms (200
HEAD/s in all), and two targets: ``direct`` to one instance (every HEAD goes
to the process receiving the PATCH) and ``nginx`` (the HEADs spread over the
three instances). The order within a pair alternates from round to round.
The slowdown of a round is 1 - polled MB/s / plain MB/s; the script prints
the median over ``--repeat`` rounds.

Every PATCH must answer 204 with the full ``Upload-Offset`` (never cut, never
refused), every HEAD 200 with an offset that never goes back, and every stored
file must have exactly the size sent; anything else ends the run with exit
code 1. The figures themselves are not asserted (exit code 0 whatever they are).

Usage: python bench/head_polling.py [--quick] [--repeat N] [--size-mib 256]
       [--targets direct,nginx] [--scenarios one,four] [--server granian|uvicorn]
       [--poll same|other]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from deployment import Deployment, Meter, run_deployment_bench

from bench import (
    MB,
    MIN_RATE,
    PAYLOAD_SIZE,
    Bench,
    BenchError,
    Connection,
    Results,
    Sizes,
    expect,
)

MiB = 1024 * 1024
GiB = 1024 * MiB
POLL_INTERVAL = 0.02  # 50 HEAD/s on each upload
INSTANCES = 3
TARGETS = ("direct", "nginx")
SCENARIOS = {"one": 1, "four": 4}  # scenario -> uploads at once
UNUSED_SIZES = Sizes(0, 0, (), 0, 0, 0, 0, 0, 0)


@dataclass
class Polls:
    """What the HEADs on one upload saw."""

    latencies: list[float] = field(default_factory=list)
    last_offset: int = 0
    reconnects: int = 0


@dataclass
class Figure:
    rate: float  # MB/s of the PATCHes, together
    seconds: float
    tusserver_cpu: float  # CPU seconds of the instances over the PATCHes
    heads: int = 0
    latencies: list[float] = field(default_factory=list)


@dataclass
class Pairs:
    # (target, scenario) -> one (plain, polled) pair per round
    rounds: dict[tuple[str, str], list[tuple[Figure, Figure]]] = field(default_factory=dict)


async def poll(conn: Connection, bench: Bench, path: str, length: int, done: asyncio.Event,
               polls: Polls, limit: float) -> None:  # fmt: skip
    """HEAD ``path`` every POLL_INTERVAL until ``done``; at most ``limit`` seconds'
    worth of HEADs. A late HEAD does not make the next ones come faster."""
    due = time.monotonic()
    for _ in range(math.ceil(limit / POLL_INTERVAL) + 1):
        if done.is_set():
            return
        start = time.monotonic()
        response = await conn.request("HEAD", path, "Tus-Resumable: 1.0.0\r\n")
        polls.latencies.append(time.monotonic() - start)
        expect(response, 200, f"HEAD {path}")
        offset = int(response.headers.get(b"upload-offset", b"-1"))
        if not polls.last_offset <= offset <= length:
            raise BenchError(f"HEAD {path}: offset {offset} after {polls.last_offset}")
        polls.last_offset = offset
        due = max(due + POLL_INTERVAL, time.monotonic())
        try:
            await asyncio.wait_for(done.wait(), due - time.monotonic())
        except TimeoutError:
            pass
    raise BenchError("the PATCHes outlasted the polling's time limit")


async def measure(
    deployment: Deployment,
    bench: Bench,
    uploads: int,
    size: int,
    polled: bool,
    poll_other: bool = False,
) -> Figure:
    """POST ``uploads`` uploads, then PATCH each whole at once (polled or not).
    ``poll_other``: the HEADs go to as many other uploads, which nothing
    writes: what the same rate of HEADs costs without meeting the PATCH."""
    conns = [Connection(bench.server.port) for _ in range(uploads)]
    pollers = [Connection(bench.server.port) for _ in range(uploads if polled else 0)]
    polls = [Polls() for _ in pollers]
    limit = 60 + uploads * size / MIN_RATE
    done = asyncio.Event()
    try:
        paths = [await bench.create(conn, size) for conn in conns]
        polled_paths = [await bench.create(c, size) for c in pollers] if poll_other else paths
        tasks = [
            asyncio.ensure_future(poll(c, bench, path, size, done, p, limit))
            for c, path, p in zip(pollers, polled_paths, polls, strict=False)
        ]
        try:
            sends = [bench.send(c, path, 0, size) for c, path in zip(conns, paths, strict=True)]
            with Meter(deployment) as meter:
                await bench.timed(limit, asyncio.gather(*sends))
            done.set()
            await bench.timed(30, asyncio.gather(*tasks))  # a failed HEAD raises here
        finally:
            for task in tasks:
                task.cancel()
    finally:
        await asyncio.gather(*(c.close() for c in (*conns, *pollers)))
    for path in paths:
        bench.check_size(path, size)
    for p in polls:
        if not poll_other and p.last_offset == 0 and meter.seconds > 4 * POLL_INTERVAL:
            raise BenchError("no HEAD saw any progress of an upload")
    latencies = [x for p in polls for x in p.latencies]
    return Figure(
        uploads * size / MB / meter.seconds,
        meter.seconds,
        meter.cpu["tusserver"],
        len(latencies),
        latencies,
    )


async def run(args: argparse.Namespace, workdir: Path, results: Results, pairs: Pairs) -> None:
    payload = memoryview(os.urandom(PAYLOAD_SIZE))
    deployment = Deployment(workdir, args.server)
    try:
        print("starting the Redis Cluster, three instances and nginx ...", flush=True)
        await asyncio.to_thread(deployment.start_cluster)
        await asyncio.to_thread(deployment.start, INSTANCES)
        benches = {
            target: Bench(
                deployment.endpoint(direct=target == "direct"), payload, UNUSED_SIZES, results
            )
            for target in args.targets
        }
        for bench in benches.values():  # connections, caches, the first files
            for scenario in args.scenarios:
                await measure(deployment, bench, SCENARIOS[scenario], 16 * MiB, polled=True)
        for round_no in range(args.repeat):
            print(f"\nround {round_no + 1} of {args.repeat}", flush=True)
            for target, bench in benches.items():
                for scenario in args.scenarios:
                    uploads = SCENARIOS[scenario]
                    size = args.size // uploads
                    figures: dict[bool, Figure] = {}
                    # Alternate which goes first, so that neither always
                    # follows a pause (or the other's writeback).
                    for polled in (False, True) if round_no % 2 == 0 else (True, False):
                        bench.settle()
                        figures[polled] = await measure(
                            deployment, bench, uploads, size, polled, args.poll == "other"
                        )
                    pairs.rounds.setdefault((target, scenario), []).append(
                        (figures[False], figures[True])
                    )
                    plain, polled_fig = figures[False], figures[True]
                    print(
                        f"  {target:<6} {scenario:<4} plain {plain.rate:7.1f} MB/s,"
                        f" polled {polled_fig.rate:7.1f} MB/s ({polled_fig.heads} HEAD,"
                        f" median {statistics.median(polled_fig.latencies) * 1000:.1f} ms):"
                        f" slowdown {slowdown(plain, polled_fig):+.1%}",
                        flush=True,
                    )
    except Exception:
        tails = deployment.log_tails()
        if tails:
            print(f"last lines of the instances' logs:\n{tails}", file=sys.stderr)
        raise
    finally:
        await asyncio.to_thread(deployment.stop)


def slowdown(plain: Figure, polled: Figure) -> float:
    return 1 - polled.rate / plain.rate


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def report(args: argparse.Namespace, pairs: Pairs, results: Results, command: str) -> None:
    print()
    print(
        f"## HEAD polling every {POLL_INTERVAL * 1000:.0f} ms on each upload being written"
        f" ({args.size // MiB} MiB in all, one PATCH per upload; medians of {args.repeat})"
    )
    print()
    print(
        "| target | uploads | plain MB/s | polled MB/s | slowdown | HEAD/s | HEAD median ms"
        " | HEAD p99 ms | tusserver CPU s/GiB plain | polled |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (target, scenario), rounds in pairs.rounds.items():
        uploads = SCENARIOS[scenario]
        plain = [p for p, _ in rounds]
        polled = [q for _, q in rounds]
        latencies = [x for q in polled for x in q.latencies]
        heads = statistics.median(q.heads / q.seconds for q in polled)
        cpu = [statistics.median(f.tusserver_cpu * GiB / args.size for f in fs)
               for fs in (plain, polled)]  # fmt: skip
        where = "one instance" if target == "direct" else f"nginx, {INSTANCES} instances"
        print(
            f"| {where} | {uploads} x {args.size // uploads // MiB} MiB"
            f" | {statistics.median(f.rate for f in plain):,.1f}"
            f" | {statistics.median(f.rate for f in polled):,.1f}"
            f" | {statistics.median(slowdown(p, q) for p, q in rounds):+.1%}"
            f" | {heads:.0f} | {statistics.median(latencies) * 1000:.1f}"
            f" | {percentile(latencies, 0.99) * 1000:.1f} | {cpu[0]:.2f} | {cpu[1]:.2f} |"
        )
    print()
    print(
        "MB = 10^6 bytes. slowdown = 1 - polled MB/s / plain MB/s, per round, then the median;"
        " negative: the polled run was faster (noise). HEAD latency over every HEAD of the"
        " polled runs."
    )
    print(f"Command: {command}")
    print(
        f"Every PATCH answered 204 with the full offset; stored sizes:"
        f" {len(results.checks) - results.check_failures} of {len(results.checks)} exact."
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="How much HEAD polling at 50 requests/s slows the PATCH of the upload"
        " it polls. Prints figures; asserts nothing about speed."
    )
    parser.add_argument(
        "--quick", action="store_true", help="32 MiB uploads, two rounds: checks that it runs"
    )
    parser.add_argument("--size-mib", type=int, default=None, help="MiB per pair (256)")
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        choices=range(1, 21),
        metavar="N",
        help="rounds (1-20; default 5, with --quick 2); figures are medians",
    )
    parser.add_argument("--targets", default=",".join(TARGETS), help="direct,nginx (default)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="one,four (default)")
    parser.add_argument(
        "--poll",
        choices=("same", "other"),
        default="same",
        help="HEAD the uploads being written (same, the figure) or as many idle ones"
        " (other: the HEADs' cost alone, for comparison)",
    )
    parser.add_argument(
        "--server",
        choices=("granian", "uvicorn"),
        default=None,
        help="HTTP server of the instances (default: tusserver's own default)",
    )
    args = parser.parse_args(argv)
    args.targets = [t for t in args.targets.split(",") if t]
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    if not args.targets or not set(args.targets) <= set(TARGETS):
        parser.error(f"--targets: from {', '.join(TARGETS)}")
    if not args.scenarios or not set(args.scenarios) <= set(SCENARIOS):
        parser.error(f"--scenarios: from {', '.join(SCENARIOS)}")
    args.size = (args.size_mib or (32 if args.quick else 256)) * MiB
    if not 4 * MiB <= args.size <= 4 * GiB:
        parser.error("--size-mib: 4 to 4096")
    if args.repeat is None:
        args.repeat = 2 if args.quick else 5
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    pairs = Pairs()
    return run_deployment_bench(
        "head_polling.py",
        argv,
        args.server,
        lambda workdir, results: run(args, workdir, results, pairs),
        lambda results, command: report(args, pairs, results, command),
    )


if __name__ == "__main__":
    sys.exit(main())

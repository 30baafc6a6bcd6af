#!/usr/bin/env python3
"""Aggregate upload throughput through nginx with 1, 2 and 3 tusserver instances.

The deployment of bench/deployment.py: a Redis Cluster (three primaries, three
replicas), N ``tusserver serve`` instances sharing it and one storage folder,
and nginx round-robining every request over them (examples/nginx-multi.conf).
For each N, many uploads at once (POST, then one PATCH each) go through nginx;
each POST and PATCH may reach any instance.

The machine the figures are for has 2 cores, fewer than the processes that
share them (client, nginx, up to three instances, six Redis servers): the
aggregate MB/s stops growing once the cores are full. The CPU seconds per GiB
of each group show what an instance costs beyond that point: if the
tusserver figure stays flat from N=1 to N=3, instances add no work of their
own (no contention on Redis, no lock waits), and on a machine with more cores
the throughput would grow with N. Nothing is pinned: the instances are meant
to spread over the cores.

It asserts nothing about speed: exit code 0 whatever the figures, 1 if a
status was unexpected, a stored file had the wrong size, or something could
not be started.

Usage: python bench/scale_out.py [--quick] [--instances 1,2,3] [--repeat N]
       [--uploads 32] [--size-mib 32] [--server granian|uvicorn]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from deployment import GROUPS, Deployment, Meter, run_deployment_bench

from bench import (
    MB,
    MIN_RATE,
    PAYLOAD_SIZE,
    Bench,
    Connection,
    Results,
    Sizes,
)

MiB = 1024 * 1024
GiB = 1024 * MiB
WARM_UP_SIZE = 8 * MiB
# Bench needs a Sizes; only its upload steps are used here.
UNUSED_SIZES = Sizes(0, 0, (), 0, 0, 0, 0, 0, 0)


@dataclass
class Round:
    seconds: float
    cpu: dict[str, float]  # CPU seconds per group, plus client and other


@dataclass
class Runs:
    rounds: dict[int, list[Round]] = field(default_factory=dict)


async def warm_up(bench: Bench, count: int) -> None:
    """A few uploads through nginx, so each instance has its Redis connections
    and nginx its upstream keep-alive connections before the clock starts."""
    conns = [Connection(bench.server.port) for _ in range(count)]
    try:
        paths = await bench.timed(
            120, asyncio.gather(*(bench.upload(c, WARM_UP_SIZE, WARM_UP_SIZE) for c in conns))
        )
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    for path in paths:
        bench.check_size(path, WARM_UP_SIZE)


async def measure(deployment: Deployment, bench: Bench, uploads: int, size: int) -> Round:
    conns = [Connection(bench.server.port) for _ in range(uploads)]
    await asyncio.gather(*(c.connect() for c in conns))
    total = uploads * size
    try:
        with Meter(deployment) as meter:
            paths = await bench.timed(
                60 + total / MIN_RATE,
                asyncio.gather(*(bench.upload(c, size, size) for c in conns)),
            )
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    for path in paths:
        bench.check_size(path, size)
    return Round(meter.seconds, meter.cpu)


async def run(args: argparse.Namespace, workdir: Path, results: Results, runs: Runs) -> None:
    payload = memoryview(os.urandom(PAYLOAD_SIZE))
    deployment = Deployment(workdir, args.server)
    try:
        print("starting the Redis Cluster ...", flush=True)
        await asyncio.to_thread(deployment.start_cluster)
        print(f"Redis Cluster: {deployment.cluster.url}", flush=True)
        for round_no in range(args.repeat):
            # Alternate the order of N from round to round, so a machine whose
            # speed drifts does not favour one N.
            order = args.instances if round_no % 2 == 0 else args.instances[::-1]
            print(f"\nround {round_no + 1} of {args.repeat}", flush=True)
            for count in order:
                await asyncio.to_thread(deployment.start, count)
                try:
                    bench = Bench(deployment.endpoint(), payload, UNUSED_SIZES, results)
                    await warm_up(bench, 2 * count)
                    bench.settle()
                    result = await measure(deployment, bench, args.uploads, args.size)
                except Exception:
                    tails = deployment.log_tails()
                    if tails:
                        print(f"last lines of the instances' logs:\n{tails}", file=sys.stderr)
                    raise
                finally:
                    await asyncio.to_thread(deployment.stop_servers)
                    await asyncio.to_thread(deployment.flush)
                runs.rounds.setdefault(count, []).append(result)
                total = args.uploads * args.size
                cpu = ", ".join(
                    f"{name} {result.cpu[name] * GiB / total:.2f}"
                    for name in (*GROUPS, "client", "other")
                )
                print(
                    f"  N={count}: {total / MB / result.seconds:8.1f} MB/s"
                    f" ({result.seconds:5.2f} s); CPU s/GiB: {cpu}",
                    flush=True,
                )
    finally:
        await asyncio.to_thread(deployment.stop)


def report(args: argparse.Namespace, runs: Runs, results: Results, command: str) -> None:
    total = args.uploads * args.size
    print()
    print(
        f"## Scale-out: {args.uploads} concurrent uploads of {args.size // MiB} MiB through nginx"
        f" (median of {args.repeat})"
    )
    print()
    print(
        "| instances | MB/s | vs N=1 | tusserver CPU s/GiB | vs N=1 | nginx CPU s/GiB"
        " | Redis CPU s/GiB | client CPU s/GiB | other CPU s/GiB |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    base: tuple[float, float] | None = None
    for count in args.instances:
        rounds = runs.rounds.get(count, [])
        if not rounds:
            continue
        rate = statistics.median(total / MB / r.seconds for r in rounds)

        def per_gib(name: str, rounds: list[Round] = rounds) -> float:
            return float(statistics.median(r.cpu[name] * GiB / total for r in rounds))

        own = per_gib("tusserver")
        if count == 1:
            base = (rate, own)
        rate_ratio = f"{rate / base[0]:.2f}" if base else "—"
        cpu_ratio = f"{own / base[1]:.2f}" if base and base[1] > 0 else "—"
        print(
            f"| {count} | {rate:,.1f} | {rate_ratio} | {own:.2f} | {cpu_ratio}"
            f" | {per_gib('nginx'):.2f} | {per_gib('redis'):.2f} | {per_gib('client'):.2f}"
            f" | {per_gib('other'):.2f} |"
        )
    print()
    print(
        "MB = 10^6 bytes. CPU s/GiB: CPU seconds (user + system) of the group's processes"
        " over the measurement, per GiB uploaded; 'other' is everything else on the machine."
    )
    print(f"Command: {command}")
    print(
        f"Stored sizes: {len(results.checks) - results.check_failures} of"
        f" {len(results.checks)} uploads stored exactly the bytes sent."
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Aggregate upload throughput through nginx with 1, 2 and 3 tusserver"
        " instances on one Redis Cluster, with the CPU seconds per GiB of each part."
        " Prints figures; asserts nothing about speed."
    )
    parser.add_argument(
        "--quick", action="store_true", help="8 uploads of 8 MiB, one round: checks that it runs"
    )
    parser.add_argument("--instances", default="1,2,3", help="instance counts (default 1,2,3)")
    parser.add_argument("--uploads", type=int, default=None, help="concurrent uploads (32)")
    parser.add_argument("--size-mib", type=int, default=None, help="MiB per upload (32)")
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        choices=range(1, 11),
        metavar="N",
        help="rounds (1-10; default 3, with --quick 1); figures are medians",
    )
    parser.add_argument(
        "--server",
        choices=("granian", "uvicorn"),
        default=None,
        help="HTTP server of the instances (default: tusserver's own default)",
    )
    args = parser.parse_args(argv)
    try:
        args.instances = [int(n) for n in args.instances.split(",") if n.strip()]
    except ValueError:
        parser.error("--instances takes comma-separated counts, e.g. 1,2,3")
    if not args.instances or not all(1 <= n <= 8 for n in args.instances):
        parser.error("--instances: counts from 1 to 8")
    args.uploads = args.uploads or (8 if args.quick else 32)
    args.size = (args.size_mib or (8 if args.quick else 32)) * MiB
    if not 1 <= args.uploads <= 256 or not 1 * MiB <= args.size <= 1 * GiB:
        parser.error("--uploads: 1 to 256; --size-mib: 1 to 1024")
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    runs = Runs()
    return run_deployment_bench(
        "scale_out.py",
        argv,
        args.server,
        lambda workdir, results: run(args, workdir, results, runs),
        lambda results, command: report(args, runs, results, command),
    )


if __name__ == "__main__":
    sys.exit(main())

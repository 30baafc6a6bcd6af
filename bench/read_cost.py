"""CPU of one read of an upload's record, the Redis call every HEAD makes:
``UploadStore.read`` over a client made as the server makes it
(``redis_topology.connect``), against a Redis of its own on a Unix socket
(the embedded one), so that neither HTTP nor TCP counts.

With ``--against DIR`` (another checkout of this repository, e.g. a
``git worktree`` of an older commit), rounds alternate between the two
trees, each round in a fresh process importing ``tusserver`` from its tree,
so that what else the machine does weighs on both alike::

    git worktree add ../before HEAD~1
    python bench/read_cost.py --against ../before
    python bench/read_cost.py --against ../before --concurrency 16

``--concurrency N``: N reads in flight at a time, as N concurrent HEADs send
them (the store sends reads asked together in one write:
``tusserver/batched_reads.py``).

Prints, for each tree, the median over rounds of the client's CPU per read
(the process's CPU time: redis-py, the event loop, the reply's parsing) and
of Redis's own CPU per read (the server process's CPU time, from /proc).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
UPLOAD_ID = "0" * 32

CHILD = """
import asyncio, sys, time
from tusserver import redis_topology, redis_urls
from tusserver.record import Upload
from tusserver.state import UploadStore

async def main(url, count, concurrency):
    client = redis_topology.connect(redis_urls.parse(url))
    store = UploadStore(client)
    await store.create(Upload(sys.argv[3], 0, 1000), lock_token=None, lock_ttl_ms=1000)
    for _ in range(200):  # connections made, scripts loaded, caches warm
        await store.read(sys.argv[3])
    print("ready", flush=True)
    sys.stdin.readline()
    async def reader():
        for _ in range(count // concurrency):
            await store.read(sys.argv[3])

    started = time.process_time()
    await asyncio.gather(*(reader() for _ in range(concurrency)))
    print((time.process_time() - started) / count * 1e6, flush=True)
    await client.aclose()

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[4])))
"""


def one_round(
    tree: Path, url: str, count: int, concurrency: int, redis: psutil.Process
) -> tuple[float, float]:
    """(client µs, Redis µs) of CPU per read, in a fresh process of ``tree``,
    with ``concurrency`` reads in flight at a time."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, url, str(count), UPLOAD_ID, str(concurrency)],
        env=env,
        cwd=tree,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdin is not None and child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        before = redis.cpu_times()
        child.stdin.write("go\n")
        child.stdin.flush()
        client_us = float(child.stdout.readline())
        after = redis.cpu_times()
        redis_us = (after.user + after.system - before.user - before.system) / count * 1e6
    if child.returncode != 0:
        raise SystemExit(f"the reads of {tree} failed")
    return client_us, redis_us


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", type=Path, help="another checkout to compare with")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--per-round", type=int, default=20_000)
    parser.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="reads in flight at a time, as concurrent HEADs send them (default 1)",
    )
    args = parser.parse_args()
    if not 1 <= args.concurrency <= args.per_round:
        parser.error("--concurrency: 1 to --per-round")
    sys.path.insert(0, str(ROOT))
    from tusserver.embedded_redis import EmbeddedRedis

    trees = {"this": ROOT}
    if args.against is not None:
        trees["against"] = args.against.resolve()
    samples: dict[str, list[tuple[float, float]]] = {label: [] for label in trees}
    with tempfile.TemporaryDirectory() as data, EmbeddedRedis(Path(data)) as redis:
        assert redis.pid is not None
        server = psutil.Process(redis.pid)
        for _ in range(args.rounds):
            for label, tree in trees.items():
                samples[label].append(
                    one_round(tree, redis.url, args.per_round, args.concurrency, server)
                )
    for label, values in samples.items():
        client = statistics.median(value[0] for value in values)
        own = statistics.median(value[1] for value in values)
        print(
            f"{label:>8}: client {client:5.1f} µs, Redis {own:5.1f} µs of CPU per read"
            f" (medians of {args.rounds} rounds of {args.per_round},"
            f" {args.concurrency} in flight)"
        )


if __name__ == "__main__":
    main()

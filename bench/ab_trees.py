"""Two checkouts of tusserver side by side: CPU per GiB and MB/s of the same uploads, paired.

A change worth a few per cent is lost in this machine's noise when each tree is measured in a
run of its own (the same tree measured twice differs by up to a fifth). Here both trees serve
at once, each a ``tusserver serve --workers 1`` on granian pinned to CPU 0 (the client on
CPU 1), each with its own embedded Redis, and every round uploads the same bytes to each in
turn (the order alternating from round to round), after the page cache was warmed up as
``bench.py`` does. What is compared is the ratio of the two within a round::

    git worktree add ../before HEAD~1
    python bench/ab_trees.py ../before . --chunk-mib 64 --rounds 8

Prints, per round, each tree's MB/s, server CPU per GiB (its whole process tree, Redis
included) and minor page faults; then the medians of the ratios B/A. Each server is started
from inside its own checkout, so that ``python -m tusserver`` imports that checkout.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from patch_profile import CLIENT_CPU, Connection, MiB, Server, upload
from served_process import tree_cpu_seconds

from bench import warm_page_cache

UPLOAD = 1024 * MiB


@dataclass
class Try:
    rate: float  # MB/s
    cpu: float  # server CPU seconds per GiB
    faults: int  # minor page faults of the server's processes


def _usage(server: Server) -> tuple[float, int]:
    """CPU seconds and minor page faults of the server's process tree."""
    faults = 0
    for proc in server.tree():
        # /proc/<pid>/stat, field 10 (minflt), counted after the command's closing
        # parenthesis (psutil does not report it).
        with contextlib.suppress(FileNotFoundError), open(f"/proc/{proc.pid}/stat") as f:
            faults += int(f.read().rsplit(")", 1)[1].split()[7])
    return tree_cpu_seconds(server.process), faults


def one_try(server: Server, conn: Connection, payload: memoryview, chunk: int) -> Try:
    warm_page_cache(server.storage, 3 * UPLOAD)
    os.sync()
    cpu0, faults0 = _usage(server)
    started = time.perf_counter()
    upload(conn, payload, UPLOAD, chunk)
    seconds = time.perf_counter() - started
    cpu1, faults1 = _usage(server)
    for entry in server.storage.iterdir():
        if entry.is_file():
            entry.unlink()
    return Try(UPLOAD / seconds / 1e6, (cpu1 - cpu0) * (1 << 30) / UPLOAD, faults1 - faults0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("tree_a", type=Path, help="checkout A (e.g. the commit before)")
    parser.add_argument("tree_b", type=Path, help="checkout B (e.g. this one)")
    parser.add_argument("--chunk-mib", type=int, default=64, help="MiB per PATCH")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--file-digest", choices=("none", "sha256"), default="none")
    args = parser.parse_args()
    if not 1 <= args.chunk_mib <= 64:
        parser.error("--chunk-mib: 1 to 64")
    if not 1 <= args.rounds <= 50:
        parser.error("--rounds: 1 to 50")
    trees = [args.tree_a.resolve(), args.tree_b.resolve()]
    for tree in trees:
        if not (tree / "tusserver" / "__main__.py").is_file():
            parser.error(f"{tree} is not a checkout of tusserver")
    os.sched_setaffinity(0, {CLIENT_CPU})
    payload = memoryview(os.urandom(64 * MiB))
    chunk = args.chunk_mib * MiB
    options = argparse.Namespace(server="granian", file_digest=args.file_digest)
    tries: list[list[Try]] = [[], []]
    here = Path.cwd()
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tus-ab-")))
        servers, conns = [], []
        for index, tree in enumerate(trees):
            os.chdir(tree)  # `python -m tusserver` imports the checkout it starts in
            try:
                server = Server(options, workdir / f"tree{index}")
            finally:
                os.chdir(here)
            stack.callback(server.stop)
            conn = Connection(server.port)
            stack.callback(conn.close)
            servers.append(server)
            conns.append(conn)
            upload(conn, payload, 64 * MiB, chunk)  # warm-up
        for round_no in range(args.rounds):
            order = (0, 1) if round_no % 2 == 0 else (1, 0)
            for index in order:
                tries[index].append(one_try(servers[index], conns[index], payload, chunk))
            a, b = tries[0][-1], tries[1][-1]
            print(
                f"round {round_no + 1}: A {a.rate:5.0f} MB/s {a.cpu:.2f} s/GiB {a.faults:6d} faults"
                f" | B {b.rate:5.0f} MB/s {b.cpu:.2f} s/GiB {b.faults:6d} faults"
                f" | B/A CPU {b.cpu / a.cpu:.2f}",
                flush=True,
            )
    cpu = [b.cpu / a.cpu for a, b in zip(*tries, strict=True)]
    rate = [b.rate / a.rate for a, b in zip(*tries, strict=True)]
    a_cpu, b_cpu = (statistics.median(t.cpu for t in side) for side in tries)
    a_faults, b_faults = (statistics.median(t.faults for t in side) for side in tries)
    print(
        f"\n{args.chunk_mib} MiB PATCHes, digest {args.file_digest}, {args.rounds} rounds:"
        f" B/A CPU per GiB median {statistics.median(cpu):.3f}"
        f" ({min(cpu):.2f}-{max(cpu):.2f}), MB/s median {statistics.median(rate):.3f}"
        f" ({min(rate):.2f}-{max(rate):.2f}); medians: CPU s/GiB A {a_cpu:.2f}, B {b_cpu:.2f};"
        f" faults per GiB A {a_faults:.0f}, B {b_faults:.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

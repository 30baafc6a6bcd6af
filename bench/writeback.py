"""How long a file takes to be durable, with and without starting its
writeback while it is written (storage_backends/writeback.py).

Writes ``--size`` MiB in blocks of half a MiB with ``pwrite``, as the local
backend does, then fsyncs, in rounds alternating between "hint" (the
backend's ``start_writeback`` after every block) and "none"; prints for each
the median time of the writes, of the fsync and of both, and the process's
CPU. The file goes to ``--dir`` (default: the system's temporary folder,
which must be on a disk for the figures to mean anything; tmpfs keeps no
dirty pages).

Usage: python bench/writeback.py [--size 1024] [--rounds 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from storage_backends.writeback import start_writeback  # noqa: E402

BLOCK = 512 * 1024


def one_file(path: Path, blocks: int, hint: bool) -> tuple[float, float, float]:
    """(seconds writing, seconds in the fsync, CPU seconds) for one file."""
    data = os.urandom(BLOCK)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        started, cpu = time.perf_counter(), time.process_time()
        offset = 0
        for _ in range(blocks):
            os.pwrite(fd, data, offset)
            if hint:
                start_writeback(fd, offset, offset + BLOCK)
            offset += BLOCK
        written = time.perf_counter()
        os.fsync(fd)
        durable = time.perf_counter()
        return written - started, durable - written, time.process_time() - cpu
    finally:
        os.close(fd)
        path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="MiB per file")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    blocks = args.size * 1024 * 1024 // BLOCK
    results: dict[str, list[tuple[float, float, float]]] = {"none": [], "hint": []}
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        for _ in range(args.rounds):
            for label in results:
                path = Path(folder) / "file"
                results[label].append(one_file(path, blocks, hint=label == "hint"))
    for label, runs in results.items():
        write = statistics.median(run[0] for run in runs)
        sync = statistics.median(run[1] for run in runs)
        total = statistics.median(run[0] + run[1] for run in runs)
        cpu = statistics.median(run[2] for run in runs)
        print(
            f"{label:>5}: {args.size} MiB written in {write:.2f} s, fsync {sync:.2f} s,"
            f" durable after {total:.2f} s, CPU {cpu:.2f} s (medians of {args.rounds})"
        )


if __name__ == "__main__":
    main()

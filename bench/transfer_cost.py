"""CPU of one short transfer, in process: ``receive_into_storage`` of a small
body into local storage, then a ``kept_alive`` block (as a finalize has),
the fixed work of every PATCH that is not HTTP or Redis.

With ``--against DIR`` (another checkout of this repository, e.g. a
``git worktree`` of an older commit), the same is run with that checkout's
``tusserver/transfer.py`` and ``tusserver/locking.py``, in rounds that
alternate between the two in one process, so that what else the machine
does weighs on both alike::

    git worktree add ../before HEAD~1
    python bench/transfer_cost.py --against ../before

Prints the median CPU time per transfer (process CPU: the worker thread's
write included) for each. Storage is on /dev/shm when it exists, so that
the disk does not count.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from storage_backends.local import LocalStorage  # noqa: E402

UPLOAD_ID = "0" * 32


def load(name: str, path: Path) -> ModuleType:
    """The module at ``path`` under its own name, beside the one installed."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


async def _extend(key: str, token: str, ttl_ms: int) -> bool:
    return True


async def one_transfer(
    transfer_module: ModuleType, locking: ModuleType, storage: LocalStorage, body: bytes
) -> None:
    lease = locking.Lease(UPLOAD_ID, "token", ttl=30.0, extend=_extend)
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, object]:
        return messages.pop()

    transfer = transfer_module.Transfer()
    await transfer_module.receive_into_storage(
        transfer,
        receive,
        storage,
        lease,
        0,
        limit=None,
        block_size=512 * 1024,
        idle_timeout=60.0,
        takeover_after=5.0,
        body_length=len(body),
    )
    assert transfer.stored == len(body), transfer
    async with locking.kept_alive(lease):
        pass


async def measure(
    trees: dict[str, Path], root: Path, body_size: int, rounds: int, per_round: int
) -> None:
    modules = {
        label: (
            load(f"transfer_{index}", tree / "tusserver" / "transfer.py"),
            load(f"locking_{index}", tree / "tusserver" / "locking.py"),
        )
        for index, (label, tree) in enumerate(trees.items())
    }
    storage = LocalStorage(root)
    await storage.check()
    await storage.create(UPLOAD_ID)
    body = b"x" * body_size
    samples: dict[str, list[float]] = {label: [] for label in modules}
    for _ in range(rounds):
        for label, (transfer_module, locking) in modules.items():
            started = time.process_time()
            for _ in range(per_round):
                await one_transfer(transfer_module, locking, storage, body)
            samples[label].append((time.process_time() - started) / per_round * 1e6)
    for label, values in samples.items():
        print(
            f"{label:>8}: {statistics.median(values):7.1f} µs CPU per transfer of {body_size} bytes"
            f" (median of {rounds} rounds of {per_round}; "
            f"{min(values):.0f}-{max(values):.0f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", type=Path, help="another checkout to compare with")
    parser.add_argument("--body", type=int, default=4096, help="body size in bytes")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--per-round", type=int, default=400)
    args = parser.parse_args()
    trees = {"this": ROOT}
    if args.against is not None:
        trees["against"] = args.against.resolve()
    shm = Path("/dev/shm")
    root = Path(tempfile.mkdtemp(dir=shm if shm.is_dir() else None))
    try:
        asyncio.run(measure(trees, root, args.body, args.rounds, args.per_round))
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()

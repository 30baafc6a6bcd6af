"""Mutation testing of tusserver's core: do the specs notice when the code is wrong?

Each *mutant* is the source with one small change of the kind a hurried edit
makes: a comparison flipped or moved by one, a boolean negated, ``and`` for
``or``, a constant off by one, ``True`` for ``False``, a ``raise`` or an awaited
call dropped. For each one, the spec files that concern the mutated module run
(``pytest -x``); a mutant is *killed* when a spec fails, and *survives* when
they all pass. A survivor is a spec missing, or an equivalent mutant (a change
no caller can observe).

Everything happens in a copy of the tree in a temporary folder, imported
through ``PYTHONPATH``; the working tree is never written. It is a tool to run
by hand (minutes to hours), not part of CI::

    python bench/mutation.py --list --modules tusserver/locking.py
    python bench/mutation.py --max-mutants 200 --seed 1 --budget-seconds 3600

docs/mutation.md keeps the last figures and, for each survivor, why it is
left (equivalent, or not worth a spec).

The standard library's ``ast`` finds the mutation points, and each mutant
replaces the source text of one node only, so the rest of the file (and its
line numbers) is the code as written.
"""

from __future__ import annotations

import argparse
import ast
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The core modules and, for each, the spec files that exercise it: the
# fastest ones that reach it through HTTP. A module named here but not in the
# tree is skipped (list a module here when it lands or is split off).
SPECS: dict[str, list[str]] = {
    "tusserver/state.py": [
        "tests/test_state.py",
        "tests/test_errors.py::test_head_when_redis_stops_answers_423_retryable_not_5xx",
        "tests/test_termination.py",
        "tests/test_head.py",
        "tests/test_expiry.py",
        "tests/test_patch.py",
    ],
    "tusserver/locking.py": [
        "tests/test_termination.py",
        "tests/test_head.py",
        "tests/test_errors.py",
        "tests/test_extensions_together.py",
        "tests/test_patch.py",
    ],
    "tusserver/receiving.py": [
        "tests/test_patch.py",
        "tests/test_errors.py",
        "tests/test_checksum.py",
        "tests/test_creation.py",
        "tests/test_crash_recovery.py::test_sigkill_mid_patch_keeps_what_was_stored_and_the_resumed_upload_is_byte_exact",
        "tests/test_crash_recovery.py::test_a_checksummed_chunk_cut_by_sigkill_counts_for_nothing",
    ],
    "tusserver/transfer.py": [
        "tests/test_patch.py",
        "tests/test_checksum.py",
        "tests/test_durable_commits.py",
        "tests/test_cli.py::test_sigterm_during_a_patch_commits_the_bytes_it_stored",
        "tests/test_crash_recovery.py::test_sigkill_mid_patch_keeps_what_was_stored_and_the_resumed_upload_is_byte_exact",
    ],
    "tusserver/finishing.py": [
        "tests/test_hooks.py",
        "tests/test_head.py",
        "tests/test_extensions_together.py",
        "tests/test_patch.py",
        "tests/test_checksum.py",
        "tests/test_concatenation.py",
    ],
    "tusserver/protocol.py": [
        "tests/test_protocol.py",
        "tests/test_expiry.py::test_upload_expires_is_an_http_date_in_gmt",
        "tests/test_creation.py",
        "tests/test_patch.py",
    ],
    "tusserver/handlers.py": [
        "tests/test_options.py",
        "tests/test_termination.py",
        "tests/test_head.py",
        "tests/test_creation.py",
        "tests/test_patch.py",
    ],
    "tusserver/concatenation.py": ["tests/test_concatenation.py"],
    "tusserver/expiry.py": [
        "tests/test_expiry.py",
        "tests/test_cli.py::test_sweep_uses_the_embedded_redis_of_the_server_running_on_the_data_dir",
        "tests/test_cli.py::test_sweep_without_a_running_server_starts_the_embedded_redis_for_the_pass",
    ],
    "tusserver/download.py": ["tests/test_download.py"],
    "tusserver/ranges.py": ["tests/test_download.py"],
    "tusserver/naming.py": ["tests/test_naming.py", "tests/test_patch.py"],
    "tusserver/app.py": [
        "tests/test_errors.py",
        "tests/test_asgi.py",
        "tests/test_options.py",
        "tests/test_startup.py",
    ],
    "tusserver/held.py": [
        # Only the final offset waits for replicas: needs the Sentinel's
        # replica (--topologies standalone,sentinel), skipped on one server.
        "tests/test_failover.py::test_a_partial_patch_without_a_replica_to_reach_is_stored_as_without_replicas",
        # The bytes-stored counter is what the offsets moved.
        "tests/test_metrics.py::test_a_tuspy_upload_moves_creation_finish_bytes_and_request_counters",
        # A final commit keeps the lock for the finalize; a 503 lets go of it.
        "tests/test_hooks.py::test_without_a_pre_finish_answer_nothing_is_published_until_a_head_finishes_it",
        "tests/test_termination.py",
        "tests/test_head.py",
        "tests/test_errors.py",
        "tests/test_patch.py",
        "tests/test_expiry.py",
        "tests/test_checksum.py",
        "tests/test_creation.py",
    ],
    "tusserver/creation.py": [
        "tests/test_creation.py",
        "tests/test_concatenation.py",
        "tests/test_storage_capabilities.py",
    ],
    "tusserver/record.py": [
        "tests/test_state.py",
        "tests/test_head.py",
        "tests/test_creation.py",
        "tests/test_checksum.py",
        "tests/test_concatenation.py",
    ],
    "tusserver/log_safety.py": ["tests/test_errors.py", "tests/test_download.py"],
    "tusserver/extensions.py": [
        "tests/test_options.py",
        "tests/test_storage_capabilities.py",
        "tests/test_durable_commits.py",
    ],
    "tusserver/startup.py": [
        "tests/test_startup.py",
        "tests/test_durable_commits.py",
        "tests/test_cli.py::test_bad_setting_fails_with_one_clear_line",
        "tests/test_cli.py::test_sweep_uses_the_embedded_redis_of_the_server_running_on_the_data_dir",
        "tests/test_cli.py::test_sweep_without_a_running_server_starts_the_embedded_redis_for_the_pass",
    ],
    "tusserver/sweeper.py": ["tests/test_sweeper.py", "tests/test_expiry.py"],
    "tusserver/scripts.py": [
        "tests/test_state.py",
        "tests/test_termination.py",
        "tests/test_sweeper.py",
    ],
    # Against a real Cluster's own slot rule; that per-slot keys then share
    # an upload's slot shows in every Cluster spec (test_termination's).
    "tusserver/slots.py": ["tests/test_slots.py"],
    "tusserver/redis_urls.py": ["tests/test_config.py", "tests/test_termination.py"],
    "tusserver/release_requests.py": [
        "tests/test_release_requests.py",
        "tests/test_errors.py::test_while_redis_is_down_the_release_listener_reconnects_about_once_a_second",
        "tests/test_patch.py::test_a_patch_waiting_for_the_lock_asks_the_holder_again_every_half_second",
        "tests/test_transport.py::test_reconnecting_client_takes_over_its_stalled_patch_within_the_lock_wait",
    ],
    "tusserver/draining.py": [
        # A process that is not stopping keeps a receiving upload when asked.
        "tests/test_transport.py::test_two_concurrent_patches_never_interleave_bytes",
        "tests/test_shutdown.py::test_sigterm_mid_patch_commits_what_was_stored_and_another_instance_resumes_at_once",
        "tests/test_shutdown.py::test_a_patch_that_ends_inside_the_grace_gets_its_204",
        "tests/test_shutdown.py::test_after_the_stop_began_a_request_on_an_open_connection_gets_a_retryable_503",
    ],
    "tusserver/termination.py": [
        "tests/test_termination.py",
        "tests/test_hooks.py::test_pre_terminate_refuses_a_delete_seen_by_tuspy_and_the_upload_stays",
    ],
    "tusserver/redis_topology.py": ["tests/test_termination.py", "tests/test_failover.py"],
    "storage_backends/local.py": ["tests/test_local_storage.py", "tests/test_storage_contract.py"],
    "storage_backends/names.py": ["tests/test_local_storage.py", "tests/test_patch.py"],
    "storage_backends/finalizing.py": [
        "tests/test_local_storage.py",
        "tests/test_storage_contract.py",
    ],
    "storage_backends/registry.py": [
        "tests/test_storage_registry.py",
        "tests/test_storage_capabilities.py",
    ],
}

# The spec files parametrized over Redis topologies (tests/redis_fixtures.py)
# run on one server only (TUSSERVER_TEST_TOPOLOGIES), a third of the time:
# what a mutant changes shows on one server as well. Except for the modules
# whose point is a topology: a Cluster's slots and its sharded pub/sub, and
# the URL forms and connections of all three.
DEFAULT_TOPOLOGIES = "standalone"
TOPOLOGIES: dict[str, str] = {
    "tusserver/slots.py": "cluster",  # on one server a slot means nothing
    "tusserver/release_requests.py": "standalone,cluster",
    "tusserver/redis_urls.py": "standalone,sentinel,cluster",
    "tusserver/redis_topology.py": "standalone,sentinel,cluster",
}

# Copied into the temporary tree: what the specs import or read.
COPIED = ["tusserver", "storage_backends", "tests", "examples", "docs", "pyproject.toml",
          "compose.yaml", "Dockerfile", "README.md"]  # fmt: skip
IGNORED = shutil.ignore_patterns("__pycache__", "node_modules", ".pytest_cache", "*.pyc")

# Comparison flips (the opposite answer) and boundary moves (off by one).
FLIPS: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Lt: ast.GtE,
    ast.GtE: ast.Lt,
    ast.Gt: ast.LtE,
    ast.LtE: ast.Gt,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}
BOUNDARIES: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
}
ARITHMETIC: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.FloorDiv,
    ast.FloorDiv: ast.Mult,
}


@dataclass(frozen=True)
class Mutant:
    path: str  # relative to the tree's root
    line: int
    start: tuple[int, int]  # (line, column) of the replaced text
    end: tuple[int, int]
    original: str
    replacement: str
    operator: str

    def describe(self) -> str:
        return f"{self.path}:{self.line}: {self.original} -> {self.replacement}  [{self.operator}]"

    def apply(self, source: str) -> str:
        # ast positions are (1-based line, 0-based UTF-8 byte column).
        encoded = source.encode()
        offsets = [0]
        for line in encoded.split(b"\n"):
            offsets.append(offsets[-1] + len(line) + 1)
        start = offsets[self.start[0] - 1] + self.start[1]
        end = offsets[self.end[0] - 1] + self.end[1]
        return (encoded[:start] + self.replacement.encode() + encoded[end:]).decode()


# --- finding mutation points ---------------------------------------------------


def _skipped(node: ast.AST) -> bool:
    """Nodes whose mutants say nothing about behaviour: logging and asserts
    (type narrowing) only."""
    if isinstance(node, ast.Assert):
        return True
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        target = node.func.value
        return isinstance(target, ast.Name) and target.id == "logger"
    return False


def _annotations(tree: ast.AST) -> set[int]:
    """ids of nodes inside type annotations and docstrings: never mutated."""
    inside: set[int] = set()

    def mark(node: ast.AST | None) -> None:
        if node is not None:
            inside.update(id(child) for child in ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            mark(node.returns)
            for arg in [*node.args.args, *node.args.kwonlyargs, *node.args.posonlyargs]:
                mark(arg.annotation)
            mark(node.args.vararg.annotation if node.args.vararg else None)
            mark(node.args.kwarg.annotation if node.args.kwarg else None)
        elif isinstance(node, ast.AnnAssign):
            mark(node.annotation)
    return inside


def _segment(source: str, node: ast.AST) -> str:
    text = ast.get_source_segment(source, node) or ast.unparse(node)
    return " ".join(text.split())


def find_mutants(path: str, source: str) -> list[Mutant]:
    tree = ast.parse(source)
    excluded = _annotations(tree)
    mutants: list[Mutant] = []

    def add(node: ast.expr | ast.stmt, replacement: str, operator: str) -> None:
        assert node.end_lineno is not None and node.end_col_offset is not None
        mutants.append(
            Mutant(
                path,
                node.lineno,
                (node.lineno, node.col_offset),
                (node.end_lineno, node.end_col_offset),
                _segment(source, node),
                replacement,
                operator,
            )
        )

    def expression(node: ast.expr) -> str:
        # Parenthesized: the replaced text may span lines or sit in a larger expression.
        return f"({ast.unparse(node)})"

    def visit(node: ast.AST) -> None:
        if _skipped(node) or id(node) in excluded:
            return
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            return  # a docstring
        if isinstance(node, ast.Compare) and len(node.ops) == 1:
            op = type(node.ops[0])
            for table, name in ((FLIPS, "flip comparison"), (BOUNDARIES, "move boundary")):
                if op in table:
                    changed = ast.Compare(node.left, [table[op]()], node.comparators)
                    add(node, expression(changed), name)
        elif isinstance(node, ast.BoolOp):
            other = ast.Or() if isinstance(node.op, ast.And) else ast.And()
            add(node, expression(ast.BoolOp(other, node.values)), "swap and/or")
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            add(node, expression(node.operand), "drop not")
        elif isinstance(node, ast.BinOp) and type(node.op) in ARITHMETIC:
            changed_op = ARITHMETIC[type(node.op)]()
            add(node, expression(ast.BinOp(node.left, changed_op, node.right)), "arithmetic")
        elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
            add(node, str(not node.value), "swap boolean")
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, int | float)
            and not isinstance(node.value, bool)
        ):
            add(node, repr(node.value + 1), "constant + 1")
            add(node, repr(node.value - 1), "constant - 1")
        elif isinstance(node, ast.If | ast.While) and not isinstance(
            node.test, ast.Compare | ast.UnaryOp | ast.BoolOp | ast.Constant
        ):
            # Comparisons, `not` and and/or have their own operators above.
            add(node.test, f"not {expression(node.test)}", "negate condition")
        elif isinstance(node, ast.Raise):
            add(node, "pass", "drop raise")
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Await):
            add(node, "pass", "drop awaited call")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return mutants


# --- running the specs ----------------------------------------------------------


@dataclass
class Tally:
    mutants: int = 0
    killed: int = 0
    survived: list[Mutant] = field(default_factory=list)
    timed_out: list[Mutant] = field(default_factory=list)
    errors: list[Mutant] = field(default_factory=list)


def run_specs(tree: Path, specs: list[str], timeout: float, topologies: str) -> tuple[str, float]:
    """'passed', 'failed', 'timeout' or 'error' (pytest could not run the specs)."""
    env = dict(
        os.environ,
        PYTHONPATH=str(tree),
        PYTHONDONTWRITEBYTECODE="1",
        TUSSERVER_TEST_TOPOLOGIES=topologies,
    )
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *specs]
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        cwd=tree,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        code = process.wait(timeout)
    except subprocess.TimeoutExpired:
        # The whole session: pytest and any server or Redis it started.
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return "timeout", time.monotonic() - started
    elapsed = time.monotonic() - started
    if code == 0:
        return "passed", elapsed
    if code in (1, 2):  # a spec failed, or the mutant broke collection (import)
        return "failed", elapsed
    return "error", elapsed


def copy_tree(destination: Path) -> None:
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=IGNORED)
        elif source.exists():
            shutil.copy2(source, destination / name)


def sample(
    found: dict[str, list[Mutant]], max_mutants: int | None, seed: int
) -> dict[str, list[Mutant]]:
    """Up to ``max_mutants`` in all, shared fairly between modules (round robin
    over each module's mutants in a seeded random order)."""
    rng = random.Random(seed)
    shuffled = {path: rng.sample(mutants, len(mutants)) for path, mutants in found.items()}
    if max_mutants is None:
        chosen = shuffled
    else:
        chosen = {path: [] for path in found}
        queues = {path: iter(mutants) for path, mutants in shuffled.items()}
        total = 0
        while queues and total < max_mutants:
            for path in list(queues):
                mutant = next(queues[path], None)
                if mutant is None:
                    del queues[path]
                    continue
                chosen[path].append(mutant)
                total += 1
                if total == max_mutants:
                    break
    return {
        path: sorted(mutants, key=lambda m: (m.line, m.start)) for path, mutants in chosen.items()
    }


def mutate_and_test(
    tree: Path,
    path: str,
    mutants: list[Mutant],
    specs: list[str],
    timeout: float,
    deadline: float,
    topologies: str,
) -> Iterator[tuple[Mutant, str]]:
    target = tree / path
    original = target.read_text()
    try:
        for mutant in mutants:
            if time.monotonic() >= deadline:
                return
            target.write_text(mutant.apply(original))
            outcome, _ = run_specs(tree, specs, timeout, topologies)
            yield mutant, outcome
    finally:
        target.write_text(original)


def report(path: str, tally: Tally, untested: int) -> None:
    print(
        f"\n{path}: {tally.mutants} mutants, {tally.killed} killed, "
        f"{len(tally.survived)} survived, {len(tally.timed_out)} timed out"
        + (f", {len(tally.errors)} errors" if tally.errors else "")
        + (f", {untested} not run (budget)" if untested else "")
    )
    for label, mutants in (("survived", tally.survived), ("error", tally.errors)):
        for mutant in mutants:
            print(f"  {label}: {mutant.describe()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modules", nargs="+", metavar="PATH", help="default: every core module")
    parser.add_argument("--specs", nargs="+", metavar="PATH", help="instead of the module's own")
    parser.add_argument("--max-mutants", type=int, help="sampled, shared between modules")
    parser.add_argument("--seed", type=int, default=0, help="of the sample (default 0)")
    parser.add_argument("--budget-seconds", type=float, default=3600.0)
    parser.add_argument("--timeout", type=float, help="per mutant (default: 3 x the clean run)")
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="TEXT",
        help="keep the mutants whose description contains one of these (e.g. locking.py:74:)",
    )
    parser.add_argument(
        "--topologies",
        metavar="NAMES",
        help="Redis topologies of the topology-wide specs, e.g. standalone,cluster "
        "(default: the module's entry in TOPOLOGIES, else standalone)",
    )
    parser.add_argument("--list", action="store_true", help="print the mutants and stop")
    args = parser.parse_args(argv)

    modules = args.modules or list(SPECS)
    found: dict[str, list[Mutant]] = {}
    for path in modules:
        source_path = ROOT / path
        if not source_path.exists():
            if args.modules:
                parser.error(f"{path}: no such module")
            continue  # a module of the map not (or no longer) in the tree
        if not args.specs and path not in SPECS:
            parser.error(f"{path}: no spec files known; give them with --specs")
        found[path] = [
            mutant
            for mutant in find_mutants(path, source_path.read_text())
            if not args.only or any(text in mutant.describe() for text in args.only)
        ]
    chosen = sample(found, args.max_mutants, args.seed)

    if args.list:
        for path, mutants in chosen.items():
            print(f"{path}: {len(mutants)} of {len(found[path])} mutants")
            for mutant in mutants:
                print(f"  {mutant.describe()}")
        return 0

    deadline = time.monotonic() + args.budget_seconds
    totals = Tally()
    with tempfile.TemporaryDirectory(prefix="tus-mutants-") as temp:
        tree = Path(temp)
        copy_tree(tree)
        for path, mutants in chosen.items():
            if not mutants:
                continue
            specs = args.specs or SPECS[path]
            topologies = args.topologies or TOPOLOGIES.get(path, DEFAULT_TOPOLOGIES)
            clean, took = run_specs(tree, specs, args.timeout or 1800, topologies)
            if clean != "passed":
                print(f"\n{path}: the specs {' '.join(specs)} do not pass unmutated ({clean})")
                continue
            timeout = args.timeout or 3 * took + 10
            tally = Tally()
            print(
                f"{path}: {len(mutants)} mutants, specs take {took:.0f} s ({topologies})",
                flush=True,
            )
            run = mutate_and_test(tree, path, mutants, specs, timeout, deadline, topologies)
            for mutant, outcome in run:
                tally.mutants += 1
                if outcome == "failed":
                    tally.killed += 1
                elif outcome == "passed":
                    tally.survived.append(mutant)
                elif outcome == "timeout":
                    tally.timed_out.append(mutant)
                else:
                    tally.errors.append(mutant)
                print(f"  {outcome:>8}  {mutant.describe()}", flush=True)
            report(path, tally, len(mutants) - tally.mutants)
            totals.mutants += tally.mutants
            totals.killed += tally.killed
            totals.survived += tally.survived
            totals.timed_out += tally.timed_out
            totals.errors += tally.errors
    detected = totals.killed + len(totals.timed_out)
    ratio = detected / totals.mutants if totals.mutants else 0.0
    print(
        f"\nall: {totals.mutants} mutants, {totals.killed} killed, "
        f"{len(totals.survived)} survived, {len(totals.timed_out)} timed out, "
        f"{len(totals.errors)} errors; detected {ratio:.0%} (killed or timed out)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

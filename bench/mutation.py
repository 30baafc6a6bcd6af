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

Lua too: an assignment of string constants that hold a Redis script (text
with ``redis.call`` or ``KEYS[``, as in ``tusserver/scripts.py``) is not
mutated as Python (``+`` joining Lua to ``-`` only breaks the import), but
token by token as Lua: a comparison flipped (``==``/``~=``, ``<``/``>=``...)
or moved by one, ``and``/``or`` swapped, a ``not`` dropped, a binary ``+``/``-``
swapped, an integer off by one (key and argument indexes included), a
returned status swapped for another the same script returns, and a write
``redis.call('HSET', ...)`` (and HDEL, ZADD, ZREM, DEL, SET, EXPIRE...)
dropped: it becomes ``type('HSET', ...)``, which has no effect. Each replaces
text inside one line of the literal, so the line numbers hold too; a literal
with escapes or a prefix (``r""``, ``f""``) is not mutated. The lexer knows
what these scripts use: names, integers, short strings, ``--`` comments.
"""

from __future__ import annotations

import argparse
import ast
import os
import random
import re
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
    "tusserver/batched_reads.py": [
        "tests/test_batched_reads.py",
        "tests/test_state.py::test_a_reply_later_than_the_socket_timeout_fails_the_read_and_the_next_read_is_answered",
        "tests/test_head.py::test_a_head_after_redis_dropped_the_servers_connections_still_answers_from_the_record",
    ],
    "tusserver/reply_deadlines.py": [
        "tests/test_state.py::test_a_reply_later_than_the_socket_timeout_fails_the_read_and_the_next_read_is_answered",
        "tests/test_batched_reads.py",
    ],
    "tusserver/state.py": [
        "tests/test_state.py",
        "tests/test_errors.py::test_head_when_redis_stops_answers_423_retryable_not_5xx",
        "tests/test_termination.py",
        "tests/test_head.py",
        "tests/test_expiry.py",
        "tests/test_patch.py",
        # Durable writes: the final offset and a completion wait for the
        # replica (``_run``), a checkpoint does not (Sentinel, run whatever
        # TUSSERVER_TEST_TOPOLOGIES says).
        "tests/test_failover.py::test_a_final_patch_without_a_replica_to_reach_publishes_nothing_and_is_retried",
        "tests/test_failover.py::test_a_partial_patch_without_a_replica_to_reach_is_stored_as_without_replicas",
        "tests/test_failover.py::test_a_finished_upload_is_on_the_replica_before_the_client_hears_of_it",
        "tests/test_failover.py::test_a_completion_without_a_replica_to_reach_is_not_announced_as_finished",
        # The operator's reads (snapshots, snapshot), owners, the parts of a
        # concatenation (read_many), and the sweeper's calls.
        "tests/test_admin.py",
        "tests/test_ownership.py",
        "tests/test_concatenation.py",
        "tests/test_sweeper.py",
    ],
    "tusserver/locking.py": [
        # kept_alive's schedule and its end, and Lease.keep_alive on a clock
        # the spec moves; then the locker straight on Redis (the TTL asked
        # for, the end of the grace, a release given once and shielded, the
        # drain, the wait's schedule, release requests heard); then the
        # sweep lock kept through a pass.
        "tests/test_kept_alive.py",
        "tests/test_locker.py",
        "tests/test_sweeper.py",
        # An operator's termination: not waiting, not asking a paused PATCH;
        # forced (``seize``), of an upload not there; refused by its hook.
        "tests/test_admin.py::test_show_of_an_upload_that_is_not_there_fails_with_one_sentence",
        "tests/test_admin.py::test_terminate_is_refused_while_a_patch_runs_and_force_stops_that_patch",
        "tests/test_admin.py::test_terminate_without_force_never_asks_a_paused_patch_to_let_go",
        "tests/test_admin.py::test_a_termination_the_pre_terminate_hook_refuses_lets_go_of_the_lock_it_took",
        # A takeover is counted, a lock found free is not.
        "tests/test_metrics.py::test_a_running_patch_is_in_flight_and_a_takeover_is_counted",
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
        "tests/test_durable_commits.py::test_with_durable_commits_a_patch_too_short_for_a_checkpoint_is_flushed_before_its_commit",
        # A checkpoint's commit follows a flush too (``_checkpoints``).
        "tests/test_durable_commits.py::test_with_durable_commits_every_commit_follows_a_flush_of_the_bytes_it_counts",
        # The closing commit's shield: only a cancel scope cancels it again.
        "tests/test_shutdown.py::test_a_patch_cancelled_by_the_embedding_application_commits_what_it_stored",
        # A post-receive hook's StopUpload ends the body (``_stop``).
        "tests/test_hooks.py::test_post_receive_stops_a_running_patch_and_the_upload_is_terminated",
        # A body cut by SIGTERM answers 503, never 2xx.
        "tests/test_shutdown.py::test_sigterm_mid_patch_commits_what_was_stored_and_another_instance_resumes_at_once",
        # Content refused mid-body, or judged once the upload is whole.
        "tests/test_type_checks.py",
        # A body ended by the idle timeout keeps its bytes and answers 204.
        "tests/test_transport.py::test_idle_patch_is_ended_after_idle_timeout_and_bytes_are_kept",
    ],
    "tusserver/transfer.py": [
        # Faults of its tasks, blocks and the watchdog's tick, and
        # checkpoints one at a time (fast).
        "tests/test_transfer.py",
        "tests/test_checkpoints.py",
        "tests/test_patch.py",
        "tests/test_checksum.py",
        "tests/test_durable_commits.py",
        # The content check that refuses a body mid-way.
        "tests/test_type_checks.py",
        # A body ended by the idle timeout, one taken over once stalled.
        "tests/test_transport.py::test_idle_patch_is_ended_after_idle_timeout_and_bytes_are_kept",
        "tests/test_transport.py::test_a_patch_taking_over_a_stalled_patch_never_stores_a_byte_twice",
        "tests/test_transport.py::test_reconnecting_client_takes_over_its_stalled_patch_within_the_lock_wait",
        "tests/test_cli.py::test_sigterm_during_a_patch_commits_the_bytes_it_stored",
        "tests/test_crash_recovery.py::test_sigkill_mid_patch_keeps_what_was_stored_and_the_resumed_upload_is_byte_exact",
    ],
    # The shielded waits of the transfer's and kept_alive's side tasks.
    "tusserver/task_ends.py": ["tests/test_transfer.py", "tests/test_kept_alive.py"],
    "tusserver/finishing.py": [
        "tests/test_hooks.py",
        "tests/test_head.py",
        "tests/test_extensions_together.py",
        "tests/test_patch.py",
        "tests/test_checksum.py",
        "tests/test_concatenation.py",
        # A completion Redis refuses for a moment: retried after a pause, three attempts.
        "tests/test_errors.py::test_a_completion_redis_refuses_for_a_moment_is_recorded_by_a_retry_after_a_pause",
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
        # What a handler asks of the other modules, each once: a storage
        # without concatenation, a final's assembly and its finalize (also by
        # a HEAD), the owner's check, an expired or failed upload, the
        # pre-access hook.
        "tests/test_storage_capabilities.py",
        "tests/test_type_checks.py",
        "tests/test_min_size.py",
        "tests/test_extensions_together.py",
        "tests/test_concatenation.py",
        "tests/test_ownership.py",
        "tests/test_hooks.py",
        "tests/test_expiry.py",
        # The recorded reason of a failed upload, in PATCH's and HEAD's answer.
        "tests/test_checksum.py::test_declared_file_checksum_that_differs_is_460_and_nothing_is_published",
    ],
    "tusserver/concatenation.py": [
        "tests/test_concatenation.py",
        # Another owner's part, named by its place in the list.
        "tests/test_ownership.py::test_a_final_upload_naming_another_users_part_is_refused",
        # A part failed by its declared checksum.
        "tests/test_extensions_together.py::test_a_concatenation_part_is_verified_against_its_declared_checksum",
        # The pre-access hook asked for each part.
        "tests/test_hooks.py::test_pre_create_runs_for_a_concatenation_and_can_refuse_it",
    ],
    "tusserver/expiry.py": [
        "tests/test_expiry.py",
        "tests/test_cli.py::test_sweep_uses_the_embedded_redis_of_the_server_running_on_the_data_dir",
        "tests/test_cli.py::test_sweep_without_a_running_server_starts_the_embedded_redis_for_the_pass",
    ],
    "tusserver/download.py": [
        "tests/test_download.py",
        # The pre-access hook asked for a GET too.
        "tests/test_hooks.py::test_every_event_arrives_with_tusds_fields",
    ],
    "tusserver/ranges.py": ["tests/test_download.py"],
    "tusserver/naming.py": ["tests/test_naming.py", "tests/test_patch.py"],
    "tusserver/app.py": [
        "tests/test_errors.py",
        "tests/test_asgi.py",
        "tests/test_options.py",
        "tests/test_startup.py",
        # The upload route tried first, and the scripts loaded at start.
        "tests/test_creation.py::test_the_endpoint_creates_with_or_without_its_trailing_slash_and_no_upload_url_is_empty",
        "tests/test_creation.py::test_a_server_loads_its_scripts_into_a_fresh_redis_before_their_first_calls",
    ],
    "tusserver/script_calls.py": [
        "tests/test_state.py",
        "tests/test_head.py",
        "tests/test_creation.py::test_a_server_loads_its_scripts_into_a_fresh_redis_before_their_first_calls",
    ],
    "tusserver/held.py": [
        # Only the final offset waits for replicas: needs the Sentinel's
        # replica (--topologies standalone,sentinel), skipped on one server.
        "tests/test_failover.py::test_a_partial_patch_without_a_replica_to_reach_is_stored_as_without_replicas",
        # The bytes-stored counter is what the offsets moved; a failure is
        # counted by its code.
        "tests/test_metrics.py::test_a_tuspy_upload_moves_creation_finish_bytes_and_request_counters",
        "tests/test_metrics.py::test_an_upload_recorded_failed_is_counted_by_its_error_code",
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
        # The block size a backend prefers, or the default.
        "tests/test_patch.py::test_a_backend_that_states_no_block_size_is_handed_blocks_of_4_mib",
    ],
    "tusserver/startup.py": [
        "tests/test_startup.py",
        "tests/test_durable_commits.py",
        "tests/test_cli.py::test_bad_setting_fails_with_one_clear_line",
        "tests/test_cli.py::test_sweep_uses_the_embedded_redis_of_the_server_running_on_the_data_dir",
        "tests/test_cli.py::test_sweep_without_a_running_server_starts_the_embedded_redis_for_the_pass",
    ],
    "tusserver/sweeper.py": ["tests/test_sweeper.py", "tests/test_expiry.py"],
    # The Lua of the state: its contracts straight on Redis first (fast),
    # then the requests that run each script: DELETE (TERMINATE), HEAD
    # (CLAIM without a token), the listing and the forced termination
    # (INSPECT_MANY, SEIZE), the indexes (CREATE, COMMIT, COMPLETE,
    # TERMINATE), the lock and the offset (CLAIM, COMMIT, SET_LENGTH,
    # EXTEND, RELEASE), a part kept staged, a taken id, a post-finish event.
    "tusserver/scripts.py": [
        "tests/test_state.py",
        "tests/test_termination.py",
        "tests/test_head.py",
        "tests/test_admin.py::test_list_shows_every_upload_in_its_state_with_progress_and_file_name",
        "tests/test_admin.py::test_show_gives_the_published_file_of_a_finished_upload_and_the_reason_of_a_failed_one",
        "tests/test_admin.py::test_terminate_is_refused_while_a_patch_runs_and_force_stops_that_patch",
        "tests/test_expiry.py::test_post_patch_and_head_announce_upload_expires_and_each_patch_slides_it_later",
        "tests/test_expiry.py::test_a_finished_upload_has_no_upload_expires_and_leaves_the_expiry_index",
        "tests/test_expiry.py::test_an_expired_upload_is_swept_bytes_and_record_gone_and_then_answers_410",
        "tests/test_expiry.py::test_with_a_retention_a_finished_upload_loses_its_record_but_keeps_its_file",
        "tests/test_expiry.py::test_a_finished_upload_deleted_during_its_retention_leaves_no_index_entry_behind",
        "tests/test_patch.py::test_patch_with_stale_offset_returns_409_with_current_offset_and_writes_nothing",
        "tests/test_patch.py::test_deferred_upload_is_finalized_by_a_patch_carrying_upload_length_with_data",
        "tests/test_patch.py::test_deferred_upload_is_finalized_by_an_empty_patch_carrying_upload_length",
        "tests/test_patch.py::test_deferred_upload_length_cannot_change_once_set",
        "tests/test_patch.py::test_a_chunked_patch_declaring_a_length_it_fits_in_records_it_with_its_bytes",
        "tests/test_patch.py::test_patch_while_another_holder_keeps_the_lock_returns_423_after_the_lock_wait",
        "tests/test_patch.py::test_patch_whose_lock_was_taken_stops_writing_and_answers_423",
        "tests/test_patch.py::test_a_streaming_patch_extends_its_lock_a_few_times_per_ttl_not_at_every_check",
        "tests/test_patch.py::test_the_patch_that_completes_an_upload_holds_its_lock_until_the_file_is_published",
        "tests/test_patch.py::test_patch_on_a_finished_upload_is_409_with_the_final_offset_and_keeps_the_file",
        "tests/test_patch.py::test_patch_whose_upload_was_removed_mid_body_answers_410",
        "tests/test_concatenation.py::test_a_complete_partial_stays_staged_and_is_never_published",
        "tests/test_concatenation.py::test_final_of_three_partials_is_their_byte_exact_concatenation",
        "tests/test_hooks.py::test_an_id_that_is_taken_is_refused_with_409_and_the_existing_upload_is_untouched",
        "tests/test_hook_delivery.py::test_a_post_finish_not_yet_delivered_when_the_server_is_killed_is_delivered_after_restart",
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
    "storage_backends/local.py": [
        "tests/test_inline_calls.py",
        "tests/test_local_storage.py",
        "tests/test_storage_contract.py",
        # The half-MiB blocks it asks for.
        "tests/test_patch.py::test_a_backend_that_states_no_block_size_is_handed_blocks_of_4_mib",
        # A file:// URL is opened as the folder it names.
        "tests/test_storage_registry.py::test_a_folder_path_and_a_file_url_open_local_storage",
    ],
    # Windows of a partial handed to the kernel's writeback, seen by cachestat.
    "storage_backends/writeback.py": ["tests/test_local_storage.py"],
    # Where a block is written (an audit hook sees the thread), and the pauses.
    "storage_backends/inline_calls.py": ["tests/test_inline_calls.py"],
    "storage_backends/names.py": [
        "tests/test_local_storage.py",
        "tests/test_patch.py",
        # Which suffix a numbered variant keeps (on every backend).
        "tests/test_storage_contract.py::test_finalize_never_overwrites_and_picks_a_numbered_variant",
    ],
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


# Lua: the same flips and boundary moves, and the writes a script may drop.
LUA_FLIPS = {"==": "~=", "~=": "==", "<": ">=", ">=": "<", ">": "<=", "<=": ">"}
LUA_BOUNDARIES = {"<": "<=", "<=": "<", ">": ">=", ">=": ">"}
LUA_WRITES = {"SET", "DEL", "HSET", "HDEL", "ZADD", "ZREM", "EXPIRE", "PEXPIRE", "SREM", "SADD"}
LUA_TOKEN = re.compile(
    r"""(?P<comment>--[^\n]*)
    |(?P<string>'[^'\n]*'|"[^"\n]*")
    |(?P<name>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)
    |(?P<number>\d+)
    |(?P<op>==|~=|<=|>=|\.\.|[<>+\-\#])
    |(?P<other>\S)""",
    re.VERBOSE,
)
LUA_MARKERS = ("redis.call", "KEYS[")


@dataclass(frozen=True)
class Mutant:
    path: str  # relative to the tree's root
    line: int
    start: tuple[int, int]  # (line, column) of the replaced text
    end: tuple[int, int]
    original: str
    replacement: str
    operator: str
    shown: str = ""  # what the description shows instead of original -> replacement

    def describe(self) -> str:
        change = self.shown or f"{self.original} -> {self.replacement}"
        return f"{self.path}:{self.line}: {change}  [{self.operator}]"

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


@dataclass(frozen=True)
class LuaToken:
    kind: str  # comment, string, name, number, op, other
    text: str
    start: int  # offset in the literal's text
    end: int


def lua_tokens(text: str) -> list[LuaToken]:
    """The Lua tokens of one string constant (comments dropped)."""
    return [
        LuaToken(str(match.lastgroup), match.group(), match.start(), match.end())
        for match in LUA_TOKEN.finditer(text)
        if match.lastgroup != "comment"
    ]


def lua_changes(tokens: list[LuaToken], statuses: list[str]) -> Iterator[tuple[int, int, str, str]]:
    """(start, end, replacement, operator) of each Lua mutant of one literal;
    ``statuses`` are the strings its script returns, to swap one for another."""
    for index, token in enumerate(tokens):
        before = tokens[index - 1] if index else None
        after = tokens[index + 1 : index + 3]
        if token.kind == "op" and token.text in LUA_FLIPS:
            yield token.start, token.end, LUA_FLIPS[token.text], "lua: flip comparison"
            if token.text in LUA_BOUNDARIES:
                yield token.start, token.end, LUA_BOUNDARIES[token.text], "lua: move boundary"
        elif token.kind == "op" and token.text in "+-" and before is not None:
            # Binary only: after a value, not after `(` or `,` (a negative number).
            if before.kind in ("name", "number") or before.text in ")]":
                swapped = "-" if token.text == "+" else "+"
                yield token.start, token.end, swapped, "lua: arithmetic"
        elif token.kind == "name" and token.text in ("and", "or"):
            swapped = "or" if token.text == "and" else "and"
            yield token.start, token.end, swapped, "lua: swap and/or"
        elif token.kind == "name" and token.text == "not" and after:
            if after[0].start - token.end == 1:  # `not x` -> `x`, within the line
                yield token.start, after[0].start, "", "lua: drop not"
        elif token.kind == "number" and before is not None and before.text == "[":
            # KEYS[n] or ARGV[n]: the neighbouring key or argument (index 0 is
            # always nil: an error, not a mix-up).
            value = int(token.text)
            neighbour = value - 1 if value > 1 else value + 1
            yield token.start, token.end, str(neighbour), "lua: other index"
        elif token.kind == "number":
            value = int(token.text)
            yield token.start, token.end, str(value + 1), "lua: constant + 1"
            if value > 0:
                yield token.start, token.end, str(value - 1), "lua: constant - 1"
        elif token.kind == "string" and _returned(tokens, index):
            others = [status for status in statuses if status != token.text]
            if others:
                yield token.start, token.end, others[0], "lua: swap returned status"
        elif (
            token.text == "redis.call"
            and len(after) == 2
            and after[0].text == "("
            and after[1].kind == "string"
            and after[1].text.strip("'\"").upper() in LUA_WRITES
        ):
            yield token.start, token.end, "type", "lua: drop write"


def _returned(tokens: list[LuaToken], index: int) -> bool:
    """A string right after ``return`` or ``return {``: a status."""
    before = [token.text for token in tokens[max(0, index - 2) : index]]
    return before[-1:] == ["return"] or before == ["return", "{"]


def _statuses(texts: list[str]) -> list[str]:
    """The strings a script returns (its statuses), sorted."""
    found: set[str] = set()
    for text in texts:
        tokens = lua_tokens(text)
        found.update(
            token.text
            for index, token in enumerate(tokens)
            if token.kind == "string" and _returned(tokens, index)
        )
    return sorted(found)


def _literal_text(source: str, node: ast.Constant) -> tuple[str, int] | None:
    """The literal's text as written and where it starts past its quotes, or
    None when the value is not the text (escapes, a prefix): then text offsets
    would not be source positions."""
    written = ast.get_source_segment(source, node)
    if written is None or not isinstance(node.value, str):
        return None
    quotes = 3 if written[:3] in ('"""', "'''") else 1
    if written[0] not in "\"'" or written[quotes:-quotes] != node.value:
        return None
    return node.value, quotes


def _lua_assignments(tree: ast.AST) -> list[ast.Assign]:
    """The assignments whose string constants hold Lua (a script, or a
    piece of one joined into several)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            texts = [
                child.value
                for child in ast.walk(node.value)
                if isinstance(child, ast.Constant) and isinstance(child.value, str)
            ]
            if any(marker in text for text in texts for marker in LUA_MARKERS):
                found.append(node)
    return found


def find_lua_mutants(path: str, source: str, assignment: ast.Assign) -> list[Mutant]:
    """The Lua mutants of one script (the string constants of one assignment)."""
    literals = [
        (node, written)
        for node in ast.walk(assignment.value)
        if isinstance(node, ast.Constant) and (written := _literal_text(source, node)) is not None
    ]
    statuses = _statuses([text for _, (text, _) in literals])
    mutants = []
    for node, (text, quotes) in literals:
        for start, end, replacement, operator in lua_changes(lua_tokens(text), statuses):
            line, column = _source_position(source, node, quotes, text, start)
            end_column = column + len(text[start:end].encode())  # never across a line
            # Shown: the Lua line before and after.
            first = text.rfind("\n", 0, start) + 1
            last = text.find("\n", end)
            last = len(text) if last < 0 else last
            changed = text[first:start] + replacement + text[end:last]
            shown = f"{text[first:last].strip()} -> {changed.strip()}"
            mutants.append(
                Mutant(path, line, (line, column), (line, end_column), text[start:end],
                       replacement, operator, shown)
            )  # fmt: skip
    return mutants


def _source_position(
    source: str, node: ast.Constant, quotes: int, text: str, offset: int
) -> tuple[int, int]:
    """(line, UTF-8 byte column) in the file of ``text[offset]``."""
    before = text[:offset]
    newlines = before.count("\n")
    if newlines == 0:
        return node.lineno, node.col_offset + quotes + len(before.encode())
    return node.lineno + newlines, len(before.rsplit("\n", 1)[1].encode())


def find_mutants(path: str, source: str) -> list[Mutant]:
    tree = ast.parse(source)
    excluded = _annotations(tree)
    mutants: list[Mutant] = []
    for assignment in _lua_assignments(tree):
        # Mutated as Lua; never as Python (the joining of its text).
        excluded.update(id(child) for child in ast.walk(assignment.value))
        mutants.extend(find_lua_mutants(path, source, assignment))

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
    # Temporary files inside the mutant's tree, which is removed at the end:
    # a session killed at its timeout never cleans up pytest's own folder,
    # and one that stored large uploads would fill the disk run after run.
    basetemp = tree / ".pytest-tmp"
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
    command += ["--basetemp", str(basetemp), *specs]
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

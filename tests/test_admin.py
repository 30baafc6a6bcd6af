"""``tusserver uploads``: list, show and terminate the uploads of a running
server, from its Redis and storage, in every state an upload can be in.

Against a real server (uvicorn on loopback) and real Redis, on each
topology (one server, Sentinel, Cluster: ``redis_fixtures.TOPOLOGY_MODULES``);
the command runs in-process through click's CliRunner, and once as a real
``tusserver`` process. No spec here is marked ``standalone_redis``: each reads
records and locks only through the topology's own client (``state``), so
each holds on a Cluster too; the one that needs no Redis at all (a dead URL)
runs once.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx
import pytest
import redis
from click.testing import CliRunner, Result

from tests.helpers import b64, upload_id_of
from tests.hook_receiver import HookReceiver
from tests.jwt_tokens import JWT_FIELDS, bearer
from tests.server_fixtures import OCTETS, TUS, RunningServer, free_port
from tusserver import admin
from tusserver.app import _connect
from tusserver.cli import main
from tusserver.record import Upload
from tusserver.state import UploadStore, info_key, lock_key

StartServer = Callable[..., RunningServer]
REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = bytes(range(256)) * 40  # 10,240 bytes
HALF = len(DATA) // 2


def uploads(server: RunningServer, command: str, *args: str) -> Result:
    """``tusserver uploads COMMAND ARGS`` against ``server``'s Redis and storage."""
    where = ["--redis-url", str(server.config.redis_url)]
    if command != "list":
        where += ["--storage", str(server.storage)]
    return CliRunner().invoke(main, ["uploads", command, *where, *args])


def listed(server: RunningServer, *args: str) -> dict[str, dict[str, object]]:
    """``uploads list --json``: each line parsed, by upload id."""
    result = uploads(server, "list", "--json", *args)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    return {row["id"]: row for row in rows}


def one_sentence_failure(result: Result) -> str:
    """The command failed with exactly one line on stderr (no trace); that line."""
    assert result.exit_code not in (0, None), result.output
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), repr(result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@dataclass
class PatchInFlight:
    """A PATCH that sent its first half and waits, holding the upload's lock."""

    url: str
    go_on: threading.Event = field(default_factory=threading.Event)
    answer: list[httpx.Response | Exception] = field(default_factory=list)


@contextmanager
def patch_in_flight(
    server: RunningServer, state: redis.Redis, url: str, offset: int = 0
) -> Iterator[PatchInFlight]:
    """PATCH the rest of DATA from ``offset`` to ``url``, stalled after a
    few bytes until the block ends; yields once the PATCH holds the lock,
    joins it after."""
    flight = PatchInFlight(url)
    first_sent = threading.Event()
    pause = offset + 100

    def body() -> Iterator[bytes]:
        yield DATA[offset:pause]
        first_sent.set()
        flight.go_on.wait(30)
        yield DATA[pause:]

    def send() -> None:
        headers = {**TUS, "Content-Type": OCTETS, "Upload-Offset": str(offset)}
        try:
            with httpx.Client(timeout=60) as client:
                flight.answer.append(client.patch(url, headers=headers, content=body()))
        except httpx.HTTPError as exc:
            flight.answer.append(exc)

    thread = threading.Thread(target=send)
    thread.start()
    try:
        assert first_sent.wait(30)
        deadline = time.monotonic() + 10
        while state.get(lock_key(upload_id_of(url))) is None:
            assert time.monotonic() < deadline, "the PATCH never took the lock"
            time.sleep(0.01)
        yield flight
    finally:
        flight.go_on.set()
        thread.join(60)


@dataclass
class Zoo:
    """One upload in each state of a server's life."""

    incomplete: str
    finished: str
    failed: str
    terminated: str


def make_zoo(server: RunningServer) -> Zoo:
    incomplete = server.create(len(DATA), Upload_Metadata=f"filename {b64(b'half.bin')}")
    assert server.patch(incomplete, 0, DATA[:HALF]).status_code == 204
    finished = server.create(len(DATA), Upload_Metadata=f"filename {b64(b'whole.bin')}")
    assert server.patch(finished, 0, DATA).status_code == 204
    # A whole-file checksum the bytes do not match: recorded failed (460).
    wrong = "sha256 " + b64(hashlib.sha256(b"another file").digest())
    failed = server.create(len(DATA), Upload_Metadata=f"checksum {b64(wrong.encode())}")
    assert server.patch(failed, 0, DATA).status_code == 460
    terminated = server.create(len(DATA))
    assert server.client.delete(terminated, headers=TUS).status_code == 204
    return Zoo(*(upload_id_of(url) for url in (incomplete, finished, failed, terminated)))


# --- list ---------------------------------------------------------------------


def test_list_shows_every_upload_in_its_state_with_progress_and_file_name(
    tus_server: StartServer, state: redis.Redis
) -> None:
    server = tus_server()
    zoo = make_zoo(server)
    running_url = server.create(len(DATA), Upload_Metadata=f"filename {b64(b'live.bin')}")
    running = upload_id_of(running_url)

    with patch_in_flight(server, state, running_url):
        rows = listed(server)
        table = uploads(server, "list")

    assert set(rows) == {zoo.incomplete, zoo.finished, zoo.failed, running}
    assert {upload_id: row["state"] for upload_id, row in rows.items()} == {
        zoo.incomplete: "incomplete",
        zoo.finished: "finished",
        zoo.failed: "failed",
        running: "running",
    }
    half = rows[zoo.incomplete]
    assert (half["offset"], half["length"], half["percent"]) == (HALF, len(DATA), 50.0)
    assert half["filename"] == "half.bin"
    assert half["owner"] is None
    assert isinstance(half["expires"], float) and half["expires"] > time.time()
    assert rows[zoo.finished]["expires"] is None
    assert rows[zoo.finished]["percent"] == 100.0
    assert rows[running]["filename"] == "live.bin"

    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert lines[0].split()[:3] == ["ID", "STATE", "OFFSET/LENGTH"]
    by_id = {line.split()[0]: line for line in lines[1:]}
    assert set(by_id) == set(rows)
    assert by_id[zoo.incomplete].split()[1:3] == ["incomplete", f"{HALF}/{len(DATA)}"]
    assert by_id[zoo.incomplete].endswith("half.bin")
    assert by_id[running].split()[1] == "running"


def test_list_filters_by_state_and_by_owner(tus_server: StartServer, state: redis.Redis) -> None:
    server = tus_server(**JWT_FIELDS)
    alice_half = server.create(len(DATA), **bearer("alice"))
    assert server.patch(alice_half, 0, DATA[:HALF], **bearer("alice")).status_code == 204
    alice_whole = server.create(len(DATA), **bearer("alice"))
    assert server.patch(alice_whole, 0, DATA, **bearer("alice")).status_code == 204
    bob_half = server.create(len(DATA), **bearer("bob"))

    assert set(listed(server, "--owner", "alice")) == {
        upload_id_of(alice_half),
        upload_id_of(alice_whole),
    }
    assert set(listed(server, "--state", "incomplete")) == {
        upload_id_of(alice_half),
        upload_id_of(bob_half),
    }
    assert set(listed(server, "--state", "finished", "--owner", "alice")) == {
        upload_id_of(alice_whole)
    }
    assert listed(server, "--state", "failed") == {}
    assert listed(server, "--owner", "carol") == {}
    assert listed(server, "--owner", "bob")[upload_id_of(bob_half)]["owner"] == "bob"


def test_list_escapes_control_characters_of_a_file_name_in_the_table(
    tus_server: StartServer,
) -> None:
    server = tus_server()
    name = b64(b"evil\x1b[2J.txt")
    server.create(1, Upload_Metadata=f"filename {name}")

    table = uploads(server, "list")

    assert table.exit_code == 0, table.output
    assert "\x1b" not in table.output
    assert table.output.splitlines()[1].endswith("evil\\x1b[2J.txt")
    (row,) = listed(server).values()
    assert row["filename"] == "evil\x1b[2J.txt"


def test_list_reads_every_record_across_many_scan_batches_once(
    redis_url: str, tmp_path: Path
) -> None:
    # More than two batches, through the store's own create path. On a
    # Cluster these ids fall on every slot range, so on every primary: a
    # listing that scanned one primary, or that a primary's empty script
    # cache broke, would miss some.
    count = 2 * admin.BATCH + 345
    ids = [f"{n:032x}" for n in range(count)]

    async def create_all() -> None:
        client = _connect(redis_url)
        try:
            store = UploadStore(client)
            for upload_id in ids:
                upload = Upload(upload_id, offset=0, length=10, expires=time.time() + 60)
                assert await store.create(upload, lock_token=None, lock_ttl_ms=1000)
        finally:
            await client.aclose()

    anyio.run(create_all)
    result = CliRunner().invoke(main, ["uploads", "list", "--json", "--redis-url", redis_url])

    assert result.exit_code == 0, result.output
    found = [json.loads(line)["id"] for line in result.output.splitlines()]
    assert sorted(found) == ids


# --- show ---------------------------------------------------------------------


def test_show_gives_the_record_the_stored_bytes_and_the_lock_holder(
    tus_server: StartServer, state: redis.Redis
) -> None:
    server = tus_server()
    url = server.create(len(DATA), Upload_Metadata=f"filename {b64(b'live.bin')}")
    upload_id = upload_id_of(url)
    assert server.patch(url, 0, DATA[:HALF]).status_code == 204

    with patch_in_flight(server, state, url, HALF):
        shown = uploads(server, "show", upload_id, "--json")
        text = uploads(server, "show", upload_id)
        token = state.get(lock_key(upload_id))

    assert shown.exit_code == 0, shown.output
    details = json.loads(shown.output)
    assert details["state"] == "running"
    assert details["lock"]["token"] == token
    assert 0 < details["lock"]["ttl_ms"] <= server.config.lock_ttl * 1000
    assert details["stored_file"] == "partial"
    assert details["offset"] == HALF
    # At least what was committed; the running PATCH may have written more.
    assert HALF <= details["stored_bytes"] <= len(DATA)
    assert details["record"]["length"] == str(len(DATA))
    assert details["record"]["metadata"] == f"filename {b64(b'live.bin')}"
    assert details["filename"] == "live.bin"
    assert text.exit_code == 0, text.output
    assert f"lock           {token} (expires in " in text.output
    assert "(partial file)" in text.output


def test_show_gives_the_published_file_of_a_finished_upload_and_the_reason_of_a_failed_one(
    tus_server: StartServer,
) -> None:
    server = tus_server()
    zoo = make_zoo(server)

    finished = json.loads(uploads(server, "show", zoo.finished, "--json").output)
    failed = json.loads(uploads(server, "show", zoo.failed, "--json").output)
    by_url = uploads(server, "show", server.endpoint + zoo.incomplete, "--json")
    incomplete = json.loads(by_url.output)

    assert finished["state"] == "finished"
    assert (finished["stored_file"], finished["stored_bytes"]) == ("final", len(DATA))
    assert finished["record"]["sha256"] == hashlib.sha256(DATA).hexdigest()
    assert finished["lock"] is None
    assert failed["state"] == "failed"
    assert "sha256" in failed["record"]["failure"]
    assert (incomplete["state"], incomplete["stored_bytes"]) == ("incomplete", HALF)


@pytest.mark.parametrize(
    ("which", "expected"),
    [
        ("terminated", "was terminated or has expired"),
        ("unknown", "no upload"),
        ("malformed", "is not an upload id"),
    ],
)
def test_show_of_an_upload_that_is_not_there_fails_with_one_sentence(
    tus_server: StartServer, which: str, expected: str
) -> None:
    server = tus_server()
    zoo = make_zoo(server)
    upload_id = {
        "terminated": zoo.terminated,
        "unknown": "0" * 32,
        "malformed": "../../etc/passwd",
    }[which]

    for command in (["show"], ["terminate"], ["terminate", "--force"]):
        line = one_sentence_failure(uploads(server, *command, upload_id))
        assert expected in line, (command, line)


def test_commands_fail_with_one_sentence_when_redis_does_not_answer(tmp_path: Path) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    for args in (
        ["list"],
        ["show", "0" * 32, "--storage", str(tmp_path)],
        ["terminate", "0" * 32, "--storage", str(tmp_path)],
    ):
        result = CliRunner().invoke(main, ["uploads", *args, "--redis-url", dead])
        line = one_sentence_failure(result)
        assert "does not answer" in line, line


# --- terminate ----------------------------------------------------------------


def test_terminate_removes_bytes_and_record_in_every_state_as_a_delete_does(
    tus_server: StartServer, state: redis.Redis
) -> None:
    server = tus_server()
    zoo = make_zoo(server)

    for upload_id in (zoo.incomplete, zoo.finished, zoo.failed):
        result = uploads(server, "terminate", upload_id)
        assert result.exit_code == 0, result.output
        assert result.output == f"terminated {upload_id}\n"
        assert not state.exists(info_key(upload_id))
        assert server.head(server.endpoint + upload_id).status_code == 410

    assert not (server.partials / zoo.incomplete).exists()
    assert not (server.partials / zoo.failed).exists()
    assert not (server.storage / zoo.finished).exists(), "the published file stayed"
    assert listed(server) == {}


def test_terminate_is_refused_while_a_patch_runs_and_force_stops_that_patch(
    tus_server: StartServer, state: redis.Redis
) -> None:
    server = tus_server()
    url = server.create(len(DATA))
    upload_id = upload_id_of(url)

    with patch_in_flight(server, state, url) as flight:
        refused = uploads(server, "terminate", upload_id)
        kept = state.exists(info_key(upload_id)), (server.partials / upload_id).exists()
        forced = uploads(server, "terminate", upload_id, "--force")
        removed = state.exists(info_key(upload_id)), (server.partials / upload_id).exists()

    line = one_sentence_failure(refused)
    assert "running PATCH" in line and "--force" in line, line
    assert kept == (1, True)
    assert forced.exit_code == 0, forced.output
    assert removed == (0, False)
    (answer,) = flight.answer
    assert isinstance(answer, httpx.Response), answer
    assert answer.status_code in (410, 423), "the stopped PATCH must not answer 2xx"
    assert server.head(url).status_code == 410
    assert not (server.partials / upload_id).exists(), "the stopped PATCH left bytes"


def test_terminate_without_force_never_asks_a_paused_patch_to_let_go(
    tus_server: StartServer, state: redis.Redis
) -> None:
    # A client's PATCH that a client's DELETE would take over (paused past
    # takeover_after): the operator's command is refused at once and asks
    # nothing, so the PATCH goes on when its client does and finishes.
    server = tus_server(takeover_after=0.05)
    url = server.create(len(DATA))
    upload_id = upload_id_of(url)

    with patch_in_flight(server, state, url) as flight:
        time.sleep(0.2)  # paused past takeover_after
        refused = uploads(server, "terminate", upload_id)

    line = one_sentence_failure(refused)
    assert "running PATCH" in line, line
    (answer,) = flight.answer
    assert isinstance(answer, httpx.Response), answer
    assert answer.status_code == 204, answer.text
    assert server.head(url).headers["Upload-Offset"] == str(len(DATA))


@pytest.mark.parametrize("force", [False, True], ids=["plain", "forced"])
def test_a_termination_the_pre_terminate_hook_refuses_lets_go_of_the_lock_it_took(
    tus_server: StartServer, state: redis.Redis, hook_receiver: HookReceiver, force: bool
) -> None:
    # The upload stays, and a client resuming it is not kept waiting for
    # the command's lock to lapse (a lock wait of 3 s against a TTL of 10 s).
    server = tus_server()
    url = server.create(len(DATA))
    upload_id = upload_id_of(url)
    hooks = ["--hooks-url", hook_receiver.url, "--hooks-events", "pre-terminate"]
    hook_receiver.answer("pre-terminate", {"RejectTermination": True})

    refused = uploads(server, "terminate", upload_id, *hooks, *(["--force"] if force else []))

    line = one_sentence_failure(refused)
    assert "was not terminated" in line, line
    assert not state.exists(lock_key(upload_id)), "the refused termination kept the lock"
    assert server.patch(url, 0, DATA).status_code == 204


def test_terminate_tells_the_termination_hooks_as_a_delete_does(
    tus_server: StartServer, hook_receiver: HookReceiver
) -> None:
    server = tus_server()
    kept = upload_id_of(server.create(len(DATA)))
    removed = upload_id_of(server.create(len(DATA)))
    hooks = ["--hooks-url", hook_receiver.url, "--hooks-events", "pre-terminate,post-terminate"]

    hook_receiver.answer("pre-terminate", {"RejectTermination": True})
    refused = uploads(server, "terminate", kept, *hooks)
    hook_receiver.answer("pre-terminate", {})
    done = uploads(server, "terminate", removed, *hooks)

    line = one_sentence_failure(refused)
    assert "was not terminated" in line, line
    assert server.head(server.endpoint + kept).status_code == 200
    assert done.exit_code == 0, done.output
    (told,) = hook_receiver.wait_for("post-terminate")
    assert told.upload["ID"] == removed
    assert [r.upload["ID"] for r in hook_receiver.received("pre-terminate")] == [kept, removed]


# --- as a real process ----------------------------------------------------------


def run_tusserver(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSSERVER_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "tusserver", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_tusserver_process_lists_and_uploads_sweep_is_the_sweep_command(
    tus_server: StartServer,
) -> None:
    server = tus_server(expire_after=1.0)
    zoo = make_zoo(server)
    redis_url = str(server.config.redis_url)

    listing = run_tusserver("uploads", "list", "--json", "--redis-url", redis_url)
    time.sleep(1.2)  # the incomplete and the failed upload expire
    swept = run_tusserver(
        "uploads", "sweep", "--redis-url", redis_url, "--storage", str(server.storage),
        "--expire-after", "1s",
    )  # fmt: skip

    assert listing.returncode == 0, listing.stderr
    states = {row["id"]: row["state"] for row in map(json.loads, listing.stdout.splitlines())}
    assert states == {zoo.incomplete: "incomplete", zoo.finished: "finished", zoo.failed: "failed"}
    assert swept.returncode == 0, swept.stderr
    assert sorted(swept.stdout.splitlines()[:-1]) == sorted(
        [f"expired {zoo.incomplete}", f"expired {zoo.failed}"]
    )
    assert swept.stdout.splitlines()[-1] == "swept: 2 expired, 0 retired, 0 orphans, 0 skipped"


def test_a_record_it_cannot_read_ends_the_command_with_one_sentence(
    tus_server: StartServer, state: redis.Redis
) -> None:
    server = tus_server()
    upload_id = upload_id_of(server.create(len(DATA)))
    state.hset(info_key(upload_id), "offset", "not a number")

    for command, args in (("list", ()), ("show", (upload_id,))):
        line = one_sentence_failure(uploads(server, command, *args))
        assert "failed unexpectedly: ValueError at tusserver.record:" in line, line

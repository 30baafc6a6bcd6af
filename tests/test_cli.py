"""The ``tusserver`` command as people and scripts run it: a real process.

Without a Redis URL it starts its own redis-server; these specs pin that the
Redis goes away with the server however the server ends, that bad settings
end the program with one line a person can act on, and that every flag has
a ``TUSSERVER_*`` environment variable.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest

from tests.hook_receiver import HookReceiver
from tests.redis_fixtures import short_temp_dir
from tests.server_fixtures import OCTETS, TUS, free_port

# Every spec runs on each HTTP server `tusserver serve` offers.
pytestmark = pytest.mark.usefixtures("server")

REPO_ROOT = Path(__file__).resolve().parents[1]
KiB = 1024
MiB = 1024 * KiB
START_TIMEOUT = 30.0
EXIT_TIMEOUT = 20.0


def cli_env(**settings: str) -> dict[str, str]:
    """The environment of this process without TUSSERVER_* settings, plus ``settings``.

    TUSSERVER_SERVER stays: it is the server the spec runs on (the ``server`` fixture).
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TUSSERVER_") or k == "TUSSERVER_SERVER"
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(settings)
    return env


def tusserver(*args: str) -> list[str]:
    return [sys.executable, "-m", "tusserver", *args]


@dataclass
class ServeProcess:
    process: subprocess.Popen[bytes]
    endpoint: str
    storage: Path
    log: Path
    data_dir: Path  # where its embedded Redis lives
    # Every process it started (redis-server, workers), recorded once it answered.
    descendants: list[psutil.Process] = field(default_factory=list)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def redis(self) -> psutil.Process:
        found = [p for p in self.descendants if "redis-server" in " ".join(_cmdline(p))]
        assert len(found) == 1, f"expected one redis-server child, found {found}"
        return found[0]

    def wait_exit(self) -> int:
        try:
            return self.process.wait(EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"tusserver did not exit:\n{self.output()}") from None


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def is_gone(process: psutil.Process) -> bool:
    """Whether the process has exited (a zombie nobody reaps counts as exited)."""
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """The processes still running after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    alive = [p for p in processes if not is_gone(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if not is_gone(p)]
    return alive


@contextmanager
def serve(
    tmp_path: Path, *flags: str, env: dict[str, str] | None = None, base_path: str = "/files/"
) -> Iterator[ServeProcess]:
    """``tusserver serve`` with embedded Redis, running until the block ends.

    Without ``env`` the port, storage and data dir are passed as flags; with
    ``env``, they and ``env`` are passed as TUSSERVER_* variables instead.
    Whatever the test did, nothing it started outlives it.
    """
    data_root = short_temp_dir()  # Redis's unix socket path must stay short
    storage = tmp_path / "uploads"
    log = tmp_path / "serve.log"
    port = free_port()
    if env is None:
        argv = tusserver(
            "serve",
            "--port",
            str(port),
            "--storage",
            str(storage),
            "--data-dir",
            str(data_root / "data"),
            *flags,
        )
        environment = cli_env()
    else:
        argv = tusserver("serve", *flags)
        environment = cli_env(
            TUSSERVER_PORT=str(port),
            TUSSERVER_STORAGE=str(storage),
            TUSSERVER_DATA_DIR=str(data_root / "data"),
            **env,
        )
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            argv, env=environment, cwd=tmp_path, stdout=log_file, stderr=subprocess.STDOUT
        )
    running = ServeProcess(
        process, f"http://127.0.0.1:{port}{base_path}", storage, log, data_root / "data"
    )
    try:
        _wait_until_answering(running)
        running.descendants = _descendants(process.pid)
        yield running
    finally:
        if process.poll() is None:
            running.descendants = running.descendants or _descendants(process.pid)
            process.kill()
            process.wait(EXIT_TIMEOUT)
        for leftover in wait_gone(running.descendants, 10):
            leftover.kill()
        wait_gone(running.descendants, 5)
        shutil.rmtree(data_root, ignore_errors=True)


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _wait_until_answering(running: ServeProcess) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if running.process.poll() is not None:
            raise AssertionError(f"tusserver exited at start:\n{running.output()}")
        try:
            if httpx.options(running.endpoint, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"tusserver did not answer OPTIONS in time:\n{running.output()}")


def upload(endpoint: str, data: bytes, chunk: int) -> str:
    """Create an upload and send it in PATCHes of ``chunk`` bytes, each on a new
    connection; returns the upload id."""
    with httpx.Client(timeout=30) as client:
        created = client.post(
            endpoint,
            headers={**TUS, "Upload-Length": str(len(data)), "Connection": "close"},
        )
    assert created.status_code == 201, created.text
    url = httpx.URL(endpoint).join(created.headers["Location"])
    for offset in range(0, len(data), chunk):
        with httpx.Client(timeout=30) as client:
            response = client.patch(
                url,
                headers={
                    **TUS,
                    "Content-Type": OCTETS,
                    "Upload-Offset": str(offset),
                    "Connection": "close",
                },
                content=data[offset : offset + chunk],
            )
        assert response.status_code == 204, response.text
        assert int(response.headers["Upload-Offset"]) == min(offset + chunk, len(data))
    return url.path.rsplit("/", 1)[1]


def assert_stored(storage: Path, upload_id: str, data: bytes) -> None:
    final = storage / upload_id
    assert hashlib.sha256(final.read_bytes()).digest() == hashlib.sha256(data).digest()


def test_serve_with_embedded_redis_serves_an_upload_and_leaves_no_redis_after_sigterm(
    tmp_path: Path,
) -> None:
    with serve(tmp_path) as server:
        data = os.urandom(3 * MiB + 3)
        assert_stored(server.storage, upload(server.endpoint, data, len(data)), data)
        redis = server.redis()

        server.process.send_signal(signal.SIGTERM)
        status = server.wait_exit()

        assert not wait_gone([redis], 5), "redis-server outlived tusserver"
        assert status == 0, f"exit status {status}:\n{server.output()}"


def test_redis_is_not_orphaned_when_server_is_killed_with_sigkill(tmp_path: Path) -> None:
    with serve(tmp_path) as server:
        data = os.urandom(1 * MiB)
        assert_stored(server.storage, upload(server.endpoint, data, len(data)), data)
        redis = server.redis()

        server.process.kill()
        server.wait_exit()

        assert not wait_gone([redis], 10), "redis-server outlived a killed tusserver"


@pytest.mark.parametrize(
    ("flags", "mentions"),
    [
        (["--max-size", "lots"], "max size"),
        (["--base-path", "files"], "base path"),
        (["--redis-url", "redis://127.0.0.1:1"], "redis"),
        (["--no-downloads", "--download-unfinished"], "downloads"),
        # Named as given, with the system's reason.
        (["--storage", "/dev/null/uploads"], "storage '/dev/null/uploads' is not usable: not a"),
    ],
    ids=[
        "max-size",
        "base-path",
        "unreachable-redis",
        "download-unfinished-without-downloads",
        "unusable-storage",
    ],
)
def test_bad_setting_fails_with_one_clear_line(
    tmp_path: Path, flags: list[str], mentions: str
) -> None:
    argv = tusserver(
        "serve",
        "--port",
        str(free_port()),
        "--storage",
        str(tmp_path / "uploads"),
        "--data-dir",
        str(tmp_path / "data"),
        *flags,
    )
    started = time.monotonic()
    result = subprocess.run(
        argv, env=cli_env(), cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    elapsed = time.monotonic() - started

    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0
    assert elapsed < 15, f"took {elapsed:.1f} s to refuse"
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert mentions in lines[0].lower().replace("-", " "), lines[0]
    assert not (tmp_path / "data").exists(), "no embedded Redis for a refused start"


def test_a_port_already_in_use_ends_the_start_with_status_3_and_no_traceback(
    tmp_path: Path,
) -> None:
    data_root = short_temp_dir()  # the embedded Redis starts before the port is tried
    try:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            argv = tusserver(
                "serve",
                "--port",
                str(port),
                "--storage",
                str(tmp_path / "uploads"),
                "--data-dir",
                str(data_root / "data"),
            )
            result = subprocess.run(
                argv, env=cli_env(), cwd=tmp_path, capture_output=True, text=True, timeout=60
            )
    finally:
        shutil.rmtree(data_root, ignore_errors=True)

    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert str(port) in result.stderr, result.stderr


def test_a_hook_names_the_client_a_loopback_proxy_forwarded_for(
    tmp_path: Path, hook_receiver: HookReceiver
) -> None:
    # uvicorn's proxy headers, on either server: X-Forwarded-For is believed
    # from a proxy on loopback (FORWARDED_ALLOW_IPS unset).
    with serve(
        tmp_path, "--hooks-url", hook_receiver.url, "--hooks-events", "pre-create"
    ) as server:
        for forwarded in ({"X-Forwarded-For": "203.0.113.7"}, {}):
            created = httpx.post(
                server.endpoint, headers={**TUS, "Upload-Length": "1", **forwarded}, timeout=10
            )
            assert created.status_code == 201, created.text
        first, second = hook_receiver.wait_for("pre-create", count=2)

    assert first.request["RemoteAddr"].startswith("203.0.113.7:")
    assert second.request["RemoteAddr"].startswith("127.0.0.1:")


def test_env_vars_configure_the_server(tmp_path: Path) -> None:
    # Port, storage and data dir come from the environment as well: no flags at all.
    settings = {
        "TUSSERVER_MAX_SIZE": "1000",
        "TUSSERVER_BASE_PATH": "/uploads/",
        "TUSSERVER_ACCESS_LOG": "true",
    }
    with serve(tmp_path, env=settings, base_path="/uploads/") as server:
        options = httpx.options(server.endpoint, timeout=10)
        assert options.status_code == 200
        assert options.headers["Tus-Max-Size"] == "1000"

        too_big = httpx.post(server.endpoint, headers={**TUS, "Upload-Length": "1001"})
        assert too_big.status_code == 413
        data = os.urandom(1000)
        assert_stored(server.storage, upload(server.endpoint, data, 400), data)

        server.process.send_signal(signal.SIGTERM)
        server.wait_exit()
        assert "OPTIONS /uploads/ 200 " in server.output(), (
            f"TUSSERVER_ACCESS_LOG=true did not turn on the access log:\n{server.output()}"
        )


def test_download_settings_reach_the_server(tmp_path: Path) -> None:
    unfinished, disabled = tmp_path / "unfinished", tmp_path / "disabled"
    unfinished.mkdir()
    disabled.mkdir()
    with serve(unfinished, env={"TUSSERVER_DOWNLOAD_UNFINISHED": "true"}) as server:
        created = httpx.post(server.endpoint, headers={**TUS, "Upload-Length": "10"})
        url = httpx.URL(server.endpoint).join(created.headers["Location"])
        patched = httpx.patch(
            url, headers={**TUS, "Content-Type": OCTETS, "Upload-Offset": "0"}, content=b"part"
        )
        assert patched.status_code == 204
        assert httpx.get(url, timeout=10).content == b"part"
    with serve(disabled, "--no-downloads") as server:
        upload_id = upload(server.endpoint, b"whole", 5)
        assert httpx.get(server.endpoint + upload_id, timeout=10).status_code == 405


# Flags people and scripts rely on (docs/architecture.md, "Configuration and CLI");
# every other option the help lists is held to the same rule.
DOCUMENTED_FLAGS = [
    "--host",
    "--port",
    "--base-path",
    "--storage",
    "--data-dir",
    "--redis-url",
    "--max-size",
    "--idle-timeout",
    "--expire-after",
    "--workers",
]


def help_entries(text: str) -> dict[str, str]:
    """Each option's help text in ``--help`` (without its flags and metavar),
    keyed by every flag the option declares."""
    entries: dict[str, str] = {}
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.lstrip().startswith("-")]
    for position, start in enumerate(starts):
        end = starts[position + 1] if position + 1 < len(starts) else len(lines)
        declaration, _, first_help = lines[start].strip().partition("  ")
        continued = [line.strip() for line in lines[start + 1 : end]]
        help_text = " ".join([first_help.strip(), *continued])
        for name in declaration.replace(",", " ").replace("/", " ").split():
            if name.startswith("--"):
                entries[name.split("=")[0]] = help_text.strip()
    return entries


def test_help_explains_every_flag() -> None:
    result = subprocess.run(
        tusserver("serve", "--help"), env=cli_env(), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    entries = help_entries(result.stdout)

    flags = set(DOCUMENTED_FLAGS) | {name for name in entries if not name.startswith("--no-")}
    flags.discard("--help")
    for flag in sorted(flags):
        assert flag in entries, f"{flag} missing from serve --help"
        envvar = "TUSSERVER_" + flag[2:].replace("-", "_").upper()
        entry = entries[flag]
        assert re.findall(r"env var: ([^;\]\s]+)", entry) == [envvar], (
            f"{flag}: expected [env var: {envvar}] in {entry!r}"
        )
        explanation = entry.split("[env var:")[0].split()
        assert len(explanation) >= 2, f"{flag} is not explained: {entry!r}"


def test_workers_2_serves_uploads(tmp_path: Path) -> None:
    with serve(tmp_path, "--workers", "2") as server:
        data = os.urandom(4 * MiB + 1)
        # One POST and nine PATCHes, each on its own connection: they land on
        # either worker, which share the upload through Redis.
        assert_stored(server.storage, upload(server.endpoint, data, 512 * KiB), data)
        redis = server.redis()
        workers = [p for p in server.descendants if p.pid != redis.pid]
        assert len(workers) >= 2, server.descendants

        server.process.send_signal(signal.SIGTERM)
        status = server.wait_exit()

        assert not wait_gone([redis, *workers], 5), "a redis-server or worker outlived tusserver"
        assert status == 0, f"exit status {status}:\n{server.output()}"


def test_sigterm_during_a_patch_commits_the_bytes_it_stored(tmp_path: Path, redis_url: str) -> None:
    # The server gives running requests a grace period, then cancels them; the
    # cancelled PATCH must still commit the blocks it stored before the process
    # ends. (Bytes still being gathered into a block when the cancel lands are
    # not stored; the client sends them again.)
    import redis as redis_client

    source = os.urandom(12 * MiB)
    sent = 6 * MiB  # more than one 4 MiB storage block
    with serve(tmp_path, "--redis-url", redis_url) as server:
        created = httpx.post(
            server.endpoint, headers={**TUS, "Upload-Length": str(len(source))}, timeout=10
        )
        upload_id = created.headers["Location"].rsplit("/", 1)[1]
        port = int(server.endpoint.split(":")[2].split("/")[0])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as patch:
            patch.sendall(
                (
                    f"PATCH /files/{upload_id} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    f"Tus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\nContent-Type: {OCTETS}\r\n"
                    f"Content-Length: {len(source)}\r\n\r\n"
                ).encode()
                + source[:sent]
            )
            state = redis_client.Redis.from_url(redis_url)
            try:
                lock = f"tus:{{{upload_id}}}:lock"
                deadline = time.monotonic() + 5
                while not state.exists(lock):
                    assert time.monotonic() < deadline, "the PATCH never took the lock"
                    time.sleep(0.01)
                time.sleep(0.5)  # let the server store what was sent

                server.process.send_signal(signal.SIGTERM)
                status = server.wait_exit()

                assert status == 0, server.output()
                # granian reports a cancelled request with its traceback
                # unless the app ends it quietly (tusserver/graceful.py).
                assert "Traceback" not in server.output(), server.output()
                committed = int(state.hget(f"tus:{{{upload_id}}}:info", "offset") or b"0")
                assert 4 * MiB <= committed <= sent
                assert not state.exists(lock), "the cancelled PATCH kept its lock"
            finally:
                state.close()
    partial = server.storage / ".partial" / upload_id
    assert partial.read_bytes()[:committed] == source[:committed]


def test_sigterm_during_a_creation_with_upload_discards_the_upload(
    tmp_path: Path, redis_url: str
) -> None:
    # The client was never given the upload's URL, so nobody can resume it:
    # the cancelled POST removes its record and its bytes before the process
    # ends, not leaving them for the sweeper.
    import redis as redis_client

    source = os.urandom(12 * MiB)
    sent = 6 * MiB
    with serve(tmp_path, "--redis-url", redis_url) as server:
        port = int(server.endpoint.split(":")[2].split("/")[0])
        state = redis_client.Redis.from_url(redis_url)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as post:
                post.sendall(
                    (
                        f"POST /files/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        f"Tus-Resumable: 1.0.0\r\nUpload-Length: {len(source)}\r\n"
                        f"Content-Type: {OCTETS}\r\nContent-Length: {len(source)}\r\n\r\n"
                    ).encode()
                    + source[:sent]
                )
                deadline = time.monotonic() + 5
                while not state.keys("tus:{*}:info"):
                    assert time.monotonic() < deadline, "the POST never created its upload"
                    time.sleep(0.01)
                time.sleep(0.5)  # let the server store what was sent

                server.process.send_signal(signal.SIGTERM)
                status = server.wait_exit()

            assert status == 0, server.output()
            assert state.keys("tus:{*}:info") == [], "the discarded upload kept its record"
            assert state.keys("tus:{*}:lock") == []
        finally:
            state.close()
    assert list((server.storage / ".partial").iterdir()) == []


# --- tusserver sweep ---------------------------------------------------------


def run_sweep(server: ServeProcess, *flags: str) -> subprocess.CompletedProcess[str]:
    argv = tusserver(
        "sweep", "--storage", str(server.storage), "--data-dir", str(server.data_dir), *flags
    )
    return subprocess.run(
        argv, env=cli_env(), cwd=server.log.parent, capture_output=True, text=True, timeout=60
    )


def create_with_bytes(endpoint: str, data: bytes) -> str:
    """An unfinished upload holding ``data``; returns its id."""
    with httpx.Client(timeout=10) as client:
        created = client.post(endpoint, headers={**TUS, "Upload-Length": str(len(data) + 1)})
        url = httpx.URL(endpoint).join(created.headers["Location"])
        patched = client.patch(
            url, headers={**TUS, "Content-Type": OCTETS, "Upload-Offset": "0"}, content=data
        )
    assert patched.status_code == 204, patched.text
    return url.path.rsplit("/", 1)[1]


def redis_servers_of(data_dir: Path) -> list[psutil.Process]:
    """Running redis-servers working in ``data_dir`` (the embedded Redis runs there)."""
    found = []
    for process in psutil.process_iter():
        try:
            if "redis-server" in process.name() and Path(process.cwd()) == data_dir.resolve():
                found.append(process)
        except psutil.Error:
            pass
    return [p for p in found if not is_gone(p)]


def test_sweep_uses_the_embedded_redis_of_the_server_running_on_the_data_dir(
    tmp_path: Path,
) -> None:
    # Long enough that the sweep process starts, on a busy machine, well
    # before the second upload expires too.
    with serve(tmp_path, "--expire-after", "4s") as server:
        expired = create_with_bytes(server.endpoint, b"abc")
        time.sleep(4.2)
        kept = create_with_bytes(server.endpoint, b"def")

        result = run_sweep(server, "--expire-after", "4s")

        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [
            f"expired {expired}",
            "swept: 1 expired, 0 retired, 0 orphans, 0 skipped",
        ]
        assert not (server.storage / ".partial" / expired).exists()
        assert (server.storage / ".partial" / kept).read_bytes() == b"def"
        assert httpx.head(server.endpoint + expired, headers=TUS).status_code == 410
        assert httpx.head(server.endpoint + kept, headers=TUS).status_code == 200
        assert redis_servers_of(server.data_dir) == [server.redis()]


def test_sweep_without_a_running_server_starts_the_embedded_redis_for_the_pass(
    tmp_path: Path,
) -> None:
    with serve(tmp_path, "--expire-after", "1s") as server:
        upload_id = create_with_bytes(server.endpoint, b"abc")
        orphan = "0123456789abcdef0123456789abcdef"
        (server.storage / ".partial" / orphan).write_bytes(b"lost")
        server.process.send_signal(signal.SIGTERM)
        assert server.wait_exit() == 0
        time.sleep(1.2)

        result = run_sweep(server, "--expire-after", "1s")

        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [
            f"expired {upload_id}",
            f"orphan {orphan}",
            "swept: 1 expired, 0 retired, 1 orphans, 0 skipped",
        ]
        assert list((server.storage / ".partial").iterdir()) == []
        assert redis_servers_of(server.data_dir) == [], "the sweep left its Redis running"
        # The pass changed the state the next server starts from.
        again = run_sweep(server, "--expire-after", "1s")
        assert again.stdout.splitlines() == ["swept: 0 expired, 0 retired, 0 orphans, 0 skipped"]


def test_sweep_with_a_bad_setting_fails_with_one_clear_line(tmp_path: Path) -> None:
    argv = tusserver(
        "sweep",
        "--storage",
        str(tmp_path / "uploads"),
        "--data-dir",
        str(tmp_path / "data"),
        "--expire-after",
        "soon",
    )
    result = subprocess.run(
        argv, env=cli_env(), cwd=tmp_path, capture_output=True, text=True, timeout=30
    )

    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0
    assert len(lines) == 1, result.stderr
    assert "expire after" in lines[0]
    assert not (tmp_path / "data").exists()


def test_sweep_help_explains_every_flag() -> None:
    result = subprocess.run(
        tusserver("sweep", "--help"), env=cli_env(), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    entries = help_entries(result.stdout)

    expected = {"--storage", "--data-dir", "--redis-url", "--expire-after", "--retention"}
    assert expected <= set(entries)
    for flag in sorted(set(entries) - {"--help"}):
        envvar = "TUSSERVER_" + flag[2:].replace("-", "_").upper()
        assert f"env var: {envvar}" in entries[flag], entries[flag]

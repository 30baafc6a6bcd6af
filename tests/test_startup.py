"""Start-up of an app run other than by ``tusserver serve`` (mounted in
another app, or on any ASGI server): its lifespan starts the embedded Redis
without holding up its event loop, stops it on the way out, and refuses an
unusable storage with one sentence before starting anything.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import psutil
import pytest

from tests.redis_fixtures import short_temp_dir
from tests.server_fixtures import TUS
from tusserver import Config, create_app
from tusserver.config import ConfigError
from tusserver.embedded_redis import LOCK_NAME, EmbeddedRedisError

pytestmark = pytest.mark.anyio


@pytest.fixture
def data_dir() -> Iterator[Path]:
    root = short_temp_dir()  # Redis's unix socket path must stay short
    yield root / "data"
    shutil.rmtree(root, ignore_errors=True)


def redis_servers_in(data_dir: Path) -> list[psutil.Process]:
    """This process's redis-server children working in ``data_dir``."""
    found = []
    for child in psutil.Process().children():
        try:
            if "redis-server" in child.name() and Path(child.cwd()) == data_dir.resolve():
                found.append(child)
        except psutil.Error:
            pass
    return found


def hold_lock(data_dir: Path) -> int:
    """Take the data dir's lock as a Redis left by a killed server does while it
    still writes its append-only file: a start waits until it is let go."""
    data_dir.mkdir(mode=0o700)
    holder = os.open(data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)
    return holder


async def test_an_app_starting_its_embedded_redis_keeps_its_event_loop_running(
    tmp_path: Path, data_dir: Path
) -> None:
    app = create_app(Config(storage=str(tmp_path / "uploads"), data_dir=data_dir))
    holder = hold_lock(data_dir)
    gaps: list[float] = []

    async def tick() -> None:
        last = time.monotonic()
        while True:
            await anyio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    async def let_go_after_a_second() -> None:
        await anyio.sleep(1)
        os.close(holder)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(tick)
        tasks.start_soon(let_go_after_a_second)
        started_at = time.monotonic()
        async with app.router.lifespan_context(app):
            waited = time.monotonic() - started_at
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://tus") as client:
                created = await client.post("/files/", headers={**TUS, "Upload-Length": "3"})
            redis = redis_servers_in(data_dir)
        tasks.cancel_scope.cancel()

    assert waited >= 0.9, "the start did not wait for the data dir's lock"
    assert max(gaps) < 0.25, f"the event loop stood still for {max(gaps):.2f} s"
    assert created.status_code == 201, created.text
    assert len(redis) == 1
    assert not psutil.pid_exists(redis[0].pid) or redis[0].status() == psutil.STATUS_ZOMBIE


async def test_an_app_whose_storage_is_unusable_fails_its_start_up_with_one_sentence(
    tmp_path: Path, data_dir: Path
) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_bytes(b"")
    app = create_app(Config(storage=str(not_a_folder / "uploads"), data_dir=data_dir))

    with pytest.raises(ConfigError) as refused:
        async with app.router.lifespan_context(app):
            pass

    # The system's reason in words: no errno, no repeated path.
    message = str(refused.value)
    assert message == f"storage {str(not_a_folder / 'uploads')!r} is not usable: Not a directory."
    assert not await anyio.Path(data_dir).exists(), "no embedded Redis for a refused start"


async def test_a_second_app_on_the_data_dir_of_a_running_one_refuses_to_start(
    tmp_path: Path, data_dir: Path
) -> None:
    # Each app owns the embedded Redis it starts: joining another's is for
    # ``tusserver sweep`` only.
    first = create_app(Config(storage=str(tmp_path / "one"), data_dir=data_dir))
    second = create_app(Config(storage=str(tmp_path / "two"), data_dir=data_dir))

    async with first.router.lifespan_context(first):
        with pytest.raises(EmbeddedRedisError, match="in use by another running tusserver"):
            async with second.router.lifespan_context(second):
                pass
        running = redis_servers_in(data_dir)

    assert len(running) == 1, "the refused app started a Redis of its own"


async def test_an_app_whose_embedded_redis_cannot_start_fails_its_start_up_with_the_reason(
    tmp_path: Path, data_dir: Path
) -> None:
    too_long = data_dir / ("d" * 110)  # for Redis's unix socket
    app = create_app(Config(storage=str(tmp_path / "uploads"), data_dir=too_long))

    with pytest.raises(EmbeddedRedisError, match="choose a shorter data dir"):
        async with app.router.lifespan_context(app):
            pass

    assert redis_servers_in(too_long) == []

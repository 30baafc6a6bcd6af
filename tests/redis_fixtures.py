"""Real Redis for the tests: one embedded redis-server per session, emptied per test.

No fakes: the server is the same ``EmbeddedRedis`` tusserver starts itself.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tusserver.embedded_redis import EmbeddedRedis


def short_temp_dir() -> Path:
    """A fresh private dir under /tmp: a unix socket path must stay under 107 bytes."""
    base = "/tmp" if os.path.isdir("/tmp") else None
    return Path(tempfile.mkdtemp(prefix="tus-", dir=base))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """URL of one real Redis shared by the whole test session."""
    data_dir = short_temp_dir()
    server = EmbeddedRedis(data_dir)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """URL of the session's Redis, emptied (FLUSHALL) before the test."""
    client = redis.Redis.from_url(redis_server)
    try:
        client.flushall()
    finally:
        client.close()
    yield redis_server


@pytest.fixture
def state(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the test's Redis, to read upload records directly."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()

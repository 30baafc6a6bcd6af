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

from tusserver import redis_topology as redis_topology_module
from tusserver import redis_urls
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
def private_redis() -> Iterator[EmbeddedRedis]:
    """A second real Redis that a spec may stop or make refuse without
    harming the session's."""
    data_dir = short_temp_dir()
    server = EmbeddedRedis(data_dir / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


# The spec files that run against every topology: the protocol and
# concurrency specs, and the operator's ``tusserver uploads`` (a listing
# must SCAN every primary of a Cluster, a script run per slot). A spec in
# them that looks at one server's internals is marked ``standalone_redis``.
TOPOLOGY_MODULES = frozenset(
    {
        "test_protocol",
        "test_creation",
        "test_patch",
        "test_head",
        "test_termination",
        "test_concatenation",
        "test_transport",
        "test_expiry",
        "test_admin",
    }
)
ALL_TOPOLOGIES = ("standalone", "sentinel", "cluster")
# TUSSERVER_TEST_TOPOLOGIES=standalone,cluster narrows the topology-wide
# specs to those topologies (bench/mutation.py runs most modules' specs on
# one server only: a mutant that one server does not notice is rarely one
# that a Sentinel or a Cluster does). Unset: all three.
TOPOLOGIES = tuple(os.environ.get("TUSSERVER_TEST_TOPOLOGIES", ",".join(ALL_TOPOLOGIES)).split(","))
if not set(TOPOLOGIES) <= set(ALL_TOPOLOGIES):
    raise ValueError(f"TUSSERVER_TEST_TOPOLOGIES: each of {TOPOLOGIES} is one of {ALL_TOPOLOGIES}")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "standalone_redis: runs on one Redis server only (looks at its internals)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    if (
        module in TOPOLOGY_MODULES
        and "redis_url" in metafunc.fixturenames
        and metafunc.definition.get_closest_marker("standalone_redis") is None
    ):
        metafunc.parametrize("redis_topology", TOPOLOGIES, indirect=True)


@pytest.fixture
def redis_topology(request: pytest.FixtureRequest) -> str:
    """Which Redis the spec runs on: one server unless parametrized."""
    return str(getattr(request, "param", "standalone"))


@pytest.fixture
def redis_url(request: pytest.FixtureRequest, redis_topology: str) -> str:
    """URL of the spec's Redis, emptied before the spec: the session's one
    server, or its Sentinel set-up or Cluster (started on first use)."""
    if redis_topology == "standalone":
        url: str = request.getfixturevalue("redis_server")
        client = redis.Redis.from_url(url)
        try:
            client.flushall()
        finally:
            client.close()
        return url
    fixture = "redis_sentinels" if redis_topology == "sentinel" else "redis_cluster"
    topology = request.getfixturevalue(fixture)
    topology.flush()
    return str(topology.url)


@pytest.fixture
def state(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the test's Redis, to read upload records directly."""
    client = redis_topology_module.connect_sync(redis_urls.parse(redis_url))
    yield client
    client.close()

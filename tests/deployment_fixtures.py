"""Several ``tusserver serve`` instances behind one real nginx, as deployed.

``deployment(count, storage, *options)`` starts ``count`` instances (real
processes, ``tests/process_fixtures.py``) that share one Redis URL and one
storage, and an nginx running examples/nginx-multi.conf that round-robins
every request over them (no sticky sessions). Everything is stopped when the
test ends.

The Redis URL comes from ``shared_redis_url``, a fixture parametrized over
``REDIS_TOPOLOGIES``: every spec that takes it runs once per entry, on one
Redis server (``redis_url``) and on a Redis Cluster (``cluster_redis_url``).

``ThrottlingProxy`` stands in for a slow uplink between the clients and
nginx, so that an upload lasts long enough to stop instances in its middle.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.nginx_fixtures import NginxProxy, render_multi_example
from tests.process_fixtures import ServeProcess
from tests.redis_topologies import RedisClusterSet

# Topology name -> the fixture that gives a Redis URL of that topology.
REDIS_TOPOLOGIES = {"standalone": "redis_url", "cluster": "cluster_redis_url"}


@pytest.fixture
def cluster_redis_url(redis_cluster: RedisClusterSet) -> str:
    """The session's Redis Cluster, emptied."""
    redis_cluster.flush()
    return redis_cluster.url


@pytest.fixture(params=list(REDIS_TOPOLOGIES))
def shared_redis_url(request: pytest.FixtureRequest) -> str:
    """The Redis URL the instances of a deployment share, one per topology."""
    url: str = request.getfixturevalue(REDIS_TOPOLOGIES[request.param])
    return url


@dataclass
class Deployment:
    instances: list[ServeProcess]
    proxy: NginxProxy
    storage: Path  # where the shared storage's files show on this machine

    @property
    def endpoint(self) -> str:
        return self.proxy.endpoint


StartDeployment = Callable[..., Deployment]


@pytest.fixture
def deployment(
    serve_process: Callable[..., ServeProcess],
    nginx_proxy: Callable[..., NginxProxy],
    shared_redis_url: str,
) -> StartDeployment:
    """Factory: ``deployment(count, storage_url, shown_at, *options, env=None)``.

    ``storage_url`` is the ``--storage`` every instance gets, ``shown_at``
    where its files show on this machine; ``options`` go to every instance.
    """

    def start(
        count: int,
        storage_url: str,
        shown_at: Path,
        *options: str,
        env: dict[str, str] | None = None,
    ) -> Deployment:
        shared = ["--storage", storage_url, "--redis-url", shared_redis_url, "--behind-proxy"]
        instances = [serve_process(*shared, *options, env=env) for _ in range(count)]
        ports = [instance.port for instance in instances]
        proxy = nginx_proxy(0, render=lambda listen: render_multi_example(listen, ports))
        return Deployment(instances, proxy, shown_at)

    return start


class ThrottlingProxy:
    """A loopback TCP proxy to ``target_port`` that passes client-to-server
    bytes at ``rate`` bytes per second over all its connections together, and
    answers freely. ``forwarded``: client bytes passed so far."""

    def __init__(self, target_port: int, rate: int) -> None:
        self.target_port = target_port
        self.rate = rate
        self.forwarded = 0
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, server]
            for source, target, throttled in ((client, server, True), (server, client, False)):
                thread = threading.Thread(
                    target=self._pump, args=(source, target, throttled), daemon=True
                )
                self._threads.append(thread)
                thread.start()

    def _pump(self, source: socket.socket, target: socket.socket, throttled: bool) -> None:
        try:
            while data := source.recv(64 * 1024):
                if throttled:
                    self._pace(len(data))
                target.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                target.shutdown(socket.SHUT_WR)

    def _pace(self, size: int) -> None:
        with self._lock:
            self.forwarded += size
            due = self._started + self.forwarded / self.rate
        time.sleep(max(0.0, due - time.monotonic()))

    def wait_for(self, count: int, alive: Callable[[], bool], timeout: float = 120) -> None:
        """Until ``count`` client bytes have passed; fails if ``alive()`` turns False first."""
        deadline = time.monotonic() + timeout
        while self.forwarded < count:
            assert alive(), f"the uploads ended after {self.forwarded} bytes"
            assert time.monotonic() < deadline, "the uploads stopped sending"
            time.sleep(0.02)

    def close(self) -> None:
        # shutdown, not only close: close does not wake a thread in accept().
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(10)


@pytest.fixture
def throttling_proxy() -> Iterator[Callable[[int, int], ThrottlingProxy]]:
    """Factory: ``throttling_proxy(target_port, rate)``; closed after the test."""
    started: list[ThrottlingProxy] = []

    def start(target_port: int, rate: int) -> ThrottlingProxy:
        proxy = ThrottlingProxy(target_port, rate)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.close()

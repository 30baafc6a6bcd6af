"""What the scale-out benches (scale_out.py, head_polling.py) share: tusserver
deployed as the specs deploy it, and the CPU time each part of it uses.

``Deployment`` runs, all under one folder:

* a Redis Cluster of three primaries with one replica each (``RedisClusterSet``
  of tests/redis_topologies.py, Debian's redis-server on loopback ports);
* N ``python -m tusserver serve`` instances (``bench.Server``: own session,
  log file, the whole process tree stopped at the end) sharing that cluster
  (``--redis-url redis+cluster://...``) and one local storage folder;
* one nginx running examples/nginx-multi.conf (``NginxProxy`` and
  ``render_multi_example`` of tests/nginx_fixtures.py), which round-robins
  every request over the instances, with no stickiness.

``Meter`` measures wall time and the CPU seconds of each group of processes
(tusserver instances, nginx, Redis), of the client, and of everything else on
the machine, over one measurement.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

# Run as `python bench/<name>.py`: this folder is on sys.path (bench.py is
# `bench`), the repository is not; it comes after, for tests/.
from bench import (
    HOST,
    REPO_DIR,
    BenchError,
    ProcessTree,
    Results,
    Server,
    environment,
    free_port,
    machine_busy_seconds,
    sigterm_as_interrupt,
)

sys.path.insert(1, str(REPO_DIR))

from tests.nginx_fixtures import NginxProxy, render_multi_example
from tests.redis_topologies import RedisClusterSet

BASE_PATH = "/files/"
GROUPS = ("tusserver", "nginx", "redis")
# nginx: one worker (as the specs run it) would be one core's worth of
# proxying at most; it gets as many as the machine has cores, like `auto`.
NGINX_WORKERS = max(1, os.cpu_count() or 1)
NGINX_CONNECTIONS = 1024  # each proxied request holds two: client and upstream


def check_tools() -> str | None:
    """None if nginx, redis-server and redis-cli are installed, else what is missing."""
    missing = [
        name
        for name in ("nginx", "redis-server", "redis-cli")
        if shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None
    ]
    return None if not missing else "not installed: " + ", ".join(missing)


class Deployment:
    """A Redis Cluster, tusserver instances sharing it and one storage, and nginx."""

    def __init__(self, workdir: Path, server: str | None) -> None:
        self.workdir = workdir
        self.server = server  # --server of every instance; None: tusserver's default
        self.storage = workdir / "storage"
        self.storage.mkdir()
        self.cluster = RedisClusterSet(workdir / "redis")
        self.instances: list[Server] = []
        self.proxy: NginxProxy | None = None
        self._started = 0  # instances started so far, to name their logs

    # -- Redis

    def start_cluster(self) -> None:
        self.cluster.start()

    def flush(self) -> None:
        """Empty the cluster (the size checks delete each finished file)."""
        self.cluster.flush()

    # -- tusserver and nginx

    def start(self, count: int) -> None:
        """(Re)start ``count`` instances and an nginx in front of them."""
        self.stop_servers()
        for _ in range(count):
            self._started += 1
            port = free_port()
            argv = [
                sys.executable, "-m", "tusserver", "serve",
                "--host", HOST, "--port", str(port),
                "--storage", str(self.storage),
                "--redis-url", self.cluster.url,
                # Never used with --redis-url; named so nothing lands in the working folder.
                "--data-dir", str(self.workdir / f"d{self._started}"),
                "--behind-proxy", "--workers", "1",
            ]  # fmt: skip
            if self.server is not None:
                argv += ["--server", self.server]
            log = self.workdir / f"tusserver-{self._started}.log"
            instance = Server(
                "tusserver", argv, port, self.storage, BASE_PATH, log, REPO_DIR, False
            )
            self.instances.append(instance)
            instance.start()
        for instance in self.instances:
            instance.wait_ready()
        ports = [instance.port for instance in self.instances]
        self.proxy = NginxProxy(
            0,
            render=lambda listen: render_multi_example(listen, ports),
            parent=self.workdir,
            worker_processes=NGINX_WORKERS,
            worker_connections=NGINX_CONNECTIONS,
        )
        self.proxy.start()

    def endpoint(self, direct: bool = False) -> Server:
        """What the client talks to: nginx, or (``direct``) the first instance.

        A ``bench.Server`` that is never started, so that ``bench.Bench`` can
        create uploads through it and check their stored sizes."""
        assert self.proxy is not None and self.instances
        port = self.instances[0].port if direct else self.proxy.port
        log = self.workdir / "client.log"
        return Server("tusserver", [], port, self.storage, BASE_PATH, log, REPO_DIR, False)

    def stop_servers(self) -> None:
        """Stop nginx and every instance; each is tried even if another fails."""
        proxy, self.proxy = self.proxy, None
        instances, self.instances = self.instances, []
        try:
            if proxy is not None:
                proxy.close()
        finally:
            for instance in instances:
                instance.stop()

    def stop(self) -> None:
        try:
            self.stop_servers()
        finally:
            self.cluster.stop()

    # -- CPU time

    def trees(self) -> dict[str, list[ProcessTree]]:
        groups: dict[str, list[ProcessTree]] = {name: [] for name in GROUPS}
        for instance in self.instances:
            if instance.tree is not None:
                groups["tusserver"].append(instance.tree)
        if self.proxy is not None and self.proxy.pid is not None:
            groups["nginx"].append(ProcessTree(self.proxy.pid))
        for node in self.cluster.nodes:
            if node.process is not None:
                groups["redis"].append(ProcessTree(node.process.pid))
        return groups

    def log_tails(self) -> str:
        return "\n".join(
            f"  tusserver on port {instance.port}:\n{tail}"
            for instance in self.instances
            if (tail := instance.log_tail(10))
        )


class Meter:
    """Wall time, and CPU seconds per group, of the client and of the rest of
    the machine, over one measurement (``with Meter(deployment) as m: ...``)."""

    def __init__(self, deployment: Deployment) -> None:
        self.trees = deployment.trees()
        self.cpu: dict[str, float] = {}

    def _group_seconds(self) -> dict[str, float]:
        return {name: sum(t.cpu_seconds() for t in trees) for name, trees in self.trees.items()}

    def __enter__(self) -> Meter:
        for trees in self.trees.values():
            for tree in trees:
                tree.processes(refresh=True)
        self._busy0 = machine_busy_seconds()
        self._groups0 = self._group_seconds()
        self._client0 = time.process_time()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._t0
        after = self._group_seconds()
        self.cpu = {name: after[name] - self._groups0[name] for name in after}
        self.cpu["client"] = time.process_time() - self._client0
        busy = machine_busy_seconds() - self._busy0
        self.cpu["other"] = max(0.0, busy - sum(self.cpu.values()))


def event_loop_runner() -> Callable[[Coroutine[Any, Any, None]], None]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def run_deployment_bench(
    script: str,
    argv: list[str],
    server: str | None,
    measure: Callable[[Path, Results], Coroutine[Any, Any, None]],
    report: Callable[[Results, str], None],
) -> int:
    """What every deployment benchmark's ``main`` does around its own
    ``measure`` and ``report``: the tools checked, the machine described, one
    temporary folder (removed at the end), SIGTERM and Ctrl-C stopping
    everything started, and the exit status: 1 on a failure or a wrong
    stored size, 130 when interrupted."""
    command = shlex.join(["python", f"bench/{script}", *argv])
    missing = check_tools()
    if missing:
        print(f"cannot run: {missing}", file=sys.stderr)
        return 1
    for line in environment([]):
        print(line)
    print(f"tusserver instances on {server or 'the default HTTP server'}; nothing pinned")
    results = Results()
    workdir = Path(tempfile.mkdtemp(prefix="deploybench", dir="/tmp"))
    # nginx's workers run as nobody when this runs as root: they must reach their folder.
    workdir.chmod(0o711)
    try:
        with sigterm_as_interrupt():
            event_loop_runner()(measure(workdir, results))
        report(results, command)
    except KeyboardInterrupt:
        print("\ninterrupted; everything started was stopped", file=sys.stderr)
        return 130
    except (BenchError, OSError, RuntimeError, AssertionError, TimeoutError) as exc:
        detail = "".join(traceback.format_exception_only(exc)).strip()
        print(f"FAILED: {detail}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if results.check_failures else 0

"""Real replicated and sharded Redis for the specs, from Debian's redis-server.

``RedisCluster``: three primaries and one replica each, in cluster mode, on
loopback ports, made into a cluster with ``redis-cli --cluster create``.
``RedisSentinelSet``: one primary, one replica and three sentinels that fail
over after one second without an answer.

Each is started once per session (the ``redis_cluster`` and
``redis_sentinels`` fixtures), emptied before every spec that uses it, and
kept healthy between specs: a spec that kills a node starts it again
(``restart``) and waits until the set-up is whole before it ends.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster

from tests.redis_fixtures import short_temp_dir

SENTINEL_SERVICE = "tusprimary"
# How long a start-up or a failover may take before the fixture gives up.
_READY_SECONDS = 30.0
_POLL = 0.1


def redis_server_binary() -> str:
    """Debian's redis-server (apt-get install redis-server redis-sentinel; .ci/run does)."""
    found = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(found).exists():
        pytest.fail("redis-server is not installed: run .ci/run, which installs it")
    return found


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _wait(condition: object, what: str, timeout: float = _READY_SECONDS) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (redis.RedisError, OSError):
            pass
        time.sleep(_POLL)
    raise AssertionError(f"{what} within {timeout:.0f} s")


@dataclass
class RedisNode:
    """One redis-server (or sentinel) process with its own folder and port."""

    port: int
    folder: Path
    options: list[str]
    sentinel: bool = False
    process: subprocess.Popen[bytes] | None = None

    def start(self, *, replica_of: int | None = None) -> None:
        """Start the process; a server with ``replica_of`` starts as the
        replica of the server on that port, whatever its options say."""
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / ("sentinel.conf" if self.sentinel else "redis.conf")
        options = self.options
        if replica_of is not None:
            options = [o for o in options if not o.startswith("replicaof ")]
            options.append(f"replicaof 127.0.0.1 {replica_of}")
        if not config.exists() or not self.sentinel:
            # A sentinel rewrites its file with what it learned: keep it on restart.
            config.write_text("\n".join(options) + "\n")
        command = [redis_server_binary(), str(config)]
        if self.sentinel:
            command.append("--sentinel")
        with open(self.folder / "log", "ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.folder,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def answers() -> bool:
            if not self.running:
                tail = (self.folder / "log").read_text(errors="replace")[-400:]
                raise AssertionError(f"redis on port {self.port} ended: {tail}")
            return self.answers()

        _wait(answers, f"redis on port {self.port} did not answer")

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5, decode_responses=True)

    def answers(self) -> bool:
        with self.client() as client:
            return bool(client.ping())

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def server_options(port: int, *extra: str) -> list[str]:
    """The options of every Redis server the specs start (``extra`` added)."""
    return [
        "bind 127.0.0.1",
        f"port {port}",
        "protected-mode no",
        "daemonize no",
        "save ''",
        # Kept on disk so a restarted node comes back with its data.
        "appendonly yes",
        "appendfsync everysec",
        # A replica (re)started syncs at once, not after 5 s: a server brought
        # back after a failover holds the writes it lost only that long.
        "repl-diskless-sync-delay 0",
        *extra,
    ]


@dataclass
class RedisClusterSet:
    """Three primaries with one replica each."""

    folder: Path
    nodes: list[RedisNode] = field(default_factory=list)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:3])

    def start(self) -> None:
        ports = free_ports(12)
        for port, bus_port in zip(ports[:6], ports[6:], strict=True):
            options = server_options(
                port,
                "cluster-enabled yes",
                # Named, not port + 10000, which may be taken or out of range.
                f"cluster-port {bus_port}",
                "cluster-config-file nodes.conf",
                # Fail over within about two seconds of a primary's death.
                "cluster-node-timeout 2000",
                "cluster-replica-validity-factor 0",
            )
            node = RedisNode(port, self.folder / str(port), options)
            self.nodes.append(node)
            node.start()
        subprocess.run(
            [
                shutil.which("redis-cli") or "/usr/bin/redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        self.wait_healthy()

    def cluster_client(self) -> RedisCluster:
        return RedisCluster(
            startup_nodes=[ClusterNode("127.0.0.1", n.port) for n in self.nodes if n.running],
            decode_responses=True,
            socket_timeout=5,
        )

    def wait_healthy(self) -> None:
        """Every node runs, the cluster is ok, and three primaries each have a replica."""

        def healthy() -> bool:
            for node in self.nodes:
                if not node.running:
                    return False
                with node.client() as client:
                    if client.cluster("info")["cluster_state"] != "ok":
                        return False
            with self.nodes[0].client() as client:
                nodes = client.cluster("nodes").values()
            up = [n["flags"] for n in nodes if n["connected"] or "myself" in n["flags"]]
            up = [flags for flags in up if "fail" not in flags]
            primaries = [flags for flags in up if "master" in flags]
            replicas = [flags for flags in up if "slave" in flags]
            return len(primaries) == 3 and len(replicas) == 3

        _wait(healthy, "the Redis Cluster was not whole")

    def primaries(self) -> list[RedisNode]:
        found = []
        for node in self.nodes:
            if node.running:
                with node.client() as client:
                    if client.execute_command("ROLE")[0] == "master":
                        found.append(node)
        return found

    def primary_of(self, key: str) -> RedisNode:
        with self.cluster_client() as client:
            node = client.get_node_from_key(key)
            port = node.port
        return next(n for n in self.nodes if n.port == port)

    def node_id(self, node: RedisNode) -> str:
        with node.client() as client:
            return str(client.execute_command("CLUSTER", "MYID"))

    def primary_of_slot(self, slot: int) -> RedisNode:
        with self.primaries()[0].client() as client:
            ranges = client.execute_command("CLUSTER", "SLOTS")
        port = next(int(primary[1]) for first, last, primary, *_ in ranges if first <= slot <= last)
        return next(n for n in self.nodes if n.port == port)

    def move_slot(self, slot: int, to: RedisNode) -> RedisNode:
        """Move one slot, keys and all, to the primary ``to``, as
        ``redis-cli --cluster reshard`` does (SETSLOT IMPORTING and MIGRATING,
        MIGRATE, then SETSLOT NODE on every primary); returns the primary that
        served it, once every node of the cluster names ``to`` for it."""
        source = self.primary_of_slot(slot)
        if source is to:
            return source
        source_id, to_id = self.node_id(source), self.node_id(to)
        with to.client() as target, source.client() as client:
            target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
            client.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", to_id)
            for _ in range(
                10_000
            ):  # a hundred keys a turn: bounded, and far more than any spec makes
                keys = client.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
                if not keys:
                    break
                client.execute_command("MIGRATE", "127.0.0.1", to.port, "", 0, 5000, "KEYS", *keys)
            # The new owner first, then the old one, as the reshard does.
            target.execute_command("CLUSTER", "SETSLOT", slot, "NODE", to_id)
            client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", to_id)
        for other in self.primaries():
            if other is not to and other is not source:
                with other.client() as client:
                    client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", to_id)

        def everyone_agrees() -> bool:
            for node in self.nodes:
                with node.client() as client:
                    ranges = client.execute_command("CLUSTER", "SLOTS")
                owner = [p for first, last, p, *_ in ranges if first <= slot <= last]
                if not owner or int(owner[0][1]) != to.port:
                    return False
            return True

        _wait(everyone_agrees, f"slot {slot} did not move to port {to.port}")
        return source

    def restart(self, node: RedisNode) -> None:
        """Start a killed node again (it rejoins from its nodes.conf, as a
        replica if its own replica was promoted) and wait until whole."""
        node.start()
        self.wait_healthy()

    def flush(self) -> None:
        for node in self.primaries():
            with node.client() as client:
                client.flushall()
        # Replicas follow their primary; wait so a failover cannot resurrect keys.
        for node in self.primaries():
            with node.client() as client:
                client.execute_command("WAIT", 1, 2000)

    def stop(self) -> None:
        for node in self.nodes:
            node.kill(signal.SIGTERM)


@dataclass
class RedisSentinelSet:
    """One primary, one replica, three sentinels (quorum two)."""

    folder: Path
    servers: list[RedisNode] = field(default_factory=list)
    sentinels: list[RedisNode] = field(default_factory=list)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SENTINEL_SERVICE}"

    def start(self) -> None:
        ports = free_ports(5)
        primary_port, replica_port = ports[:2]
        self.servers = [
            RedisNode(primary_port, self.folder / "a", server_options(primary_port)),
            RedisNode(
                replica_port,
                self.folder / "b",
                server_options(replica_port, f"replicaof 127.0.0.1 {primary_port}"),
            ),
        ]
        for server in self.servers:
            server.start()
        for index, port in enumerate(ports[2:]):
            options = [
                "bind 127.0.0.1",
                f"port {port}",
                "protected-mode no",
                "daemonize no",
                f"sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {primary_port} 2",
                f"sentinel down-after-milliseconds {SENTINEL_SERVICE} 1000",
                f"sentinel failover-timeout {SENTINEL_SERVICE} 4000",
                f"sentinel parallel-syncs {SENTINEL_SERVICE} 1",
            ]
            node = RedisNode(port, self.folder / f"s{index}", options, sentinel=True)
            self.sentinels.append(node)
            node.start()
        self.wait_healthy()

    def primary(self) -> RedisNode:
        with self.sentinels[0].client() as client:
            _, port = client.execute_command(
                "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_SERVICE
            )
        return next(s for s in self.servers if s.port == int(port))

    def replica(self) -> RedisNode:
        primary = self.primary()
        return next(s for s in self.servers if s is not primary)

    def wait_healthy(self) -> None:
        """Both servers run, every sentinel names the same primary, which is
        one, and the replica is in sync with it."""

        def healthy() -> bool:
            named = set()
            for sentinel in self.sentinels:
                with sentinel.client() as client:
                    named.add(
                        client.execute_command(
                            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_SERVICE
                        )[1]
                    )
                    replicas = client.execute_command("SENTINEL", "REPLICAS", SENTINEL_SERVICE)
                    if not any("flags" in r and r["flags"] == "slave" for r in _pairs(replicas)):
                        return False
            if len(named) != 1 or not all(s.running for s in self.servers):
                return False
            primary = self.primary()
            with primary.client() as client:
                info = client.info("replication")
            if info["role"] != "master" or info.get("connected_slaves", 0) != 1:
                return False
            # In sync, not merely connected: a replica still loading its
            # first copy would lose everything if promoted now.
            with self.replica().client() as client:
                own = client.info("replication")
            return own["master_link_status"] == "up" and own["master_sync_in_progress"] == 0

        _wait(healthy, "the Sentinel set-up was not whole")

    def flush(self) -> None:
        with self.primary().client() as client:
            client.flushall()
            client.execute_command("WAIT", 1, 2000)

    def failover(self) -> RedisNode:
        """SENTINEL FAILOVER; returns the new primary once the first sentinel names it."""
        old = self.primary()
        with self.sentinels[0].client() as client:
            client.execute_command("SENTINEL", "FAILOVER", SENTINEL_SERVICE)
        return self.wait_promoted(old)

    def kill_primary(self) -> RedisNode:
        """SIGKILL the primary; the sentinels promote the replica after about a second."""
        primary = self.primary()
        primary.kill()
        return primary

    def wait_promoted(self, old: RedisNode) -> RedisNode:
        """Wait until the sentinels promoted another server than ``old``, and
        until each of them has heard the new primary answer since.

        Not merely named by the first sentinel: a sentinel that switched
        counts the new primary's first ping as unanswered from the switch on,
        and after a second without the answer (a busy machine) it sees the
        primary down and, with the others' votes still set from the failover
        just ended, fails over again at once, to ``old`` if it runs again by
        then, before its first sync: a primary again, holding the writes the
        failover lost."""
        _wait(lambda: self.primary() is not old, "the sentinels did not promote the replica")
        new = self.primary()

        def heard() -> bool:
            for sentinel in self.sentinels:
                with sentinel.client() as client:
                    state = _pairs(
                        [client.execute_command("SENTINEL", "MASTER", SENTINEL_SERVICE)]
                    )[0]
                if state["port"] != str(new.port) or state["flags"] != "master":
                    return False
                if state["last-ping-sent"] != "0":  # a ping not answered yet
                    return False
            return True

        _wait(heard, "the sentinels did not all hear the new primary")
        return new

    def cut_off_replica(self) -> RedisNode:
        """Freeze the replica (SIGSTOP) and close its link on the primary's
        side: from now on the primary acknowledges every write to its client
        but no replica gets it (WAIT times out). Freezing alone would not
        do: the kernel would still take the stream into the frozen process's
        socket, and it would apply it once woken. The replica; let it go
        with ``lose_unreplicated_writes`` (or ``thaw`` it)."""
        primary, replica = self.primary(), self.replica()
        assert replica.process is not None
        replica.process.send_signal(signal.SIGSTOP)
        with primary.client() as client:
            client.client_kill_filter(_type="replica")
        return replica

    @staticmethod
    def thaw(replica: RedisNode) -> None:
        """Wake a replica ``cut_off_replica`` froze. Idempotent."""
        if replica.running:
            assert replica.process is not None
            replica.process.send_signal(signal.SIGCONT)

    def lose_unreplicated_writes(self, replica: RedisNode) -> RedisNode:
        """SIGKILL the primary, wake the replica ``cut_off_replica`` froze, and
        wait until the sentinels promote it: every write the primary made
        since the cut is lost. The killed primary (``restart`` it)."""
        killed = self.kill_primary()
        self.thaw(replica)
        self.wait_promoted(killed)
        return killed

    def restart(self, node: RedisNode) -> None:
        """Start a killed server again, as the current primary's replica, and
        wait until the set-up is whole.

        As its replica from the start, as an operator brings a failed
        primary back: started as it was, a killed primary comes back a
        primary, with its append-only file (writes a failover lost
        included), and stays one until the sentinels turn it into a replica,
        which a sentinel does only after seeing it claim the role for some
        seconds. Two primaries meanwhile, one holding the lost writes: which
        of them a sentinel still catching up with the failover makes the
        other's replica is a race no spec here is about."""
        node.start(replica_of=self.primary().port)
        self.wait_healthy()

    def stop(self) -> None:
        for node in [*self.sentinels, *self.servers]:
            node.kill(signal.SIGTERM)


def _pairs(replies: list[object]) -> list[dict[str, str]]:
    """SENTINEL REPLICAS answers flat lists, or dicts with RESP3/redis-py parsing."""
    out = []
    for reply in replies:
        if isinstance(reply, dict):
            out.append({str(k): str(v) for k, v in reply.items()})
        elif isinstance(reply, list):
            out.append(dict(zip(reply[::2], reply[1::2], strict=True)))
    return out


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterSet]:
    cluster = RedisClusterSet(short_temp_dir())
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_sentinels() -> Iterator[RedisSentinelSet]:
    sentinels = RedisSentinelSet(short_temp_dir())
    try:
        sentinels.start()
        yield sentinels
    finally:
        sentinels.stop()
        shutil.rmtree(sentinels.folder, ignore_errors=True)

"""Redis failing over under running uploads: tus-js-client and tuspy finish
byte-exact, HEAD never answers anything but 200, 423 or a retryable 503, and
no file is published twice or lost.

The Redis set-ups are real (tests/redis_topologies.py): a primary, a replica
and three sentinels; a Cluster of three primaries with a replica each.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from tusclient.client import TusClient
from tusclient.uploader import Uploader

from tests.helpers import assert_tus_error, upload_id_of
from tests.hook_receiver import HookReceiver
from tests.js_fixtures import TusJs
from tests.redis_topologies import (
    SENTINEL_SERVICE,
    RedisClusterSet,
    RedisNode,
    RedisSentinelSet,
    free_ports,
    server_options,
)
from tests.server_fixtures import TUS, RunningServer, ServedApps
from tusserver.config import Config

StartServer = Callable[..., RunningServer]
KIB = 1024
CHUNK = 64 * KIB
# What the clients wait between retries: long enough together to outlast a
# failover (a second to notice the primary is gone, then the election).
RETRY_DELAYS_MS = [200, 500, 1000, 1000, 2000, 2000, 3000, 3000, 5000]


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_published_once(server: RunningServer, upload_id: str, data: bytes) -> None:
    final = server.storage / upload_id
    assert final.is_file()
    assert digest(final.read_bytes()) == digest(data)
    assert not (server.partials / upload_id).exists()
    assert [p.name for p in server.storage.iterdir() if p.is_file()] == [upload_id]


class HeadPoller:
    """HEADs an upload every 20 ms from a thread and keeps every status seen."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[httpx.Response] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HeadPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            for _ in range(5000):
                if self._stop.wait(0.02):
                    return
                self.answers.append(client.head(self.url, headers=TUS))

    def assert_never_failed_hard(self) -> None:
        assert self.answers, "no HEAD was answered"
        for answer in self.answers:
            assert answer.status_code in (200, 423, 503), answer.status_code
            if answer.status_code != 200:
                assert answer.headers["Tus-Resumable"] == "1.0.0"
            if answer.status_code == 503:
                assert int(answer.headers["Retry-After"]) >= 1


def tuspy_uploader(server: RunningServer, data: bytes) -> Uploader:
    """A tuspy upload of ``data``, created, in 64 KiB chunks, retrying through
    a failover (tuspy asks the server's offset again before each retry)."""
    uploader = TusClient(server.endpoint).uploader(
        file_stream=io.BytesIO(data), chunk_size=CHUNK, retries=20, retry_delay=0.5
    )
    uploader.set_url(uploader.create_url())
    return uploader


def upload_rest(uploader: Uploader, data: bytes, disturbance: threading.Thread) -> str:
    """Send what is left one chunk at a time, slowly while ``disturbance``
    runs, at full speed after; the upload URL."""
    for _ in range(len(data) // CHUNK + 2):
        if uploader.offset >= len(data):
            break
        uploader.upload_chunk()
        if disturbance.is_alive():
            time.sleep(0.05)
    assert uploader.offset == len(data)
    return str(uploader.url)


ON_SENTINEL = pytest.mark.parametrize("redis_topology", ["sentinel"], indirect=True)
ON_CLUSTER = pytest.mark.parametrize("redis_topology", ["cluster"], indirect=True)


def in_thread(work: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def tus_js_upload_while(
    server: RunningServer, tus_js: TusJs, tmp_path: Path, disturbance: Callable[[], object]
) -> tuple[str, bytes]:
    """tus-js-client uploads 8 MiB in slow 64 KiB chunks, retrying, while
    ``disturbance`` runs in a thread; the upload URL and the bytes sent."""
    data = os.urandom(8 * 1024 * KIB)
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    chaos = in_thread(disturbance)
    try:
        url = tus_js(
            server.endpoint,
            source,
            chunkSize=64 * KIB,
            requestDelayMs=60,
            retryDelays=RETRY_DELAYS_MS,
        )
    finally:
        chaos.join(60)
    return url, data


# --- Sentinel ------------------------------------------------------------------


@ON_SENTINEL
def test_tuspy_finishes_byte_exact_across_a_sentinel_failover(
    tus_server: StartServer, redis_sentinels: RedisSentinelSet
) -> None:
    server = tus_server()
    data = os.urandom(4 * 1024 * KIB)
    old = redis_sentinels.primary()
    uploader = tuspy_uploader(server, data)

    failover = in_thread(redis_sentinels.failover)
    url = upload_rest(uploader, data, failover)
    failover.join(60)

    assert redis_sentinels.primary() is not old
    assert_published_once(server, upload_id_of(url), data)


@ON_SENTINEL
def test_tus_js_client_finishes_byte_exact_when_the_sentinel_primary_is_killed(
    tus_server: StartServer,
    redis_sentinels: RedisSentinelSet,
    tus_js: TusJs,
    tmp_path: Path,
) -> None:
    server = tus_server()
    killed: list[RedisNode] = []

    def kill_when_started() -> None:
        time.sleep(1.0)  # the client is a few chunks in
        killed.append(redis_sentinels.kill_primary())
        redis_sentinels.wait_promoted(killed[0])

    try:
        url, data = tus_js_upload_while(server, tus_js, tmp_path, kill_when_started)
    finally:
        if killed:
            redis_sentinels.restart(killed[0])

    assert killed, "the primary was not killed"
    assert_published_once(server, upload_id_of(url), data)


@ON_SENTINEL
def test_head_during_a_sentinel_failover_answers_200_423_or_a_retryable_503(
    tus_server: StartServer, redis_sentinels: RedisSentinelSet
) -> None:
    server = tus_server()
    url = server.create(10)
    assert server.patch(url, 0, b"hello").status_code == 204
    killed = redis_sentinels.primary()

    with HeadPoller(url) as poller:
        time.sleep(0.2)
        redis_sentinels.kill_primary()
        try:
            redis_sentinels.wait_promoted(killed)
            time.sleep(1.0)  # and a while on the new primary
        finally:
            redis_sentinels.restart(killed)

    poller.assert_never_failed_hard()
    assert poller.answers[-1].status_code == 200
    # The write before the kill was acknowledged with a 204 at offset 5, but a
    # replica may not have had it: the offset may go back, never forward.
    assert int(poller.answers[-1].headers["Upload-Offset"]) in (0, 5)


@ON_SENTINEL
def test_a_finished_upload_is_on_the_replica_before_the_client_hears_of_it(
    tus_server: StartServer, redis_sentinels: RedisSentinelSet
) -> None:
    # Killing the primary right after the last 204 must not lose the finish.
    server = tus_server()
    url = server.create(10)
    assert server.patch(url, 0, b"hello").status_code == 204

    finished = server.patch(url, 5, b"world")
    killed = redis_sentinels.kill_primary()
    try:
        redis_sentinels.wait_promoted(killed)
        head = _head_when_served(server, url)
    finally:
        redis_sentinels.restart(killed)

    assert finished.status_code == 204
    assert head.headers["Upload-Offset"] == "10"
    assert_published_once(server, upload_id_of(url), b"helloworld")


@ON_SENTINEL
def test_a_final_patch_without_a_replica_to_reach_publishes_nothing_and_is_retried(
    tus_server: StartServer, redis_sentinels: RedisSentinelSet
) -> None:
    server = tus_server(redis_replicas=1)
    url = server.create(10)
    upload_id = upload_id_of(url)
    assert server.patch(url, 0, b"hello").status_code == 204
    replica = redis_sentinels.replica()
    replica.kill()
    try:
        refused = server.patch(url, 5, b"world")
    finally:
        redis_sentinels.restart(replica)

    assert refused.status_code == 503
    assert refused.json()["error"]["retryable"] is True
    assert int(refused.headers["Retry-After"]) >= 1
    assert not (server.storage / upload_id).exists()
    # The client's retry: its PATCH finds every byte in, or a HEAD finishes it.
    retried = server.patch(url, 5, b"world")
    assert retried.status_code in (204, 409)
    head = server.head(url)
    assert head.headers["Upload-Offset"] == "10"
    assert_published_once(server, upload_id, b"helloworld")


@ON_SENTINEL
def test_a_partial_patch_without_a_replica_to_reach_is_stored_as_without_replicas(
    tus_server: StartServer, redis_sentinels: RedisSentinelSet
) -> None:
    # Only the final offset waits for replicas: a PATCH that leaves bytes to
    # send is answered as soon as the primary has its offset.
    # Checkpoints too, each 64 KiB block of the body's four: a checkpoint
    # that waited for the replica would fail, and the next would find its
    # own offset moved under it.
    server = tus_server(redis_replicas=1, block_size=64 * KIB, checkpoint_bytes=64 * KIB)
    url = server.create(1024 * KIB)
    replica = redis_sentinels.replica()
    replica.kill()
    try:
        partial = server.patch(url, 0, os.urandom(256 * KIB))
    finally:
        redis_sentinels.restart(replica)

    assert partial.status_code == 204
    assert partial.headers["Upload-Offset"] == str(256 * KIB)
    assert server.head(url).headers["Upload-Offset"] == str(256 * KIB)
    assert not (server.storage / upload_id_of(url)).exists()


@ON_SENTINEL
def test_a_completion_without_a_replica_to_reach_is_not_announced_as_finished(
    tus_server: StartServer, redis_sentinels: RedisSentinelSet, hook_receiver: HookReceiver
) -> None:
    # The final offset reached the replica; the replica is gone by the time
    # the completion is recorded (killed while the pre-finish hook is asked).
    # The completion waits for it like the final offset does: the PATCH must
    # not answer 204, which a failover could then take back.
    server = tus_server(redis_replicas=1, hooks_url=hook_receiver.url, hooks_retries=0)
    url = server.create(10)
    upload_id = upload_id_of(url)
    assert server.patch(url, 0, b"hello").status_code == 204
    hook_receiver.answer("pre-finish", delay=1.0)
    answers: list[httpx.Response] = []
    patching = in_thread(lambda: answers.append(server.patch(url, 5, b"world")))
    hook_receiver.wait_for("pre-finish")
    replica = redis_sentinels.replica()
    replica.kill()
    try:
        patching.join(60)
    finally:
        redis_sentinels.restart(replica)

    [answer] = answers
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["retryable"] is True
    # The client's retry, with the replica back, hears that the upload is done.
    head = server.head(url)
    assert head.headers["Upload-Offset"] == "10"
    assert_published_once(server, upload_id, b"helloworld")


def _head_when_served(server: RunningServer, url: str) -> httpx.Response:
    for _ in range(100):
        head = server.head(url)
        if head.status_code == 200:
            return head
        time.sleep(0.1)
    raise AssertionError("HEAD never answered 200 after the failover")


# --- Cluster -------------------------------------------------------------------


@ON_SENTINEL
def test_a_server_a_sentinel_names_as_primary_is_not_used_while_it_is_a_replica(
    redis_topology: str, served_apps: ServedApps, tmp_path: Path
) -> None:
    """A sentinel behind a failover names the old primary, back as a replica:
    a HEAD is not answered from the replica's copy (423, then the offset once
    that server is the primary it is named as)."""
    primary_port, replica_port, sentinel_port = free_ports(3)
    primary = RedisNode(primary_port, tmp_path / "primary", server_options(primary_port))
    replica = RedisNode(replica_port, tmp_path / "replica", server_options(replica_port))
    # One sentinel that monitors the replica as the primary, as a sentinel
    # that missed the failover does. It takes a minute to see it down.
    sentinel = RedisNode(
        sentinel_port,
        tmp_path / "sentinel",
        [
            "bind 127.0.0.1",
            f"port {sentinel_port}",
            "protected-mode no",
            "daemonize no",
            f"sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {replica_port} 1",
            f"sentinel down-after-milliseconds {SENTINEL_SERVICE} 60000",
        ],
        sentinel=True,
    )
    storage = tmp_path / "storage"
    try:
        primary.start()
        replica.start(replica_of=primary_port)
        sentinel.start()
        on_primary = served_apps.start(
            Config(storage=str(storage), redis_url=f"redis://127.0.0.1:{primary_port}/0"), storage
        )
        url = on_primary.create(10)
        assert on_primary.patch(url, 0, b"hello").status_code == 204
        with primary.client() as client:
            assert client.execute_command("WAIT", 1, 5000) == 1  # the replica has the record

        via_sentinel = served_apps.start(
            Config(
                storage=str(storage),
                redis_url=f"redis+sentinel://127.0.0.1:{sentinel_port}/{SENTINEL_SERVICE}",
            ),
            storage,
        )
        path = urlsplit(url).path
        head = via_sentinel.client.head(via_sentinel.url + path, headers=TUS)
        assert head.status_code == 423, head.headers
        assert head.headers["Tus-Resumable"] == "1.0.0"
        assert "Upload-Offset" not in head.headers
        created = via_sentinel.client.post(
            via_sentinel.endpoint, headers={**TUS, "Upload-Length": "10"}
        )
        assert_tus_error(created, 503)

        with replica.client() as client:
            client.execute_command("REPLICAOF", "NO", "ONE")  # now the primary it is named as
        deadline = time.monotonic() + 10
        while (
            head := via_sentinel.client.head(via_sentinel.url + path, headers=TUS)
        ).status_code != 200:
            assert head.status_code == 423 and time.monotonic() < deadline, head.headers
            time.sleep(0.1)
        assert head.headers["Upload-Offset"] == "5"
    finally:
        served_apps.stop()
        for node in (sentinel, replica, primary):
            node.kill(signal.SIGTERM)


@ON_CLUSTER
def test_tuspy_finishes_byte_exact_when_the_primary_of_its_slot_is_killed(
    tus_server: StartServer, redis_cluster: RedisClusterSet
) -> None:
    server = tus_server()
    data = os.urandom(4 * 1024 * KIB)
    uploader = tuspy_uploader(server, data)
    url = str(uploader.url)
    primary = redis_cluster.primary_of(f"tus:{{{upload_id_of(url)}}}:info")
    uploader.upload_chunk()

    def kill() -> None:
        primary.kill()
        time.sleep(4)  # past the node timeout: its replica is promoted

    chaos = in_thread(kill)
    try:
        upload_rest(uploader, data, chaos)
    finally:
        chaos.join(60)
        redis_cluster.restart(primary)

    assert_published_once(server, upload_id_of(url), data)


@ON_CLUSTER
def test_tus_js_client_finishes_byte_exact_when_a_cluster_primary_restarts(
    tus_server: StartServer,
    redis_cluster: RedisClusterSet,
    tus_js: TusJs,
    tmp_path: Path,
) -> None:
    server = tus_server()
    restarted: list[RedisNode] = []

    def restart_every_primary() -> None:
        # The upload's slot is not known to this thread: restart each
        # primary in turn, back within the node timeout (no failover).
        time.sleep(1.0)
        for primary in redis_cluster.primaries():
            primary.kill()
            time.sleep(0.3)
            primary.start()
            restarted.append(primary)

    url, data = tus_js_upload_while(server, tus_js, tmp_path, restart_every_primary)

    assert len(restarted) == 3
    assert_published_once(server, upload_id_of(url), data)

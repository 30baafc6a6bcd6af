"""Release requests over a real Redis Cluster's sharded pub/sub: a request
for an upload on any slot reaches every instance, whichever primary serves
that slot (the spec files on three topologies cover one server and the
Sentinel's primary through HTTP)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator

import anyio
import pytest
import redis
from redis.asyncio.cluster import RedisCluster

from tests.redis_topologies import RedisClusterSet, RedisNode, free_ports
from tusserver import redis_topology, redis_urls, slots
from tusserver.release_requests import ShardedReleases


def _upload_id_on(slot: int) -> str:
    """An upload id (32 hex digits, as tusserver makes them) whose keys sit on ``slot``."""
    while True:  # about 16384 tries on average: a few tens of milliseconds
        upload_id = os.urandom(16).hex()
        if slots.upload_slot(upload_id) == slot:
            return upload_id


def _edge_slots(redis_cluster: RedisClusterSet) -> list[int]:
    """The first and the last slot of every primary's range."""
    with redis.Redis(port=redis_cluster.nodes[0].port, decode_responses=True) as node:
        ranges = node.execute_command("CLUSTER SLOTS")
    return sorted({bound for first, last, *_ in ranges for bound in (first, last)})


def test_a_request_for_an_upload_on_the_first_or_last_slot_of_a_primary_is_heard(
    redis_cluster: RedisClusterSet,
) -> None:
    edges = _edge_slots(redis_cluster)
    assert len(edges) >= 6  # three primaries, one range or more each
    wanted = {_upload_id_on(slot) for slot in edges}
    target = redis_urls.parse(redis_cluster.url)
    heard: set[str] = set()

    async def run() -> None:
        listening = redis_topology.connect(target)
        asking = redis_topology.connect(target)
        releases = redis_topology.release_requests(target, listening)
        publisher = redis_topology.release_requests(target, asking)
        assert isinstance(releases, ShardedReleases)
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(releases.listen, heard.add)
                # Asked again until heard: the listener subscribes in the background.
                with anyio.move_on_after(10):
                    while not wanted <= heard:
                        for upload_id in wanted - heard:
                            await publisher.publish(upload_id)
                        await anyio.sleep(0.1)
                tasks.cancel_scope.cancel()
        finally:
            await listening.aclose()
            await asking.aclose()

    anyio.run(run)
    assert wanted - heard == set(), f"not heard on slots {edges}"
    assert heard == wanted


def _heard_after_each(
    target: redis_urls.RedisTarget, slot: int, steps: list[Callable[[], None]]
) -> list[bool]:
    """Listen with one client and ask with another. Before the first step,
    and after each step (run in a thread: it talks to Redis synchronously),
    ask about a new upload on ``slot`` until it is heard or ten seconds
    pass. Returns, for that first request and each step's, whether it was
    heard."""
    heard: set[str] = set()
    outcomes: list[bool] = []

    async def run() -> None:
        listening = redis_topology.connect(target)
        asking = redis_topology.connect(target)
        releases = redis_topology.release_requests(target, listening)
        publisher = redis_topology.release_requests(target, asking)
        assert isinstance(releases, ShardedReleases)

        async def ask() -> None:
            wanted = _upload_id_on(slot)
            # Asked again until heard: the listener subscribes in the background.
            with anyio.move_on_after(10):
                while wanted not in heard:
                    await publisher.publish(wanted)
                    await anyio.sleep(0.1)
            outcomes.append(wanted in heard)

        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(releases.listen, heard.add)
                await ask()
                for step in steps:
                    await anyio.to_thread.run_sync(step)
                    await ask()
                tasks.cancel_scope.cancel()
        finally:
            await listening.aclose()
            await asking.aclose()

    anyio.run(run)
    return outcomes


def test_a_request_for_an_upload_on_a_slot_that_moved_to_another_primary_is_heard(
    redis_cluster: RedisClusterSet,
) -> None:
    # The last slot of the first primary's range goes to the primary of the
    # next range, as a reshard would move it.
    slot = _edge_slots(redis_cluster)[1]
    source = redis_cluster.primary_of_slot(slot)
    to = redis_cluster.primary_of_slot(slot + 1)
    assert to is not source
    try:
        heard = _heard_after_each(
            redis_urls.parse(redis_cluster.url), slot, [lambda: redis_cluster.move_slot(slot, to)]
        )
    finally:
        redis_cluster.move_slot(slot, source)
    assert heard == [True, True], "heard before the move, after it"


def _subscribed_connections(redis_cluster: RedisClusterSet) -> dict[int, int]:
    """Per primary's port, its connections subscribed to a shard channel
    (what CLIENT LIST counts in ``ssub``); the spec's listener is the only
    subscriber the cluster has."""
    counts = {}
    for node in redis_cluster.primaries():
        with node.client() as client:
            counts[node.port] = sum(1 for row in client.client_list() if int(row["ssub"]) > 0)
    return counts


def test_subscribing_again_closes_the_connections_it_subscribed_on_before(
    redis_cluster: RedisClusterSet,
) -> None:
    slot = _edge_slots(redis_cluster)[1]
    source = redis_cluster.primary_of_slot(slot)
    to = redis_cluster.primary_of_slot(slot + 1)
    primaries = redis_cluster.primaries()
    assert to is not source and len(primaries) == 3
    seen: list[dict[int, int]] = []

    def kill_subscribers_of(node: RedisNode) -> Callable[[], None]:
        def step() -> None:
            seen.append(_subscribed_connections(redis_cluster))
            with node.client() as client:
                client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")

        return step

    def move_to(node: RedisNode) -> Callable[[], None]:
        def step() -> None:
            seen.append(_subscribed_connections(redis_cluster))
            redis_cluster.move_slot(slot, node)

        return step

    # Every step ends all the listener's subscriptions and makes them again
    # (a lost connection, then slots moved away and back); each request is
    # asked until heard, so the step before has subscribed again.
    steps = [
        *(kill_subscribers_of(node) for node in primaries),
        move_to(to),
        move_to(source),
    ]
    try:
        heard = _heard_after_each(redis_urls.parse(redis_cluster.url), slot, steps)
        seen.append(_subscribed_connections(redis_cluster))
    finally:
        redis_cluster.move_slot(slot, source)
    assert heard == [True] * (len(steps) + 1)
    # One subscribed connection a primary at most, however often it
    # subscribed again: the ones before were closed, not left open.
    assert all(count <= 1 for counts in seen for count in counts.values()), seen
    assert max(sum(counts.values()) for counts in seen) == 3, seen


def _slot_map_reads(redis_cluster: RedisClusterSet) -> int:
    """CLUSTER SLOTS commands the nodes have seen, refused ones included: the
    listener reads the slot map once each time it subscribes, and nothing
    else in the spec does."""
    total = 0
    for node in redis_cluster.nodes:
        with node.client() as client:
            stats = client.info("commandstats").get("cmdstat_cluster|slots", {})
            total += int(stats.get("calls", 0)) + int(stats.get("rejected_calls", 0))
    return total


@contextlib.contextmanager
def _refused(redis_cluster: RedisClusterSet, command: str) -> Iterator[None]:
    """Every node refuses ``command`` (an ACL rule), until the block ends."""
    try:
        for node in redis_cluster.nodes:
            with node.client() as client:
                client.execute_command("ACL", "SETUSER", "default", f"-{command}")
        yield
    finally:
        for node in redis_cluster.nodes:
            with node.client() as client:
                client.execute_command("ACL", "SETUSER", "default", f"+{command}")


# How long the spec watches a listener that fails at every attempt.
_WATCHED = 3.0


def test_a_listener_refused_the_slot_map_asks_again_about_once_a_second_not_in_a_loop(
    redis_cluster: RedisClusterSet, caplog: pytest.LogCaptureFixture
) -> None:
    # Refused at every attempt, the listener pauses before the next one:
    # without the pause it asks as fast as the cluster answers, thousands
    # of times in the few seconds watched here.
    target = redis_urls.parse(redis_cluster.url)

    async def run() -> int:
        listening = redis_topology.connect(target)
        try:
            assert isinstance(listening, RedisCluster)
            await listening.initialize()  # the client knows the cluster before it is refused
            releases = ShardedReleases(listening, None)
            with _refused(redis_cluster, "cluster|slots"):
                before = _slot_map_reads(redis_cluster)
                with anyio.move_on_after(_WATCHED):
                    await releases.listen(lambda upload_id: None)
                return _slot_map_reads(redis_cluster) - before
        finally:
            await listening.aclose()

    with caplog.at_level(logging.INFO, logger="tusserver.release_requests"):
        attempts = anyio.run(run)
    failures = [
        r.getMessage()
        for r in caplog.records
        if r.name == "tusserver.release_requests" and "no slot map" in r.getMessage()
    ]

    assert failures, "the listener was never refused"
    # At 0, 1, 2 and perhaps 3 s; fewer on a busy machine, never many more.
    assert 1 <= attempts <= _WATCHED + 2, f"{attempts} reads of the slot map"


def test_a_listener_whose_cluster_no_node_answers_keeps_asking_instead_of_ending(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # No node answers: a Cluster not up yet when the instance starts, or down
    # altogether. redis-py then says so with an exception of its own, not a
    # RedisError; the listener must log it and ask again, as for any other
    # failure: a listener that ended would end the instance with it.
    (port,) = free_ports(1)  # nothing listens there
    target = redis_urls.parse(f"redis+cluster://127.0.0.1:{port}")

    async def run() -> None:
        listening = redis_topology.connect(target)
        try:
            with anyio.move_on_after(_WATCHED):
                await ShardedReleases(listening, None).listen(lambda upload_id: None)
        finally:
            await listening.aclose()

    with caplog.at_level(logging.WARNING, logger="tusserver.release_requests"):
        anyio.run(run)

    refused = [r for r in caplog.records if "no slot map" in r.getMessage()]
    assert refused, "the listener never said it had no slot map"

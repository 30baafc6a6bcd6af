"""A Sentinel failover that drops writes the primary acknowledged but never
replicated: the upload still ends published exactly once, byte-exact, and
no answer on the way is a 410 or a 5xx other than a retryable 503.

The loss is made deterministic with real parts (tests/redis_topologies.py):
the replica is frozen and cut off, so the primary acknowledges writes that
reach no replica (WAIT times out: the server answers 503 NotReplicated);
then the primary is killed and the replica promoted without them. The
client goes on as tus clients do after a 503: HEAD, then PATCH from the
offset it learns.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import anyio.to_thread
import httpx
import pytest

from tests.helpers import assert_tus_error, upload_id_of
from tests.redis_topologies import RedisNode, RedisSentinelSet
from tests.server_fixtures import RunningServer
from tests.test_failover import ON_SENTINEL, StartServer, assert_published_once, digest
from tusserver.hook_events import HookEvent, HookResponse
from tusserver.hooks import Hooks
from tusserver.state import info_key


def record_on_primary(sentinels: RedisSentinelSet, upload_id: str) -> dict[str, str]:
    with sentinels.primary().client() as client:
        fields: dict[str, str] = client.hgetall(info_key(upload_id))
    return fields


def assert_retryable(response: httpx.Response, status: int) -> None:
    """Passing trouble: 503, or on HEAD 423 (see tusserver.app), retryable,
    with the tus headers (a HEAD answer has no body to say more)."""
    assert response.status_code == status, response.text
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert int(response.headers["Retry-After"]) >= 1
    if response.request.method != "HEAD":
        assert_tus_error(response, status)
        assert response.json()["error"]["retryable"] is True


def head_once_served(server: RunningServer, url: str) -> httpx.Response:
    """HEAD until the server answers from the new primary: never a hard failure."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        head = server.head(url)
        if head.status_code == 200:
            return head
        assert_retryable(head, 423)
        time.sleep(0.1)
    raise AssertionError("HEAD never answered 200 after the failover")


def resume_at_five(server: RunningServer, sentinels: RedisSentinelSet, url: str) -> dict[str, str]:
    """What a client does after the failover lost the final offset: HEAD (5),
    then the last five bytes again; the upload ends published once, with its
    digest. The record, as the new primary has it."""
    upload_id = upload_id_of(url)
    head = head_once_served(server, url)
    assert head.headers["Upload-Offset"] == "5"
    resumed = server.patch(url, 5, b"world")
    assert resumed.status_code == 204, resumed.text
    assert resumed.headers["Upload-Offset"] == "10"
    assert_published_once(server, upload_id, b"helloworld")
    record = record_on_primary(sentinels, upload_id)
    assert record["sha256"] == digest(b"helloworld")
    return record


class LostWrites:
    """Cuts the replica off once, and afterwards makes the failover that
    loses what the primary acknowledged meanwhile; always leaves the
    set-up whole."""

    def __init__(self, sentinels: RedisSentinelSet) -> None:
        self.sentinels = sentinels
        self.frozen: RedisNode | None = None
        self.killed: RedisNode | None = None

    def cut_off(self) -> None:
        if self.frozen is None:
            self.frozen = self.sentinels.cut_off_replica()

    def fail_over(self, upload_id: str) -> dict[str, str]:
        """Lose the writes and return the upload's record as the new primary
        has it, then start the old primary again as the new one's replica:
        without one, every durable write would answer NotReplicated. The
        record is read before that restart: the old primary comes back with
        its append-only file, writes the failover lost included, until its
        first sync with the new primary (``RedisSentinelSet.restart``)."""
        assert self.frozen is not None, "the replica was never cut off"
        self.killed = self.sentinels.lose_unreplicated_writes(self.frozen)
        self.frozen = None  # thawed, and promoted: the next cut_off cuts anew
        record = record_on_primary(self.sentinels, upload_id)
        self.sentinels.restart(self.killed)
        self.killed = None
        return record

    def heal(self) -> None:
        if self.frozen is not None:
            self.sentinels.thaw(self.frozen)
        if self.killed is not None:
            self.sentinels.restart(self.killed)


@pytest.fixture
def lost_writes(redis_sentinels: RedisSentinelSet) -> Iterator[LostWrites]:
    writes = LostWrites(redis_sentinels)
    yield writes
    writes.heal()


@ON_SENTINEL
def test_a_completion_lost_in_a_failover_is_recorded_again_and_never_answered_410(
    tus_server: StartServer, redis_sentinels: RedisSentinelSet, lost_writes: LostWrites
) -> None:
    async def cut_off_before_publishing(event: HookEvent) -> HookResponse | None:
        # The final offset is on the replica by now (a durable commit); the
        # publish and the completion that follow reach the primary only.
        await anyio.to_thread.run_sync(lost_writes.cut_off)
        return None

    server = tus_server(hooks=Hooks(pre_finish=cut_off_before_publishing))
    url = server.create(10)
    upload_id = upload_id_of(url)
    assert server.patch(url, 0, b"hello").status_code == 204

    unrecorded = server.patch(url, 5, b"world")
    # Published, but the client is not told so: its completion is on no replica.
    assert_retryable(unrecorded, 503)
    assert (server.storage / upload_id).read_bytes() == b"helloworld"
    record = lost_writes.fail_over(upload_id)
    assert record["offset"] == "10"
    assert "location" not in record, "the completion was not lost: nothing is tested"

    head = head_once_served(server, url)

    assert head.headers["Upload-Offset"] == "10"
    assert_published_once(server, upload_id, b"helloworld")
    record = record_on_primary(redis_sentinels, upload_id)
    assert record["location"] == upload_id
    assert record["sha256"] == digest(b"helloworld")
    # Finished: the note of where the file went is gone with the partial.
    assert list(server.partials.iterdir()) == []
    # A client repeating its last PATCH hears that the upload is done.
    assert server.patch(url, 10, b"").status_code == 204


@ON_SENTINEL
def test_a_final_offset_lost_in_a_failover_is_sent_again_and_published_once(
    tus_server: StartServer, redis_sentinels: RedisSentinelSet, lost_writes: LostWrites
) -> None:
    server = tus_server()
    url = server.create(10)
    upload_id = upload_id_of(url)
    assert server.patch(url, 0, b"hello").status_code == 204
    lost_writes.cut_off()

    unreplicated = server.patch(url, 5, b"world")
    assert_retryable(unreplicated, 503)
    assert not (server.storage / upload_id).exists()
    # The partial holds all ten bytes; the record soon counts five.
    assert (server.partials / upload_id).read_bytes() == b"helloworld"
    assert lost_writes.fail_over(upload_id)["offset"] == "5"

    # Written again over the same five bytes, at the offset the record kept.
    resume_at_five(server, redis_sentinels, url)


@ON_SENTINEL
def test_a_final_offset_lost_after_a_head_published_on_it_is_counted_from_the_published_file(
    tus_server: StartServer, redis_sentinels: RedisSentinelSet, lost_writes: LostWrites
) -> None:
    server = tus_server()
    url = server.create(10)
    upload_id = upload_id_of(url)
    assert server.patch(url, 0, b"hello").status_code == 204
    lost_writes.cut_off()
    assert_retryable(server.patch(url, 5, b"world"), 503)
    # A HEAD on the old primary reads the unreplicated final offset and
    # publishes on it; its completion reaches no replica either.
    assert_retryable(server.head(url), 423)
    assert (server.storage / upload_id).read_bytes() == b"helloworld"
    assert lost_writes.fail_over(upload_id)["offset"] == "5"

    # The client sends the rest again; the partial is gone, the file published.
    assert resume_at_five(server, redis_sentinels, url)["location"] == upload_id
    assert list(server.partials.iterdir()) == []

"""Expiration: Upload-Expires, sliding expiry, the sweeper and retention.

Sweeps are run explicitly with ``sweep_once`` against the test's real Redis
and the server's storage folder; ``now`` lets a sweep look into the future
instead of the test sleeping through an expiry.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from email.utils import parsedate_to_datetime

import anyio
import httpx
import pytest
import redis
import redis.asyncio as aioredis

from storage_backends.local import LocalStorage
from tests.helpers import assert_tus_error, upload_id_of
from tests.server_fixtures import OCTETS, TUS, RunningServer
from tusserver import expiry, protocol, redis_topology, redis_urls
from tusserver.config import Config, ConfigError
from tusserver.record import from_fields
from tusserver.state import (
    GONE_TTL_SECONDS,
    LEGACY_INDEX,
    Index,
    UploadStore,
    upload_index_key,
)
from tusserver.sweeper import BATCH, SweepReport, sweep_once

HOUR = 3600.0
# Far enough ahead that every upload of a test has expired.
LATER = 10 * 24 * HOUR


def info_key(upload_id: str) -> str:
    return f"tus:{{{upload_id}}}:info"


def expiry_key(upload_id: str) -> str:
    return upload_index_key(Index.EXPIRY, upload_id)


def retention_key(upload_id: str) -> str:
    return upload_index_key(Index.RETENTION, upload_id)


def record(state: redis.Redis, upload_id: str) -> dict[str, str]:
    return state.hgetall(info_key(upload_id))  # type: ignore[return-value]


def expires_header(response: httpx.Response) -> datetime:
    return parsedate_to_datetime(response.headers["Upload-Expires"])


def sweep(server: RunningServer, redis_url: str, *, now: float | None = None) -> SweepReport:
    """One pass as an instance of ``server`` would run it."""

    async def run() -> SweepReport:
        client = redis_topology.connect(redis_urls.parse(redis_url))
        try:
            storage = LocalStorage(server.storage)
            return await sweep_once(UploadStore(client), storage, server.config, now=now)
        finally:
            await client.aclose()

    return anyio.run(run)


def wait_until_expired(state: redis.Redis, upload_id: str) -> None:
    expires = float(record(state, upload_id)["expires"])
    deadline = time.monotonic() + 10
    while time.time() <= expires:
        assert time.monotonic() < deadline
        time.sleep(0.05)


# --- Upload-Expires ------------------------------------------------------------


def test_upload_expires_is_an_http_date_in_gmt() -> None:
    assert protocol.format_expires(1750852800.9) == "Wed, 25 Jun 2025 12:00:00 GMT"


def test_post_patch_and_head_announce_upload_expires_and_each_patch_slides_it_later(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server(expire_after=HOUR)

    before = time.time()
    created = server.client.post(server.endpoint, headers={**TUS, "Upload-Length": "10"})
    url = server.url + created.headers["Location"]
    upload_id = upload_id_of(url)

    assert created.status_code == 201
    announced = expires_header(created)
    assert before + HOUR - 1 <= announced.timestamp() <= time.time() + HOUR
    expires = float(record(state, upload_id)["expires"])
    assert created.headers["Upload-Expires"] == protocol.format_expires(expires)
    assert state.zscore(expiry_key(upload_id), upload_id) == expires

    time.sleep(1.1)  # Upload-Expires has a resolution of one second
    patched = server.patch(url, 0, b"hello")

    assert patched.status_code == 204
    assert expires_header(patched) > announced
    assert float(record(state, upload_id)["expires"]) > expires
    head = server.head(url)
    assert head.status_code == 200
    assert head.headers["Upload-Expires"] == patched.headers["Upload-Expires"]


def test_a_finished_upload_has_no_upload_expires_and_leaves_the_expiry_index(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()
    url = server.create(5)
    upload_id = upload_id_of(url)

    patched = server.patch(url, 0, b"hello")
    head = server.head(url)

    assert patched.status_code == 204
    assert "Upload-Expires" not in patched.headers
    assert head.status_code == 200
    assert "Upload-Expires" not in head.headers
    assert "expires" not in record(state, upload_id)
    assert state.zscore(expiry_key(upload_id), upload_id) is None
    assert state.zscore(retention_key(upload_id), upload_id) is None


def test_a_patch_to_a_record_without_an_expiry_announces_none_and_records_none(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    # A record written before uploads expired has no 'expires'. The commit
    # slides only an expiry the record has, and the PATCH answers what the
    # record then says, as HEAD does: no Upload-Expires.
    server = tus_server(expire_after=HOUR)
    url = server.create(10)
    upload_id = upload_id_of(url)
    state.hdel(info_key(upload_id), "expires")

    patched = server.patch(url, 0, b"hello")
    head = server.head(url)

    assert patched.status_code == 204
    assert patched.headers["Upload-Offset"] == "5"
    assert "Upload-Expires" not in patched.headers
    assert head.status_code == 200
    assert "Upload-Expires" not in head.headers
    assert record(state, upload_id)["offset"] == "5"
    assert "expires" not in record(state, upload_id)


def test_creation_with_upload_that_finishes_has_no_upload_expires(
    tus_server: Callable[..., RunningServer],
) -> None:
    server = tus_server()

    response = server.client.post(
        server.endpoint,
        headers={**TUS, "Upload-Length": "5", "Content-Type": OCTETS},
        content=b"hello",
    )

    assert response.status_code == 201
    assert response.headers["Upload-Offset"] == "5"
    assert "Upload-Expires" not in response.headers


def test_an_expired_upload_answers_410_even_before_it_is_swept(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server(expire_after=1)
    url = server.create(10)
    upload_id = upload_id_of(url)
    assert server.patch(url, 0, b"hello").status_code == 204

    wait_until_expired(state, upload_id)
    head = server.head(url)
    patch = server.patch(url, 5, b"world")

    assert head.status_code == 410
    assert_tus_error(patch, 410, "upload_gone")
    # Nothing was stored by the refused PATCH; the sweeper removes the rest.
    assert (server.partials / upload_id).read_bytes() == b"hello"
    assert record(state, upload_id)["offset"] == "5"


def test_at_the_moment_of_its_expiry_an_upload_is_expired_to_requests_as_to_the_sweep(
    tus_server: Callable[..., RunningServer], state: redis.Redis, redis_url: str
) -> None:
    # The moment in Upload-Expires is the first at which the upload is
    # expired, for the answers (410 before it is swept) as for the sweeper,
    # which takes every index entry due up to and including its ``now``.
    server = tus_server(expire_after=HOUR)
    url = server.create(10)
    upload_id = upload_id_of(url)
    upload = from_fields(upload_id, record(state, upload_id))
    assert upload.expires is not None
    moment = upload.expires

    assert not expiry.has_expired(upload, now=moment - 0.001)
    assert sweep(server, redis_url, now=moment - 0.001) == SweepReport()
    assert expiry.has_expired(upload, now=moment)
    assert sweep(server, redis_url, now=moment).expired == [upload_id]


# --- the sweep -----------------------------------------------------------------


def test_an_expired_upload_is_swept_bytes_and_record_gone_and_then_answers_410(
    tus_server: Callable[..., RunningServer], state: redis.Redis, redis_url: str
) -> None:
    server = tus_server(expire_after=1)
    url = server.create(10)
    upload_id = upload_id_of(url)
    assert server.patch(url, 0, b"hello").status_code == 204
    wait_until_expired(state, upload_id)

    report = sweep(server, redis_url)

    assert report == SweepReport(expired=[upload_id])
    assert not (server.partials / upload_id).exists()
    assert state.exists(info_key(upload_id)) == 0
    assert state.zscore(expiry_key(upload_id), upload_id) is None
    assert 0 < state.ttl(f"tus:{{{upload_id}}}:gone") <= GONE_TTL_SECONDS
    assert state.exists(f"tus:{{{upload_id}}}:lock") == 0
    assert state.exists("tus:sweep:lock") == 0
    assert server.head(url).status_code == 410
    assert_tus_error(server.patch(url, 5, b"world"), 410, "upload_gone")


def test_the_tombstone_of_a_swept_upload_lapses_into_404(
    tus_server: Callable[..., RunningServer], state: redis.Redis, redis_url: str
) -> None:
    server = tus_server(expire_after=1)
    url = server.create(10)
    upload_id = upload_id_of(url)
    assert sweep(server, redis_url, now=time.time() + LATER).expired == [upload_id]
    gone = f"tus:{{{upload_id}}}:gone"
    assert state.ttl(gone) > GONE_TTL_SECONDS - 60

    state.pexpire(gone, 1)  # what a day does to the tombstone
    deadline = time.monotonic() + 5
    while state.exists(gone):
        assert time.monotonic() < deadline
        time.sleep(0.01)

    assert server.head(url).status_code == 404
    assert_tus_error(server.patch(url, 0, b"x"), 404, "upload_not_found")


def test_an_entry_of_the_global_index_of_earlier_versions_is_moved_and_swept(
    tus_server: Callable[..., RunningServer], state: redis.Redis, redis_url: str
) -> None:
    # Earlier versions kept one expiry index for all uploads; a deployment
    # upgraded with uploads pending still has their entries there.
    server = tus_server(expire_after=HOUR)
    url = server.create(10)
    upload_id = upload_id_of(url)
    expires = state.zscore(expiry_key(upload_id), upload_id)
    assert expires is not None
    state.zrem(expiry_key(upload_id), upload_id)
    state.zadd(LEGACY_INDEX[Index.EXPIRY], {upload_id: expires})

    report = sweep(server, redis_url, now=time.time() + LATER)

    assert report.expired == [upload_id]
    assert state.exists(LEGACY_INDEX[Index.EXPIRY]) == 0
    assert state.exists(info_key(upload_id)) == 0
    assert state.zscore(expiry_key(upload_id), upload_id) is None
    assert server.head(url).status_code == 410


def test_an_upload_not_yet_expired_is_kept(
    tus_server: Callable[..., RunningServer], state: redis.Redis, redis_url: str
) -> None:
    server = tus_server(expire_after=HOUR)
    url = server.create(10)
    upload_id = upload_id_of(url)

    report = sweep(server, redis_url)

    assert report == SweepReport()
    assert (server.partials / upload_id).exists()
    assert server.head(url).status_code == 200


def test_a_patched_upload_is_kept_when_its_first_expiry_comes_and_its_index_entry_moves(
    tus_server: Callable[..., RunningServer], state: redis.Redis, redis_url: str
) -> None:
    server = tus_server(expire_after=HOUR)
    url = server.create(10)
    upload_id = upload_id_of(url)
    first_expiry = state.zscore(expiry_key(upload_id), upload_id)
    assert first_expiry is not None
    time.sleep(0.2)
    assert server.patch(url, 0, b"hello").status_code == 204
    extended = float(record(state, upload_id)["expires"])
    assert extended > first_expiry

    # The sweep sees the index entry due, but the record says the PATCH moved it.
    report = sweep(server, redis_url, now=first_expiry + 0.1)

    assert report == SweepReport()
    assert (server.partials / upload_id).read_bytes() == b"hello"
    assert state.zscore(expiry_key(upload_id), upload_id) == extended
    assert state.exists(f"tus:{{{upload_id}}}:lock") == 0
    assert server.patch(url, 5, b"world").status_code == 204


def test_an_upload_whose_lock_a_live_request_holds_is_never_swept(
    tus_server: Callable[..., RunningServer], state: redis.Redis, redis_url: str
) -> None:
    server = tus_server(expire_after=1)
    url = server.create(10)
    upload_id = upload_id_of(url)
    lock = f"tus:{{{upload_id}}}:lock"
    state.set(lock, "token-of-a-live-patch", px=60_000)

    report = sweep(server, redis_url, now=time.time() + LATER)

    assert report == SweepReport(skipped=[upload_id])
    assert (server.partials / upload_id).exists()
    assert state.exists(info_key(upload_id)) == 1
    assert state.get(lock) == "token-of-a-live-patch"
    assert state.zscore(expiry_key(upload_id), upload_id) is not None

    state.delete(lock)  # the request ended without a PATCH since: now it goes
    assert sweep(server, redis_url, now=time.time() + LATER).expired == [upload_id]


def test_a_sweep_during_a_running_patch_skips_it_and_the_patch_completes(
    tus_server: Callable[..., RunningServer], state: redis.Redis, redis_url: str
) -> None:
    server = tus_server(expire_after=HOUR)
    url = server.create(6)
    upload_id = upload_id_of(url)
    sweep_done = threading.Event()

    def body() -> Iterator[bytes]:
        yield b"abc"
        assert sweep_done.wait(20)
        yield b"def"

    responses: list[httpx.Response] = []
    patching = threading.Thread(
        target=lambda: responses.append(
            server.client.patch(
                url,
                headers={**TUS, "Content-Type": OCTETS, "Upload-Offset": "0"},
                content=body(),
            )
        )
    )
    patching.start()
    try:
        deadline = time.monotonic() + 10
        while not state.exists(f"tus:{{{upload_id}}}:lock"):
            assert time.monotonic() < deadline, "the PATCH never took the lock"
            time.sleep(0.01)

        report = sweep(server, redis_url, now=time.time() + LATER)
    finally:
        sweep_done.set()
        patching.join(30)

    assert report == SweepReport(skipped=[upload_id])
    assert responses[0].status_code == 204, responses[0].text
    assert (server.storage / upload_id).read_bytes() == b"abcdef"


def test_two_sweeps_run_at_once_remove_each_upload_exactly_once(
    tus_server: Callable[..., RunningServer], state: redis.Redis, redis_url: str
) -> None:
    server = tus_server(expire_after=1)
    doomed = [upload_id_of(server.create(10)) for _ in range(12)]
    live = upload_id_of(server.create(10))
    state.set(f"tus:{{{live}}}:lock", "token-of-a-live-patch", px=60_000)
    now = time.time() + LATER

    async def both() -> list[SweepReport]:
        reports: list[SweepReport] = []
        clients = [redis_topology.connect(redis_urls.parse(redis_url)) for _ in range(2)]

        async def one(client: aioredis.Redis) -> None:
            storage = LocalStorage(server.storage)
            reports.append(await sweep_once(UploadStore(client), storage, server.config, now=now))

        try:
            async with anyio.create_task_group() as tasks:
                for client in clients:
                    tasks.start_soon(one, client)
        finally:
            for client in clients:
                await client.aclose()
        return reports

    reports = anyio.run(both)

    removed = [upload_id for report in reports for upload_id in report.expired]
    assert sorted(removed) == sorted(doomed)
    assert live not in removed
    assert (server.partials / live).exists()
    assert all(not (server.partials / upload_id).exists() for upload_id in doomed)


def test_two_app_instances_sweeping_one_deployment_remove_each_upload_once(
    tus_server: Callable[..., RunningServer],
    state: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = tus_server(expire_after=1, sweep_interval=0.1)
    second = tus_server(storage=first.storage, expire_after=1, sweep_interval=0.1)
    doomed = [upload_id_of(first.create(10)) for _ in range(5)]
    doomed += [upload_id_of(second.create(10)) for _ in range(5)]
    live = upload_id_of(first.create(10))
    state.set(f"tus:{{{live}}}:lock", "token-of-a-live-patch", px=60_000)

    with caplog.at_level(logging.INFO, logger="tusserver.sweeper"):
        deadline = time.monotonic() + 20
        while any(state.exists(info_key(upload_id)) for upload_id in doomed):
            assert time.monotonic() < deadline, "the instances did not sweep"
            time.sleep(0.1)

    removals = [
        record.args[0]
        for record in caplog.records
        if isinstance(record.args, tuple) and record.msg.endswith("bytes and record removed")
    ]
    assert sorted(removals) == sorted(doomed)
    assert all(not (first.partials / upload_id).exists() for upload_id in doomed)
    assert (first.partials / live).exists()
    assert state.exists(info_key(live)) == 1


def test_a_pass_does_nothing_while_another_instance_sweeps(
    tus_server: Callable[..., RunningServer], state: redis.Redis, redis_url: str
) -> None:
    server = tus_server(expire_after=1)
    upload_id = upload_id_of(server.create(10))
    state.set("tus:sweep:lock", "token-of-another-instance", px=60_000)

    report = sweep(server, redis_url, now=time.time() + LATER)

    assert report == SweepReport(ran=False)
    assert (server.partials / upload_id).exists()
    assert state.get("tus:sweep:lock") == "token-of-another-instance"


def test_a_backlog_larger_than_a_batch_is_swept_around_the_uploads_in_use(
    tus_server: Callable[..., RunningServer], state: redis.Redis, redis_url: str
) -> None:
    server = tus_server(expire_after=1)
    ids = [upload_id_of(server.create(1)) for _ in range(BATCH + 3)]
    in_use = ids[:2]  # the earliest: they head every batch the sweep fetches
    for upload_id in in_use:
        state.set(f"tus:{{{upload_id}}}:lock", "token-of-a-live-patch", px=60_000)

    report = sweep(server, redis_url, now=time.time() + LATER)

    assert sorted(report.expired) == sorted(ids[2:])
    assert sorted(report.skipped) == sorted(in_use)
    assert sorted(p.name for p in server.partials.iterdir()) == sorted(in_use)


# --- crash safety --------------------------------------------------------------


def test_a_pass_interrupted_after_deleting_the_bytes_is_finished_by_the_next(
    tus_server: Callable[..., RunningServer], state: redis.Redis, redis_url: str
) -> None:
    server = tus_server(expire_after=1)
    url = server.create(10)
    upload_id = upload_id_of(url)
    (server.partials / upload_id).unlink()  # the bytes went, then the sweeper died

    report = sweep(server, redis_url, now=time.time() + LATER)

    assert report.expired == [upload_id]
    assert state.exists(info_key(upload_id)) == 0
    assert server.head(url).status_code == 410


def test_an_index_entry_whose_record_is_gone_is_dropped_and_its_bytes_with_it(
    tus_server: Callable[..., RunningServer], state: redis.Redis, redis_url: str
) -> None:
    server = tus_server(expire_after=1)
    upload_id = upload_id_of(server.create(10))
    # The record went (say, a pass died before removing the index entry).
    state.delete(info_key(upload_id))

    report = sweep(server, redis_url, now=time.time() + LATER)

    assert report == SweepReport()
    assert state.zscore(expiry_key(upload_id), upload_id) is None
    assert not (server.partials / upload_id).exists()


# --- orphans -------------------------------------------------------------------


def test_staging_files_without_a_record_are_removed_once_older_than_the_expiry(
    tus_server: Callable[..., RunningServer], state: redis.Redis, redis_url: str
) -> None:
    server = tus_server(expire_after=HOUR)
    old = time.time() - 2 * HOUR
    with_record = upload_id_of(server.create(10))
    os.utime(server.partials / with_record, (old, old))
    old_orphan, young_orphan = secrets.token_hex(16), secrets.token_hex(16)
    for name in (old_orphan, young_orphan, "notes.txt"):
        (server.partials / name).write_bytes(b"lost")
    os.utime(server.partials / old_orphan, (old, old))
    os.utime(server.partials / "notes.txt", (old, old))

    report = sweep(server, redis_url)

    assert report == SweepReport(orphans=[old_orphan])
    assert sorted(p.name for p in server.partials.iterdir()) == sorted(
        [with_record, young_orphan, "notes.txt"]
    )
    assert server.head(server.endpoint + with_record).status_code == 200


# --- finished uploads and retention --------------------------------------------


def test_a_finished_upload_is_never_swept_without_a_retention(
    tus_server: Callable[..., RunningServer], state: redis.Redis, redis_url: str
) -> None:
    server = tus_server(expire_after=1)
    url = server.create(5)
    upload_id = upload_id_of(url)
    assert server.patch(url, 0, b"hello").status_code == 204

    report = sweep(server, redis_url, now=time.time() + LATER)

    assert report == SweepReport()
    assert (server.storage / upload_id).read_bytes() == b"hello"
    head = server.head(url)
    assert head.status_code == 200
    assert head.headers["Upload-Offset"] == head.headers["Upload-Length"] == "5"


def test_with_a_retention_a_finished_upload_loses_its_record_but_keeps_its_file(
    tus_server: Callable[..., RunningServer], state: redis.Redis, redis_url: str
) -> None:
    server = tus_server(expire_after=HOUR, retention=HOUR)
    url = server.create(5)
    upload_id = upload_id_of(url)
    assert server.patch(url, 0, b"hello").status_code == 204
    completed = float(record(state, upload_id)["completed"])
    assert state.zscore(retention_key(upload_id), upload_id) == completed + HOUR

    assert sweep(server, redis_url) == SweepReport()
    assert server.head(url).headers["Upload-Offset"] == "5"

    report = sweep(server, redis_url, now=completed + HOUR + 1)

    assert report == SweepReport(retired=[upload_id])
    assert (server.storage / upload_id).read_bytes() == b"hello"
    assert state.exists(info_key(upload_id)) == 0
    assert state.zscore(retention_key(upload_id), upload_id) is None
    assert state.ttl(f"tus:{{{upload_id}}}:gone") > 0
    assert server.head(url).status_code == 410


def test_a_finished_upload_deleted_during_its_retention_leaves_no_index_entry_behind(
    tus_server: Callable[..., RunningServer], state: redis.Redis, redis_url: str
) -> None:
    server = tus_server(expire_after=HOUR, retention=HOUR)
    url = server.create(5)
    upload_id = upload_id_of(url)
    assert server.patch(url, 0, b"hello").status_code == 204
    completed = float(record(state, upload_id)["completed"])
    assert state.zscore(retention_key(upload_id), upload_id) is not None
    assert server.client.delete(url, headers=TUS).status_code == 204
    # The DELETE itself removes the entry, not only a sweep finding no record.
    assert state.zscore(retention_key(upload_id), upload_id) is None

    sweep(server, redis_url, now=completed + HOUR + 1)

    assert state.zscore(retention_key(upload_id), upload_id) is None
    assert sweep(server, redis_url, now=completed + HOUR + 2) == SweepReport()


def test_a_finished_upload_left_in_the_expiry_index_is_moved_to_retention_not_removed(
    tus_server: Callable[..., RunningServer], state: redis.Redis, redis_url: str
) -> None:
    server = tus_server(expire_after=1, retention=HOUR)
    url = server.create(5)
    upload_id = upload_id_of(url)
    assert server.patch(url, 0, b"hello").status_code == 204
    # As if recording the completion had failed to update the indexes.
    state.zrem(retention_key(upload_id), upload_id)
    state.zadd(expiry_key(upload_id), {upload_id: 0})

    report = sweep(server, redis_url)

    assert report == SweepReport()
    completed = float(record(state, upload_id)["completed"])
    assert state.zscore(expiry_key(upload_id), upload_id) is None
    assert state.zscore(retention_key(upload_id), upload_id) == completed + HOUR
    assert (server.storage / upload_id).read_bytes() == b"hello"
    assert server.head(url).status_code == 200


# --- settings ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "mentions"),
    [
        ({"expire_after": 0}, "expire after"),
        ({"sweep_interval": -1}, "sweep interval"),
        ({"retention": 0}, "retention"),
    ],
)
def test_expiry_settings_must_be_positive(fields: dict[str, float], mentions: str) -> None:
    with pytest.raises(ConfigError, match=mentions):
        Config(**fields)  # type: ignore[arg-type]


def test_an_upload_whose_finalize_was_cut_short_is_never_swept_and_a_head_finishes_it(
    tus_server: Callable[..., RunningServer], state: redis.Redis, redis_url: str
) -> None:
    server = tus_server(expire_after=1)
    url = server.create(5)
    upload_id = upload_id_of(url)
    assert server.patch(url, 0, b"hello").status_code == 204
    # As if the process died between publishing the file and recording it:
    # the record says "fully received", the file is already under its name
    # and the partial's name still points at it.
    os.link(server.storage / upload_id, server.partials / upload_id)
    state.hset(info_key(upload_id), mapping={"state": "partial", "expires": "1"})
    state.hdel(info_key(upload_id), "location")
    state.zadd(expiry_key(upload_id), {upload_id: 1})

    report = sweep(server, redis_url, now=time.time() + LATER)

    assert report.skipped == [upload_id]
    assert (server.storage / upload_id).read_bytes() == b"hello"
    # The record is intact for the HEAD that repairs the finalize.
    head = server.head(url)
    assert head.status_code == 200, head.text
    assert head.headers["Upload-Offset"] == head.headers["Upload-Length"] == "5"
    assert record(state, upload_id)["state"] == "complete"
    assert (server.storage / upload_id).read_bytes() == b"hello"

"""Prometheus metrics: counters move as uploads, refusals, deletions, 423s,
sweeps, hooks, Redis failures and storage failures happen, as a real scrape
parsed by prometheus_client shows; each app counts on its own; worker
processes are summed."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from tusclient.client import TusClient

from tests.helpers import assert_tus_error, b64, upload_id_of
from tests.process_fixtures import ServeProcess
from tests.redis_fixtures import short_temp_dir
from tests.server_fixtures import RunningServer, ServedApps, free_port
from tusserver.config import Config
from tusserver.embedded_redis import EmbeddedRedis
from tusserver.hook_events import HookEvent, HookResponse
from tusserver.hooks import Hooks

TUS = {"Tus-Resumable": "1.0.0"}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    """Every sample of a scrape of ``url``, parsed by prometheus_client's own parser."""
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def metrics_url(server: RunningServer) -> str:
    return server.url + "/metrics"


def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the metric never moved"
        time.sleep(0.05)


def test_a_tuspy_upload_moves_creation_finish_bytes_and_request_counters(
    tus_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    server = tus_server()
    before = scrape(metrics_url(server))
    source = tmp_path / "source.bin"
    source.write_bytes(bytes(range(256)) * 1000)  # 256,000 bytes

    uploader = TusClient(server.endpoint).uploader(file_path=str(source), chunk_size=100_000)
    uploader.upload()

    after = scrape(metrics_url(server))
    moved = {
        name: value(after, name) - value(before, name)
        for name in (
            "tusserver_uploads_created_total",
            "tusserver_uploads_finished_total",
            "tusserver_received_bytes_total",
            "tusserver_stored_bytes_total",
        )
    }
    assert moved == {
        "tusserver_uploads_created_total": 1,
        "tusserver_uploads_finished_total": 1,
        "tusserver_received_bytes_total": 256_000,
        "tusserver_stored_bytes_total": 256_000,
    }
    assert value(after, "tusserver_requests_total", method="POST", status="201") == 1
    assert value(after, "tusserver_requests_total", method="PATCH", status="204") == 3
    assert value(after, "tusserver_request_duration_seconds_count", method="PATCH") == 3
    assert value(after, "tusserver_request_duration_seconds_bucket", method="PATCH", le="+Inf") == 3
    assert value(after, "tusserver_patches_in_flight") == 0


def test_a_refused_checksum_and_a_delete_move_their_counters(
    tus_server: Callable[..., RunningServer],
) -> None:
    server = tus_server()
    url = server.create(5)

    refused = server.patch(url, 0, b"hello", upload_checksum="sha1 " + b64(b"\0" * 20))
    assert_tus_error(refused, 460, "checksum_mismatch")
    deleted = server.client.delete(url, headers=TUS)
    assert deleted.status_code == 204

    samples = scrape(metrics_url(server))
    assert value(samples, "tusserver_requests_total", method="PATCH", status="460") == 1
    assert value(samples, "tusserver_received_bytes_total") == 5
    assert value(samples, "tusserver_stored_bytes_total") == 0  # a refused chunk counts for nothing
    assert value(samples, "tusserver_uploads_terminated_total") == 1
    assert value(samples, "tusserver_requests_total", method="DELETE", status="204") == 1


def test_an_upload_recorded_failed_is_counted_by_its_error_code(
    tus_server: Callable[..., RunningServer],
) -> None:
    server = tus_server()
    declared = "sha256 " + b64(bytes(32))  # not the checksum of b"hello"
    url = server.create(5, upload_metadata=f"checksum {b64(declared.encode())}")

    assert_tus_error(server.patch(url, 0, b"hello"), 460, "upload_checksum_mismatch")

    samples = scrape(metrics_url(server))
    failed = {
        labels: count
        for (name, labels), count in samples.items()
        if name == "tusserver_uploads_failed_total"
    }
    assert failed == {frozenset({("code", "upload_checksum_mismatch")}): 1}


def test_a_423_is_counted_by_its_error_code(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server(lock_wait=0.2)
    url = server.create(10)
    state.set(f"tus:{{{upload_id_of(url)}}}:lock", "someone-else", px=60_000)

    assert_tus_error(server.patch(url, 0, b"hello"), 423, "upload_locked")

    samples = scrape(metrics_url(server))
    assert value(samples, "tusserver_locked_responses_total", code="upload_locked") == 1
    assert value(samples, "tusserver_requests_total", method="PATCH", status="423") == 1
    assert value(samples, "tusserver_lock_takeovers_total") == 0


def test_an_expiry_sweep_counts_its_run_and_what_it_removed(
    tus_server: Callable[..., RunningServer],
) -> None:
    server = tus_server(expire_after=0.2, sweep_interval=0.2)
    server.create(10)

    def expired() -> bool:
        return value(scrape(metrics_url(server)), "tusserver_uploads_expired_total") >= 1

    wait_for(expired)
    samples = scrape(metrics_url(server))
    assert value(samples, "tusserver_uploads_expired_total") == 1
    assert value(samples, "tusserver_swept_total", kind="expired") == 1
    assert value(samples, "tusserver_sweeps_total") >= 1


def test_a_running_patch_is_in_flight_and_a_takeover_is_counted(
    tus_server: Callable[..., RunningServer],
) -> None:
    server = tus_server(takeover_after=0.2, lock_wait=5)
    url = server.create(100)
    path = url.removeprefix(server.url)
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as stalled:
        # A PATCH that announces 100 bytes, sends 10 and then nothing.
        stalled.sendall(
            f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
            "Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n"
            "Content-Length: 100\r\n\r\n".encode()
            + b"0123456789"
        )
        wait_for(lambda: value(scrape(metrics_url(server)), "tusserver_patches_in_flight") == 1)
        # The PATCH found the lock free: no takeover.
        assert value(scrape(metrics_url(server)), "tusserver_lock_takeovers_total") == 0

        # The DELETE asks the stalled writer to let go and takes the upload over.
        assert server.client.delete(url, headers=TUS).status_code == 204

    samples = scrape(metrics_url(server))
    assert value(samples, "tusserver_lock_takeovers_total") == 1
    wait_for(lambda: value(scrape(metrics_url(server)), "tusserver_patches_in_flight") == 0)


def _stop(server: EmbeddedRedis) -> None:
    server.stop()


def _refuse_scripts(server: EmbeddedRedis) -> None:
    # A real refusal by Redis itself: its default user may no longer run
    # scripts (every request's Redis work is a script).
    with redis.Redis.from_url(server.url) as admin:
        admin.execute_command("ACL", "SETUSER", "default", "-evalsha", "-eval")


@pytest.mark.parametrize(
    ("trouble", "kind"),
    [(_stop, "ConnectionError"), (_refuse_scripts, "NoPermissionError")],
    ids=["stopped", "refusing-scripts"],
)
def test_a_redis_failure_answers_503_retryable_and_is_counted_by_its_kind(
    served_apps: ServedApps,
    private_redis: EmbeddedRedis,
    tmp_path: Path,
    trouble: Callable[[EmbeddedRedis], None],
    kind: str,
) -> None:
    # A Redis of the spec's own, which it may stop; no sweep pass during the
    # spec, so only the PATCHes below touch Redis once it fails.
    storage = tmp_path / "storage"
    config = Config(
        storage=str(storage), redis_url=private_redis.url, lock_wait=0.2, sweep_interval=3600
    )
    server = served_apps.start(config, storage)
    url = server.create(10)
    before = scrape(metrics_url(server))

    trouble(private_redis)
    answers = [server.patch(url, 0, b"hello") for _ in range(2)]

    for answer in answers:
        assert_tus_error(answer, 503, "state_unavailable")
        assert answer.json()["error"]["retryable"] is True
        assert "redis" not in answer.text.lower()
    after = scrape(metrics_url(server))
    assert value(before, "tusserver_redis_errors_total", kind=kind) == 0
    # Each failed PATCH failed on its first Redis call (the lock's claim).
    assert value(after, "tusserver_redis_errors_total", kind=kind) == 2
    assert value(after, "tusserver_requests_total", method="PATCH", status="503") == 2


def _full_disk(partial: Path) -> None:
    # Every write to /dev/full fails with ENOSPC, as on a full disk.
    partial.unlink()
    partial.symlink_to("/dev/full")


def _directory_in_its_place(partial: Path) -> None:
    partial.unlink()
    partial.mkdir()


@pytest.mark.parametrize(
    ("damage", "status", "code", "retryable", "kind"),
    [
        (_full_disk, 507, "storage_full", False, "ENOSPC"),
        (_directory_in_its_place, 503, "storage_failed", True, "EISDIR"),
    ],
    ids=["full-disk", "directory-in-its-place"],
)
def test_a_storage_failure_of_a_patch_answers_its_error_and_is_counted_by_errno(
    tus_server: Callable[..., RunningServer],
    damage: Callable[[Path], None],
    status: int,
    code: str,
    retryable: bool,
    kind: str,
) -> None:
    server = tus_server()
    url = server.create(10)
    assert server.patch(url, 0, b"hello").status_code == 204
    partial = server.partials / upload_id_of(url)
    damage(partial)
    before = scrape(metrics_url(server))

    answer = server.patch(url, 5, b"world")

    assert_tus_error(answer, status, code)
    assert answer.json()["error"]["retryable"] is retryable
    for internal in (str(server.storage), kind, "Errno"):
        assert internal not in answer.text
    after = scrape(metrics_url(server))
    assert value(before, "tusserver_storage_errors_total", kind=kind) == 0
    assert value(after, "tusserver_storage_errors_total", kind=kind) == 1
    # Nothing was counted as stored, and the record still says 5: a retry
    # once the storage is repaired resumes there.
    assert value(after, "tusserver_stored_bytes_total") == value(
        before, "tusserver_stored_bytes_total"
    )
    assert server.head(url).headers["Upload-Offset"] == "5"


def test_hook_calls_are_counted_by_event_and_outcome(
    tus_server: Callable[..., RunningServer],
) -> None:
    async def agree(event: HookEvent) -> HookResponse | None:
        return None

    async def fail(event: HookEvent) -> HookResponse | None:
        raise RuntimeError("the receiver is down")

    server = tus_server(hooks=Hooks(pre_create=agree, post_create=fail))
    server.create(10)

    def counted() -> bool:
        samples = scrape(metrics_url(server))
        return (
            value(samples, "tusserver_hook_calls_total", event="post-create", outcome="failed") == 1
        )

    wait_for(counted)
    samples = scrape(metrics_url(server))
    assert (
        value(samples, "tusserver_hook_calls_total", event="pre-create", outcome="delivered") == 1
    )


def test_each_mounted_app_counts_only_its_own_requests(
    tus_server: Callable[..., RunningServer],
) -> None:
    first = tus_server(mount_at="/tus")
    second = tus_server(mount_at="/tus")

    first.create(10)
    first.create(10)

    assert value(scrape(first.url + "/tus/metrics"), "tusserver_uploads_created_total") == 2
    assert value(scrape(second.url + "/tus/metrics"), "tusserver_uploads_created_total") == 0


def test_a_mounted_apps_sweeper_counts_into_its_metrics(
    tus_server: Callable[..., RunningServer],
) -> None:
    # The parent runs the mounted app's lifespan past the app's own layers.
    server = tus_server(mount_at="/tus", expire_after=0.2, sweep_interval=0.2)
    server.create(10)

    def expired() -> bool:
        samples = scrape(server.url + "/tus/metrics")
        return value(samples, "tusserver_uploads_expired_total") == 1

    wait_for(expired)


def test_no_metrics_answers_no_metrics_path(tus_server: Callable[..., RunningServer]) -> None:
    server = tus_server(metrics=False)
    server.create(10)
    assert server.client.get(metrics_url(server)).status_code == 404


def test_a_metrics_path_of_its_own_is_served_and_the_default_is_not(
    tus_server: Callable[..., RunningServer],
) -> None:
    server = tus_server(metrics_path="/internal/prometheus")
    server.create(10)
    samples = scrape(server.url + "/internal/prometheus")
    assert value(samples, "tusserver_uploads_created_total") == 1
    assert server.client.get(metrics_url(server)).status_code == 404


def test_a_metrics_port_of_its_own_serves_them_off_the_main_port(
    tus_server: Callable[..., RunningServer],
) -> None:
    port = free_port()
    server = tus_server(metrics_port=port)
    server.create(10)
    assert value(scrape(f"http://127.0.0.1:{port}/metrics"), "tusserver_uploads_created_total") == 1
    assert server.client.get(metrics_url(server)).status_code == 404


def _options_from_both_workers(server: ServeProcess) -> int:
    """OPTIONS on fresh connections until both workers answered some; how many."""
    answered_by: set[str] = set()
    sent = 0
    while len(answered_by) < 2 or sent < 20:
        assert sent < 500, "one worker never answered"
        response = httpx.options(server.endpoint, timeout=10)  # a new connection each
        assert response.status_code == 200
        sent += 1
        # Made request ids start with a prefix of the process that made them.
        answered_by.add(response.headers["x-request-id"].split("-")[0])
    return sent


@pytest.mark.parametrize("own_port", [False, True], ids=["main-port", "metrics-port"])
def test_with_two_workers_every_scrape_sums_both(
    serve_process: Callable[..., ServeProcess], tmp_path: Path, own_port: bool
) -> None:
    metrics_port = free_port()
    options = ["--metrics-port", str(metrics_port)] if own_port else []
    server = serve_process(
        "--workers", "2",
        "--storage", tmp_path / "uploads",
        "--data-dir", short_temp_dir() / "data",
        *options,
    )  # fmt: skip
    sent = _options_from_both_workers(server)

    scraped = f"http://127.0.0.1:{metrics_port}/metrics" if own_port else server.url + "/metrics"
    for _ in range(6):  # answered by either worker, each scrape has the sum
        samples = scrape(scraped)
        # The server's start-up probe was one OPTIONS too.
        options = value(samples, "tusserver_requests_total", method="OPTIONS", status="200")
        assert options == sent + 1

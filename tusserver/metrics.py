"""Every Prometheus metric tusserver exports, and the one way to record them.

Modules record an event where it happens (``metrics.recorder().created()``
in the creation path, ``.finished()`` in finalize ...) through the
``Recorder`` of the app serving the request. That recorder is found in a
context variable the app's outermost layer sets (``tusserver/observing.py``)
for every request and for its lifespan, whose background tasks (sweeper,
hook deliverer) inherit it; so two apps in one process, each mounted in a
larger application, never count into each other's metrics. With metrics
off, the recorder is the base ``Recorder``, whose methods do nothing.

Each app has a registry of its own, not prometheus_client's global one.
With several worker processes (``tusserver serve --workers N``) the
supervising process makes a private ``PROMETHEUS_MULTIPROC_DIR`` before
starting them (``tusserver/serving.py``): prometheus_client then keeps every
value in a file per process there, and a scrape answered by any worker
reads and sums all of them (``exposition_registry``).
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextvars import ContextVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Metric,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

PREFIX = "tusserver_"
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"

# Request durations: a HEAD takes a millisecond, a PATCH of a large chunk
# minutes. Few buckets: each is a sample per method in every scrape.
_DURATION_BUCKETS = (0.005, 0.025, 0.1, 0.5, 2.5, 10.0, 60.0, 300.0)


class Recorder:
    """What can be recorded; this base records nothing (metrics off)."""

    enabled = False

    def request(self, method: str, status: int, seconds: float) -> None:
        """One HTTP request answered."""

    def patch_started(self) -> None:
        """A PATCH began; ``patch_ended`` follows it, always."""

    def patch_ended(self) -> None: ...

    def created(self) -> None:
        """An upload was created (POST, a form's file, a final concatenation)."""

    def finished(self) -> None:
        """An upload was recorded complete."""

    def failed(self, code: str) -> None:
        """An upload was recorded failed (it broke a rule), with the error's code."""

    def terminated(self) -> None:
        """An upload was terminated: DELETE, or stopped by a post-receive hook."""

    def received(self, count: int) -> None:
        """Bytes taken from request bodies."""

    def stored(self, count: int) -> None:
        """Bytes committed: the offsets moved forward by this much."""

    def takeover(self) -> None:
        """A request took an upload over after asking its holder to let go."""

    def locked(self, code: str) -> None:
        """A 423 answered, with its error code."""

    def hook(self, event: str, ok: bool) -> None:
        """One hook call (with its retries) succeeded or failed."""

    def redis_error(self, kind: str) -> None:
        """A Redis command failed, by exception type."""

    def storage_error(self, kind: str) -> None:
        """A storage operation failed a request, by errno name or exception type."""

    def swept(self, expired: int, retired: int, orphans: int, skipped: int) -> None:
        """A sweep pass ran and removed this much."""


# The le labels of the buckets, as Prometheus writes them.
_BOUND_LABELS = (*(repr(bound) for bound in _DURATION_BUCKETS), "+Inf")
_REQUESTS = ("requests_total", "HTTP requests answered, by method and status.")
_DURATIONS = (
    "request_duration_seconds",
    "Time from a request's start to the end of its answer, by method.",
)


class RequestStats(Collector):
    """Requests by method and status, and their durations by method, of one
    process, as plain numbers: recorded on the event loop without a lock,
    turned into metric families when scraped (a snapshot of each dict, which
    another thread may read: the metrics port's server)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, int], int] = {}
        # Per method: the count in each bucket (the last is +Inf), and the sum.
        self.buckets: dict[str, list[int]] = {}
        self.sums: dict[str, float] = {}

    def record(self, method: str, status: int, seconds: float) -> None:
        key = (method, status)
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1
        buckets = self.buckets.get(method)
        if buckets is None:
            buckets = self.buckets[method] = [0] * (len(_DURATION_BUCKETS) + 1)
            self.sums[method] = 0.0
        buckets[bisect.bisect_left(_DURATION_BUCKETS, seconds)] += 1
        self.sums[method] += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            PREFIX + _REQUESTS[0], _REQUESTS[1], labels=("method", "status")
        )
        for (method, status), count in sorted(list(self.counts.items())):
            requests.add_metric((method, str(status)), count)
        yield requests
        durations = HistogramMetricFamily(PREFIX + _DURATIONS[0], _DURATIONS[1], labels=("method",))
        sums = dict(list(self.sums.items()))
        for method, buckets in sorted(list(self.buckets.items())):
            cumulative = itertools.accumulate(list(buckets))
            durations.add_metric(
                (method,), list(zip(_BOUND_LABELS, cumulative, strict=True)), sums.get(method, 0.0)
            )
        yield durations


class _SharedRequestStats:
    """The same two metrics as prometheus_client's, whose values live in the
    multiprocess directory's files, summed over every worker when scraped."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            PREFIX + _REQUESTS[0], _REQUESTS[1], ("method", "status"), registry=registry
        )
        self.durations = Histogram(
            PREFIX + _DURATIONS[0],
            _DURATIONS[1],
            ("method",),
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )

    def record(self, method: str, status: int, seconds: float) -> None:
        self.requests.labels(method, str(status)).inc()
        self.durations.labels(method).observe(seconds)


class PrometheusRecorder(Recorder):
    """The metrics, registered in ``registry`` (one per app)."""

    enabled = True

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(PREFIX + name, doc, labels, registry=registry)

        # The two metrics of every request. In one process, plain numbers
        # read at scrape time (RequestStats): prometheus_client's metric
        # objects take a lock per value, which a HEAD would notice. Across
        # processes, its file-backed metrics, which the scrape sums.
        self._requests: RequestStats | _SharedRequestStats
        if multiprocess_mode():
            self._requests = _SharedRequestStats(registry)
        else:
            self._requests = RequestStats()
            registry.register(self._requests)
        self.patches_in_flight = Gauge(
            PREFIX + "patches_in_flight",
            "PATCH requests running now.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.uploads_created = counter("uploads_created_total", "Uploads created.")
        self.uploads_finished = counter("uploads_finished_total", "Uploads recorded complete.")
        self.uploads_failed = counter(
            "uploads_failed_total", "Uploads recorded failed, by error code.", ("code",)
        )
        self.uploads_terminated = counter("uploads_terminated_total", "Uploads terminated.")
        self.uploads_expired = counter(
            "uploads_expired_total", "Unfinished uploads the sweeper removed."
        )
        self.received_bytes = counter("received_bytes_total", "Bytes read from request bodies.")
        self.stored_bytes = counter(
            "stored_bytes_total", "Bytes committed to uploads (their offsets' progress)."
        )
        self.takeovers = counter(
            "lock_takeovers_total", "Uploads taken over from a request asked to let go."
        )
        self.locked_answers = counter(
            "locked_responses_total", "423 answers, by error code.", ("code",)
        )
        self.hooks = counter(
            "hook_calls_total",
            "Hook calls (with their retries), by event and outcome.",
            ("event", "outcome"),
        )
        self.redis_errors = counter(
            "redis_errors_total", "Failed Redis commands, by exception type.", ("kind",)
        )
        self.storage_errors = counter(
            "storage_errors_total", "Storage failures answered, by kind.", ("kind",)
        )
        self.sweeps = counter("sweeps_total", "Sweep passes this instance ran.")
        self.swept_uploads = counter(
            "swept_total", "What sweep passes removed, by kind.", ("kind",)
        )

    def request(self, method: str, status: int, seconds: float) -> None:
        self._requests.record(method, status, seconds)

    def patch_started(self) -> None:
        self.patches_in_flight.inc()

    def patch_ended(self) -> None:
        self.patches_in_flight.dec()

    def created(self) -> None:
        self.uploads_created.inc()

    def finished(self) -> None:
        self.uploads_finished.inc()

    def failed(self, code: str) -> None:
        self.uploads_failed.labels(code).inc()

    def terminated(self) -> None:
        self.uploads_terminated.inc()

    def received(self, count: int) -> None:
        if count:
            self.received_bytes.inc(count)

    def stored(self, count: int) -> None:
        if count > 0:
            self.stored_bytes.inc(count)

    def takeover(self) -> None:
        self.takeovers.inc()

    def locked(self, code: str) -> None:
        self.locked_answers.labels(code).inc()

    def hook(self, event: str, ok: bool) -> None:
        self.hooks.labels(event, "delivered" if ok else "failed").inc()

    def redis_error(self, kind: str) -> None:
        self.redis_errors.labels(kind).inc()

    def storage_error(self, kind: str) -> None:
        self.storage_errors.labels(kind).inc()

    def swept(self, expired: int, retired: int, orphans: int, skipped: int) -> None:
        self.sweeps.inc()
        self.uploads_expired.inc(expired)
        for kind, count in (
            ("expired", expired),
            ("retired", retired),
            ("orphan", orphans),
            ("skipped", skipped),
        ):
            if count:
                self.swept_uploads.labels(kind).inc(count)


_NOTHING = Recorder()
_current: ContextVar[Recorder] = ContextVar("tusserver_metrics", default=_NOTHING)


def recorder() -> Recorder:
    """The recorder of the app this code runs for (a no-op outside any app)."""
    return _current.get()


def use(chosen: Recorder) -> None:
    """Make ``chosen`` the recorder of the running request or lifespan."""
    _current.set(chosen)


def multiprocess_mode() -> bool:
    """Whether values live in files shared by several processes."""
    return bool(os.environ.get(MULTIPROC_DIR))


def new_recorder() -> PrometheusRecorder:
    """A recorder over a registry of its own (for one app)."""
    return PrometheusRecorder(CollectorRegistry(auto_describe=False))


def exposition_registry(recorder: PrometheusRecorder) -> CollectorRegistry:
    """What a scrape reads: in multiprocess mode the sum over every process's
    files, else the app's own registry."""
    return summed_registry() if multiprocess_mode() else recorder.registry


def summed_registry() -> CollectorRegistry:
    """The sum of every process's values in the ``PROMETHEUS_MULTIPROC_DIR``."""
    summed = CollectorRegistry()
    multiprocess.MultiProcessCollector(summed)  # type: ignore[no-untyped-call]
    return summed


@contextlib.contextmanager
def shared_across_processes() -> Iterator[str]:
    """A private ``PROMETHEUS_MULTIPROC_DIR`` for the worker processes started
    inside the block (they inherit the environment), removed afterwards."""
    previous = os.environ.get(MULTIPROC_DIR)
    path = tempfile.mkdtemp(prefix="tusserver-metrics-")
    os.environ[MULTIPROC_DIR] = path
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop(MULTIPROC_DIR, None)
        else:
            os.environ[MULTIPROC_DIR] = previous
        shutil.rmtree(path, ignore_errors=True)


def process_ended() -> None:
    """At a worker's shutdown: its live gauges (PATCHes in flight) stop counting."""
    if multiprocess_mode():
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]

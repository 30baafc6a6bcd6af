"""Serving the metrics: ``GET <metrics_path>`` on the app, or a port of their own."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    generate_latest,
    start_http_server,
)
from starlette.requests import Request
from starlette.responses import Response

from tusserver import metrics


def endpoint(recorder: metrics.PrometheusRecorder) -> Callable[[Request], Response]:
    """The route's endpoint: the Prometheus text format of ``recorder``'s app
    (of every worker, in multiprocess mode)."""

    def scrape(request: Request) -> Response:
        body = generate_latest(metrics.exposition_registry(recorder))
        return Response(
            body,
            headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"},
        )

    return scrape


@contextlib.contextmanager
def own_port(host: str, port: int, registry: CollectorRegistry) -> Iterator[None]:
    """Serve ``registry`` on ``host:port`` in a thread while the block runs."""
    server, thread = start_http_server(port, addr=host, registry=registry)
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

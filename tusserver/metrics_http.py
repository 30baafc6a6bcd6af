"""Serving the metrics: ``GET <metrics_path>`` on the app, or a port of their own."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    generate_latest,
    start_http_server,
)
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from tusserver import metrics


def scrape_app(recorder: metrics.PrometheusRecorder) -> ASGIApp:
    """An ASGI app answering the Prometheus text format of ``recorder``'s app
    (of every worker, in multiprocess mode)."""

    async def scrape(scope: Scope, receive: Receive, send: Send) -> None:
        body = generate_latest(metrics.exposition_registry(recorder))
        headers = {"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"}
        await Response(body, headers=headers)(scope, receive, send)

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

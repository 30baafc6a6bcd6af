"""tusserver on a real HTTP server, on loopback, for the length of one test.

``tus_server(**config_fields)`` starts ``create_app(Config(...))`` in a
background thread on a free 127.0.0.1 port, against the session's real
Redis and a fresh storage folder, and stops it when the test ends.

``ServedApps`` is the one way the specs serve an app: a tusserver app (on its
own, or mounted under a path of a parent Starlette app, with hooks) or any
other ASGI app (an example application). The server is uvicorn, unless the
spec asks for the ``server`` fixture: then it runs once on each server
``tusserver serve`` offers, its in-thread apps and its ``tusserver serve``
processes (through ``TUSSERVER_SERVER``) alike.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from granian.constants import HTTPModes, Interfaces
from granian.log import LogLevels
from granian.server.embed import Server as EmbeddedGranian
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount

from storage_backends.base import Storage
from tusserver import Config, create_app
from tusserver.config import SERVERS
from tusserver.hooks import Hooks

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"


@dataclass
class RunningServer:
    url: str  # e.g. http://127.0.0.1:PORT (no trailing slash)
    endpoint: str  # e.g. http://127.0.0.1:PORT/files/
    storage: Path  # where finished files land; partials in storage/.partial
    config: Config
    client: httpx.Client

    @property
    def partials(self) -> Path:
        return self.storage / ".partial"

    def create(self, length: int | None, **headers: str) -> str:
        """POST a new upload; returns its absolute URL."""
        sent = {**TUS, **{k.replace("_", "-"): v for k, v in headers.items()}}
        if length is None:
            sent["Upload-Defer-Length"] = "1"
        else:
            sent["Upload-Length"] = str(length)
        response = self.client.post(self.endpoint, headers=sent)
        assert response.status_code == 201, response.text
        return self.url + response.headers["Location"]

    def patch(self, upload_url: str, offset: int, data: bytes, **headers: str) -> httpx.Response:
        sent = {**TUS, "Content-Type": OCTETS, "Upload-Offset": str(offset)}
        sent.update({k.replace("_", "-"): v for k, v in headers.items()})
        return self.client.patch(upload_url, headers=sent, content=data)

    def head(self, upload_url: str) -> httpx.Response:
        return self.client.head(upload_url, headers=TUS)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ThreadedUvicorn:
    """uvicorn.Server in a thread; start() waits until it accepts requests."""

    def __init__(self, app: Any, port: int) -> None:
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        # Signal handlers can only be installed in the main thread.
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self, timeout: float = 15.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)

    def stop(self, timeout: float = 15.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


class ThreadedGranian:
    """granian's embedded server on an event loop in a thread; start() waits
    until it accepts connections."""

    def __init__(self, app: Any, port: int) -> None:
        self.port = port
        self.server = EmbeddedGranian(
            app,
            address="127.0.0.1",
            port=port,
            interface=Interfaces.ASGI,
            http=HTTPModes.http1,
            websockets=False,
            log_level=LogLevels.warning,
        )
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.server.serve())
        finally:
            self.loop.close()

    def start(self, timeout: float = 15.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if not self.thread.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError("granian did not start") from None
                time.sleep(0.01)

    def stop(self, timeout: float = 15.0) -> None:
        # granian waits for running requests; the join is what bounds it.
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.server.stop)
        self.thread.join(timeout)
        if not self.thread.is_alive():
            _close_sockets_bound_to(self.port)


def _close_sockets_bound_to(port: int) -> None:
    """Close this process's sockets still bound to ``port`` once its server
    stopped. granian's embedded server (2.8) builds a socket bound to the
    port on Linux, for its workers to listen with, and never closes it (its
    ``_drop_shared_socket`` does nothing): one descriptor per server started,
    past select()'s 1,024 over a whole suite run."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            copy = os.dup(fd)
        except OSError:
            continue  # gone meanwhile
        try:
            probe = socket.socket(fileno=copy)
        except OSError:
            os.close(copy)
            continue  # not a socket
        try:
            if probe.family == socket.AF_INET and probe.getsockname()[1:2] == (port,):
                os.close(fd)
        except OSError:
            pass
        finally:
            probe.close()


# How the specs run an app in a thread, by the server's name (Config.server).
THREADED_SERVERS: dict[str, Callable[[Any, int], ThreadedUvicorn | ThreadedGranian]] = {
    "uvicorn": ThreadedUvicorn,
    "granian": ThreadedGranian,
}


def mounted(app: Starlette, path: str, routes: Sequence[BaseRoute] = ()) -> Starlette:
    """``app`` mounted at ``path`` of a parent app (with ``routes`` of its own)
    whose lifespan runs ``app``'s, as an application embedding tusserver does."""
    return Starlette(
        routes=[*routes, Mount(path, app=app)],
        lifespan=lambda parent: app.router.lifespan_context(app),
    )


class ServedApps:
    """Apps on a real server at 127.0.0.1, each with a client; ``stop`` ends them all."""

    def __init__(self, server: str = "uvicorn") -> None:
        self.server = server
        self._running: list[tuple[ThreadedUvicorn | ThreadedGranian, httpx.Client]] = []

    def __len__(self) -> int:
        return len(self._running)

    def serve(self, app: Any, *, timeout: float = 30) -> tuple[str, httpx.Client]:
        """Serve any ASGI app; its URL (no trailing slash) and a client."""
        port = free_port()
        server = THREADED_SERVERS[self.server](app, port)
        server.start()
        client = httpx.Client(timeout=timeout)
        self._running.append((server, client))
        return f"http://127.0.0.1:{port}", client

    def start(
        self,
        config: Config,
        storage: Path,
        *,
        timeout: float = 30,
        hooks: Hooks | None = None,
        mount_at: str = "",
        beside: Sequence[BaseRoute] = (),
        backend: Storage | None = None,
    ) -> RunningServer:
        """Serve ``config``'s app; ``storage`` is where its files show on this machine.

        With ``mount_at``, the app is mounted at that path of a parent app
        that also serves the routes ``beside`` it. ``backend``: a ready
        storage backend for the app, instead of ``config.storage``'s.
        """
        app = create_app(config, hooks=hooks, storage=backend)
        if mount_at:
            app = mounted(app, mount_at, beside)
        url, client = self.serve(app, timeout=timeout)
        endpoint = url + mount_at.rstrip("/") + config.base_path
        return RunningServer(url, endpoint, storage, config, client)

    def stop(self) -> None:
        """Stop every app served so far (again: none)."""
        for server, client in self._running:
            client.close()
            server.stop()
        self._running.clear()


@pytest.fixture(params=SERVERS)
def server(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """A spec that asks for this runs once on each HTTP server: its served
    apps, and its ``tusserver serve`` processes, which read TUSSERVER_SERVER."""
    name: str = request.param
    monkeypatch.setenv("TUSSERVER_SERVER", name)
    return name


@pytest.fixture
def served_apps(request: pytest.FixtureRequest) -> Iterator[ServedApps]:
    """Apps served for one test, stopped when it ends: on each HTTP server
    for a spec that asks for ``server``, else on TUSSERVER_TEST_SERVER
    (default: the server ``tusserver serve`` runs on by default)."""
    if "server" in request.fixturenames:
        server = request.getfixturevalue("server")
    else:
        server = os.environ.get("TUSSERVER_TEST_SERVER", Config().server)
    served = ServedApps(server)
    yield served
    served.stop()


@pytest.fixture
def tus_server(
    redis_url: str, tmp_path: Path, served_apps: ServedApps
) -> Callable[..., RunningServer]:
    """Factory: ``tus_server(max_size=100, ...)`` -> a running server (one per call).

    Each server gets a fresh storage folder, unless ``storage`` names one (two
    instances of one deployment share it). ``hooks``, ``mount_at`` and
    ``beside`` go to ``ServedApps.start``; every other keyword to ``Config``.
    """

    def start(
        storage: Path | None = None,
        *,
        hooks: Hooks | None = None,
        mount_at: str = "",
        beside: Sequence[BaseRoute] = (),
        **fields: Any,
    ) -> RunningServer:
        storage = storage or tmp_path / f"storage{len(served_apps)}"
        config = Config(storage=str(storage), redis_url=redis_url, **fields)
        return served_apps.start(config, storage, hooks=hooks, mount_at=mount_at, beside=beside)

    return start

"""``tusserver serve``'s process: the app on the HTTP server ``config.server``
names (``SERVERS``), in one process or in ``workers`` processes that share
one embedded Redis.

Workers are started by multiprocessing's spawn, which pickles what each one
needs: the server's settings and the app factory ``WorkerApp``, which
carries the frozen ``Config`` itself, over a pipe. Every field arrives as
the type it was, and no setting is put into argv or the environment to
reach them (neither the SMB password nor a Redis URL with a password).

Both servers get the same keep-alive, logging, access log, proxy headers
and graceful stop: on SIGTERM or SIGINT the app begins to drain
(tusserver.draining): running PATCHes go on for ``Config.shutdown_grace``,
then commit the bytes they stored and release their locks; requests still
running ``_CUT_MARGIN_SECONDS`` later are cancelled (tusserver.graceful),
and the program exits with status 0.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import logging
import logging.config
import math
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from types import FrameType
from typing import Any, cast

import granian.log
import uvicorn
from granian.constants import HTTPModes, Interfaces, TaskImpl
from granian.http import HTTP1Settings
from granian.server import Server as GranianServer
from starlette.applications import Starlette
from starlette.types import ASGIApp
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.supervisors import Multiprocess

from tusserver import metrics, metrics_http
from tusserver.app import create_app
from tusserver.config import Config
from tusserver.draining import Draining
from tusserver.embedded_redis import EmbeddedRedisError, running_url
from tusserver.graceful import GracefulStop
from tusserver.log_format import formatter_config
from tusserver.parent_death import die_with_parent
from tusserver.startup import state_redis

logger = logging.getLogger(__name__)

# A PATCH is long-lived; keep the connection open between a client's chunks.
_KEEP_ALIVE_SECONDS = 30
# On SIGTERM the app cuts running PATCHes after Config.shutdown_grace
# (tusserver.draining); they then commit, answer and close within this much
# longer, after which what is left is cancelled (which still commits,
# shielded, but answers nothing useful).
_CUT_MARGIN_SECONDS = 5.0
# After that, what a cancelled request's commit and the app's shutdown
# (which waits up to 5 s for locks, see app.py) may take before granian's
# supervisor kills a worker that still has not stopped.
_STOP_MARGIN_SECONDS = 10


def serve(config: Config) -> bool:
    """Serve until SIGTERM or SIGINT; False if the server never started.

    The storage must have been checked (``startup.check_storage``). Raises
    EmbeddedRedisError before serving if the embedded Redis cannot start.
    """
    # Started here, in the main thread of the supervising process, so every
    # worker shares it and it dies with this process.
    with state_redis(config), _stop_signals_end_cleanly(), _metrics_of_workers(config):
        return SERVERS[config.server](config)
    return True  # a stop signal ended the server after it started


def _serve_on_uvicorn(config: Config) -> bool:
    log_config = logging_config(config.log_level, config.log_format)
    logging.config.dictConfig(log_config)
    settings = uvicorn.Config(
        WorkerApp(config),
        factory=True,
        host=config.host,
        port=config.port,
        workers=config.workers,
        log_config=log_config,
        log_level=config.log_level,
        # The app logs each request itself (tusserver/observing.py), with
        # its id and duration, when config.access_log asks for it.
        access_log=False,
        timeout_keep_alive=_KEEP_ALIVE_SECONDS,
        proxy_headers=False,  # applied by WorkerApp, for both servers alike
        # After GracefulStop's own cancel; uvicorn takes whole seconds.
        timeout_graceful_shutdown=math.ceil(_stop_after(config) + 1),
    )
    if config.workers == 1:
        server = uvicorn.Server(settings)
        server.run()
        return server.started
    # What uvicorn.run does for workers, which it allows only for an app
    # named by an import string: that string is how it gets the app into a
    # spawned process, and a WorkerApp pickles instead.
    Multiprocess(settings, sockets=[settings.bind_socket()]).run()
    return True


def _serve_on_granian(config: Config) -> bool:
    """granian always runs the app in worker processes (one by default),
    supervised by this one; each builds its app with ``WorkerApp``."""
    server = GranianServer(
        # Only named in granian's logs: the app comes from the loader below.
        "tusserver",
        address=config.host,
        port=config.port,
        interface=Interfaces.ASGI,  # with the lifespan, which owns every resource
        workers=config.workers,
        http=HTTPModes.http1,
        websockets=False,
        # Requests as asyncio tasks, which GracefulStop can cancel.
        task_impl=TaskImpl.asyncio,
        http1_settings=HTTP1Settings(header_read_timeout=_KEEP_ALIVE_SECONDS * 1000),
        log_level=granian.log.LogLevels(config.log_level),
        log_dictconfig=granian_logging_config(config.log_level, config.log_format),
        # The app logs each request itself (tusserver/observing.py).
        log_access=False,
        workers_kill_timeout=math.ceil(_stop_after(config) + _STOP_MARGIN_SECONDS),
    )
    # granian starts workers the way multiprocessing's default says: fork,
    # on Linux before Python 3.14. Spawned, as uvicorn's are, a worker starts
    # clean rather than as a copy of a supervisor that already runs threads
    # and the embedded Redis, and gets its Config pickled (see above).
    multiprocessing.set_start_method("spawn", force=True)
    try:
        server.serve(target_loader=WorkerApp(config), wrap_loader=False)
    except SystemExit as exit_:
        # granian exits with 1 when a worker died, e.g. at its start; the
        # worker logged why.
        return not exit_.code
    except (OSError, RuntimeError) as exc:
        # granian reports a socket it cannot bind (port in use, address not
        # available) as a RuntimeError from its Rust side, carrying the OS's text.
        logger.error("cannot listen on %s:%s: %s", config.host, config.port, exc)
        return False
    return True


# The HTTP servers ``tusserver serve`` can run the app on, by Config.server.
SERVERS: dict[str, Callable[[Config], bool]] = {
    "granian": _serve_on_granian,
    "uvicorn": _serve_on_uvicorn,
}


@dataclass(frozen=True)
class WorkerApp:
    """The app factory, called in each worker process.

    A worker runs on the very Config the command built. Without a Redis URL
    it finds the embedded Redis the supervising process started through
    ``data_dir``, as ``tusserver sweep`` finds a running server's.
    The app is wrapped in GracefulStop, which bounds and quiets the stop
    on either server. ``supervisor``: the pid of the process that built it, whose death ends
    the worker (tusserver.parent_death).
    """

    config: Config
    supervisor: int = field(default_factory=os.getpid)

    def __call__(self) -> ASGIApp:
        if os.getpid() != self.supervisor:  # in a worker, not uvicorn's single process
            die_with_parent(self.supervisor)
        config = self.config
        if config.redis_url is None:
            url = running_url(config.data_dir)
            if url is None:
                raise EmbeddedRedisError(
                    f"The embedded Redis in {config.data_dir} does not answer; is the"
                    " supervising tusserver still running?"
                )
            config = replace(config, redis_url=url)
        # Checked once, by the supervising process, before anything started.
        draining = Draining()
        app: Starlette = create_app(config, storage_checked=True, draining=draining)
        # The client's address and scheme from X-Forwarded-For/-Proto when
        # the peer is a trusted proxy (loopback, or FORWARDED_ALLOW_IPS):
        # what uvicorn does by default, done here so granian does it too.
        trusted = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
        proxied = ProxyHeadersMiddleware(app, trusted_hosts=trusted)  # type: ignore[arg-type]
        _freeze_start_up_heap()
        return GracefulStop(cast(ASGIApp, proxied), _stop_after(config), on_stop=draining.begin)


def _freeze_start_up_heap() -> None:
    """Keep what the worker built to start (modules, the app) out of the
    garbage collector's full passes, which otherwise walk all of it, again
    and again, to find the little garbage requests leave: a tenth of a
    HEAD's CPU (``bench/patch_profile.py --connections 16``, 97 against
    86 µs). Those objects live as long as the process; reference counting
    still frees any of them that is let go, and a cycle among them that
    becomes garbage is kept, once, not again and again. The collection
    first clears what start-up itself left, so that is not kept."""
    gc.collect()
    gc.freeze()


def _stop_after(config: Config) -> float:
    """Seconds from a stop signal until the requests still running are cancelled."""
    return config.shutdown_grace + _CUT_MARGIN_SECONDS


@contextlib.contextmanager
def _metrics_of_workers(config: Config) -> Iterator[None]:
    """With several workers, their metrics summed: a private multiprocess
    directory they inherit, and the metrics port served from here (each
    worker could not bind it), while the block runs."""
    if not config.metrics or config.workers == 1:
        yield
        return
    with metrics.shared_across_processes():
        if config.metrics_port is None:
            yield
            return
        with metrics_http.own_port(config.host, config.metrics_port, metrics.summed_registry()):
            yield


def logging_config(level: str, log_format: str = "text") -> dict[str, Any]:
    """uvicorn's logging, plus tusserver's own loggers on the same handler,
    in the chosen format (tusserver/log_format.py)."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["formatters"]["default"] = formatter_config(log_format)
    config["loggers"]["tusserver"] = {
        "handlers": ["default"],
        "level": level.upper(),
        "propagate": False,
    }
    return config


def granian_logging_config(level: str, log_format: str = "text") -> dict[str, Any]:
    """granian's logging, on stderr as uvicorn's, plus tusserver's own loggers,
    in the chosen format (tusserver/log_format.py)."""
    config: dict[str, Any] = copy.deepcopy(granian.log.LOGGING_CONFIG)
    for name in config["formatters"]:
        config["formatters"][name] = formatter_config(log_format)
    for handler in config["handlers"].values():
        handler["stream"] = "ext://sys.stderr"
    config["loggers"]["tusserver"] = {
        "handlers": ["console"],
        "level": level.upper(),
        "propagate": False,
    }
    return config


class _Stopped(Exception):
    """SIGTERM or SIGINT arrived and the server has already shut down."""


@contextlib.contextmanager
def _stop_signals_end_cleanly() -> Iterator[None]:
    """Let a stop signal end the program through ``finally`` blocks, exit code 0.

    uvicorn shuts down gracefully on SIGTERM/SIGINT and then raises the
    signal again with the handler it found installed. With the default
    handler that would kill the process before the embedded Redis is
    stopped in order; this handler turns it into an exception instead.
    """

    def stopped(signum: int, frame: FrameType | None) -> None:
        raise _Stopped(signum)

    previous = {sig: signal.signal(sig, stopped) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    except _Stopped:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

"""``tusserver serve``'s process: the app on uvicorn, in one process or in
``workers`` processes that share one embedded Redis.

Workers are started by multiprocessing's spawn, which pickles what each one
needs: uvicorn's settings and the app factory ``WorkerApp``, which carries
the frozen ``Config`` itself, over a pipe. Every field arrives as the type
it was, and no setting is put into argv or the environment to reach them
(neither the SMB password nor a Redis URL with a password).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import logging.config
import math
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from types import FrameType
from typing import Any

import uvicorn
from starlette.applications import Starlette
from uvicorn.supervisors import Multiprocess

from tusserver import metrics, metrics_http
from tusserver.app import create_app
from tusserver.config import Config
from tusserver.draining import Draining
from tusserver.embedded_redis import EmbeddedRedisError, running_url
from tusserver.log_format import formatter_config
from tusserver.startup import state_redis

# A PATCH is long-lived; keep the connection open between a client's chunks.
_KEEP_ALIVE_SECONDS = 30
# On SIGTERM the app cuts running PATCHes after Config.shutdown_grace
# (tusserver.draining); uvicorn waits this much longer for them to commit,
# answer and close, and only then cancels what is left (which still commits,
# shielded, but answers nothing useful).
_CUT_MARGIN_SECONDS = 5.0


def serve(config: Config) -> bool:
    """Serve until SIGTERM or SIGINT; False if the server never started.

    The storage must have been checked (``startup.check_storage``). Raises
    EmbeddedRedisError before serving if the embedded Redis cannot start.
    """
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
        # uvicorn takes whole seconds.
        timeout_graceful_shutdown=math.ceil(config.shutdown_grace + _CUT_MARGIN_SECONDS),
    )
    server = uvicorn.Server(settings)
    # Started here, in the main thread of the supervising process, so every
    # worker shares it and it dies with this process.
    with state_redis(config), _stop_signals_end_cleanly(), _metrics_of_workers(config):
        if config.workers == 1:
            server.run()
        else:
            # What uvicorn.run does for workers, which it allows only for an
            # app named by an import string: that string is how it gets the
            # app into a spawned process, and a WorkerApp pickles instead.
            Multiprocess(settings, sockets=[settings.bind_socket()]).run()
            return True
    return server.started


@dataclass(frozen=True)
class WorkerApp:
    """uvicorn's app factory, called in each worker process.

    A worker runs on the very Config the command built. Without a Redis URL
    it finds the embedded Redis the supervising process started through
    ``data_dir``, as ``tusserver sweep`` finds a running server's.
    """

    config: Config

    def __call__(self) -> Starlette:
        config = self.config
        if config.redis_url is None:
            url = running_url(config.data_dir)
            if url is None:
                raise EmbeddedRedisError(
                    f"The embedded Redis in {config.data_dir} does not answer; is the"
                    " supervising tusserver still running?"
                )
            config = replace(config, redis_url=url)
        draining = Draining()
        _drain_on_stop_signals(draining)
        # Checked once, by the supervising process, before anything started.
        return create_app(config, storage_checked=True, draining=draining)


def _drain_on_stop_signals(draining: Draining) -> None:
    """Begin the drain the moment SIGTERM or SIGINT arrives, then let uvicorn
    handle the signal as before.

    Called by the app factory, which uvicorn calls on its event loop after
    installing its own handlers; uvicorn restores the ones it found when it
    ends. Without this the app would learn of the stop only at its lifespan's
    end, after uvicorn had waited for (and cancelled) the running requests.
    """
    if threading.current_thread() is not threading.main_thread():
        return  # signals reach the main thread only; an embedding server stops the app
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)

        def stop(signum: int, frame: FrameType | None, previous: Any = previous) -> None:
            loop.call_soon_threadsafe(draining.begin)
            if callable(previous):
                previous(signum, frame)

        signal.signal(sig, stop)


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


class _Stopped(Exception):
    """SIGTERM or SIGINT arrived and uvicorn has already shut down."""


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

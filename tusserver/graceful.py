"""A bounded, quiet graceful stop, the same on every server.

uvicorn, told to stop, waits ``timeout_graceful_shutdown`` for running
requests and then cancels them; a cancelled PATCH still commits the bytes it
stored (handlers). granian's workers stop accepting and wait for every
running request, however long a slow client takes. ``GracefulStop`` gives
both the same bound: once the process is told to stop (SIGTERM or SIGINT),
running requests get ``grace`` seconds, then they are cancelled. A request
cancelled after the stop signal then ends quietly: both servers would log
the cancellation with a traceback (file paths included).

The signal is seen through a Python-level handler that calls the one it
replaces (uvicorn's ``signal.signal`` handler). granian stops its worker
through ``loop.add_signal_handler``, whose handler runs through the wakeup fd
whatever the Python-level handler is, so both run there too.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

from starlette.types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_Handler = Callable[[int, FrameType | None], None]


class GracefulStop:
    """ASGI middleware: cancel the requests still running ``grace`` seconds
    after a stop signal, and end them quietly (their handlers have committed)."""

    def __init__(
        self, app: ASGIApp, grace: float, *, on_stop: Callable[[], None] | None = None
    ) -> None:
        self.app = app
        self.grace = grace
        # Told first, the moment a stop signal arrives (the app's drain).
        self._on_stop = on_stop
        self._running: set[asyncio.Task[object]] = set()
        self._stopping = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            self._watch_stop_signals()
            await self.app(scope, receive, send)
            return
        task = asyncio.current_task()
        if task is None:  # not run by asyncio: nothing to cancel later
            await self.app(scope, receive, send)
            return
        self._running.add(task)
        try:
            await self.app(scope, receive, send)
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            # Cancelled by the stop (ours, or the server's own): the request
            # committed what it stored, and the server is going away.
            # Re-raised, it would reach the server's log as a traceback.
        finally:
            self._running.discard(task)

    def _watch_stop_signals(self) -> None:
        # Signal handlers belong to the main thread; an app served in
        # another thread (an embedded server) is stopped by its owner.
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()

        for sig in STOP_SIGNALS:
            signal.signal(sig, self._chained(sig, loop))

    def _chained(self, sig: int, loop: asyncio.AbstractEventLoop) -> _Handler:
        previous = signal.getsignal(sig)

        def stop_signalled(signum: int, frame: FrameType | None) -> None:
            loop.call_soon_threadsafe(self._begin_stop)
            if callable(previous):
                previous(signum, frame)

        return stop_signalled

    def _begin_stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        if self._on_stop is not None:
            self._on_stop()
        asyncio.get_running_loop().call_later(self.grace, self._cancel_running)

    def _cancel_running(self) -> None:
        if not self._running:
            return
        logger.info(
            "%d request(s) still running %g s after the stop signal: cancelling them",
            len(self._running),
            self.grace,
        )
        for task in self._running:
            task.cancel()

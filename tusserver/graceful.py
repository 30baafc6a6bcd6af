"""A bounded graceful stop for a server that waits for running requests without end.

uvicorn, told to stop, waits ``timeout_graceful_shutdown`` for running
requests and then cancels them; a cancelled PATCH still commits the bytes it
stored (handlers). granian's workers stop accepting and wait for every
running request, however long a slow client takes. ``GracefulStop`` gives
granian uvicorn's bound: once the worker is told to stop (SIGTERM or
SIGINT), running requests get ``grace`` seconds, then they are cancelled.

The signal is seen through a Python-level handler installed beside the
event loop's own (``loop.add_signal_handler``, which granian uses to stop the
worker): the loop's handler runs through the wakeup fd, this one in the main
thread, so both run and neither replaces the other.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from types import FrameType

from starlette.types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class GracefulStop:
    """ASGI middleware: cancel the requests still running ``grace`` seconds
    after a stop signal, and end them quietly (their handlers have committed)."""

    def __init__(self, app: ASGIApp, grace: float) -> None:
        self.app = app
        self.grace = grace
        self._running: set[asyncio.Task[object]] = set()
        self._stopping = False
        self._cancelled = False

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
            if not self._cancelled:
                raise
            # Cancelled by the stop below: the request committed what it
            # stored, and the server is going away. Re-raised, it would
            # reach the server's log as a traceback.
        finally:
            self._running.discard(task)

    def _watch_stop_signals(self) -> None:
        # Signal handlers belong to the main thread; an app served in
        # another thread (an embedded server) is stopped by its owner.
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()

        def stop_signalled(signum: int, frame: FrameType | None) -> None:
            loop.call_soon_threadsafe(self._begin_stop)

        for sig in STOP_SIGNALS:
            signal.signal(sig, stop_signalled)

    def _begin_stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        asyncio.get_running_loop().call_later(self.grace, self._cancel_running)

    def _cancel_running(self) -> None:
        if not self._running:
            return
        logger.info(
            "%d request(s) still running %g s after the stop signal: cancelling them",
            len(self._running),
            self.grace,
        )
        self._cancelled = True
        for task in self._running:
            task.cancel()

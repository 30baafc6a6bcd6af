"""Blocking smbprotocol calls, run from async code: isolated, bounded, translated.

smbprotocol is synchronous and has three properties a server must guard
against (each measured against Samba):

- A connection serves one thread at a time: threads sharing one fail with
  "0 credits available". So each call in flight gets a *slot*, a private
  smbclient connection cache holding that call's own connection, and there
  are exactly as many slots as the backend's limiter admits threads.
- A call has no timeout of its own: against a server that stopped
  answering it blocks for up to ~20 minutes (two 600 s receive waits), and
  a send into a full TCP window blocks for ever. A watchdog thread cuts the
  socket of a call that made no progress for ``timeout`` seconds; the call
  then fails at once with ``TimeoutError``.
- Its failures are not builtin ``OSError`` subclasses. Every failure
  leaves here as an ``OSError`` subclass chosen by errno
  (``storage_backends.smb_errors``), so callers can rely on
  ``FileNotFoundError``, ``PermissionError`` and ``TimeoutError``.

After a lost connection the next call on that slot connects again; that
works only because the credentials are passed with every call (smbclient
keeps none of its own for a new connection).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Concatenate, ParamSpec, TypeVar

import anyio
import anyio.to_thread
from smbprotocol.exceptions import (
    SMBException,
)

from storage_backends.smb_errors import translate
from storage_backends.smb_wire import shut_down

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class Server:
    host: str
    port: int
    username: str
    password: str | None = field(repr=False)  # never in a repr, a log or a traceback

    def __str__(self) -> str:  # never the password
        return f"{self.host}:{self.port}"


class Slot:
    """A private connection cache: one SMB connection, used by one call at a time.

    ``handles`` keeps files open between calls on this connection (an
    upload's partial while its PATCH runs), by an owner key: an open handle
    is only valid on the connection that opened it, and opening a file
    costs two round trips and a few milliseconds of CPU.
    """

    def __init__(self) -> None:
        self.cache: dict[str, Any] = {}
        self.handles: dict[object, Any] = {}

    def sever(self) -> None:
        """Cut the connection's socket; a call blocked on it fails at once."""
        for connection in list(self.cache.values()):
            shut_down(connection)

    def forget(self) -> None:
        """Drop a connection in an unknown state; the next call connects afresh.

        Its open handles go with it: the server closes them with the connection.
        """
        self.sever()
        self.cache.clear()
        self.handles.clear()


class Call:
    """What a blocking function gets: smbclient keyword arguments and a progress mark."""

    def __init__(self, slot: Slot, kwargs: dict[str, Any]) -> None:
        self.slot = slot
        self.kwargs = kwargs
        self.progress = time.monotonic()
        self.timed_out = False

    def touch(self) -> None:
        """Long calls (a server-side copy) report progress so the watchdog lets them run."""
        self.progress = time.monotonic()


class _Watchdog:
    """One thread per backend that cuts calls stuck for longer than ``timeout``."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._calls: set[Call] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, call: Call) -> None:
        with self._lock:
            self._calls.add(call)
            if self._thread is None and not self._stopping.is_set():
                self._thread = threading.Thread(target=self._run, name="smb-watchdog", daemon=True)
                self._thread.start()

    def unwatch(self, call: Call) -> None:
        with self._lock:
            self._calls.discard(call)

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        interval = min(1.0, self.timeout / 4)
        while not self._stopping.wait(interval):
            now = time.monotonic()
            # Under the lock: a call that ends meanwhile is unwatched before
            # its slot goes to the next call, whose connection must not be cut.
            with self._lock:
                for call in self._calls:
                    if now - call.progress > self.timeout:
                        call.timed_out = True
                        call.slot.sever()


class SMBCalls:
    """Runs blocking SMB functions in worker threads, ``connections`` at a time."""

    def __init__(self, server: Server, *, connections: int, timeout: float) -> None:
        self.server = server
        self.timeout = timeout
        # The backend's own limiter: a stalled share ties up these threads
        # only, never the event loop or another backend's.
        self._limiter = anyio.CapacityLimiter(connections)
        self._all_slots = [Slot() for _ in range(connections)]
        self._free = list(self._all_slots)
        self._slot_returned = threading.Condition()
        self._watchdog = _Watchdog(timeout)

    async def run(
        self, function: Callable[Concatenate[Call, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """``function(call, *args)`` in a worker thread on a connection of its own.

        Raises only ``OSError`` subclasses for SMB trouble: ``TimeoutError``
        when the server stopped answering, ``PermissionError`` for a refused
        login, ``ConnectionError`` when the server cannot be reached.
        """

        return await self.run_near(None, function, *args, **kwargs)

    async def run_near(
        self,
        slot: Slot | None,
        function: Callable[Concatenate[Call, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Like ``run``, on ``slot`` if it is free, else on any free one.

        For a run of calls that reuse handles they keep open on their slot.
        """

        def bound() -> T:
            taken = self._take(slot, wait=False)
            return self._in_slot(taken, lambda call: function(call, *args, **kwargs))

        return await anyio.to_thread.run_sync(bound, limiter=self._limiter)

    async def run_on(
        self,
        slot: Slot,
        function: Callable[Concatenate[Call, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Like ``run``, on exactly ``slot``, waiting while another call uses it.

        The wait is bounded: the call holding the slot is watched like any
        other, and a slot's holder never waits for anything else.
        """

        def bound() -> T:
            self._take(slot, wait=True)
            return self._in_slot(slot, lambda call: function(call, *args, **kwargs))

        return await anyio.to_thread.run_sync(bound, limiter=self._limiter)

    def _take(self, wanted: Slot | None, *, wait: bool) -> Slot:
        # Without ``wait`` this never blocks: the limiter admits at most as
        # many threads as there are slots, a thread keeps its token until it
        # returns its slot, and a thread waiting for one slot holds none.
        with self._slot_returned:
            if wait:
                assert wanted is not None
                while wanted not in self._free:
                    self._slot_returned.wait()
            elif wanted is None or wanted not in self._free:
                wanted = self._free[-1]
            self._free.remove(wanted)
            return wanted

    def _give_back(self, slot: Slot) -> None:
        with self._slot_returned:
            self._free.append(slot)
            self._slot_returned.notify_all()

    def _in_slot(self, slot: Slot, function: Callable[[Call], T]) -> T:
        call = Call(slot, self._smbclient_kwargs(slot))
        self._watchdog.watch(call)
        try:
            return function(call)
        except (SMBException, ValueError, OSError) as exc:
            translated = translate(exc, self.server, self.timeout if call.timed_out else None)
            if translated is None:
                raise
            if isinstance(translated, (ConnectionError, TimeoutError)):
                slot.forget()
            raise translated from exc
        finally:
            self._watchdog.unwatch(call)
            self._give_back(slot)

    def _smbclient_kwargs(self, slot: Slot) -> dict[str, Any]:
        return {
            "username": self.server.username,
            "password": self.server.password,
            "port": self.server.port,
            "connection_timeout": self.timeout,
            "connection_cache": slot.cache,
        }

    async def aclose(self) -> None:
        """Log off and close every connection, then stop the watchdog."""
        await anyio.to_thread.run_sync(self._close_all, limiter=self._limiter)
        self._watchdog.stop()

    def _close_all(self) -> None:
        for slot in self._all_slots:
            for connection in list(slot.cache.values()):
                try:
                    connection.disconnect(close=True, timeout=self.timeout)
                except (SMBException, OSError) as exc:
                    logger.info("closing SMB connection to %s: %s", self.server, exc)
            slot.forget()

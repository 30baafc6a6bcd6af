"""Whether this process is stopping, told by the server that runs the app.

``tusserver serve`` begins the drain on SIGTERM or SIGINT (``serving``); an
application that mounts tusserver may pass a ``Draining`` to ``create_app``
and begin it when it stops. From then on the app (``app``):

- answers every new request but HEAD and OPTIONS with a retryable 503
  (``errors.shutting_down``) that closes its connection, so clients resume
  on another instance;
- lets a running PATCH go on receiving for ``Config.shutdown_grace``, then
  cuts it: it commits the bytes it stored, releases its lock and answers
  503 with its ``Upload-Offset`` (``locking.Locker.let_all_go``);
- meanwhile hands an upload over at once when another instance asks for it,
  even while bytes still arrive (a client that reconnected elsewhere).
"""

from __future__ import annotations

from collections.abc import Callable

import anyio


class Draining:
    """Begun once, never ended: a stopping process does not start again."""

    def __init__(self) -> None:
        self.begun = False
        self._wake: list[Callable[[], None]] = []

    def begin(self) -> None:
        """Start the drain. Call it on the app's event loop thread."""
        if self.begun:
            return
        self.begun = True
        for wake in self._wake:
            wake()
        self._wake.clear()

    async def wait(self) -> None:
        """Return once the drain has begun."""
        if self.begun:
            return
        event = anyio.Event()
        self._wake.append(event.set)
        await event.wait()

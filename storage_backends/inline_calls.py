"""Quick file calls made on the event loop, for as long as they stay quick.

Handing a block to a worker thread and waking the event loop when it is
written costs two thread switches and the futures between them. On the
core that also receives the body, that was a quarter of a PATCH's CPU:
1 GiB in 64 MiB PATCHes on granian, pinned to one core, with no digest,
cost 1.16 CPU s/GiB at 897 MB/s with a thread per block, 0.86 at 1,215
written on the event loop (bench/README.md, "Blocks written on the event
loop"). A write into the page cache is a memory copy: a quarter of a
millisecond for a block of half a MiB, 2 ms at the most seen.

But the kernel may make a write wait: for dirty pages to reach the disk
when they come faster than it takes them, for a full device queue, for
the server of a network file system. On the loop, every request of the
process would wait with it. So calls run on the loop while they are quick
(``InlineWhileQuick``); one that took longer than ``STALL`` sends them to
threads for a while, ``PAUSE`` at first, doubling each time the first call
tried on the loop again stalls too, up to ``LONGEST_PAUSE``; a quick one
brings the pause back to ``PAUSE``. The loop stands still for at most one
stalled call per pause.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

# Ten times the slowest write seen on a healthy disk (2 ms for half a MiB
# with the writeback hint), far below the pauses of a throttled writer
# (tens to hundreds of ms).
STALL = 0.010
PAUSE = 1.0
LONGEST_PAUSE = 64.0


class InlineWhileQuick:
    """Whether the next call may run on the event loop, from how long the
    calls made there took."""

    def __init__(self, stall: float = STALL, clock: Callable[[], float] = time.monotonic) -> None:
        self._stall = stall
        self._clock = clock
        self._threaded_until = 0.0
        self._pause = PAUSE

    def allowed(self) -> bool:
        return self._clock() >= self._threaded_until

    def took(self, seconds: float) -> None:
        """A call made on the loop took ``seconds``."""
        if seconds <= self._stall:
            self._pause = PAUSE
            return
        logger.info(
            "a file call held the event loop for %.0f ms: file calls go to threads for %g s",
            seconds * 1000,
            self._pause,
        )
        self._threaded_until = self._clock() + self._pause
        self._pause = min(self._pause * 2, LONGEST_PAUSE)

"""A worker process that dies with the process that started it.

A server's workers are part of it: were the supervising process killed
(SIGKILL, the OOM killer), a surviving worker would go on serving on the
port and holding upload locks beside the server restarted in its place. On
Linux the kernel can deliver a signal to a process when its parent dies;
elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Ask for SIGKILL when the parent dies; exit now if ``parent_pid`` is already gone.

    Called in the worker, early. SIGKILL, not SIGTERM: the worker ends as
    the killed supervisor did, the same crash the durability specs pin.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        return  # refused: the worker still runs, as it would elsewhere
    # The parent may have died before the request; then no signal would come.
    if os.getppid() != parent_pid:
        os._exit(1)

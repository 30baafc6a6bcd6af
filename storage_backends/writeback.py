"""Starting the kernel's writeback of a partial while its body still arrives.

A finished file is fsynced before its final name appears
(``storage_backends/finalizing.py``). Left to itself, the kernel keeps an
upload's pages dirty for up to half a minute, so that fsync, while the
client waits for its last 204, writes all of them: 0.3 s for a GiB on this
project's benchmark machine, a fifth of the whole upload's time. So each
write that completes a window of ``WINDOW`` bytes of the file asks the
kernel to start writing that window out (Linux's ``sync_file_range`` with
``SYNC_FILE_RANGE_WRITE``: it submits the pages and does not wait for them).
The disk then works while the next bytes arrive, and the fsync finds at most
the last window dirty: 1 GiB written in half-MiB blocks was durable after
0.44 instead of 0.61 s, at about the same CPU (``bench/writeback.py``;
bench/README.md, "Writeback").

Only a hint: nothing relies on it for durability (the fsync does that), and
where the call does not exist (not Linux) or fails, nothing is done; an I/O
error it meets shows again at the fsync.

Windows are counted from the start of the file, not of a request, so a
series of small PATCHes starts writeback as one large one does.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable

# Large enough that the call is rare (one per 16 blocks of half a MiB) and
# the disk gets long runs, small enough that the tail the fsync still
# writes is short.
WINDOW = 8 * 1024 * 1024

# <linux/fs.h>: start writeback of the dirty pages in the range, not waiting.
_SYNC_FILE_RANGE_WRITE = 2


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_sync_file_range = _load_sync_file_range()


def completed_windows(start: int, end: int, window: int = WINDOW) -> tuple[int, int] | None:
    """The whole windows a write of bytes ``[start, end)`` completed, as one
    range ``(offset, length)``; None if it completed none (a length of 0
    would mean "to the end of the file" to the kernel)."""
    first = start // window * window
    last = end // window * window
    return (first, last - first) if last > first else None


def start_writeback(fd: int, start: int, end: int) -> None:
    """After bytes ``[start, end)`` were written to ``fd``: start writing out
    the windows that write completed. Called in the writer's worker thread
    (ctypes lets go of the GIL during the call)."""
    if _sync_file_range is None:
        return
    completed = completed_windows(start, end)
    if completed is not None:
        offset, length = completed
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)

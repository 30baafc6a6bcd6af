"""Positioned writes and copies between file descriptors, whole or not at all.

The system calls under them may do less than asked (``pwritev`` writes part
of its buffers, ``copy_file_range`` copies part of its range) or may not
exist on a given kernel or file system; these helpers loop until done and
fall back, so the local backend can treat each as one step.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from storage_backends.base import Block

# pwritev takes at most IOV_MAX buffers per call (1024 on Linux).
_IOV_MAX = getattr(os, "IOV_MAX", 1024)
# Buffer of the last-resort copy, when the kernel cannot copy by itself.
_COPY_BUFFER = 1024 * 1024


def pwritev_all(fd: int, block: Block, offset: int) -> int:
    """Write every byte of ``block`` at ``offset``; pwritev may write less."""
    total = 0
    for group in _iov_groups(block):
        # Empty pieces write nothing and would read as "wrote nothing" below.
        pending: Sequence[bytes | memoryview] = [piece for piece in group if piece]
        while pending:
            n = os.pwritev(fd, pending, offset + total)
            if n == 0:
                raise OSError(errno.EIO, "pwritev wrote nothing")
            total += n
            pending = _drop_prefix(pending, n)
    return total


def _iov_groups(block: Block) -> Iterator[Sequence[bytes]]:
    for start in range(0, len(block), _IOV_MAX):
        yield block[start : start + _IOV_MAX]


def _drop_prefix(buffers: Sequence[bytes | memoryview], count: int) -> list[bytes | memoryview]:
    rest: list[bytes | memoryview] = []
    for buffer in buffers:
        size = len(buffer)
        if count >= size:
            count -= size
            continue
        rest.append(memoryview(buffer)[count:] if count else buffer)
        count = 0
    return rest


def copy_into(source: Path, fd: int, offset: int, length: int) -> None:
    """Copy the first ``length`` bytes of ``source`` into ``fd`` at ``offset``."""
    src = os.open(source, os.O_RDONLY)
    try:
        _copy_range(src, fd, length, offset)
    finally:
        os.close(src)


# Errors meaning "this way of copying is not available here", not "the copy
# failed": the next way is tried from where the copy stands.
_UNSUPPORTED_COPY = {
    errno.EXDEV,  # copy_file_range across filesystems (kernels before 5.3)
    errno.ENOSYS,  # no such system call (old kernel, seccomp filter, not Linux)
    errno.EINVAL,  # the filesystem does not support it
    errno.EOPNOTSUPP,
    errno.ENOTSUP,
    errno.ENOTSOCK,  # sendfile to a file on systems that only send to sockets
}


def _copy_range(src: int, dst: int, count: int, dst_offset: int) -> None:
    """Copy ``count`` bytes from the start of ``src`` to ``dst`` at ``dst_offset``.

    Inside the kernel when possible (copy_file_range, then sendfile), else
    through a 1 MiB buffer. Each call may copy less than asked: loop.
    """
    steps = [_copy_file_range_step, _sendfile_step, _read_write_step]
    done = 0
    while done < count:
        try:
            copied = steps[0](src, dst, done, dst_offset + done, count - done)
        except OSError as exc:
            if exc.errno not in _UNSUPPORTED_COPY or len(steps) == 1:
                raise
            steps.pop(0)
            continue
        if copied == 0:
            raise OSError(errno.EIO, f"source ended after {done} of {count} bytes")
        done += copied


def _copy_file_range_step(src: int, dst: int, src_offset: int, dst_offset: int, count: int) -> int:
    copy_file_range = getattr(os, "copy_file_range", None)  # Linux only
    if copy_file_range is None:
        raise OSError(errno.ENOSYS, "copy_file_range is not available")
    copied: int = copy_file_range(src, dst, count, src_offset, dst_offset)
    return copied


def _sendfile_step(src: int, dst: int, src_offset: int, dst_offset: int, count: int) -> int:
    os.lseek(dst, dst_offset, os.SEEK_SET)  # sendfile writes at the file position
    return os.sendfile(dst, src, src_offset, count)


def _read_write_step(src: int, dst: int, src_offset: int, dst_offset: int, count: int) -> int:
    data = os.pread(src, min(count, _COPY_BUFFER), src_offset)
    return os.pwrite(dst, data, dst_offset) if data else 0

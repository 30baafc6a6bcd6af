"""The SMB write path, run in worker threads by ``SMBCalls``: a PATCH's
blocks go out as pipelined WRITE requests on one connection, each at its own
offset, while the partial stays open (see ``storage_backends.smb``)."""

from __future__ import annotations

import errno
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import smbclient
from smbclient._io import SMBRawIO
from smbprotocol.exceptions import SMBException

from storage_backends.base import Block
from storage_backends.smb_calls import Call, Slot

# Where a finalize records the name it is publishing under, before the rename

# Size of one SMB WRITE request, and how many a PATCH keeps in flight on its
# connection. Larger messages cost more CPU per byte in smbprotocol (each is
# copied whole several times, and a send the socket takes only partly
# copies the rest again); fewer in flight leave the server idle between them.
_WRITE_SIZE = 1024 * 1024
_WRITES_IN_FLIGHT = 4
# One SMB2 credit pays for 64 KiB of a request (MS-SMB2 3.1.5.2).
_CREDIT_BYTES = 65536
# Every handle shares read, write and delete: the pieces of one block are
# open on several connections at once, and a rename or delete must not be
# refused because a read is in progress.
SHARE_MODE = "rwd"


def write_block(call: Call, owner: object, path: str, offset: int, block: Block) -> Slot:
    """Write ``block`` at ``offset`` through ``owner``'s handle on this slot; the slot."""
    handle: SMBRawIO | None = call.slot.handles.get(owner)
    if handle is None:
        # "r+": the partial must exist. One that vanished (expired, deleted)
        # must fail loudly, not be recreated full of holes.
        handle = open_file(call, path, "r+b")
        call.slot.handles[owner] = handle
    try:
        _write_pipelined(call, handle, deque(_messages(block, offset)))
    except BaseException:
        # The caller only closes handles on slots whose writes succeeded:
        # close this one now, or a full share would leak a handle per PATCH.
        close_handle(call, owner)
        raise
    return call.slot


def _messages(block: Block, offset: int) -> Iterator[tuple[int, bytes]]:
    """(file offset, bytes) of up to _WRITE_SIZE each, covering ``block`` in order.

    One join per message: smbprotocol needs each message's bytes in one
    buffer, and passing ``bytes`` (not a view) spares it another copy.
    """
    gathered: list[memoryview] = []
    size = 0
    for piece in block:
        view = memoryview(piece)
        while view:
            take = min(len(view), _WRITE_SIZE - size)
            gathered.append(view[:take])
            size += take
            view = view[take:]
            if size == _WRITE_SIZE:
                yield offset, b"".join(gathered)
                offset += size
                gathered, size = [], 0
    if size:
        yield offset, b"".join(gathered)


def _write_pipelined(call: Call, handle: SMBRawIO, todo: deque[tuple[int, bytes]]) -> None:
    """Send every (offset, bytes) of ``todo`` as SMB2 WRITEs, several in flight.

    Returns once the server confirmed every byte. A write the server took
    only partly is sent again for its rest; each lands at its own offset,
    so completion order does not matter.
    """
    file = handle.fd
    connection = file.connection
    session_id = file.tree_connect.session.session_id
    tree_id = file.tree_connect.tree_connect_id
    largest = min(_WRITE_SIZE, connection.max_write_size)
    in_flight: deque[tuple[Any, Callable[[Any], int], int, bytes]] = deque()

    def confirm_oldest() -> None:
        request, receive, at, data = in_flight.popleft()
        count = receive(request)
        if not count:
            raise OSError(errno.EIO, "the SMB server wrote nothing")
        if count < len(data):
            todo.appendleft((at + count, data[count:]))
        call.touch()

    try:
        while todo or in_flight:
            if not todo or len(in_flight) >= _WRITES_IN_FLIGHT:
                confirm_oldest()
                continue
            at, data = todo[0]
            window = connection.sequence_window
            available = window["high"] - window["low"]
            credits = (min(len(data), largest) - 1) // _CREDIT_BYTES + 1
            if credits > available and in_flight:
                confirm_oldest()  # its response grants credits
                continue
            todo.popleft()
            size = min(len(data), largest, max(1, available) * _CREDIT_BYTES)
            if size < len(data):
                todo.appendleft((at + size, data[size:]))
                data = data[:size]
            credits = (size - 1) // _CREDIT_BYTES + 1
            message, receive = file.write(data, offset=at, send=False)
            # Ask for enough credits to keep the pipeline full (MS-SMB2 3.2.4.1.5).
            wanted = credits + max(0, _WRITES_IN_FLIGHT * credits - (available - credits))
            request = connection.send(message, sid=session_id, tid=tree_id, credit_request=wanted)
            in_flight.append((request, receive, at, data))
    finally:
        # Collect the answers to writes already sent, so none is left
        # behind on the connection; the first failure is what counts.
        while in_flight:
            request, receive = in_flight.popleft()[:2]
            try:
                receive(request)
            except (SMBException, OSError):
                pass  # on a lost connection each fails at once


def close_handle(call: Call, owner: object) -> None:
    """Close ``owner``'s handle on this slot, if it has one. Never raises."""
    handle: SMBRawIO | None = call.slot.handles.pop(owner, None)
    if handle is None:
        return
    try:
        handle.close()
    except (SMBException, OSError, ValueError):
        # The server drops a connection's handles with it.
        call.slot.forget()


def write_all(call: Call, f: SMBRawIO, data: bytes | memoryview) -> None:
    """SMB writes may be partial (credits, the server's maximum write size): loop."""
    view = memoryview(data)
    while view:
        count = f.write(view)
        if not count:
            raise OSError(errno.EIO, "the SMB server wrote nothing")
        view = view[count:]
        call.touch()


def open_file(call: Call, path: str, mode: str) -> SMBRawIO:
    """An unbuffered handle: every write is one positional SMB write of ours."""
    return smbclient.open_file(path, mode=mode, buffering=0, share_access=SHARE_MODE, **call.kwargs)

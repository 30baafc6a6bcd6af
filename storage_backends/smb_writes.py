"""The SMB write path, run in worker threads by ``SMBCalls``: a PATCH's
blocks go out as pipelined WRITE requests on one connection, each at its own
offset, while the partial stays open (see ``storage_backends.smb``)."""

from __future__ import annotations

import errno
from collections import deque
from collections.abc import Callable, Iterator

import smbclient
from smbclient._io import SMBRawIO
from smbprotocol.exceptions import SMBException

from storage_backends.base import Block
from storage_backends.smb_calls import Call, Slot
from storage_backends.smb_wire import CREDIT_BYTES, WireWriter

# Size of one SMB WRITE request, and how many a PATCH keeps in flight on its
# connection: fewer leave the server idle between them.
_WRITE_SIZE = 1024 * 1024
_WRITES_IN_FLIGHT = 4
# Every handle shares read, write and delete: the pieces of one block are
# open on several connections at once, and a rename or delete must not be
# refused because a read is in progress.
SHARE_MODE = "rwd"

# One WRITE request's worth of a block: the file offset and the pieces of
# the received body it covers, in order, referenced rather than copied.
Message = tuple[int, list[memoryview]]


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


def _messages(block: Block, offset: int) -> Iterator[Message]:
    """Messages of up to _WRITE_SIZE bytes each, covering ``block`` in order."""
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
                yield offset, gathered
                offset += size
                gathered, size = [], 0
    if size:
        yield offset, gathered


def _split(pieces: list[memoryview], at: int) -> tuple[list[memoryview], list[memoryview]]:
    """The first ``at`` bytes of ``pieces``, and the rest."""
    head: list[memoryview] = []
    for index, piece in enumerate(pieces):
        if at < len(piece):
            if not at:
                return head, pieces[index:]
            return [*head, piece[:at]], [piece[at:], *pieces[index + 1 :]]
        head.append(piece)
        at -= len(piece)
    return head, []


class _Sender:
    """Sends one WRITE and receives its answer: framed by ``smb_wire`` where it can,
    by smbprotocol (one joined copy of the data, and several more inside) where not."""

    def __init__(self, handle: SMBRawIO) -> None:
        self._file = handle.fd
        self._wire = WireWriter.for_open(self._file)
        self.connection = self._file.connection

    def send(self, at: int, pieces: list[memoryview], credit_request: int) -> Callable[[], int]:
        """Send a WRITE of ``pieces`` at ``at``; a function that waits for its byte count."""
        if self._wire is not None:
            wire, request = self._wire, self._wire.send(at, pieces, credit_request)
            return lambda: wire.receive(request)
        file = self._file
        message, receive = file.write(b"".join(pieces), offset=at, send=False)
        request = self.connection.send(
            message,
            sid=file.tree_connect.session.session_id,
            tid=file.tree_connect.tree_connect_id,
            credit_request=credit_request,
        )
        return lambda: int(receive(request))


def _write_pipelined(call: Call, handle: SMBRawIO, todo: deque[Message]) -> None:
    """Send every message of ``todo`` as SMB2 WRITEs, several in flight.

    Returns once the server confirmed every byte. A write the server took
    only partly is sent again for its rest; each lands at its own offset,
    so completion order does not matter.
    """
    sender = _Sender(handle)
    connection = sender.connection
    largest = min(_WRITE_SIZE, connection.max_write_size)
    in_flight: deque[tuple[Callable[[], int], int, list[memoryview], int]] = deque()

    def confirm_oldest() -> None:
        receive, at, pieces, size = in_flight.popleft()
        count = receive()
        if not count:
            raise OSError(errno.EIO, "the SMB server wrote nothing")
        if count < size:
            todo.appendleft((at + count, _split(pieces, count)[1]))
        call.touch()

    try:
        while todo or in_flight:
            if not todo or len(in_flight) >= _WRITES_IN_FLIGHT:
                confirm_oldest()
                continue
            at, pieces = todo[0]
            length = sum(len(piece) for piece in pieces)
            window = connection.sequence_window
            available = window["high"] - window["low"]
            credits = (min(length, largest) - 1) // CREDIT_BYTES + 1
            if credits > available and in_flight:
                confirm_oldest()  # its response grants credits
                continue
            todo.popleft()
            size = min(length, largest, max(1, available) * CREDIT_BYTES)
            if size < length:
                pieces, rest = _split(pieces, size)
                todo.appendleft((at + size, rest))
            credits = (size - 1) // CREDIT_BYTES + 1
            # Ask for enough credits to keep the pipeline full (MS-SMB2 3.2.4.1.5).
            wanted = credits + max(0, _WRITES_IN_FLIGHT * credits - (available - credits))
            in_flight.append((sender.send(at, pieces, wanted), at, pieces, size))
    finally:
        # Collect the answers to writes already sent, so none is left
        # behind on the connection; the first failure is what counts.
        while in_flight:
            receive = in_flight.popleft()[0]
            try:
                receive()
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

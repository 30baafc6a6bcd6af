"""The SMB write path, run in worker threads by ``SMBCalls``: a PATCH's
blocks go out as pipelined WRITE requests on one connection, each at its own
offset, while the partial stays open (see ``storage_backends.smb``). Where
``smb_wire`` cannot frame them, they go through smbclient's file API
instead, one at a time.

``smbclient._io`` is imported here and in ``smb_files`` only: both load
only when a server stores on an ``smb://`` URL (storage_backends/registry.py)."""

from __future__ import annotations

import errno
from collections import deque
from collections.abc import Iterator
from typing import Any

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
        wire = WireWriter.for_open(handle.fd)
        if wire is None:
            _write_plainly(call, handle, _messages(block, offset))
        else:
            _write_pipelined(call, wire, deque(_messages(block, offset)))
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


def _write_plainly(call: Call, handle: SMBRawIO, messages: Iterator[Message]) -> None:
    """Each message through smbclient's own file API, one write at a time.

    Where ``smb_wire`` cannot frame (an encrypted share, or a smbprotocol
    release whose internals moved), nothing here touches smbprotocol's
    internals either: smbclient sizes each write to the credits it has,
    by whatever means its own release uses. Slower (a joined copy of the
    data, no writes in flight), never wrong.
    """
    for at, pieces in messages:
        handle.seek(at)
        write_all(call, handle, b"".join(pieces))


def _write_pipelined(call: Call, wire: WireWriter, todo: deque[Message]) -> None:
    """Send every message of ``todo`` as lean SMB2 WRITEs, several in flight.

    Returns once the server confirmed every byte. A write the server took
    only partly is sent again for its rest; each lands at its own offset,
    so completion order does not matter.
    """
    largest = min(_WRITE_SIZE, wire.max_write_size)
    in_flight: deque[tuple[Any, int, list[memoryview], int]] = deque()

    def confirm_oldest() -> None:
        request, at, pieces, size = in_flight.popleft()
        count = wire.receive(request)
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
            available = wire.credits_available()
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
            in_flight.append((wire.send(at, pieces, wanted), at, pieces, size))
    finally:
        # Collect the answers to writes already sent, so none is left
        # behind on the connection; the first failure is what counts.
        while in_flight:
            request = in_flight.popleft()[0]
            try:
                wire.receive(request)
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

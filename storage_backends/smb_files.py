"""The other blocking SMB calls of the backend (start-up check, create, the
steps of the shared finalize, delete, server-side concat, stat, reads,
listing stale partials), each run in a worker thread by ``SMBCalls`` with the
call's own connection; errors are translated there."""

from __future__ import annotations

import errno
import ntpath
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import PurePosixPath
from typing import Any

import smbclient
from smbclient._io import SMBFileTransaction, SMBRawIO, ioctl_request
from smbprotocol.exceptions import BadNetworkName, SMBOSError
from smbprotocol.ioctl import (
    CtlCode,
    IOCTLFlags,
    SMB2SrvCopyChunk,
    SMB2SrvCopyChunkCopy,
    SMB2SrvCopyChunkResponse,
    SMB2SrvRequestResumeKey,
)
from smbprotocol.tree import TreeConnect

from storage_backends.base import FileStat
from storage_backends.finalizing import finalize
from storage_backends.names import staged_upload_id
from storage_backends.smb_calls import Call
from storage_backends.smb_writes import open_file, write_all

# Server-side copy limits (MS-SMB2 3.3.3): 1 MiB per chunk, 16 chunks per request.
_COPY_CHUNK = 1024 * 1024
_COPY_CHUNKS_PER_REQUEST = 16


def check_share(call: Call, host: str, share: str, staging: str, probe: str) -> None:
    # The share first, on its own: for a missing share smbclient would go on
    # to ask for DFS referrals, and against Samba it keeps asking.
    session = smbclient.register_session(host, **call.kwargs)
    tree = TreeConnect(session, rf"\\{host}\{share}")
    try:
        tree.connect()
    except BadNetworkName:
        raise FileNotFoundError(
            errno.ENOENT, f"the SMB server has no share named {share!r}"
        ) from None
    tree.disconnect()
    smbclient.makedirs(staging, exist_ok=True, **call.kwargs)
    with open_file(call, probe, "wb") as f:
        write_all(call, f, b"ok")
    smbclient.remove(probe, **call.kwargs)


def create_file(call: Call, path: str) -> None:
    # "a": open or create, never truncate, so a repeated create keeps the bytes.
    with open_file(call, path, "ab"):
        pass


def flush_file(call: Call, path: str) -> None:
    """SMB2 FLUSH: the server writes what it holds of the file to its disk."""
    with _missing_as_builtin(), open_file(call, path, "r+b") as f:
        call.touch()  # the FLUSH gets the whole no-progress timeout to itself
        f.flush()


def finalize_file(
    call: Call, partial: str, note: str, root: str, relative: PurePosixPath, length: int
) -> str:
    """The shared finalize (storage_backends/finalizing.py) on the share."""
    return finalize(_ShareUpload(call, partial, note, root), relative, length)


class _ShareUpload:
    """An upload's partial and note on the share, for the shared finalize."""

    def __init__(self, call: Call, partial: str, note: str, root: str) -> None:
        self._call = call
        self._partial = partial
        self._note = note
        self._root = root

    def seal(self, length: int) -> None:
        call = self._call
        with _missing_as_builtin(), open_file(call, self._partial, "r+b") as f:
            size = f.seek(0, smbclient.SEEK_END)
            if size < length:
                # Truncating up would pad with zeros: refuse rather than publish a hole.
                raise OSError(errno.EIO, f"partial holds {size} of {length} bytes")
            if size > length:
                f.truncate(length)  # storage may hold more than the offset
            call.touch()  # the FLUSH gets the whole no-progress timeout to itself
            f.flush()  # SMB2 FLUSH: the bytes are durable before the final name appears

    def make_folders(self, relative: PurePosixPath) -> None:
        if relative.parent.parts:
            folder = join(self._root, *relative.parent.parts)
            smbclient.makedirs(folder, exist_ok=True, **self._call.kwargs)

    def write_note(self, location: str) -> None:
        with open_file(self._call, self._note, "wb") as note:
            write_all(self._call, note, location.encode())
            note.flush()  # on the server's disk before the rename it describes

    def read_note(self) -> str:
        with _missing_as_builtin(), open_file(self._call, self._note, "rb") as note:
            text: str = note.readall().decode()
        return text

    def size_of(self, relative: PurePosixPath) -> int:
        with _missing_as_builtin():
            path = join(self._root, *relative.parts)
            return int(smbclient.stat(path, **self._call.kwargs).st_size)

    def move_to(self, relative: PurePosixPath) -> bool:
        # A rename on the share is one step: there is no half-moved state.
        target = join(self._root, *relative.parts)
        return _rename_without_overwrite(self._call, self._partial, target)


@contextmanager
def _missing_as_builtin() -> Iterator[None]:
    """smbprotocol's 'no such file' as builtin FileNotFoundError, which the
    shared finalize tells apart from other failures."""
    try:
        yield
    except SMBOSError as exc:
        if exc.errno != errno.ENOENT:
            raise
        raise FileNotFoundError(errno.ENOENT, "no such file on the share") from exc


def _rename_without_overwrite(call: Call, source: str, target: str) -> bool:
    """Rename ``source`` to ``target`` unless a file has that name; False if one does.

    smbclient renames without replace-if-exists, so the server refuses to
    overwrite atomically (STATUS_OBJECT_NAME_COLLISION). smbclient first
    opens an existing target for execute access, which a server may deny
    on a non-executable file: that also means the name is taken.
    """
    try:
        smbclient.rename(source, target, **call.kwargs)
    except SMBOSError as exc:
        if exc.errno == errno.EEXIST:
            return False
        if _exists(call, target):
            return False
        raise
    return True


def _exists(call: Call, path: str) -> bool:
    try:
        smbclient.stat(path, **call.kwargs)
    except SMBOSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def remove_all(call: Call, paths: list[str]) -> None:
    for path in paths:
        try:
            smbclient.remove(path, **call.kwargs)
        except SMBOSError as exc:
            if exc.errno != errno.ENOENT:
                raise


def concat_files(call: Call, target: str, sources: list[tuple[str, int]]) -> None:
    """Fill ``target`` from offset 0 with the first ``length`` bytes of each
    ``(source, length)`` in order, copied by the server.

    smbclient.copyfile's server-side copy (FSCTL_SRV_COPYCHUNK_WRITE), with
    the target offset of each part instead of 0: the bytes never travel
    through this process.
    """
    with open_file(call, target, "r+b") as dst:
        offset = 0
        for source, length in sources:
            with open_file(call, source, "rb") as src:
                size = src.seek(0, smbclient.SEEK_END)
                if size < length:
                    raise OSError(errno.EIO, f"part holds {size} bytes, not {length}", source)
                if length:
                    _copy_chunks(call, src, dst, offset, length)
            offset += length
        dst.truncate(offset)  # stale bytes of an earlier attempt past the end
        dst.flush()


def _copy_chunks(call: Call, src: SMBRawIO, dst: SMBRawIO, target_offset: int, size: int) -> None:
    resume = SMB2SrvRequestResumeKey()
    resume.unpack(_fsctl(src, CtlCode.FSCTL_SRV_REQUEST_RESUME_KEY, output_size=32))
    resume_key = resume["resume_key"].get_value()
    position = 0
    while position < size:
        batch: list[SMB2SrvCopyChunk] = []
        while position < size and len(batch) < _COPY_CHUNKS_PER_REQUEST:
            chunk = SMB2SrvCopyChunk()
            chunk["source_offset"] = position
            chunk["target_offset"] = target_offset + position
            chunk["length"] = min(_COPY_CHUNK, size - position)
            batch.append(chunk)
            position += _COPY_CHUNK
        request = SMB2SrvCopyChunkCopy()
        request["source_key"] = resume_key
        request["chunks"] = batch
        response = SMB2SrvCopyChunkResponse()
        response.unpack(_fsctl(dst, CtlCode.FSCTL_SRV_COPYCHUNK_WRITE, 12, request))
        if response["chunks_written"].get_value() != len(batch):
            raise OSError(errno.EIO, "the SMB server copied only part of a chunk batch")
        call.touch()


def _fsctl(handle: SMBRawIO, code: int, output_size: int, input_buffer: Any = b"") -> Any:
    """Send one FSCTL on ``handle``'s file; the server's output buffer."""
    with SMBFileTransaction(handle) as transaction:
        ioctl_request(
            transaction,
            code,
            flags=IOCTLFlags.SMB2_0_IOCTL_IS_FSCTL,
            output_size=output_size,
            input_buffer=input_buffer,
        )
    return transaction.results[0]


def stat_file(call: Call, path: str) -> FileStat:
    result = smbclient.stat(path, **call.kwargs)
    return FileStat(size=result.st_size, modified=result.st_mtime)


def read_at(call: Call, path: str, offset: int, length: int) -> bytes:
    """Up to ``length`` bytes from ``offset``; fewer only at the end of the file."""
    parts: list[bytes] = []
    remaining = length
    with open_file(call, path, "rb") as f:
        f.seek(offset)
        while remaining:
            data = f.read(remaining)
            if not data:
                break
            parts.append(data)
            remaining -= len(data)
            call.touch()
    return b"".join(parts)


def stale_partials(call: Call, staging: str, older_than: float) -> list[str]:
    found: set[str] = set()
    for entry in smbclient.scandir(staging, **call.kwargs):
        upload_id = staged_upload_id(entry.name)
        if upload_id is None or not entry.is_file():
            continue
        if entry.smb_info.last_write_time.timestamp() < older_than:
            found.add(upload_id)
    return sorted(found)


def join(root: str, *parts: str) -> str:
    return ntpath.join(root, *parts)

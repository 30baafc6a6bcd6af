"""SMB2 WRITE requests framed and signed without copying their data.

smbprotocol builds every request as one ``bytes``: it packs the data into
the WRITE structure, packs that into the header, pastes the signature in,
prefixes the transport length and slices whatever the socket did not take,
copying each written byte about ten times; measured against Samba that is
3 CPU seconds per GiB, most of what an upload to a share costs. Here the
64-byte header and the 48-byte WRITE fields are packed on their own, the
signature is computed over them and the data pieces incrementally, and all
of it goes out in one ``sendmsg`` (the kernel gathers the pieces): about
0.8 CPU s/GiB for the same bytes.

It shares the connection with smbprotocol: message ids and credits come
from the connection's sequence window under its lock, the request is
registered where smbprotocol's receive thread looks for its answer, and
the socket is written under the transport's lock. Those are smbprotocol
internals (checked by ``WireWriter.for_open``, which returns None when a
release moved or reshaped them, or when the session encrypts, and the
caller then writes through smbclient's file API, touching none of them). The answers are received,
verified and parsed by smbprotocol as usual. A send that fails part-way
shuts the connection: nothing may follow half a frame.
"""

from __future__ import annotations

import errno
import functools
import hmac
import logging
import socket
import struct
from collections.abc import Callable, Sequence
from hashlib import sha256
from typing import Any

from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from smbprotocol.connection import Dialects, Request, SigningAlgorithms
from smbprotocol.exceptions import SMBException
from smbprotocol.header import Commands, Smb2Flags, SMB2HeaderRequest
from smbprotocol.open import SMB2WriteRequest, SMB2WriteResponse

logger = logging.getLogger(__name__)

Buffer = bytes | bytearray | memoryview

# MS-SMB2 2.2.21: StructureSize 49, and the data right after the 48 fixed
# bytes that follow the 64-byte header (DataOffset 0x70). Then Length,
# Offset, FileId, Channel, RemainingBytes, WriteChannelInfoOffset/Length
# and Flags, all zero but the first three.
_WRITE_FIELDS = struct.Struct("<HHIQ16sIIHHI")
_HEADER_SIZE = 64
_SIGNATURE = slice(48, 64)
# One SMB2 credit pays for 64 KiB of a request (MS-SMB2 3.1.5.2).
CREDIT_BYTES = 65536
# sendmsg takes at most IOV_MAX (1024 on Linux) buffers per call.
_MOST_BUFFERS = 512
# The Direct TCP length field has 24 bits (MS-SMB2 2.1): what is left for data.
_MOST_DATA = 0xFFFFFF - _HEADER_SIZE - _WRITE_FIELDS.size

# The connection and session attributes the framing relies on.
_CONNECTION_NEEDS = (
    "sequence_lock",
    "sequence_window",
    "outstanding_requests",
    "supports_multi_credit",
    "dialect",
    "max_write_size",
    "signing_algorithm_id",
    "transport",
    "receive",
)
_SESSION_NEEDS = ("session_id", "signing_required", "signing_key", "encrypt_data")

Signer = Callable[[int, Sequence[Buffer]], bytes]


class WireWriter:
    """Sends WRITE requests for one open file, its data passed by reference."""

    def __init__(self, file: Any, signer: Signer | None) -> None:
        self._file = file
        self._connection = file.connection
        self._session = file.tree_connect.session
        self._tree_id = file.tree_connect.tree_connect_id
        self._dfs = bool(getattr(file.tree_connect, "is_dfs_share", False))
        self._signer = signer

    @classmethod
    def for_open(cls, file: Any) -> WireWriter | None:
        """A writer for smbprotocol ``Open`` ``file``; None where smbprotocol must frame."""
        connection = getattr(file, "connection", None)
        tree = getattr(file, "tree_connect", None)
        session = getattr(tree, "session", None)
        if connection is None or tree is None or session is None:
            return None
        if not all(hasattr(connection, name) for name in _CONNECTION_NEEDS):
            return None
        if not all(hasattr(session, name) for name in _SESSION_NEEDS):
            return None
        transport = connection.transport
        if not (hasattr(transport, "_sock_lock") and hasattr(transport, "_sock")):
            return None
        if session.encrypt_data or getattr(tree, "encrypt_data", False):
            return None  # an encrypted message is sealed whole: nothing to spare
        if not _framing_fits():
            return None
        if not (session.signing_required and session.signing_key):
            return cls(file, None)
        signer = _signer(connection, session.signing_key)
        return None if signer is None else cls(file, signer)

    @property
    def max_write_size(self) -> int:
        """The largest WRITE the server takes, as negotiated."""
        return int(self._connection.max_write_size)

    def credits_available(self) -> int:
        """SMB credits this connection may spend now (MS-SMB2 3.2.4.1.5): each
        pays for 64 KiB of a request, and a response grants more."""
        with self._connection.sequence_lock:
            window = self._connection.sequence_window
            return int(window["high"] - window["low"])

    def send(self, offset: int, pieces: Sequence[Buffer], credit_request: int) -> Any:
        """Send one WRITE of ``pieces`` (in order) at ``offset``; the smbprotocol request.

        Fails as smbprotocol's own send would: ``SMBException`` if the
        connection lacks the credits for it, ``OSError`` if it is gone.
        """
        connection = self._connection
        size = sum(len(piece) for piece in pieces)
        if size > min(connection.max_write_size, _MOST_DATA):
            raise SMBException(f"a {size}-byte write is more than one WRITE may carry")
        charge = max(0, size - 1) // CREDIT_BYTES + 1 if connection.supports_multi_credit else 0
        with connection.sequence_lock:
            window = connection.sequence_window
            if charge > window["high"] - window["low"]:
                raise SMBException(f"a {size}-byte write needs {charge} credits")
            message_id = window["low"]
            window["low"] += charge or 1

        header = SMB2HeaderRequest()
        header["credit_charge"] = charge
        header["command"] = Commands.SMB2_WRITE
        header["credit_request"] = max(credit_request, charge)
        header["message_id"] = message_id
        header["session_id"] = self._session.session_id
        header["tree_id"] = self._tree_id
        header["data"] = b""
        if self._dfs:
            header["flags"].set_flag(Smb2Flags.SMB2_FLAGS_DFS_OPERATIONS)
        if self._signer is not None:
            header["flags"].set_flag(Smb2Flags.SMB2_FLAGS_SIGNED)
        packed = header.pack()
        fields = _WRITE_FIELDS.pack(
            49, _HEADER_SIZE + _WRITE_FIELDS.size, size, offset, self._file.file_id, 0, 0, 0, 0, 0
        )
        if self._signer is not None:
            # Signed with the signature field still zero, as MS-SMB2 3.1.4.1 asks.
            signature = self._signer(message_id, [packed, fields, *pieces])
            header["signature"] = signature
            packed = packed[: _SIGNATURE.start] + signature
        request = Request(header, SMB2WriteRequest, connection, session_id=self._session.session_id)
        connection.outstanding_requests[message_id] = request

        length = len(packed) + len(fields) + size
        # Direct TCP transport (MS-SMB2 2.1): a 4-byte big-endian length.
        first = struct.pack(">I", length) + packed + fields
        try:
            self._send_all([memoryview(first), *(memoryview(piece) for piece in pieces)])
        except BaseException as exc:
            # Part of the frame may be out: whatever followed on this
            # connection would be read as the rest of this WRITE (and,
            # unsigned, written into the file). No answer will come for it.
            connection.outstanding_requests.pop(message_id, None)
            shut_down(connection)
            if isinstance(exc, Exception):
                raise ConnectionResetError(
                    errno.ECONNRESET, "the SMB connection broke during a write"
                ) from exc
            raise
        return request

    def receive(self, request: Any) -> int:
        """Wait for ``request``'s answer; the count of bytes the server wrote."""
        response = self._connection.receive(request)
        answer = SMB2WriteResponse()
        answer.unpack(response["data"].get_value())
        return int(answer["count"].get_value())

    def _send_all(self, buffers: list[memoryview]) -> None:
        transport = self._connection.transport
        with transport._sock_lock:
            sock: socket.socket | None = transport._sock
            if sock is None or not getattr(transport, "connected", True):
                raise ConnectionResetError(errno.ECONNRESET, "the SMB connection is closed")
            send_buffers(sock, buffers)


def shut_down(connection: Any) -> None:
    """Shut an smbprotocol connection's socket; every call on it then fails at once.

    A shutdown, not ``Connection.disconnect()``: that takes locks a blocked
    send holds, and sends a logoff to a server that may not answer.
    """
    sock: socket.socket | None = getattr(connection.transport, "_sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed


@functools.cache
def _framing_fits() -> bool:
    """Whether this smbprotocol's header and request objects are the ones framed here.

    Built once with dummy values: a release that renamed a field or changed
    ``Request`` then falls back to smbprotocol's framing instead of failing
    every write.
    """
    try:
        header = SMB2HeaderRequest()
        for name in ("credit_charge", "credit_request", "message_id", "session_id", "tree_id"):
            header[name] = 1
        header["command"] = Commands.SMB2_WRITE
        header["data"] = b""
        header["flags"].set_flag(Smb2Flags.SMB2_FLAGS_SIGNED)
        header["signature"] = bytes(16)
        request = Request(header, SMB2WriteRequest, None, session_id=1)
        fits = len(header.pack()) == _HEADER_SIZE and request.message is header
        fits = fits and request.message["message_id"].get_value() == 1
    except Exception:  # any mismatch at all means: not ours to frame
        fits = False
    if not fits:
        logger.warning("smbprotocol's messages changed shape: SMB writes use its own framing")
    return fits


def send_buffers(sock: socket.socket, buffers: list[memoryview]) -> None:
    """Send all of ``buffers``, in order, gathered by the kernel; ``buffers`` is consumed."""
    start = 0
    while start < len(buffers):
        sent = sock.sendmsg(buffers[start : start + _MOST_BUFFERS])
        # Skip what went out; a buffer sent in part keeps its rest.
        while sent:
            head = buffers[start]
            if sent >= len(head):
                sent -= len(head)
                start += 1
            else:
                buffers[start] = head[sent:]
                sent = 0
        while start < len(buffers) and not buffers[start]:
            start += 1


def _signer(connection: Any, key: bytes) -> Signer | None:
    """The request signing smbprotocol would use on ``connection`` (MS-SMB2 3.1.4.1)."""
    if connection.dialect >= Dialects.SMB_3_1_1 and connection.signing_algorithm_id is not None:
        algorithm = connection.signing_algorithm_id
    elif connection.dialect >= Dialects.SMB_3_0_0:
        algorithm = SigningAlgorithms.AES_CMAC
    else:
        algorithm = SigningAlgorithms.HMAC_SHA256

    if algorithm == SigningAlgorithms.AES_GMAC:

        def gmac(message_id: int, parts: Sequence[Buffer]) -> bytes:
            # Nonce: the message id, then flags (0: a request, not a cancel).
            nonce = message_id.to_bytes(8, "little") + bytes(4)
            mac = Cipher(algorithms.AES(key), modes.GCM(nonce)).encryptor()
            for part in parts:
                mac.authenticate_additional_data(part)
            mac.finalize()
            return mac.tag

        return gmac
    if algorithm == SigningAlgorithms.AES_CMAC:

        def aes_cmac(message_id: int, parts: Sequence[Buffer]) -> bytes:
            mac = cmac.CMAC(algorithms.AES(key))
            for part in parts:
                mac.update(part)  # type: ignore[arg-type]  # takes any buffer
            return mac.finalize()

        return aes_cmac
    if algorithm == SigningAlgorithms.HMAC_SHA256:

        def hmac_sha256(message_id: int, parts: Sequence[Buffer]) -> bytes:
            mac = hmac.new(key, digestmod=sha256)
            for part in parts:
                mac.update(part)
            return mac.digest()[:16]

        return hmac_sha256
    return None  # an algorithm this module does not know

"""SMB WRITE framing without copies (storage_backends/smb_wire.py).

The lean framing must be what runs against a real Samba with the installed
smbprotocol, must sign exactly as smbprotocol would for every signing
algorithm (checked against a real smbd limited to each dialect, and against
smbprotocol's own signing code), and smbprotocol's framing must take over
where the lean one cannot go (an encrypted share).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import smbclient
from smbprotocol.connection import Connection, Dialects, SigningAlgorithms
from smbprotocol.exceptions import SMBConnectionClosed
from smbprotocol.header import Commands

import storage_backends.smb_wire as smb_wire
import storage_backends.smb_writes as smb_writes
from storage_backends.smb import SMBStorage
from storage_backends.smb_location import SMBLocation
from storage_backends.smb_wire import WireWriter, _signer, send_buffers
from storage_backends.smb_writes import _split
from tests.samba_fixtures import SambaServer, running_samba

UPLOAD_ID = "0123456789abcdef0123456789abcdef"
MiB = 1024 * 1024


# smbd settings, and the signing smbprotocol then uses
SAMBA_VARIANTS = {
    "smb3.1.1-gmac": ({}, SigningAlgorithms.AES_GMAC),
    "smb3.0-cmac": ({"server max protocol": "SMB3_00"}, SigningAlgorithms.AES_CMAC),
    "smb2.1-hmac": ({"server max protocol": "SMB2_10"}, SigningAlgorithms.HMAC_SHA256),
    # No multi-credit: a message takes one id whatever its size.
    "smb2.0.2-hmac": (
        {"server min protocol": "SMB2_02", "server max protocol": "SMB2_02"},
        SigningAlgorithms.HMAC_SHA256,
    ),
}


@pytest.fixture(scope="module", params=list(SAMBA_VARIANTS))
def samba_variant(request: pytest.FixtureRequest) -> Iterator[tuple[SambaServer, int]]:
    settings, algorithm = SAMBA_VARIANTS[request.param]
    for server in running_samba(settings):
        yield server, algorithm


def _kwargs(samba: SambaServer, cache: dict[str, object]) -> dict[str, object]:
    return {
        "username": samba.user,
        "password": samba.password,
        "port": samba.port,
        "connection_cache": cache,
    }


def _negotiated_signing(connection: Connection) -> int:
    if connection.dialect >= Dialects.SMB_3_1_1 and connection.signing_algorithm_id is not None:
        return int(connection.signing_algorithm_id)
    if connection.dialect >= Dialects.SMB_3_0_0:
        return SigningAlgorithms.AES_CMAC
    return SigningAlgorithms.HMAC_SHA256


def test_lean_writes_are_signed_as_the_server_expects(
    samba_variant: tuple[SambaServer, int],
) -> None:
    """Each dialect's signing: smbd accepts the writes and stores them byte for byte."""
    samba, algorithm = samba_variant
    cache: dict[str, object] = {}
    name = f"wire-{uuid.uuid4().hex[:8]}.bin"
    unc = rf"\\{samba.host}\{samba.share}\{name}"
    # Pieces of odd sizes, as the HTTP body arrives: each is signed and sent
    # by reference, and must land in order.
    sizes = (1, 65535, 70000, 3, 200_001)
    try:
        with smbclient.open_file(unc, mode="wb", buffering=0, **_kwargs(samba, cache)) as handle:
            file = handle.fd
            assert file.tree_connect.session.signing_required
            assert _negotiated_signing(file.connection) == algorithm
            writer = WireWriter.for_open(file)
            assert writer is not None, "the installed smbprotocol no longer suits smb_wire"
            if file.connection.max_write_size < sum(sizes):  # SMB 2.0.2: 64 KiB
                sizes = (1, 30_000, 3, 35_000)
            pieces = [os.urandom(size) for size in sizes]
            first = writer.send(5, [memoryview(p) for p in pieces], credit_request=8)
            second = writer.send(0, [b"head!"], credit_request=8)
            assert writer.receive(first) == sum(map(len, pieces))
            assert writer.receive(second) == 5
    finally:
        smbclient.reset_connection_cache(connection_cache=cache)
    assert (samba.share_dir / name).read_bytes() == b"head!" + b"".join(pieces)


@pytest.mark.anyio
async def test_storage_writes_through_each_dialect(
    samba_variant: tuple[SambaServer, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PATCH-sized write through the backend: pipelined lean WRITEs, nothing else."""
    samba, _ = samba_variant
    sent: list[int] = []
    lean_send = WireWriter.send

    def counted(self: WireWriter, offset: int, pieces: Any, credit_request: int) -> Any:
        sent.append(sum(len(piece) for piece in pieces))
        return lean_send(self, offset, pieces, credit_request)

    monkeypatch.setattr(WireWriter, "send", counted)
    data = os.urandom(9 * MiB + 12345)
    stored = await _write_through_storage(samba, data)
    assert hashlib.sha256(stored).digest() == hashlib.sha256(data).digest()
    assert sum(sent) == len(data) and len(sent) >= 10


@pytest.fixture(scope="module")
def sealed_samba() -> Iterator[SambaServer]:
    """A share that requires encryption: every message is sealed whole."""
    yield from running_samba({"server smb encrypt": "required"})


@pytest.mark.anyio
async def test_sealed_share_falls_back_to_smbprotocol_framing(
    sealed_samba: SambaServer,
) -> None:
    cache: dict[str, object] = {}
    unc = rf"\\{sealed_samba.host}\{sealed_samba.share}\probe.bin"
    try:
        with smbclient.open_file(unc, mode="wb", buffering=0, **_kwargs(sealed_samba, cache)) as f:
            assert f.fd.tree_connect.encrypt_data or f.fd.tree_connect.session.encrypt_data
            assert WireWriter.for_open(f.fd) is None
    finally:
        smbclient.reset_connection_cache(connection_cache=cache)
    data = os.urandom(5 * MiB + 7)
    assert await _write_through_storage(sealed_samba, data) == data


@pytest.fixture(scope="module")
def unsigned_samba() -> Iterator[SambaServer]:
    yield from running_samba({"server max protocol": "SMB2_10", "server signing": "disabled"})


def test_unsigned_session_gets_unsigned_writes(unsigned_samba: SambaServer) -> None:
    samba = unsigned_samba
    cache: dict[str, object] = {}
    kwargs = _kwargs(samba, cache)
    smbclient.register_session(samba.host, require_signing=False, **kwargs)  # type: ignore[arg-type]
    try:
        with smbclient.open_file(
            rf"\\{samba.host}\{samba.share}\plain.bin", "wb", 0, **kwargs
        ) as f:
            assert not f.fd.tree_connect.session.signing_required
            writer = WireWriter.for_open(f.fd)
            assert writer is not None
            request = writer.send(0, [b"not ", b"signed"], credit_request=8)
            assert writer.receive(request) == 10
    finally:
        smbclient.reset_connection_cache(connection_cache=cache)
    assert (samba.share_dir / "plain.bin").read_bytes() == b"not signed"


def test_a_write_the_socket_refuses_ends_the_connection(samba: SambaServer) -> None:
    """No request is left waiting, and nothing can follow a frame cut short."""
    cache: dict[str, object] = {}
    try:
        unc = rf"\\{samba.host}\{samba.share}\cut-{uuid.uuid4().hex[:8]}.bin"
        f = smbclient.open_file(unc, "wb", 0, **_kwargs(samba, cache))
        writer = WireWriter.for_open(f.fd)
        assert writer is not None
        connection = f.fd.connection
        waiting = set(connection.outstanding_requests)
        connection.transport._sock.shutdown(socket.SHUT_WR)
        with pytest.raises(ConnectionResetError):
            writer.send(0, [os.urandom(MiB)], credit_request=8)
        assert set(connection.outstanding_requests) == waiting
        # The connection is cut, not left mid-frame for the next message
        # (which one of the two smbprotocol raises depends on whether its
        # receive thread has seen the end of the stream yet).
        with pytest.raises((SMBConnectionClosed, BrokenPipeError)):
            f.close()
    finally:
        with contextlib.suppress(SMBConnectionClosed, OSError):  # its logoff finds no socket
            smbclient.reset_connection_cache(connection_cache=cache)


@pytest.mark.anyio
async def test_changed_smbprotocol_messages_fall_back(
    samba: SambaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Request that no longer takes what smb_wire passes: smbprotocol frames instead."""

    class MovedRequest:
        def __init__(self, message: Any) -> None:
            self.message = message

    monkeypatch.setattr(smb_wire, "Request", MovedRequest)
    smb_wire._framing_fits.cache_clear()
    try:
        cache: dict[str, object] = {}
        unc = rf"\\{samba.host}\{samba.share}\moved.bin"
        try:
            with smbclient.open_file(unc, "wb", 0, **_kwargs(samba, cache)) as f:
                assert WireWriter.for_open(f.fd) is None
        finally:
            smbclient.reset_connection_cache(connection_cache=cache)
        data = os.urandom(5 * MiB + 1)
        assert await _write_through_storage(samba, data) == data
    finally:
        smb_wire._framing_fits.cache_clear()


@pytest.mark.anyio
async def test_unknown_internals_fall_back_to_smbprotocol_framing(
    samba: SambaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If a release moves what smb_wire relies on, writes still work (slower)."""
    monkeypatch.setattr(smb_writes.WireWriter, "for_open", classmethod(lambda cls, file: None))
    data = os.urandom(6 * MiB + 3)
    assert await _write_through_storage(samba, data) == data


@pytest.mark.anyio
@pytest.mark.parametrize("lean", [True, False], ids=["lean", "fallback"])
async def test_only_the_lean_path_reads_smbprotocols_credit_window(
    samba: SambaServer, monkeypatch: pytest.MonkeyPatch, lean: bool
) -> None:
    """The credit window is an smbprotocol internal: if a release moved it,
    the fallback must still write, so nothing of ours reads it there."""
    readers: set[str] = set()

    def read_window(connection: Connection) -> Any:
        readers.add(sys._getframe(1).f_globals["__name__"])
        return connection.__dict__["sequence_window"]

    def set_window(connection: Connection, value: Any) -> None:
        connection.__dict__["sequence_window"] = value

    # On the class, so every connection the backend opens reports its readers.
    monkeypatch.setattr(
        Connection, "sequence_window", property(read_window, set_window), raising=False
    )
    if not lean:
        monkeypatch.setattr(smb_writes.WireWriter, "for_open", classmethod(lambda c, f: None))
    data = os.urandom(5 * MiB + 9)

    assert await _write_through_storage(samba, data) == data

    ours = {name for name in readers if name.startswith("storage_backends")}
    assert ours == ({"storage_backends.smb_wire"} if lean else set())
    assert any(name.startswith("smb") for name in readers)  # smbprotocol's own reads


async def _write_through_storage(samba: SambaServer, data: bytes) -> bytes:
    folder = f"wire-{uuid.uuid4().hex[:12]}"
    storage = SMBStorage(SMBLocation.parse(samba.url(folder) + "?timeout=10s"), samba.password)
    try:
        await storage.check()
        await storage.create(UPLOAD_ID)

        async def blocks() -> AsyncIterator[list[bytes]]:
            view = memoryview(data)
            for start in range(0, len(data), 4 * MiB):
                block = view[start : start + 4 * MiB]
                # Uneven pieces, as uvicorn hands them over.
                yield [bytes(block[i : i + 65536 - 17]) for i in range(0, len(block), 65536 - 17)]

        assert await storage.write(UPLOAD_ID, 0, blocks()) == len(data)
        return (samba.share_dir / folder / ".partial" / UPLOAD_ID).read_bytes()
    finally:
        await storage.aclose()


@pytest.mark.parametrize(
    "algorithm, dialect",
    [
        (SigningAlgorithms.AES_GMAC, Dialects.SMB_3_1_1),
        (SigningAlgorithms.AES_CMAC, Dialects.SMB_3_1_1),
        (SigningAlgorithms.HMAC_SHA256, Dialects.SMB_3_1_1),
        (None, Dialects.SMB_3_0_2),
        (None, Dialects.SMB_2_1_0),
    ],
    ids=["gmac", "cmac", "hmac", "smb3.0.2-cmac", "smb2.1-hmac"],
)
def test_signatures_match_smbprotocol(algorithm: int | None, dialect: int) -> None:
    """Signing the parts one by one gives smbprotocol's signature of the joined message."""
    connection = SimpleNamespace(dialect=dialect, signing_algorithm_id=algorithm)
    key = os.urandom(16)
    header = os.urandom(48) + bytes(16)  # a packed header: signature field zero
    parts = [header, os.urandom(48), os.urandom(100_000), memoryview(os.urandom(999))[3:]]
    signer = _signer(connection, key)
    assert signer is not None
    expected = Connection._generate_signature(
        connection,  # type: ignore[arg-type]  # only dialect and algorithm are read
        b"".join(bytes(part) for part in parts),
        key,
        4242,
        False,
        Commands.SMB2_WRITE,
    )
    assert signer(4242, parts) == expected


def test_unknown_signing_algorithm_is_not_guessed() -> None:
    connection = SimpleNamespace(dialect=Dialects.SMB_3_1_1, signing_algorithm_id=0x7777)
    assert _signer(connection, bytes(16)) is None


def test_send_buffers_survives_partial_sends() -> None:
    """Whatever prefix each sendmsg takes, every byte goes out once, in order."""

    class ShortSocket:
        """Takes a random prefix of what it is offered, as a full socket buffer does."""

        def __init__(self) -> None:
            self.out = bytearray()
            self.calls = 0
            self.most_buffers = 0
            self.random = random.Random(7)

        def sendmsg(self, buffers: list[memoryview]) -> int:
            self.calls += 1
            self.most_buffers = max(self.most_buffers, len(buffers))
            offered = b"".join(buffers)
            taken = self.random.randint(1, len(offered)) if offered else 0
            self.out += offered[:taken]
            return taken

    sizes = [10, 0, 300_000, 1, 0, 70_000] + [1] * 1500 + [5000]
    buffers = [os.urandom(size) for size in sizes]
    sock = ShortSocket()
    send_buffers(sock, [memoryview(b) for b in buffers])  # type: ignore[arg-type]
    assert bytes(sock.out) == b"".join(buffers)
    assert sock.calls > 20  # it really was fed in many short pieces
    assert sock.most_buffers <= 1024  # IOV_MAX


@pytest.mark.parametrize("at", [0, 1, 4, 5, 6, 9, 10])
def test_split_pieces(at: int) -> None:
    pieces = [memoryview(b"abcd"), memoryview(b"e"), memoryview(b"fghij")]
    head, rest = _split(pieces, at)
    assert b"".join(head) == b"abcdefghij"[:at]
    assert b"".join(rest) == b"abcdefghij"[at:]
    assert all(len(piece) for piece in head + rest)

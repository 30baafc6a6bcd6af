#!/usr/bin/env python3
"""Upload throughput to an SMB share: through tusserver, and raw smbclient, in one run.

Starts a loopback Samba with the project's test fixture code
(``tests/samba_fixtures.py``) and ``python -m tusserver serve`` storing on
it, then, in rounds, sends the same random bytes

* ``raw 1 connection``: smbclient on one connection, 4 MiB writes, one
  after the other (what one SMB connection of smbprotocol does here);
* ``raw 4 connections``: the same bytes, each 4 MiB block cut into four
  pieces written at once on four connections;
* ``tusserver``: one PATCH of the whole upload through HTTP.

It prints the best MB/s of each and tusserver's ratio to the raw single
connection. It asserts nothing about speed; it exits 1 only if a stored
file differs from the bytes sent or something would not start.

Usage: python bench/smb_bench.py [--size-mib 512] [--repeat 3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import smbclient

REPO_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_DIR))

from tests.samba_fixtures import SambaServer  # noqa: E402
from tests.server_fixtures import free_port  # noqa: E402

MiB = 1024 * 1024
MB = 1_000_000
BLOCK = 4 * MiB


def raw_write(samba: SambaServer, name: str, data: bytes, connections: int) -> float:
    """Seconds to write ``data`` to the share with smbclient on ``connections`` connections."""
    caches: list[dict[str, object]] = [{} for _ in range(connections)]
    unc = rf"\\{samba.host}\{samba.share}\{name}"

    def kwargs(index: int) -> dict[str, object]:
        return {
            "username": samba.user,
            "password": samba.password,
            "port": samba.port,
            "connection_cache": caches[index],
        }

    handles = [
        smbclient.open_file(
            unc, mode="wb" if i == 0 else "r+b", buffering=0, share_access="rw", **kwargs(i)
        )
        for i in range(connections)
    ]

    def put(index: int, offset: int, piece: memoryview) -> None:
        handle = handles[index]
        handle.seek(offset)
        while piece:
            piece = piece[handle.write(piece) :]

    view = memoryview(data)
    started = time.perf_counter()
    with ThreadPoolExecutor(connections) as pool:
        for start in range(0, len(data), BLOCK):
            block = view[start : start + BLOCK]
            size = -(-len(block) // connections)
            futures = [
                pool.submit(put, i, start + i * size, block[i * size : (i + 1) * size])
                for i in range(connections)
                if i * size < len(block)
            ]
            for future in futures:
                future.result()
    elapsed = time.perf_counter() - started
    for handle in handles:
        handle.close()
    for cache in caches:
        smbclient.reset_connection_cache(connection_cache=cache)
    return elapsed


def tus_upload(endpoint: str, data: bytes) -> tuple[float, str]:
    """Seconds for one PATCH of ``data`` through tusserver, and the upload id.

    The PATCH goes out on a raw socket from one buffer: an HTTP client
    library would cost more CPU than the server on this machine.
    """
    tus = {"Tus-Resumable": "1.0.0"}
    created = httpx.post(endpoint, headers={**tus, "Upload-Length": str(len(data))})
    created.raise_for_status()
    url = httpx.URL(endpoint).join(created.headers["Location"])
    head = (
        f"PATCH {url.raw_path.decode()} HTTP/1.1\r\nHost: {url.host}:{url.port}\r\n"
        "Tus-Resumable: 1.0.0\r\nContent-Type: application/offset+octet-stream\r\n"
        f"Upload-Offset: 0\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    ).encode()
    assert url.host is not None and url.port is not None
    with socket.create_connection((url.host, url.port)) as sock:
        started = time.perf_counter()
        sock.sendall(head)
        sock.sendall(data)
        response = b""
        while b"\r\n" not in response:
            chunk = sock.recv(65536)
            if not chunk:
                break
            response += chunk
        elapsed = time.perf_counter() - started
    status = response.split(b"\r\n", 1)[0]
    if b" 204 " not in status + b" ":
        raise RuntimeError(f"PATCH answered {status!r}")
    return elapsed, str(url).rsplit("/", 1)[1]


def start_tusserver(samba: SambaServer, scratch: Path, port: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, TUSSERVER_SMB_PASSWORD=samba.password, PYTHONPATH=str(REPO_DIR))
    argv = [
        sys.executable,
        "-m",
        "tusserver",
        "serve",
        "--port",
        str(port),
        "--storage",
        samba.url("tus"),
        "--data-dir",
        str(scratch / "data"),
        "--log-level",
        "warning",
    ]
    process = subprocess.Popen(argv, env=env, cwd=scratch)
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.options(f"http://127.0.0.1:{port}/files/", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("tusserver did not start")
        time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=512, help="upload size (MiB)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the best figure counts")
    args = parser.parse_args()
    data = os.urandom(args.size_mib * MiB)
    digest = hashlib.sha256(data).hexdigest()
    scratch = Path(tempfile.mkdtemp(prefix="tus-smbb-", dir="/tmp"))
    samba = SambaServer(scratch / "samba")
    best: dict[str, float] = {}
    process = None
    try:
        samba.start()
        port = free_port()
        process = start_tusserver(samba, scratch, port)
        endpoint = f"http://127.0.0.1:{port}/files/"
        for round_number in range(1, args.repeat + 1):
            figures = {
                "raw 1 connection": raw_write(samba, "raw1.bin", data, 1),
                "raw 4 connections": raw_write(samba, "raw4.bin", data, 4),
            }
            elapsed, upload_id = tus_upload(endpoint, data)
            figures["tusserver"] = elapsed
            for name in ("raw1.bin", "raw4.bin", f"tus/{upload_id}"):
                stored = (samba.share_dir / name).read_bytes()
                if hashlib.sha256(stored).hexdigest() != digest:
                    print(f"{name}: stored bytes differ from the bytes sent", file=sys.stderr)
                    return 1
                (samba.share_dir / name).unlink()
            for name, seconds in figures.items():
                rate = len(data) / seconds / MB
                best[name] = max(best.get(name, 0.0), rate)
            print(
                f"round {round_number}: "
                + ", ".join(f"{name} {len(data) / s / MB:.0f} MB/s" for name, s in figures.items())
            )
    finally:
        if process is not None:
            process.terminate()
            process.wait(30)
        samba.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"\n{args.size_mib} MiB, best of {args.repeat} (1 MB = 10^6 bytes):")
    for name, rate in best.items():
        print(f"  {name:<18} {rate:7.0f} MB/s")
    ratio = best["tusserver"] / best["raw 1 connection"]
    print(f"  tusserver / raw 1 connection: {ratio:.2f} (target >= 0.80, and above 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

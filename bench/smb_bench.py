#!/usr/bin/env python3
"""Upload throughput to an SMB share: through tusserver, and raw smbclient, in one run.

Starts a loopback Samba with the project's test fixture code
(``tests/samba_fixtures.py``) and ``python -m tusserver serve`` storing on
it, then, in rounds, sends the same random bytes

* ``raw 1 conn, 4 MiB writes``: smbclient's file ``write`` on one
  connection, 4 MiB per call, one after the other;
* ``raw 1 conn, 1 MiB writes``: the same with 1 MiB per call (cheaper per
  byte in smbprotocol, so the stronger single-connection baseline);
* ``raw 4 connections``: each 4 MiB block cut into four pieces written at
  once on four connections;
* ``tusserver``: one PATCH of the whole upload through HTTP, to a server
  with its default SHA-256 of every upload;
* ``tusserver, no digest``: the same to a server started with
  ``--file-digest none``, doing what raw smbclient does and no more.

Each round starts one path further on in this list (with as many rounds
as paths, each path goes first once), and each round starts by writing
and removing a few GiB on the share's file system (see
``warm_page_cache``): on a virtual machine, smbd's first writes into page
cache pages nobody used yet cost up to ten times the CPU, whichever path
makes them.

It prints the best MB/s of each over the rounds, each tusserver's ratio to
the best raw single connection (1.0 asked), and the CPU seconds per GiB
each process spent in the best round, a tusserver's with all its
processes (the HTTP server's workers and its embedded Redis). The
machine's cores are shared by the client, tusserver and smbd; nothing is
pinned to a CPU, on either side. It asserts
nothing about speed; it exits 1 only if a stored file differs from the
bytes sent or something would not start.

Usage: python bench/smb_bench.py [--size-mib 512] [--repeat 5]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import smbclient

REPO_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_DIR))
sys.path.insert(0, str(REPO_DIR / "bench"))

from served_process import free_port, tree_cpu_seconds, wait_until_up  # noqa: E402

from tests.samba_fixtures import SambaServer  # noqa: E402

MiB = 1024 * 1024
MB = 1_000_000
BLOCK = 4 * MiB


def own_cpu() -> float:
    """CPU seconds (user + system) of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def group_cpu(pgid: int) -> float:
    """CPU seconds of a process group's live members and their reaped children."""
    total = 0.0
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) != pgid:
                continue
            times = process.cpu_times()
        except (psutil.Error, ProcessLookupError):
            continue  # gone meanwhile
        total += times.user + times.system + times.children_user + times.children_system
    return total


def file_digest(path: Path) -> str:
    """SHA-256 of a file, read in pieces: a whole-file read would allocate
    (and first-touch) as much memory as the upload, between rounds."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def warm_page_cache(directory: Path, size: int) -> None:
    """Write and remove ``size`` bytes in ``directory``, so later writes reuse warm pages.

    On a virtual machine the first touch of a guest page the host has not
    backed yet is expensive: a plain pwrite loop into the page cache measured
    0.24 to 2.6 system CPU s/GiB here, depending only on whether the pages
    had been used before. smbd pays that cost when it writes, for raw
    smbclient and tusserver alike, and it swamped the difference between
    them. Freed page cache pages are handed out again first, so writing
    (and deleting) more than a round needs up front makes rounds comparable.
    """
    block = bytes(64 * MiB)
    path = directory / "warm-up.bin"
    with path.open("wb") as f:
        for _ in range(-(-size // len(block))):
            f.write(block)
    path.unlink()


def raw_write(
    samba: SambaServer, name: str, data: bytes, connections: int, block: int = BLOCK
) -> float:
    """Seconds to write ``data`` to the share with smbclient on ``connections`` connections.

    Each ``block`` is cut into one piece per connection, written at once.
    """
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
        for start in range(0, len(data), block):
            piece = view[start : start + block]
            size = -(-len(piece) // connections)
            futures = [
                pool.submit(put, i, start + i * size, piece[i * size : (i + 1) * size])
                for i in range(connections)
                if i * size < len(piece)
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


def start_tusserver(
    samba: SambaServer, scratch: Path, port: int, file_digest: str
) -> subprocess.Popen[bytes]:
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
        str(scratch / f"data-{file_digest}"),
        "--file-digest",
        file_digest,
        "--log-level",
        "warning",
    ]
    process = subprocess.Popen(argv, env=env, cwd=scratch)
    try:
        wait_until_up(process, f"http://127.0.0.1:{port}/files/", "tusserver")
    except RuntimeError:
        process.kill()
        raise
    return process


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=512, help="upload size (MiB)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds; the best figure counts")
    args = parser.parse_args()
    data = os.urandom(args.size_mib * MiB)
    digest = hashlib.sha256(data).hexdigest()
    scratch = Path(tempfile.mkdtemp(prefix="tus-smbb-", dir="/tmp"))
    samba = SambaServer(scratch / "samba")
    best: dict[str, float] = {}
    cpu: dict[str, dict[str, float]] = {}  # CPU seconds per process in the best round
    # The tus paths, each to a server of its own: its --file-digest.
    servers = {"tusserver": "sha256", "tusserver, no digest": "none"}
    raws = {
        "raw 1 conn, 4 MiB writes": ("raw1-4.bin", 1, 4 * MiB),
        "raw 1 conn, 1 MiB writes": ("raw1-1.bin", 1, MiB),
        "raw 4 connections": ("raw4.bin", 4, 4 * MiB),
    }
    paths = [*raws, *servers]
    processes: dict[str, subprocess.Popen[bytes]] = {}
    endpoints: dict[str, str] = {}
    try:
        samba.start()
        for name, digest_setting in servers.items():
            port = free_port()
            processes[name] = start_tusserver(samba, scratch, port, digest_setting)
            endpoints[name] = f"http://127.0.0.1:{port}/files/"
        for round_number in range(1, args.repeat + 1):
            # Every path of a round leaves its file until the round ends.
            warm_page_cache(samba.share_dir, 2 * len(paths) * len(data))
            figures: dict[str, float] = {}
            spent: dict[str, dict[str, float]] = {}
            stored_names = []
            # Each round starts one path further on, so that over as many
            # rounds as there are paths each path goes first once: the first
            # writes after the warm-up were the fastest, whichever path made
            # them, and the best figure of each would otherwise favour one.
            start = round_number % len(paths)
            for name in paths[start:] + paths[:start]:
                server = processes.get(name)
                before = own_cpu(), group_cpu(samba.pid)
                server_before = 0.0 if server is None else tree_cpu_seconds(server)
                if server is not None:
                    figures[name], upload_id = tus_upload(endpoints[name], data)
                    stored_names.append(f"tus/{upload_id}")
                else:
                    file_name, connections, block = raws[name]
                    figures[name] = raw_write(samba, file_name, data, connections, block)
                    stored_names.append(file_name)
                spent[name] = {
                    "client": own_cpu() - before[0],
                    "smbd": group_cpu(samba.pid) - before[1],
                }
                if server is not None:
                    spent[name]["tusserver"] = tree_cpu_seconds(server) - server_before
            for name in stored_names:
                if file_digest(samba.share_dir / name) != digest:
                    print(f"{name}: stored bytes differ from the bytes sent", file=sys.stderr)
                    return 1
                (samba.share_dir / name).unlink()
            for name, seconds in figures.items():
                rate = len(data) / seconds / MB
                if rate > best.get(name, 0.0):
                    best[name] = rate
                    cpu[name] = spent[name]
            print(
                f"round {round_number}: "
                + ", ".join(f"{name} {len(data) / figures[name] / MB:.0f} MB/s" for name in paths),
                flush=True,
            )
    finally:
        for process in processes.values():
            process.terminate()
            process.wait(30)
        samba.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    gib = len(data) / 2**30
    print(f"\n{args.size_mib} MiB, best of {args.repeat} (1 MB = 10^6 bytes; CPU in s/GiB):")
    for name in paths:
        rate = best[name]
        spent_text = ", ".join(f"{who} {seconds / gib:.2f}" for who, seconds in cpu[name].items())
        print(f"  {name:<26} {rate:7.0f} MB/s   CPU {spent_text}")
    single = max(best["raw 1 conn, 4 MiB writes"], best["raw 1 conn, 1 MiB writes"])
    for name in servers:
        ratio = best[name] / single
        verdict = "met" if ratio >= 1.0 else "missed"
        print(f"  {name} / best raw single connection: {ratio:.2f} (target >= 1.0: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

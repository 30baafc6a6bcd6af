#!/usr/bin/env python3
"""What authorization costs per request: HEAD requests/s with and without it.

Serves the same app side by side, each setting in its own process with its
own embedded Redis, pinned to CPU 0 (the client on CPU 1):

- no authentication: the server as it is by default;
- an ``authenticate`` callable that returns a fixed owner without looking
  at the request: the cost of the owner check alone (one Redis read of the
  upload's owner before its lock is waited for);
- JWT HS256, RS256 (2048-bit key) and ES256 (P-256): token verification
  plus the owner check, as a deployment runs it.

Each round sends the same number of HEAD requests to an upload of each
server over a few keep-alive connections (each connection its own upload),
the order rotating from round to round. It prints requests/s (best and
median of the rounds) and the CPU time the server's process tree (uvicorn
and its Redis) spent per request (the lowest of the rounds), and what a
request costs more than without authentication in that CPU time: on a
machine shared with other work, CPU time per request moves much less than
requests/s. Last, the verification alone, in this process: the best mean
of a few thousand ``JWTAuthenticator.owner`` calls per algorithm. It
asserts nothing about speed; it exits 1 only if a server answers something
other than 200.

Usage: python bench/auth_bench.py [--requests 20000] [--connections 8] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

# Run as `python bench/<name>.py`: this folder is on sys.path.
from served_process import free_port, tree_cpu_seconds, wait_until_up

REPO_DIR = Path(__file__).resolve().parent.parent
SERVER_CPU, CLIENT_CPU = 0, 1
SECRET_ENV = "AUTH_BENCH_JWT_SECRET"  # handed to the launcher without argv

# argv: port, storage, data dir, setting, public key file (or "-").
LAUNCHER = """
import os, sys, uvicorn
from pathlib import Path
from tusserver import Config, create_app
port, storage, data, setting, key = sys.argv[1:6]
fields = {}
authenticate = None
if setting == "hs256":
    fields["jwt_secret"] = os.environ["AUTH_BENCH_JWT_SECRET"]
elif setting in ("rs256", "es256"):
    fields["jwt_public_key"] = Path(key)
elif setting == "fixed":
    async def authenticate(request):
        return "bench"
config = Config(storage=storage, data_dir=Path(data), **fields)
app = create_app(config, authenticate=authenticate)
uvicorn.run(app, host="127.0.0.1", port=int(port), log_level="warning")
"""

SETTINGS = {
    "none": "no authentication",
    "fixed": "owner check only (authenticate callable)",
    "hs256": "JWT HS256",
    "rs256": "JWT RS256 (2048-bit)",
    "es256": "JWT ES256 (P-256)",
}


@dataclass
class Served:
    setting: str
    process: subprocess.Popen[bytes]
    port: int
    authorization: str
    rates: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)  # server CPU per request

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.process)

    @property
    def headers(self) -> str:
        line = f"Authorization: {self.authorization}\r\n" if self.authorization else ""
        return f"Tus-Resumable: 1.0.0\r\n{line}"


def keys(workdir: Path) -> tuple[str, dict[str, tuple[object, Path]]]:
    """The HS256 secret, and for RS256 and ES256 the private key and public key file."""
    pairs: dict[str, tuple[object, Path]] = {}
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    for name in ("rs256", "es256"):
        if name == "rs256":
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            private = ec.generate_private_key(ec.SECP256R1())
        path = workdir / f"{name}.pem"
        path.write_bytes(
            private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        pairs[name] = (private, path)
    return secrets.token_urlsafe(48), pairs


def authorization(setting: str, secret: str, pairs: dict[str, tuple[object, Path]]) -> str:
    claims = {"sub": "bench", "exp": int(time.time()) + 24 * 3600}
    if setting == "hs256":
        return "Bearer " + jwt.encode(claims, secret, algorithm="HS256")
    if setting in pairs:
        return "Bearer " + jwt.encode(claims, pairs[setting][0], algorithm=setting.upper())  # type: ignore[arg-type]
    return ""


def start(
    setting: str, workdir: Path, secret: str, pairs: dict[str, tuple[object, Path]]
) -> Served:
    port = free_port()
    folder = workdir / setting
    key = str(pairs[setting][1]) if setting in pairs else "-"
    process = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(port), str(folder / "files"), str(folder / "data"),
         setting, key],
        cwd=REPO_DIR,
        env={**os.environ, SECRET_ENV: secret},
        preexec_fn=lambda: os.sched_setaffinity(0, {SERVER_CPU}),
    )  # fmt: skip
    wait_until_up(process, f"http://127.0.0.1:{port}/files/", f"{setting}: the server")
    return Served(setting, process, port, authorization(setting, secret, pairs))


def create_upload(served: Served) -> str:
    headers = {"Tus-Resumable": "1.0.0", "Upload-Length": "1024"}
    if served.authorization:
        headers["Authorization"] = served.authorization
    created = httpx.post(f"http://127.0.0.1:{served.port}/files/", headers=headers)
    if created.status_code != 201:
        raise RuntimeError(f"{served.setting}: POST answered {created.status_code}")
    return created.headers["Location"]


async def head_rate(served: Served, requests: int, connections: int) -> tuple[float, float]:
    """HEAD requests/s over ``connections`` keep-alive connections, each on its
    own upload, and the server's CPU microseconds per request."""
    paths = [create_upload(served) for _ in range(connections)]
    streams = [await asyncio.open_connection("127.0.0.1", served.port) for _ in paths]
    remaining = requests

    async def worker(path: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal remaining
        request = f"HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{served.headers}\r\n".encode()
        while remaining > 0:
            remaining -= 1
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"{served.setting}: HEAD answered {head[:40]!r}")

    cpu_before = served.cpu_seconds()
    started = time.perf_counter()
    await asyncio.gather(*(worker(p, r, w) for p, (r, w) in zip(paths, streams, strict=True)))
    elapsed = time.perf_counter() - started
    cpu = served.cpu_seconds() - cpu_before
    for _, writer in streams:
        writer.close()
    return requests / elapsed, cpu / requests * 1e6


def verification_us(secret: str, pairs: dict[str, tuple[object, Path]]) -> dict[str, float]:
    """Microseconds per ``JWTAuthenticator.owner`` call, best mean of 5 runs of 2,000."""
    from tusserver import auth  # the package under test, from this checkout

    verifiers = {"hs256": auth.JWTAuthenticator(secret, "HS256")}
    for name, (_, path) in pairs.items():
        key, algorithm = auth.load_public_key(path)
        verifiers[name] = auth.JWTAuthenticator(key, algorithm)
    figures = {}
    for name, verifier in verifiers.items():
        header = authorization(name, secret, pairs)
        runs = []
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(2000):
                verifier.owner(header)
            runs.append((time.perf_counter() - started) / 2000 * 1e6)
        figures[name] = min(runs)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    os.sched_setaffinity(0, {CLIENT_CPU})

    with tempfile.TemporaryDirectory(prefix="auth-bench-") as tmp:
        workdir = Path(tmp)
        secret, pairs = keys(workdir)
        served = [start(setting, workdir, secret, pairs) for setting in SETTINGS]
        try:
            # A first pass warms every server up (imports, Redis scripts, caches).
            for one in served:
                asyncio.run(head_rate(one, 500, args.connections))
            for round_number in range(args.repeat):
                shift = round_number % len(served)
                for one in served[shift:] + served[:shift]:
                    rate, cpu_us = asyncio.run(head_rate(one, args.requests, args.connections))
                    one.rates.append(rate)
                    one.cpu_us.append(cpu_us)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            for one in served:
                one.process.terminate()
                one.process.wait(30)

        verification = verification_us(secret, pairs)

    baseline = min(served[0].cpu_us)
    print(f"HEAD, {args.connections} keep-alive connections, {args.requests} requests a round,")
    print(f"{args.repeat} rounds; server on CPU {SERVER_CPU}, client on CPU {CLIENT_CPU}\n")
    print(f"{'setting':42} {'best req/s':>10} {'median':>8} {'CPU us/req':>10} {'extra':>7}")
    for one in served:
        cpu_us = min(one.cpu_us)
        extra = "-" if one is served[0] else f"{cpu_us - baseline:+.0f}"
        print(
            f"{SETTINGS[one.setting]:42} {max(one.rates):10.0f}"
            f" {statistics.median(one.rates):8.0f} {cpu_us:10.0f} {extra:>7}"
        )
    print("\nverification alone, in-process (us per token):")
    for name, us in verification.items():
        print(f"  {SETTINGS[name]:40} {us:6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

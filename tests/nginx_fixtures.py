"""examples/nginx.conf in a real nginx, on loopback, for the length of one test.

``nginx_proxy(upstream_port, prefix=None)`` renders the example for a free
127.0.0.1 port and the given tusserver port (``render_example``: only the
``listen`` and upstream ``server`` lines change, plus, with ``prefix``, the
three lines the example's comment says to change under a path prefix),
wraps it in a main configuration whose every path is in a temporary folder
of its own, and runs nginx in the foreground (``daemon off``) as ``nobody``
when the tests run as root. Everything it started is stopped, and checked
gone, when the test ends. nginx is installed by ``.ci/run`` when missing
(Debian's ``nginx`` package). ``render_multi_example`` does the same for
examples/nginx-multi.conf and several instances (tests/deployment_fixtures.py).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.server_fixtures import free_port

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "nginx.conf"
MULTI_EXAMPLE = EXAMPLE.with_name("nginx-multi.conf")
# The upstream lines of examples/nginx-multi.conf, replaced by one per instance.
_MULTI_SERVER = "    server 127.0.0.1:{port} max_fails=1 fail_timeout=10s;\n"
_MULTI_PORTS = (8081, 8082, 8083)
UNPRIVILEGED = "nobody"

MAIN_CONF = """\
daemon off;
worker_processes {worker_processes};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections {worker_connections}; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    include {dir}/tusserver.conf;
}}
"""


def render_example(listen_port: int, upstream_port: int, prefix: str | None = None) -> str:
    """examples/nginx.conf for these ports, otherwise as shipped.

    With ``prefix`` (e.g. ``/uploads``), served under that path prefix the way
    the example's comment describes.
    """
    conf = EXAMPLE.read_text()
    changes = [
        ("listen 80;", f"listen 127.0.0.1:{listen_port};"),
        ("server 127.0.0.1:8080;", f"server 127.0.0.1:{upstream_port};"),
    ]
    if prefix is not None:
        changes += [
            ("location /files/ {", f"location {prefix}/ {{"),
            ("proxy_pass http://tusserver;", "proxy_pass http://tusserver/;"),
            (
                'proxy_set_header X-Forwarded-Prefix "";',
                f"proxy_set_header X-Forwarded-Prefix {prefix};",
            ),
        ]
    for old, new in changes:
        assert conf.count(old) == 1, f"examples/nginx.conf no longer has exactly one {old!r}"
        conf = conf.replace(old, new)
    return conf


def render_multi_example(listen_port: int, upstream_ports: Sequence[int]) -> str:
    """examples/nginx-multi.conf for these ports (one upstream line per
    instance), otherwise as shipped."""
    conf = MULTI_EXAMPLE.read_text()
    shipped = "".join(_MULTI_SERVER.format(port=port) for port in _MULTI_PORTS)
    assert conf.count(shipped) == 1, "examples/nginx-multi.conf no longer lists 8081-8083"
    conf = conf.replace(shipped, "".join(_MULTI_SERVER.format(port=p) for p in upstream_ports))
    assert conf.count("listen 80;") == 1
    return conf.replace("listen 80;", f"listen 127.0.0.1:{listen_port};")


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/bin:/sbin")
    if found is None:
        pytest.fail("nginx not found: install Debian's nginx package (.ci/run does)")
    return found


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class NginxProxy:
    """One nginx running the rendered example; ``url(path)`` goes through it."""

    def __init__(
        self,
        upstream_port: int,
        prefix: str | None = None,
        *,
        render: Callable[[int], str] | None = None,
        parent: Path | None = None,
        worker_processes: int = 1,
        worker_connections: int = 64,
    ) -> None:
        """``render(listen_port)``: the configuration to run instead of
        examples/nginx.conf for ``upstream_port`` (then unused). ``parent``:
        the folder to make nginx's own folder in (default: the system's
        temporary folder); the benches keep everything under one folder, and
        run more workers and connections than a test needs."""
        self.port = free_port()
        self.prefix = prefix or ""
        # Not under pytest's tmp_path: that is private to root, and the
        # workers (as nobody) must reach their temporary folders.
        self.directory = Path(tempfile.mkdtemp(prefix="tusserver-nginx-", dir=parent))
        conf = (
            render_example(self.port, upstream_port, prefix)
            if render is None
            else render(self.port)
        )
        (self.directory / "tusserver.conf").write_text(conf)
        (self.directory / "nginx.conf").write_text(
            MAIN_CONF.format(
                dir=self.directory,
                worker_processes=worker_processes,
                worker_connections=worker_connections,
            )
        )
        self._process: subprocess.Popen[bytes] | None = None
        self.workers: list[int] = []

    @property
    def endpoint(self) -> str:
        return self.url("/files/")

    @property
    def pid(self) -> int | None:
        """The master's process id while it runs (its workers are its children)."""
        return None if self._process is None else self._process.pid

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{self.prefix}{path}"

    def error_log(self) -> str:
        log = self.directory / "error.log"
        return log.read_text(errors="replace") if log.exists() else ""

    def start(self, timeout: float = 20.0) -> None:
        command = [
            nginx_binary(),
            "-p", str(self.directory),
            "-c", str(self.directory / "nginx.conf"),
            "-e", str(self.directory / "error.log"),
        ]  # fmt: skip
        user: int | None = None
        group: int | None = None
        extra_groups: list[int] | None = None
        if os.geteuid() == 0:
            account = pwd.getpwnam(UNPRIVILEGED)
            for path in (self.directory, *self.directory.iterdir()):
                os.chown(path, account.pw_uid, account.pw_gid)
            user, group, extra_groups = account.pw_uid, account.pw_gid, []
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            user=user,
            group=group,
            extra_groups=extra_groups,
        )
        # Listening (the master binds) and its worker forked, i.e. serving.
        deadline = time.monotonic() + timeout
        while not (self._listening() and (workers := _children(self._process.pid))):
            if self._process.poll() is not None:
                raise RuntimeError(f"nginx exited at start:\n{self.error_log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not serve within {timeout} s:\n{self.error_log()}")
            time.sleep(0.05)
        self.workers = workers

    def _listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
        except OSError:
            return False
        return True

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the master (it stops its workers first); fail if any is left."""
        process = self._process
        if process is None:
            return
        self._process = None
        self.workers = [*self.workers, *_children(process.pid)]
        process.send_signal(signal.SIGTERM)  # fast shutdown: workers end, then the master
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
        deadline = time.monotonic() + timeout
        left = [pid for pid in self.workers if _alive(pid)]
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = [pid for pid in left if _alive(pid)]
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert not left, f"nginx workers {left} outlived their master"

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture
def nginx_proxy() -> Iterator[Callable[..., NginxProxy]]:
    """Factory: ``nginx_proxy(upstream_port, prefix=None, render=None)`` -> a running nginx."""
    started: list[NginxProxy] = []

    def start(
        upstream_port: int, prefix: str | None = None, *, render: Callable[[int], str] | None = None
    ) -> NginxProxy:
        proxy = NginxProxy(upstream_port, prefix, render=render)
        started.append(proxy)
        proxy.start()
        return proxy

    yield start
    for proxy in started:
        proxy.close()

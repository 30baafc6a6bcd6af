"""The ``tusserver`` command: a thin click layer over ``Config`` and uvicorn.

Every flag maps 1:1 onto a Config field (or a uvicorn setting) and has a
``TUSSERVER_<NAME>`` environment variable. Settings are validated before
anything starts, and a bad one ends the program with one sentence.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import logging.config
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import anyio
import click
import redis
import uvicorn
from starlette.applications import Starlette

from tusserver.app import create_app, open_storage
from tusserver.config import Config, ConfigError, parse_duration, parse_size
from tusserver.embedded_redis import EmbeddedRedis, EmbeddedRedisError

FC = TypeVar("FC", bound=Callable[..., Any])

# Carries the validated settings from the CLI to uvicorn's worker processes.
_CONFIG_ENV = "TUSSERVER_WORKER_CONFIG"
# The only source of the SMB password (never a flag: argv is public).
_SMB_PASSWORD_ENV = "TUSSERVER_SMB_PASSWORD"


def _option(name: str, **kwargs: Any) -> Callable[[FC], FC]:
    flag = name.split("/")[0]  # "--access-log/--no-access-log" -> "--access-log"
    envvar = "TUSSERVER_" + flag.lstrip("-").replace("-", "_").upper()
    return click.option(name, envvar=envvar, show_envvar=True, show_default=True, **kwargs)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main() -> None:
    """tusserver: resumable uploads (tus 1.0.0) with state in Redis.

    Start with `tusserver serve`; clients such as tus-js-client, Uppy and
    tuspy then upload to http://127.0.0.1:8080/files/.
    """


@main.command()
@_option("--host", default="127.0.0.1", help="Address to listen on (0.0.0.0 for all).")
@_option("--port", default=8080, type=click.IntRange(0, 65535), help="TCP port to listen on.")
@_option("--base-path", default="/files/", help="URL path of the tus endpoint.")
@_option(
    "--storage",
    default="./uploads",
    help="Where finished files go: a folder, file:// or smb://USER@HOST[:PORT]/SHARE/PATH URL "
    "(password in TUSSERVER_SMB_PASSWORD). Partials wait in its .partial/.",
)
@_option(
    "--data-dir",
    default="./tusserver-data",
    type=click.Path(path_type=Path),
    help="Folder for the embedded Redis (socket and append-only file).",
)
@_option(
    "--redis-url",
    default=None,
    help="Redis holding upload state, e.g. redis://host:6379/0. Unset: embedded Redis.",
)
@_option("--max-size", default=None, help="Largest upload accepted, e.g. 10G. Unset: no limit.")
@_option(
    "--idle-timeout",
    default="60s",
    help="End a PATCH that sends no bytes for this long, keeping what arrived.",
)
@_option(
    "--final-name",
    default="{id}",
    help="Name of finished files: {id}, or {filename} from the client's metadata.",
)
@_option("--file-mode", default="644", help="Permissions of finished files (octal).")
@_option("--workers", default=1, type=click.IntRange(1, 64), help="Worker processes.")
@_option(
    "--log-level",
    default="info",
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="How much to log.",
)
@_option("--access-log/--no-access-log", default=False, help="Log every request.")
@_option(
    "--smb-timeout",
    default="30s",
    help="Fail an SMB call that makes no progress for this long (also the connect timeout).",
)
@_option(
    "--smb-connections",
    default=8,
    type=click.IntRange(1, 64),
    help="SMB connections (each with a worker thread) per worker process.",
)
def serve(
    host: str,
    port: int,
    base_path: str,
    storage: str,
    data_dir: Path,
    redis_url: str | None,
    max_size: str | None,
    idle_timeout: str,
    final_name: str,
    file_mode: str,
    workers: int,
    log_level: str,
    access_log: bool,
    smb_timeout: str,
    smb_connections: int,
) -> None:
    """Run the tus server.

    For smb:// storage the password is read from TUSSERVER_SMB_PASSWORD
    only: a flag's value would be visible to every local user.
    """
    try:
        config = Config(
            storage=storage,
            redis_url=redis_url,
            data_dir=data_dir,
            base_path=base_path,
            max_size=None if max_size is None else parse_size(max_size, "max size"),
            idle_timeout=parse_duration(idle_timeout, "idle timeout"),
            final_name=final_name,
            file_mode=_parse_mode(file_mode),
            smb_password=os.environ.get(_SMB_PASSWORD_ENV),
            smb_timeout=parse_duration(smb_timeout, "SMB timeout"),
            smb_connections=smb_connections,
        )
        _check_storage(config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None

    log_config = _log_config(log_level)
    logging.config.dictConfig(log_config)
    embedded = None
    try:
        if config.redis_url is None:
            # Started here, in the main thread of the supervising process, so
            # every worker shares it and it dies with this process.
            embedded = EmbeddedRedis(config.data_dir.resolve())
            config = dataclasses.replace(config, redis_url=embedded.start())
        else:
            _check_redis(config.redis_url)
        common: dict[str, Any] = dict(
            host=host,
            port=port,
            log_config=log_config,
            log_level=log_level,
            access_log=access_log,
            # A PATCH is long-lived; keep-alive between a client's chunks.
            timeout_keep_alive=30,
            # On SIGTERM, running PATCHes get this long to finish; then they
            # are cancelled and commit the bytes they stored (see handlers).
            timeout_graceful_shutdown=10,
        )
        with _stop_signals_end_cleanly():
            if workers == 1:
                uvicorn.run(create_app(config), **common)
            else:
                os.environ[_CONFIG_ENV] = _dump(config)
                uvicorn.run("tusserver.cli:worker_app", factory=True, workers=workers, **common)
    except (EmbeddedRedisError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        if embedded is not None:
            embedded.stop()


class _Stopped(Exception):
    """SIGTERM or SIGINT arrived and uvicorn has already shut down."""


@contextlib.contextmanager
def _stop_signals_end_cleanly() -> Iterator[None]:
    """Let a stop signal end the program through ``finally`` blocks, exit code 0.

    uvicorn shuts down gracefully on SIGTERM/SIGINT and then raises the
    signal again with the handler it found installed. With the default
    handler that would kill the process before the embedded Redis is
    stopped in order; this handler turns it into an exception instead.
    """

    def stopped(signum: int, frame: FrameType | None) -> None:
        raise _Stopped(signum)

    previous = {sig: signal.signal(sig, stopped) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    except _Stopped:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def worker_app() -> Starlette:
    """App factory for uvicorn worker processes (``--workers`` > 1)."""
    return create_app(_load(os.environ[_CONFIG_ENV]))


def _parse_mode(text: str) -> int:
    try:
        return int(text, 8)
    except ValueError:
        raise ConfigError(f"file mode must be octal such as 644, not {text!r}.") from None


def _check_storage(config: Config) -> None:
    storage = open_storage(config)

    async def check() -> None:
        try:
            await storage.check()
        finally:
            await storage.aclose()

    try:
        anyio.run(check)
    except OSError as exc:
        raise ConfigError(
            f"storage {config.storage!r} is not usable: {exc.strerror or exc}."
        ) from None


def _check_redis(url: str) -> None:
    client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise ConfigError(f"Redis at {_redact(url)} does not answer: {exc}.") from None
    finally:
        client.close()


def _redact(url: str) -> str:
    """Never print a password from a URL."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return scheme + sep + rest


def _dump(config: Config) -> str:
    fields = dataclasses.asdict(config)
    fields["data_dir"] = str(config.data_dir)
    return json.dumps(fields)


def _load(text: str) -> Config:
    fields = json.loads(text)
    fields["data_dir"] = Path(fields["data_dir"])
    return Config(**fields)


def _log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging, plus tusserver's own loggers on the same handler."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["loggers"]["tusserver"] = {
        "handlers": ["default"],
        "level": level.upper(),
        "propagate": False,
    }
    return config


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

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
import re
import signal
import sys
import time
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
from tusserver.app import sweep as app_sweep
from tusserver.config import (
    HOOK_EVENTS,
    Config,
    ConfigError,
    parse_duration,
    parse_size,
    redact_url,
)
from tusserver.embedded_redis import EmbeddedRedis, EmbeddedRedisError, running_url
from tusserver.expiry import SweepReport
from tusserver.state import StateUnavailable

FC = TypeVar("FC", bound=Callable[..., Any])

# Carries the validated settings from the CLI to uvicorn's worker processes.
_CONFIG_ENV = "TUSSERVER_WORKER_CONFIG"
# How long `tusserver sweep` waits for a sweep already running elsewhere.
_SWEEP_WAIT_SECONDS = 10.0
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


_storage_option = _option(
    "--storage",
    default="./uploads",
    help="Where finished files go: a folder, file:// or smb://USER@HOST[:PORT]/SHARE/PATH URL "
    "(password in TUSSERVER_SMB_PASSWORD). Partials wait in its .partial/.",
)
_data_dir_option = _option(
    "--data-dir",
    default="./tusserver-data",
    type=click.Path(path_type=Path),
    help="Folder for the embedded Redis (socket and append-only file).",
)
_redis_url_option = _option(
    "--redis-url",
    default=None,
    help="Redis holding upload state, e.g. redis://host:6379/0. Unset: embedded Redis.",
)
_expire_after_option = _option(
    "--expire-after",
    default="24h",
    help="An unfinished upload that stores no bytes for this long expires and is removed.",
)
_retention_option = _option(
    "--retention",
    default=None,
    help="Remove a finished upload's record (never its file) this long after it finished."
    " Unset: keep it.",
)


@main.command()
@_option("--host", default="127.0.0.1", help="Address to listen on (0.0.0.0 for all).")
@_option("--port", default=8080, type=click.IntRange(0, 65535), help="TCP port to listen on.")
@_option("--base-path", default="/files/", help="URL path of the tus endpoint.")
@_storage_option
@_data_dir_option
@_redis_url_option
@_option("--max-size", default=None, help="Largest upload accepted, e.g. 10G. Unset: no limit.")
@_option(
    "--idle-timeout",
    default="60s",
    help="End a PATCH that sends no bytes for this long, keeping what arrived.",
)
@_option(
    "--lock-wait",
    default="3s",
    help="How long a request waits for another request's lock before answering 423.",
)
@_option(
    "--lock-ttl",
    default="10s",
    help="Lifetime of an upload's lock without progress: how long a crashed writer blocks it.",
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
    "--downloads/--no-downloads",
    default=True,
    help="GET on an upload URL downloads the finished file (with Range).",
)
@_option(
    "--download-unfinished",
    is_flag=True,
    default=False,
    help="GET on an unfinished upload serves the bytes received so far (else 404).",
)
@_expire_after_option
@_retention_option
@_option(
    "--sweep-interval",
    default="60s",
    help="How often to look for expired uploads (one instance sweeps at a time).",
)
@_option(
    "--cors-origin",
    multiple=True,
    help="Origin whose pages may upload from a browser, e.g. https://app.example.com, "
    "or *. Repeatable; the variable takes a space- or comma-separated list. Unset: same origin.",
)
@_option(
    "--cors-allow-credentials/--no-cors-allow-credentials",
    default=False,
    help="Let browsers send cookies and HTTP auth cross-origin (explicit origins only).",
)
@_option(
    "--public-url",
    default=None,
    help="The endpoint's URL as clients see it, e.g. https://example.com/files/: "
    "absolute Locations. Unset: relative Locations.",
)
@_option(
    "--behind-proxy/--no-behind-proxy",
    default=False,
    help="Trust Forwarded and X-Forwarded-Host/-Proto/-Prefix for Locations.",
)
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
@_option(
    "--hooks-url",
    default=None,
    help="Send upload events to this URL as tusd v2 HTTP hooks (POST, JSON). Unset: no hooks.",
)
@_option(
    "--hooks-events",
    default=",".join(HOOK_EVENTS),
    help="Comma-separated events to send to --hooks-url.",
)
@_option(
    "--hooks-timeout",
    default="5s",
    help="Longest one hook call may take; a blocking hook past it fails the request with 503.",
)
@_option(
    "--hooks-retries",
    default=2,
    type=click.IntRange(0, 10),
    help="Attempts after the first for a hook that is down or answers non-2xx.",
)
@_option(
    "--hooks-header",
    multiple=True,
    help="Header NAME:VALUE sent with every hook request, e.g. a shared secret. Repeatable; "
    "the variable takes a space-separated list.",
)
@_option(
    "--hooks-forward-auth/--no-hooks-forward-auth",
    default=False,
    help="Pass the client's Authorization and Cookie headers to hooks (else redacted).",
)
@_option(
    "--progress-interval",
    default="1s",
    help="Send post-receive at most this often per upload.",
)
@_option(
    "--hooks-reclaim-after",
    default="30s",
    help="Deliver a post-finish hook another instance took and then left for this long.",
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
    lock_wait: str,
    lock_ttl: str,
    final_name: str,
    file_mode: str,
    workers: int,
    log_level: str,
    access_log: bool,
    downloads: bool,
    download_unfinished: bool,
    expire_after: str,
    retention: str | None,
    sweep_interval: str,
    cors_origin: tuple[str, ...],
    cors_allow_credentials: bool,
    public_url: str | None,
    behind_proxy: bool,
    smb_timeout: str,
    smb_connections: int,
    hooks_url: str | None,
    hooks_events: str,
    hooks_timeout: str,
    hooks_retries: int,
    hooks_header: tuple[str, ...],
    hooks_forward_auth: bool,
    progress_interval: str,
    hooks_reclaim_after: str,
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
            lock_wait=parse_duration(lock_wait, "lock wait"),
            lock_ttl=parse_duration(lock_ttl, "lock TTL"),
            final_name=final_name,
            file_mode=_parse_mode(file_mode),
            downloads=downloads,
            download_unfinished=download_unfinished,
            **_expiry_settings(expire_after, retention),
            sweep_interval=parse_duration(sweep_interval, "sweep interval"),
            cors_origins=_split_origins(cors_origin),
            cors_allow_credentials=cors_allow_credentials,
            public_url=public_url,
            behind_proxy=behind_proxy,
            smb_password=os.environ.get(_SMB_PASSWORD_ENV),
            smb_timeout=parse_duration(smb_timeout, "SMB timeout"),
            smb_connections=smb_connections,
            hooks_url=hooks_url,
            hooks_events=tuple(e.strip() for e in hooks_events.split(",") if e.strip()),
            hooks_timeout=parse_duration(hooks_timeout, "hooks timeout"),
            hooks_retries=hooks_retries,
            hooks_headers=hooks_header,
            hooks_forward_auth=hooks_forward_auth,
            progress_interval=parse_duration(progress_interval, "progress interval"),
            hooks_reclaim_after=parse_duration(hooks_reclaim_after, "hooks reclaim after"),
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


@main.command()
@_storage_option
@_data_dir_option
@_redis_url_option
@_expire_after_option
@_retention_option
def sweep(
    storage: str,
    data_dir: Path,
    redis_url: str | None,
    expire_after: str,
    retention: str | None,
) -> None:
    """Run one expiry pass now and print what it removed.

    Without --redis-url it uses the embedded Redis of a server running on the
    same --data-dir, or starts that Redis itself for the pass.
    """
    try:
        config = Config(
            storage=storage,
            redis_url=redis_url,
            data_dir=data_dir,
            **_expiry_settings(expire_after, retention),
            smb_password=os.environ.get(_SMB_PASSWORD_ENV),
        )
        _check_storage(config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None

    logging.config.dictConfig(_log_config("warning"))
    embedded = None
    try:
        if config.redis_url is None:
            url = running_url(config.data_dir)
            if url is None:
                embedded = EmbeddedRedis(config.data_dir.resolve())
                url = embedded.start()
            config = dataclasses.replace(config, redis_url=url)
        else:
            _check_redis(config.redis_url)
        report = anyio.run(_sweep_when_free, config)
    except (EmbeddedRedisError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from None
    except StateUnavailable as exc:
        raise click.ClickException(f"Redis failed during the sweep: {exc}.") from None
    except OSError as exc:
        raise click.ClickException(
            f"storage {redact_url(config.storage)!r} failed during the sweep:"
            f" {exc.strerror or exc}."
        ) from None
    finally:
        if embedded is not None:
            embedded.stop()
    if not report.ran:
        click.echo("another instance kept sweeping; nothing done (its pass does the same work)")
        return
    for label, upload_ids in (
        ("expired", report.expired),
        ("retired", report.retired),
        ("orphan", report.orphans),
        ("skipped", report.skipped),
    ):
        for upload_id in upload_ids:
            click.echo(f"{label} {upload_id}")
    click.echo(f"swept: {report.summary()}")


async def _sweep_when_free(config: Config) -> SweepReport:
    """One pass; while a running server is sweeping, wait a little for it to finish."""
    deadline = time.monotonic() + _SWEEP_WAIT_SECONDS
    while True:
        report = await app_sweep(config)
        if report.ran or time.monotonic() >= deadline:
            return report
        await anyio.sleep(0.2)


def _expiry_settings(expire_after: str, retention: str | None) -> dict[str, Any]:
    return {
        "expire_after": parse_duration(expire_after, "expire after"),
        "retention": None if retention is None else parse_duration(retention, "retention"),
    }


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


def _split_origins(values: tuple[str, ...]) -> tuple[str, ...]:
    """Flags give one origin each; the environment variable a list, which
    click splits at spaces only, so commas are split here."""
    return tuple(origin for value in values for origin in re.split(r"[\s,]+", value) if origin)


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
            f"storage {redact_url(config.storage)!r} is not usable: {exc.strerror or exc}."
        ) from None


def _check_redis(url: str) -> None:
    client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise ConfigError(f"Redis at {redact_url(url)} does not answer: {exc}.") from None
    finally:
        client.close()


def _dump(config: Config) -> str:
    fields = dataclasses.asdict(config)
    fields["data_dir"] = str(config.data_dir)
    return json.dumps(fields)


def _load(text: str) -> Config:
    fields = json.loads(text)
    fields["data_dir"] = Path(fields["data_dir"])
    fields["cors_origins"] = tuple(fields["cors_origins"])
    fields["hooks_events"] = tuple(fields["hooks_events"])
    fields["hooks_headers"] = tuple(fields["hooks_headers"])
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

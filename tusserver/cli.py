"""The ``tusserver`` command: a thin click layer over ``Config``.

Every flag maps 1:1 onto a Config field (see ``tusserver.options``); the
Config is validated before anything starts, and a bad setting ends the
program with one sentence.
"""

from __future__ import annotations

import dataclasses
import logging.config
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import click

from tusserver import auth, serving
from tusserver.admin_cli import uploads
from tusserver.app import open_storage
from tusserver.app import sweep as app_sweep
from tusserver.common_options import data_dir_option as _data_dir_option
from tusserver.common_options import expire_after_option as _expire_after_option
from tusserver.common_options import hook_options
from tusserver.common_options import redis_url_option as _redis_url_option
from tusserver.common_options import retention_option as _retention_option
from tusserver.common_options import storage_option as _storage_option
from tusserver.config import (
    FILE_DIGESTS,
    LOG_FORMATS,
    LOG_LEVELS,
    SERVERS,
    Config,
    ConfigError,
    redact_url,
)
from tusserver.embedded_redis import EmbeddedRedisError
from tusserver.options import config_from, option
from tusserver.startup import check_redis, check_storage, state_redis
from tusserver.state import StateUnavailable
from tusserver.sweeper import SweepReport

# How long `tusserver sweep` waits for a sweep already running elsewhere.
_SWEEP_WAIT_SECONDS = 10.0


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main() -> None:
    """tusserver: resumable uploads (tus 1.0.0) with state in Redis.

    Start with `tusserver serve`; clients such as tus-js-client, Uppy and
    tuspy then upload to http://127.0.0.1:8080/files/.
    """


@main.command()
@option("--host", help="Address to listen on (0.0.0.0 for all).")
@option("--port", type=int, help="TCP port to listen on.")
@option("--base-path", help="URL path of the tus endpoint.")
@_storage_option
@_data_dir_option
@_redis_url_option
@option("--max-size", help="Largest upload accepted, e.g. 10G. Unset: no limit.")
@option("--min-size", help="Smallest upload accepted, e.g. 1K. Unset: no minimum.")
@option(
    "--allow-types",
    multiple=True,
    help="Media types uploads may be, e.g. image/*,video/mp4,application/pdf: checked against "
    "the metadata at creation and the first bytes (415). Unset: any type.",
)
@option(
    "--idle-timeout", help="End a PATCH that sends no bytes for this long, keeping what arrived."
)
@option(
    "--lock-wait",
    help="How long a request waits for another request's lock before answering 423.",
)
@option(
    "--redis-replicas",
    type=int,
    help="Replicas that must have an upload's last offset before its file is published"
    " (Redis WAIT). Unset: 1 with redis+sentinel://, else 0.",
)
@option(
    "--takeover-after",
    help="A writer that received no bytes for this long lets a new request take the upload over"
    " (one still receiving keeps it).",
)
@option(
    "--lock-ttl",
    help="Lifetime of an upload's lock without progress: how long a crashed writer blocks it.",
)
@option(
    "--final-name", help="Name of finished files: {id}, or {filename} from the client's metadata."
)
@option("--file-mode", help="Permissions of finished files (octal).")
@option(
    "--server",
    type=click.Choice(SERVERS),
    help="The HTTP server: granian (Rust, faster per core; the default), or uvicorn (Python).",
)
@option("--workers", type=int, help="Worker processes (1 to 64).")
@option(
    "--shutdown-grace",
    help="On SIGTERM, running uploads go on this long, then commit what they stored and"
    " release their locks.",
)
@option(
    "--file-digest",
    type=click.Choice(FILE_DIGESTS),
    help="Whole-file digest recorded with every upload; none skips the hashing"
    " (a checksum the client declares is still verified).",
)
@option("--log-level", type=click.Choice(LOG_LEVELS), help="How much to log.")
@option("--access-log/--no-access-log", help="Log every request.")
@option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    help="Log lines as text, or as JSON objects (one per line) with request and upload ids.",
)
@option("--metrics/--no-metrics", help="Export Prometheus metrics.")
@option("--metrics-path", help="URL path of the Prometheus metrics on the main port.")
@option(
    "--metrics-port",
    type=int,
    help="Serve the metrics on this port of their own (on --host) instead of the main one. "
    "Unset: on the main port at --metrics-path.",
)
@option(
    "--downloads/--no-downloads",
    help="GET on an upload URL downloads the finished file (with Range).",
)
@option(
    "--download-unfinished",
    is_flag=True,
    help="GET on an unfinished upload serves the bytes received so far (else 404).",
)
@option(
    "--forms/--no-forms",
    help="POST of multipart/form-data (an HTML form, curl -F) stores each file as an upload.",
)
@_expire_after_option
@_retention_option
@option(
    "--sweep-interval",
    help="How often to look for expired uploads (one instance sweeps at a time).",
)
@option(
    "--cors-origin",
    "cors_origins",
    multiple=True,
    help="Origin whose pages may upload from a browser, e.g. https://app.example.com, "
    "or *. Repeatable; the variable takes a space- or comma-separated list. Unset: same origin.",
)
@option(
    "--cors-allow-credentials/--no-cors-allow-credentials",
    help="Let browsers send cookies and HTTP auth cross-origin (explicit origins only).",
)
@option(
    "--public-url",
    help="The endpoint's URL as clients see it, e.g. https://example.com/files/: "
    "absolute Locations. Unset: relative Locations.",
)
@option(
    "--behind-proxy/--no-behind-proxy",
    help="Trust Forwarded and X-Forwarded-Host/-Proto/-Prefix for Locations.",
)
@option(
    "--checkpoint-bytes",
    help="While a body streams, commit what was stored every this many bytes (or interval), "
    "so a killed server keeps it.",
)
@option(
    "--checkpoint-interval",
    help="While a body streams, commit what was stored at least this often.",
)
@option(
    "--durable-commits/--no-durable-commits",
    help="Flush stored bytes to disk (fdatasync, SMB FLUSH) before a commit counts them.",
)
@hook_options
@option("--progress-interval", help="Send post-receive at most this often per upload.")
@option(
    "--hooks-reclaim-after",
    help="Deliver a post-finish event another instance took and then left for this long.",
)
@option(
    "--jwt-public-key",
    type=click.Path(path_type=Path, dir_okay=False),
    help="PEM public key (RSA: RS256; EC P-256: ES256) that bearer tokens must be signed with. "
    "Unset, and no TUSSERVER_JWT_SECRET: no authentication.",
)
@option(
    "--jwt-audience",
    help="Audience (aud) bearer tokens must name. Unset: tokens must carry no aud.",
)
@option("--jwt-issuer", help="Issuer (iss) bearer tokens must name. Unset: not checked.")
def serve(**options: Any) -> None:
    """Run the tus server.

    For smb:// storage the password is read from TUSSERVER_SMB_PASSWORD
    only, and the HS256 secret of bearer tokens from TUSSERVER_JWT_SECRET
    only: a flag's value would be visible to every local user.
    """
    try:
        config = config_from({**options, "jwt_secret": auth.secret_from_environment()})
        _check(config)
        started = serving.serve(config)
    except (EmbeddedRedisError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from None
    if not started:
        sys.exit(3)  # the server logged why; 3 is uvicorn's exit status for a failed start


@main.command()
@_storage_option
@_data_dir_option
@_redis_url_option
@_expire_after_option
@_retention_option
def sweep(**options: Any) -> None:
    """Run one expiry pass now and print what it removed.

    Without --redis-url it uses the embedded Redis of a server running on the
    same --data-dir, or starts that Redis itself for the pass.
    """
    try:
        config = config_from(options)
        _check(config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None

    logging.config.dictConfig(serving.logging_config("warning"))
    try:
        with state_redis(config, join_running=True) as url:
            report = anyio.run(_sweep_when_free, dataclasses.replace(config, redis_url=url))
    except EmbeddedRedisError as exc:
        raise click.ClickException(str(exc)) from None
    except StateUnavailable as exc:
        raise click.ClickException(f"Redis failed during the sweep: {exc}.") from None
    except OSError as exc:
        raise click.ClickException(
            f"storage {redact_url(config.storage)!r} failed during the sweep:"
            f" {exc.strerror or exc}."
        ) from None
    _print(report)


# `tusserver uploads sweep` is the same command; `tusserver sweep` stays.
uploads.add_command(sweep)
main.add_command(uploads)


def _check(config: Config) -> None:
    """Before anything starts: the storage is usable, a given Redis answers.

    The storage is checked here once for every process the command starts.
    """
    auth.jwt_authenticator(config)  # a public key file that does not load
    storage = open_storage(config)

    async def check() -> None:
        try:
            await check_storage(storage, config)
        finally:
            await storage.aclose()

    anyio.run(check)
    if config.redis_url is not None:
        check_redis(config.redis_url)


async def _sweep_when_free(config: Config) -> SweepReport:
    """One pass; while a running server is sweeping, wait a little for it to finish."""
    deadline = time.monotonic() + _SWEEP_WAIT_SECONDS
    while True:
        report = await app_sweep(config)
        if report.ran or time.monotonic() >= deadline:
            return report
        await anyio.sleep(0.2)


def _print(report: SweepReport) -> None:
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

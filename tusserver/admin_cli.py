"""``tusserver uploads``: list, inspect and terminate the uploads of a
server, from its Redis and storage (``tusserver.admin`` does the work,
``tusserver.admin_output`` shows it). ``tusserver uploads sweep`` is
``tusserver sweep`` (added in ``tusserver.cli``).

Every failure ends the command with one sentence and a non-zero status.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import click

from tusserver import admin, admin_output, errors, protocol
from tusserver.admin import Filter
from tusserver.common_options import (
    data_dir_option,
    expire_after_option,
    hook_options,
    redis_url_option,
    storage_option,
)
from tusserver.config import Config, ConfigError, redact_url
from tusserver.embedded_redis import EmbeddedRedisError
from tusserver.log_safety import describe, origin
from tusserver.options import config_from
from tusserver.services import Services
from tusserver.startup import check_redis, check_storage, state_redis
from tusserver.state import ClaimStatus, StateUnavailable

_json_option = click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")


@click.group()
def uploads() -> None:
    """List, inspect and terminate uploads, in the server's Redis and storage.

    Give the same --redis-url (or --data-dir), --storage and TUSSERVER_*
    variables as `tusserver serve`. Without --redis-url it uses the embedded
    Redis of a server running on the same --data-dir, or starts it for the
    command.
    """


@uploads.command("list")
@data_dir_option
@redis_url_option
@expire_after_option
@click.option(
    "--state",
    type=click.Choice(admin.STATES),
    help="Only uploads in this state (running: a request holds its lock).",
)
@click.option("--owner", metavar="SUB", help="Only uploads of this owner (a token's sub).")
@_json_option
def list_uploads(state: str | None, owner: str | None, as_json: bool, **options: Any) -> None:
    """Every upload: id, state, progress, size, age, last activity, expiry,
    owner, file name. Printed as Redis gives them (no order), in batches;
    --expire-after must be the server's for the last activity to be right."""
    keep = Filter(state, owner)

    async def show_all(services: Services) -> None:
        if not as_json:
            click.echo(admin_output.header())
        async for batch in admin.rows(services.store, services.config, keep):
            now = time.time()
            lines = [
                admin_output.json_line(row) if as_json else admin_output.table_line(row, now)
                for row in batch
            ]
            if lines:
                click.echo("\n".join(lines))

    _run(config_from(options), show_all, storage=False)


@uploads.command()
@storage_option
@data_dir_option
@redis_url_option
@expire_after_option
@click.argument("upload_id", metavar="ID")
@_json_option
def show(upload_id: str, as_json: bool, **options: Any) -> None:
    """One upload: its whole record, the bytes its storage holds, and the
    lock of the request writing it, if any."""
    upload_id = _checked_id(upload_id)

    async def show_one(services: Services) -> None:
        found = await admin.details(services, upload_id)
        if isinstance(found, ClaimStatus):
            raise click.ClickException(_absent(upload_id, found))
        if as_json:
            click.echo(json.dumps(admin_output.details_fields(found)))
        else:
            click.echo("\n".join(admin_output.details_text(found, time.time())))

    _run(config_from(options), show_one, storage=True)


@uploads.command()
@storage_option
@data_dir_option
@redis_url_option
@hook_options
@click.argument("upload_id", metavar="ID")
@click.option(
    "--force",
    is_flag=True,
    help="Also while a PATCH writes it: that PATCH is stopped and its bytes do not count.",
)
def terminate(upload_id: str, force: bool, **options: Any) -> None:
    """Remove an upload as a DELETE does: its bytes (partial or published
    file), then its record, leaving a tombstone (410); the pre- and
    post-terminate hooks run if configured. Refused while a PATCH writes it,
    unless --force."""
    upload_id = _checked_id(upload_id)

    async def terminate_one(services: Services) -> None:
        try:
            await admin.terminate(services, upload_id, force=force)
        except errors.TusError as error:
            raise click.ClickException(_refusal(upload_id, error)) from None
        click.echo(f"terminated {upload_id}")

    _run(config_from(options), terminate_one, storage=True)


def _checked_id(text: str) -> str:
    """An upload id, or its URL (the last path segment is the id)."""
    upload_id = text.rstrip("/").rsplit("/", 1)[-1]
    if not protocol.is_upload_id(upload_id):
        shown = admin_output.printable(text)
        raise click.ClickException(f"{shown!r} is not an upload id (nor an upload URL).")
    return upload_id


def _absent(upload_id: str, status: ClaimStatus) -> str:
    if status is ClaimStatus.GONE:
        return f"upload {upload_id} was terminated or has expired."
    return f"no upload {upload_id} exists."


def _refusal(upload_id: str, error: errors.TusError) -> str:
    if error.code == "upload_not_found":
        return _absent(upload_id, ClaimStatus.MISSING)
    if error.code == "upload_gone":
        return _absent(upload_id, ClaimStatus.GONE)
    if error.code == "upload_locked":
        return (
            f"upload {upload_id} is being written by a running PATCH; nothing was removed"
            " (--force stops that PATCH and terminates it)."
        )
    if error.code == "upload_lock_lost":
        return f"another request took upload {upload_id} over meanwhile; try again."
    return f"upload {upload_id} was not terminated: {error.message}"


def _run(config: Config, work: Callable[[Services], Awaitable[None]], *, storage: bool) -> None:
    """Run ``work`` with the server's services; every failure as one sentence."""
    try:
        with _warnings_to_stderr():
            if config.redis_url is not None:
                check_redis(config.redis_url)
            with state_redis(config, join_running=True) as url:
                config = dataclasses.replace(config, redis_url=url)
                anyio.run(_with_services, config, work, storage)
    except (ConfigError, EmbeddedRedisError) as exc:
        raise click.ClickException(str(exc)) from None
    except StateUnavailable as exc:
        raise click.ClickException(f"Redis failed: {exc}.") from None
    except BrokenPipeError:
        # The reader went away (`| head`): not an error. stdout is pointed at
        # /dev/null so that Python's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except OSError as exc:
        raise click.ClickException(
            f"storage {redact_url(config.storage)!r} failed: {exc.strerror or exc}."
        ) from None
    except (click.ClickException, click.exceptions.Exit, click.Abort):
        raise
    except Exception as exc:
        # A record this version cannot read, a bug: what and where, no trace.
        raise click.ClickException(
            f"the command failed unexpectedly: {describe(exc)} at {origin(exc)}."
        ) from None


async def _with_services(
    config: Config, work: Callable[[Services], Awaitable[None]], storage: bool
) -> None:
    async with admin.server_services(config) as services:
        if storage:
            await check_storage(services.storage, config)
        await work(services)


@contextmanager
def _warnings_to_stderr() -> Iterator[None]:
    """tusserver's warnings (a lock lost, a hook that failed) on stderr while
    the command runs; the logging set-up is put back after, so a program
    that runs the command in-process keeps its own."""
    logger = logging.getLogger("tusserver")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]

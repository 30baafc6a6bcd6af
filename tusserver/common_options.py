"""Options several ``tusserver`` commands share: where the state and the
files are (``serve``, ``sweep``, ``uploads``), and the HTTP hooks (``serve``,
and ``uploads terminate``, which runs the termination hooks as a DELETE does).

One definition each, so a flag means the same, with the same
``TUSSERVER_*`` variable, wherever it appears.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from tusserver.options import option

FC = TypeVar("FC", bound=Callable[..., Any])

storage_option = option(
    "--storage",
    help="Where finished files go: a folder, or a storage URL with the backend's options, "
    "e.g. smb://USER@HOST/SHARE/PATH?timeout=30s (see docs/storage.md). "
    "Partials wait in its .partial/.",
)
data_dir_option = option(
    "--data-dir",
    type=click.Path(path_type=Path),
    help="Folder for the embedded Redis (socket and append-only file).",
)
redis_url_option = option(
    "--redis-url",
    help="Redis holding upload state, e.g. redis://host:6379/0. Unset: embedded Redis.",
)
expire_after_option = option(
    "--expire-after",
    help="An unfinished upload that stores no bytes for this long expires and is removed.",
)
retention_option = option(
    "--retention",
    help="Remove a finished upload's record (never its file) this long after it finished."
    " Unset: keep it.",
)

_HOOK_OPTIONS = (
    option(
        "--hooks-url",
        help="Send upload events to this URL as tusd v2 HTTP hooks (POST, JSON). Unset: no hooks.",
    ),
    option("--hooks-events", help="Comma-separated events to send to --hooks-url."),
    option(
        "--hooks-timeout",
        help="Longest one hook call may take; a blocking hook past it fails the request with 503.",
    ),
    option(
        "--hooks-retries",
        type=click.IntRange(0, 10),
        help="Attempts after the first for a hook that is down or answers non-2xx.",
    ),
    option(
        "--hooks-header",
        "hooks_headers",
        multiple=True,
        help="Header NAME:VALUE sent with every hook request, e.g. a shared secret. Repeatable; "
        "the variable takes a space-separated list. Unset: none.",
    ),
    option(
        "--hooks-forward-auth/--no-hooks-forward-auth",
        help="Pass the client's Authorization and Cookie headers to hooks (else redacted).",
    ),
)


def hook_options(command: FC) -> FC:
    """The HTTP hook flags, in their order in ``--help``."""
    for add in reversed(_HOOK_OPTIONS):
        command = add(command)
    return command

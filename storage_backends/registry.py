"""Which backend serves a storage URL: one import string per URL scheme.

In the manner of uvicorn's ``HTTP_PROTOCOLS``: the table names each opener
as ``"module:function"`` and the module is imported only when its scheme is
used, so a backend's dependencies (smbprotocol for ``smb://``) are loaded
only by the servers that store there, and a missing optional dependency
stops the start with one sentence instead of stopping every start.

A backend is one module with an opener, ``open_storage(url, settings) ->
Storage``. The project's own are listed in ``BUILTIN``; another package
registers its scheme through the ``tusserver.storage`` entry point group::

    [project.entry-points."tusserver.storage"]
    s3 = "tusserver_s3:open_storage"

Entry points, not a register call: ``tusserver serve`` and each of its
``--workers`` processes find the backend by its URL alone, with no code of
the application's own run first. An application that builds its backend
itself passes the instance to ``create_app(config, storage=...)`` instead.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Protocol, cast
from urllib.parse import urlsplit

from storage_backends.base import Storage

ENTRY_POINT_GROUP = "tusserver.storage"


class StorageSettingError(ValueError):
    """A storage URL or backend option is unusable; the message is one
    sentence a person can act on, and never carries a password."""


@dataclass(frozen=True)
class StorageSettings:
    """Server-wide settings a backend may honour; its own options travel in its URL."""

    # Permissions of finished files, where the storage has POSIX permissions.
    file_mode: int = 0o644


class Opener(Protocol):
    def __call__(self, url: str, settings: StorageSettings) -> Storage:
        """The backend for ``url``, not yet connected (``Storage.check`` does that).

        Raises ``StorageSettingError`` for a URL or option it cannot use.
        """


@dataclass(frozen=True)
class Backend:
    opener: str  # "module:function"
    extra: str | None = None  # the tusserver extra that installs its dependencies


# A folder path has no scheme ("").
BUILTIN: dict[str, Backend] = {
    "": Backend("storage_backends.local:open_storage"),
    "file": Backend("storage_backends.local:open_storage"),
    "smb": Backend("storage_backends.smb:open_storage", extra="smb"),
}


def open_storage(url: str, settings: StorageSettings) -> Storage:
    """The backend registered for ``url``'s scheme, opened on ``url``.

    Raises ``StorageSettingError`` for an unknown scheme, a backend whose
    dependencies are not installed, or a URL its backend refuses.
    """
    scheme = urlsplit(url).scheme  # "" for a folder path
    backend = BUILTIN.get(scheme) or _entry_point(scheme)
    if backend is None:
        known = ", ".join(f"{name}://" for name in sorted(schemes()) if name)
        raise StorageSettingError(
            f"storage scheme {scheme}:// is not supported; use a folder path or one of {known}."
        )
    return _load(scheme, backend)(url, settings)


def schemes() -> set[str]:
    """Every scheme a storage URL may use here: the built-in ones and the registered ones."""
    return set(BUILTIN) | {point.name for point in entry_points(group=ENTRY_POINT_GROUP)}


def _entry_point(scheme: str) -> Backend | None:
    for point in entry_points(group=ENTRY_POINT_GROUP, name=scheme):
        return Backend(point.value)
    return None


def _load(scheme: str, backend: Backend) -> Opener:
    module_name, _, attribute = backend.opener.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or module_name.startswith(exc.name + ".") or exc.name == module_name:
            raise  # the backend itself is missing: a broken installation, not a setting
        hint = f"install tusserver[{backend.extra}]" if backend.extra else f"install {exc.name}"
        raise StorageSettingError(
            f"{scheme}:// storage needs the {exc.name} package, which is not installed ({hint})."
        ) from None
    return cast(Opener, getattr(module, attribute))

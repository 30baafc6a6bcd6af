"""Callbacks an application that mounts tusserver gives to ``create_app``.

    create_app(config, hooks=Hooks(post_finish=on_finish))

``post_finish(upload)`` is awaited once per upload, after its file is
published and its completion recorded, before the client gets its answer;
keep it short (hand long work to a queue). It is a notification: it cannot
undo the upload, and an exception in it is logged with the upload id while
the client still gets its success answer (its bytes are safe).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class FinishedUpload:
    id: str
    length: int
    # The client's Upload-Metadata, decoded (a key without a value maps to b"").
    metadata: Mapping[str, bytes]
    # Where storage put the file, relative to the storage root.
    location: str
    # Hex SHA-256 of the file's bytes, as recorded with the upload.
    sha256: str


@dataclass(frozen=True)
class Hooks:
    post_finish: Callable[[FinishedUpload], Awaitable[None]] | None = None

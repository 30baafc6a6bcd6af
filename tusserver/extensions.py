"""The tus extensions this server advertises, derived from what its storage can do.

Most extensions need nothing beyond the storage contract every backend
keeps (storage_backends/base.py). An optional one is listed only when the
backend has the capability it needs, a one-method ``typing.Protocol``, as
tusd derives its list from its composer: nothing is advertised that is not
implemented, and a request for it is refused before any state is written.
"""

from __future__ import annotations

from storage_backends.base import BlockSized, Concatenator, Flusher, Storage
from tusserver import errors

# In the order OPTIONS lists them; None: every backend has what it needs.
_EXTENSIONS: tuple[tuple[str, type | None], ...] = (
    ("creation", None),
    ("creation-with-upload", None),
    ("creation-defer-length", None),
    ("termination", None),
    ("checksum", None),
    ("concatenation", Concatenator),
    ("expiration", None),
)


def advertised(storage: Storage) -> tuple[str, ...]:
    """The value of Tus-Extension for a server on ``storage``."""
    return tuple(
        name
        for name, capability in _EXTENSIONS
        if capability is None or isinstance(storage, capability)
    )


# Blocks for a backend that states no preference: large writes suit most.
DEFAULT_BLOCK_SIZE = 4 * 1024 * 1024


def block_size(storage: Storage, configured: int | None) -> int:
    """Bytes per block handed to ``storage``: the configured size, else the
    backend's preferred one, else ``DEFAULT_BLOCK_SIZE``."""
    if configured is not None:
        return configured
    if isinstance(storage, BlockSized):
        return storage.preferred_block_size
    return DEFAULT_BLOCK_SIZE


def writes_on_loop(storage: Storage) -> bool:
    """Whether ``storage`` writes its blocks on the event loop (``WritesOnLoop``).

    Asked once per request body: an attribute lookup, not an ``isinstance``
    of the runtime-checkable protocol, which takes 7 µs.
    """
    return bool(getattr(storage, "writes_on_loop", False))


def flusher(storage: Storage) -> Flusher:
    """``storage`` as a Flusher; checked at start-up when durable commits are on."""
    if not isinstance(storage, Flusher):
        raise TypeError(f"{type(storage).__name__} cannot flush, so commits cannot be durable")
    return storage


def concatenator(storage: Storage) -> Concatenator:
    """``storage`` as a Concatenator; a 400 if it cannot concatenate."""
    if not isinstance(storage, Concatenator):
        raise errors.concatenation_unsupported()
    return storage

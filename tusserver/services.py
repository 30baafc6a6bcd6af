"""What every request handler is given: the configuration and the three
interfaces it may talk to (upload store, locker, storage), plus per-process
helpers. Nothing here does I/O."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from storage_backends.base import Storage
from tusserver import extensions
from tusserver.config import Config
from tusserver.digests import RunningDigests
from tusserver.headers import TUS_RESUMABLE
from tusserver.hooking import HookRunner
from tusserver.locking import Locker
from tusserver.protocol import TUS_VERSION
from tusserver.state import UploadStore

logger = logging.getLogger(__name__)


@dataclass
class Services:
    config: Config
    store: UploadStore
    locker: Locker
    storage: Storage
    # File digests in progress in this process (see digests.RunningDigests).
    running: RunningDigests = field(default_factory=RunningDigests)
    hooks: HookRunner = field(default_factory=HookRunner.none)
    # Bytes per block a request body is gathered into for the storage.
    block_size: int = field(init=False)

    def __post_init__(self) -> None:
        # Once: a protocol check per request would cost every PATCH.
        self.block_size = extensions.block_size(self.storage, self.config.block_size)


def tus_headers(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Headers every tus response carries, plus ``extra``."""
    headers = {TUS_RESUMABLE: TUS_VERSION}
    if extra:
        headers.update(extra)
    return headers

"""``durable_commits``: no offset counts a byte before it is on stable storage.

Without it a commit may count bytes still in the page cache, which a crash of
the machine (not of the process) loses. With it the storage flushes the
partial (fdatasync locally, SMB2 FLUSH on a share) before every checkpoint
and every commit at the end of a body.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from storage_backends.local import LocalStorage
from tests.helpers import upload_id_of
from tests.server_fixtures import RunningServer, ServedApps
from tusserver import Config, create_app
from tusserver.config import ConfigError

MiB = 1024 * 1024


class FlushLog(LocalStorage):
    """Local storage that notes the partial's size at each real flush."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.flushed_sizes: list[int] = []

    async def flush(self, upload_id: str) -> None:
        await super().flush(upload_id)
        self.flushed_sizes.append((self.root / ".partial" / upload_id).stat().st_size)


def committed_offsets(state: redis.Redis, upload_id: str) -> Callable[[], int]:
    return lambda: int(state.hget(f"tus:{{{upload_id}}}:info", "offset") or 0)


def start_with_flush_log(
    served_apps: ServedApps, redis_url: str, tmp_path: Path, *, durable: bool
) -> tuple[RunningServer, FlushLog]:
    """A server whose storage logs its flushes, with a checkpoint every 4 MiB."""
    storage = FlushLog(tmp_path / "files")
    config = Config(
        storage=str(tmp_path / "files"),
        redis_url=redis_url,
        durable_commits=durable,
        checkpoint_bytes=4 * MiB,
    )
    return served_apps.start(config, tmp_path / "files", backend=storage), storage


def test_with_durable_commits_every_commit_follows_a_flush_of_the_bytes_it_counts(
    served_apps: ServedApps, redis_url: str, state: redis.Redis, tmp_path: Path
) -> None:
    server, storage = start_with_flush_log(served_apps, redis_url, tmp_path, durable=True)
    body = bytes(range(256)) * (40 * MiB // 256)
    url = server.create(len(body) + 1)

    response = server.patch(url, 0, body)

    assert response.status_code == 204
    assert int(response.headers["Upload-Offset"]) == len(body)
    # Checkpoints on the way (every 4 MiB at most) and the commit at the end,
    # each after a flush that already held the bytes it counts.
    assert len(storage.flushed_sizes) >= 2
    assert storage.flushed_sizes == sorted(storage.flushed_sizes)
    assert storage.flushed_sizes[-1] == len(body)
    assert committed_offsets(state, upload_id_of(url))() == len(body)


def test_with_durable_commits_a_patch_too_short_for_a_checkpoint_is_flushed_before_its_commit(
    served_apps: ServedApps, redis_url: str, state: redis.Redis, tmp_path: Path
) -> None:
    # No checkpoint runs during a body shorter than checkpoint_bytes that
    # ends within the checkpoint interval: the commit at its end is the one
    # that must follow a flush (the upload is not finished, so no finalize
    # flushes it either).
    server, storage = start_with_flush_log(served_apps, redis_url, tmp_path, durable=True)
    url = server.create(2 * MiB)

    assert server.patch(url, 0, b"x" * MiB).status_code == 204

    assert storage.flushed_sizes == [MiB]
    assert committed_offsets(state, upload_id_of(url))() == MiB


def test_without_durable_commits_nothing_is_flushed_before_the_file_is_finished(
    served_apps: ServedApps, redis_url: str, tmp_path: Path
) -> None:
    server, storage = start_with_flush_log(served_apps, redis_url, tmp_path, durable=False)
    url = server.create(20 * MiB + 1)

    assert server.patch(url, 0, b"x" * 20 * MiB).status_code == 204

    assert storage.flushed_sizes == []


def test_durable_commits_on_a_storage_that_cannot_flush_refuse_to_start(
    redis_url: str, tmp_path: Path
) -> None:
    class NoFlush:
        """Every method of LocalStorage but flush."""

        def __init__(self, root: Path) -> None:
            self._local = LocalStorage(root)

        def __getattr__(self, name: str) -> object:
            if name == "flush":
                raise AttributeError(name)
            return getattr(self._local, name)

    config = Config(storage=str(tmp_path), redis_url=redis_url, durable_commits=True)
    app = create_app(config, storage=NoFlush(tmp_path))  # type: ignore[arg-type]

    async def start() -> None:
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(ConfigError, match="cannot flush its bytes, so commits cannot be durable"):
        asyncio.run(start())


def test_durable_commits_on_an_smb_share_store_every_byte(
    smb_tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = smb_tus_server(durable_commits=True, checkpoint_bytes=4 * MiB)
    body = bytes(range(256)) * (12 * MiB // 256)
    url = server.create(len(body))

    response = server.patch(url, 0, body)

    assert response.status_code == 204
    upload_id = upload_id_of(url)
    assert state.hget(f"tus:{{{upload_id}}}:info", "state") == "complete"
    assert (server.storage / upload_id).read_bytes() == body

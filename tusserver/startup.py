"""What must hold before a server answers: its storage usable, and the Redis
holding upload state known (and running, when it is the embedded one).

``state_redis`` is the one place the embedded Redis is started, for
``tusserver serve`` (in its supervising process, before any worker),
``tusserver sweep`` and the lifespan of an app run any other way (through
``state_redis_in_thread``, so that its event loop never waits for Redis).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import anyio
import redis

from storage_backends.base import Flusher, Storage
from tusserver import redis_topology, redis_urls
from tusserver.config import Config, ConfigError, redact_url
from tusserver.embedded_redis import EmbeddedRedis, running_url


async def check_storage(storage: Storage, config: Config, *, given: bool = False) -> None:
    """Raise ConfigError, one sentence, if ``storage`` is unusable, or cannot
    do what ``config`` asks of it. ``given``: the backend was handed to the
    app ready-made, not opened from ``config.storage``."""
    shown = "the storage" if given else f"storage {redact_url(config.storage)!r}"
    try:
        await storage.check()
    except OSError as exc:
        raise ConfigError(f"{shown} is not usable: {exc.strerror or exc}.") from None
    if config.durable_commits and not isinstance(storage, Flusher):
        raise ConfigError(f"{shown} cannot flush its bytes, so commits cannot be durable.")


def check_redis(url: str) -> None:
    """Raise ConfigError, one sentence, if no Redis answers at ``url``.

    For commands only: an app started without its Redis answers 503 and 423
    until Redis is back, rather than not starting.
    """
    client = redis_topology.connect_sync(redis_urls.parse(url))
    try:
        client.ping()
    except redis.RedisError as exc:
        raise ConfigError(f"Redis at {redact_url(url)} does not answer: {exc}.") from None
    finally:
        client.close()


@contextmanager
def state_redis(config: Config, *, join_running: bool = False) -> Iterator[str]:
    """The URL of the Redis holding upload state, for the block.

    ``config.redis_url`` if set. Otherwise the embedded Redis in
    ``config.data_dir``, started here and stopped when the block ends;
    with ``join_running``, the embedded Redis of a server already running
    on that data dir, if one answers there (it stays running).

    Blocks while Redis starts (up to 15 s) and stops. Call it from the main
    thread or from a thread that outlives the block (``state_redis_in_thread``):
    the embedded Redis gets its parent-death signal when the *thread* that
    started it ends. Raises EmbeddedRedisError if it cannot start.
    """
    if config.redis_url is not None:
        yield config.redis_url
        return
    if join_running:
        url = running_url(config.data_dir)
        if url is not None:
            yield url
            return
    with EmbeddedRedis(config.data_dir.resolve()) as embedded:
        yield embedded.url


@asynccontextmanager
async def state_redis_in_thread(config: Config) -> AsyncIterator[str]:
    """``state_redis`` for an event loop, which it never blocks.

    The embedded Redis is started and stopped in a thread of its own that
    lives exactly as long as the block: a pooled worker thread ends when it
    has been idle a while, and the kernel would then stop Redis with it.
    """
    if config.redis_url is not None:
        yield config.redis_url
        return
    holder = _RedisThread(config)
    holder.start()
    try:
        # Not cancellable: a start cut short still ends in the stop below.
        yield await anyio.to_thread.run_sync(holder.wait_started)
    finally:
        holder.stopping.set()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(holder.join)
        holder.raise_failure()


class _RedisThread:
    """A thread that holds ``state_redis`` open until ``stopping`` is set."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.stopping = threading.Event()
        self._ready = threading.Event()
        self._url: str | None = None
        self._failure: BaseException | None = None
        # A daemon: should the process end without the lifespan's exit, the
        # parent-death signal still stops Redis.
        self._thread = threading.Thread(target=self._run, name="tusserver-redis", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self._thread.join()

    def wait_started(self) -> str:
        self._ready.wait()
        self.raise_failure()
        assert self._url is not None
        return self._url

    def raise_failure(self) -> None:
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    def _run(self) -> None:
        try:
            with state_redis(self.config) as url:
                self._url = url
                self._ready.set()
                self.stopping.wait()
        except BaseException as exc:  # raised on the event loop's side instead
            self._failure = exc
        finally:
            self._ready.set()

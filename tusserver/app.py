"""The ASGI application: routes, error rendering, resources in the lifespan.

This is the only module that names concrete classes (which state store);
the storage backend comes from the registry by its URL's scheme
(storage_backends/registry.py), or ready-made from the caller. Everything
else receives them.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from storage_backends import registry
from storage_backends.base import Storage
from tusserver import errors, headers, protocol, sweeper
from tusserver.config import Config, ConfigError
from tusserver.cors import cors_middleware
from tusserver.download import download_upload
from tusserver.handlers import (
    create_upload,
    delete_upload,
    head_upload,
    options,
    patch_upload,
)
from tusserver.hooks import Hooks
from tusserver.locking import Locker
from tusserver.log_safety import describe, origin
from tusserver.services import Services, tus_headers
from tusserver.startup import check_storage, state_redis_in_thread
from tusserver.state import StateUnavailable, UploadStore

logger = logging.getLogger(__name__)

Handler = Callable[[Request, Services], Awaitable[Response] | Response]


def create_app(
    config: Config,
    hooks: Hooks | None = None,
    *,
    storage: Storage | None = None,
    storage_checked: bool = False,
) -> Starlette:
    """A tus server as an ordinary ASGI app: run it, or mount it under a path.

    ``hooks``: callbacks of the application that mounts it (tusserver.hooks).
    ``storage``: a backend built by the caller; then ``config.storage`` is not
    used. Either way the app closes it at shutdown (it owns it from then on,
    as an httpx client owns its transport).
    Its start-up fails with ConfigError if the storage is unusable, unless
    ``storage_checked``: the caller checked it already, once for all its
    processes (``tusserver serve`` does, before starting anything).
    """
    services_box: list[Services] = []

    def dispatch(table: dict[str, Handler]) -> Callable[[Request], Awaitable[Response]]:
        allowed = ", ".join(sorted(table))

        async def endpoint(request: Request) -> Response:
            handler = table.get(request.method)
            if handler is None:
                return render(errors.method_not_allowed(allowed))
            try:
                result = handler(request, services_box[0])
                return result if isinstance(result, Response) else await result
            except errors.TusError as error:
                return render(_transient(request, error) if error.status >= 500 else error)
            except StateUnavailable as exc:
                logger.warning(
                    "%s %s: state store unavailable: %s",
                    request.method,
                    request.url.path,
                    describe(exc),
                )
                return render(_transient(request, errors.state_unavailable()))
            except OSError as exc:
                logger.error(
                    "%s %s: storage failed: %s", request.method, request.url.path, describe(exc)
                )
                failure = errors.storage_failure(exc, reading=request.method == "GET")
                return render(_transient(request, failure))
            except Exception as exc:
                # No trace: it would carry paths and whatever text the
                # exception holds. Its kind and where it was raised suffice to
                # reproduce it.
                logger.error(
                    "%s %s: unexpected failure: %s at %s",
                    request.method,
                    request.url.path,
                    describe(exc),
                    origin(exc),
                )
                return render(_transient(request, errors.internal()))

        return endpoint

    collection = dispatch({"OPTIONS": options, "POST": create_upload})
    upload_methods: dict[str, Handler] = {
        "OPTIONS": options,
        "HEAD": head_upload,
        "PATCH": patch_upload,
        "DELETE": delete_upload,
    }
    if config.downloads:
        # Off: GET answers the 405 of any method the URL does not offer (as tusd).
        upload_methods["GET"] = download_upload
    upload = dispatch(upload_methods)
    base = config.base_path
    routes = [
        Route(base, EveryMethod(collection)),
        Route(base.rstrip("/") or "/", EveryMethod(collection)),
        # :path so that malformed ids with slashes also get a tus 404, not a bare one.
        Route(base + "{upload_id:path}", EveryMethod(upload)),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            backend = open_storage(config) if storage is None else storage
            stack.push_async_callback(backend.aclose)
            if not storage_checked:
                await check_storage(backend, config, given=storage is not None)
            # After the check: a refused start leaves no embedded Redis behind.
            redis_url = await stack.enter_async_context(state_redis_in_thread(config))
            client = _connect(redis_url)
            stack.push_async_callback(client.aclose)
            store = UploadStore(client)
            locker = Locker(client, store, ttl=config.lock_ttl, wait=config.lock_wait)
            services_box.append(Services(config, store, locker, backend, hooks=hooks or Hooks()))
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(locker.listen_for_release_requests)
                tasks.start_soon(sweeper.run_sweeper, store, backend, config)
                yield
                with anyio.move_on_after(5):
                    await locker.drain()
                tasks.cancel_scope.cancel()
            services_box.clear()

    # CORS outermost: a preflight is answered before anything else sees it.
    middleware = [*cors_middleware(config, render), Middleware(MethodOverride)]
    return Starlette(routes=routes, lifespan=lifespan, middleware=middleware)


def _connect(redis_url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        redis_url,
        decode_responses=True,
        socket_connect_timeout=5,
        socket_timeout=30,
        # redis-py retries ten times by default; a request should
        # rather answer 423/503 soon and let the client retry.
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 2),
    )


async def sweep(config: Config) -> sweeper.SweepReport:
    """One expiry pass against the Redis at ``config.redis_url`` (``tusserver sweep``)."""
    if config.redis_url is None:
        raise ConfigError("a sweep needs the URL of the Redis holding the upload state.")
    async with AsyncExitStack() as stack:
        client = _connect(config.redis_url)
        stack.push_async_callback(client.aclose)
        storage = open_storage(config)
        stack.push_async_callback(storage.aclose)
        return await sweeper.sweep_once(UploadStore(client), storage, config)


def open_storage(config: Config) -> Storage:
    """The backend registered for the storage setting's scheme: a folder path,
    a file:// or smb:// URL, or a scheme another package registers."""
    settings = registry.StorageSettings(file_mode=config.file_mode)
    try:
        return registry.open_storage(config.storage, settings)
    except registry.StorageSettingError as exc:
        raise ConfigError(str(exc)) from None


def render(error: errors.TusError) -> Response:
    """The one place a TusError becomes an HTTP response."""
    response_headers = tus_headers()
    response_headers.update(error.headers)
    response_headers[headers.CACHE_CONTROL] = "no-store"
    if error.status == 412:
        response_headers[headers.TUS_VERSION] = ",".join(protocol.SUPPORTED_VERSIONS)
    return JSONResponse(error.body(), status_code=error.status, headers=response_headers)


def _transient(request: Request, error: errors.TusError) -> errors.TusError:
    """On HEAD, passing trouble is 423: tus-js-client restarts an upload from
    byte 0 after any other non-2xx HEAD answer (docs/clients.md)."""
    return errors.temporarily_unavailable() if request.method == "HEAD" else error


class EveryMethod:
    """A request endpoint as a plain ASGI app. Starlette lets every method
    through to a route whose endpoint is an ASGI app (a function endpoint
    gets a fixed method list and a plain-text 405 for the rest), so any
    method, even one named by X-HTTP-Method-Override, gets a tus answer."""

    def __init__(self, endpoint: Callable[[Request], Awaitable[Response]]) -> None:
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.endpoint(Request(scope, receive, send))
        await response(scope, receive, send)


_METHOD_OVERRIDE = headers.METHOD_OVERRIDE.lower().encode("latin-1")  # ASGI names are lower-case


class MethodOverride:
    """X-HTTP-Method-Override on POST, for clients behind proxies that only
    pass GET and POST (tus spec, "X-HTTP-Method-Override")."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            for name, value in scope["headers"]:
                if name == _METHOD_OVERRIDE:
                    scope = dict(scope, method=value.decode("latin-1").strip().upper())
                    break
        await self.app(scope, receive, send)

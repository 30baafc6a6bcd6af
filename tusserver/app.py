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
from starlette.applications import Starlette
from starlette.convertors import PathConvertor, register_url_convertor
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from storage_backends import registry
from storage_backends.base import Storage
from tusserver import (
    auth,
    errors,
    forms,
    headers,
    metrics,
    metrics_http,
    protocol,
    redis_topology,
    redis_urls,
    sweeper,
)
from tusserver.config import Config, ConfigError
from tusserver.cors import cors_middleware
from tusserver.download import download_upload
from tusserver.draining import Draining
from tusserver.handlers import (
    create_upload,
    delete_upload,
    head_upload,
    options,
    patch_upload,
)
from tusserver.hook_outbox import HookOutbox
from tusserver.hook_setup import check_hooks, open_hooks
from tusserver.hooking import current_request
from tusserver.hooks import Hooks
from tusserver.locking import Locker
from tusserver.log_format import bind_upload
from tusserver.log_safety import describe, origin
from tusserver.observing import Observed
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
    authenticate: auth.Authenticate | None = None,
    draining: Draining | None = None,
) -> Starlette:
    """A tus server as an ordinary ASGI app: run it, or mount it under a path.

    ``hooks``: Python hooks of the application that mounts it
    (tusserver.hooks), or HTTP hooks from ``config.hooks_url``; not both.
    ``storage``: a backend built by the caller; then ``config.storage`` is not
    used. Either way the app closes it at shutdown (it owns it from then on,
    as an httpx client owns its transport).
    Its start-up fails with ConfigError if the storage is unusable, unless
    ``storage_checked``: the caller checked it already, once for all its
    processes (``tusserver serve`` does, before starting anything).
    ``authenticate``: an async callable ``authenticate(request) -> owner |
    None`` run before every request but OPTIONS, in place of the JWT check
    the config may set up (tusserver.auth); uploads belong to the owner it
    returns (tusserver.ownership).
    ``draining``: begun by whoever runs the app when it stops (``tusserver
    serve`` does on SIGTERM): running uploads get ``config.shutdown_grace``,
    then commit and let go (tusserver.draining).
    """
    check_hooks(config, hooks)
    services_box: list[Services] = []
    # Built now: an unusable public key file fails here, not on a request.
    authenticator = auth.resolve(config, authenticate)
    stopping = Draining() if draining is None else draining
    # A registry of this app's own: two apps in one process count apart.
    recorder = metrics.new_recorder() if config.metrics else metrics.Recorder()

    def dispatch(table: dict[str, Handler]) -> Callable[[Request], Awaitable[Response]]:
        allowed = ", ".join(sorted(table))

        async def endpoint(request: Request) -> Response:
            if stopping.begun and request.method not in _WHILE_DRAINING:
                return render(errors.shutting_down())
            try:
                # Every request but OPTIONS (discovery, as tus clients send it
                # without credentials; CORS preflights never get here).
                if authenticator is not None and request.method != "OPTIONS":
                    await auth.identify(request, authenticator)
                upload_id = request.path_params.get("upload_id")
                if upload_id is not None and protocol.is_upload_id(upload_id):
                    bind_upload(upload_id)  # for every log line of this request
                handler = table.get(request.method)
                if handler is None:
                    return render(errors.method_not_allowed(allowed))
                current_request.set(request)  # what hook events of this request describe
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

    collection = dispatch({"OPTIONS": options, "POST": post_to_endpoint})
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
        # First: HEADs and PATCHes, most of the requests, match at the first
        # try. A path (slashes too), so that malformed ids with slashes also
        # get a tus 404, not a bare one; never empty, so that the endpoint
        # itself falls through to the routes below.
        Route(base + "{upload_id:" + _UPLOAD_PATH + "}", EveryMethod(upload)),
        Route(base, EveryMethod(collection)),
        Route(base.rstrip("/") or "/", EveryMethod(collection)),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Here, not only in Observed: an app mounted in another runs this
        # lifespan from the parent's, past its own middleware. The background
        # tasks below inherit it.
        metrics.use(recorder)
        async with AsyncExitStack() as stack:
            stack.callback(metrics.process_ended)
            if (
                isinstance(recorder, metrics.PrometheusRecorder)
                and config.metrics_port is not None
                and not metrics.multiprocess_mode()  # then the supervising process serves it
            ):
                stack.enter_context(
                    metrics_http.own_port(config.host, config.metrics_port, recorder.registry)
                )
            backend = open_storage(config) if storage is None else storage
            stack.push_async_callback(backend.aclose)
            if not storage_checked:
                await check_storage(backend, config, given=storage is not None)
            # After the check: a refused start leaves no embedded Redis behind.
            redis_url = await stack.enter_async_context(state_redis_in_thread(config))
            target = redis_urls.parse(redis_url)
            client = redis_topology.connect(target)
            stack.push_async_callback(client.aclose)
            pinned = redis_topology.PinnedConnections(target, client)
            stack.push_async_callback(pinned.aclose)
            store = UploadStore(
                client, replicas=redis_topology.replicas(config, target), pin_to=pinned.to
            )
            releases = redis_topology.release_requests(target, client)
            locker = Locker(releases, store, ttl=config.lock_ttl, wait=config.lock_wait)
            hook_set = await open_hooks(config, hooks, HookOutbox(client), stack)
            services_box.append(Services(config, store, locker, backend, hooks=hook_set.runner))
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(_load_scripts, store)
                tasks.start_soon(locker.listen_for_release_requests)
                tasks.start_soon(_drain_on_stop, stopping, locker, config.shutdown_grace)
                tasks.start_soon(sweeper.run_sweeper, store, backend, config)
                tasks.start_soon(hook_set.runner.run)
                if hook_set.deliverer is not None:
                    tasks.start_soon(hook_set.deliverer.run)
                yield
                # Requests still running here were cancelled by the server
                # (uvicorn, past its graceful timeout): they commit shielded.
                locker.let_all_go()
                with anyio.move_on_after(5):
                    await locker.drain()
                await locker.release_all()
                tasks.cancel_scope.cancel()
            services_box.clear()

    # Scrapes are answered by Observed, before routing: a route of its own
    # would be tried, and cost, on every tus request.
    scrape = None
    if isinstance(recorder, metrics.PrometheusRecorder) and config.metrics_port is None:
        scrape = (config.metrics_path, metrics_http.scrape_app(recorder))
    # Observed outermost, so that every answer, a preflight's too, carries the
    # request id and counts; then CORS: a preflight is answered before anything else.
    middleware = [
        Middleware(Observed, recorder=recorder, access_log=config.access_log, scrape=scrape),
        *cors_middleware(config, render),
        Middleware(MethodOverride),
    ]
    return Starlette(routes=routes, lifespan=lifespan, middleware=middleware)


class _UploadPath(PathConvertor):
    """Starlette's ``path`` of at least one character."""

    regex = ".+"


_UPLOAD_PATH = "tus_upload_path"
register_url_convertor(_UPLOAD_PATH, _UploadPath())


# Still answered while the process drains: they read, take no lock and end
# at once, and a HEAD answered 503 would make tus-js-client start over.
_WHILE_DRAINING = frozenset({"HEAD", "OPTIONS"})


async def _load_scripts(store: UploadStore) -> None:
    """Beside the first requests, not before them: a Redis that is down
    holds up nothing, and each script still loads itself at its first call."""
    try:
        await store.load_scripts()
    except StateUnavailable as exc:
        logger.info("scripts not loaded ahead (%s): each loads at its first call", describe(exc))


async def _drain_on_stop(draining: Draining, locker: Locker, grace: float) -> None:
    """From the stop on, hand uploads over at once when asked; after ``grace``,
    cut every running upload so it commits what it stored and lets go."""
    await draining.wait()
    logger.info("stopping: running uploads have %gs to finish", grace)
    locker.draining = True
    await anyio.sleep(grace)
    locker.let_all_go()


async def post_to_endpoint(request: Request, services: Services) -> Response:
    """A form (multipart/form-data) from a client that is not a tus client,
    or else a tus creation. With forms off, a form gets what tus creation
    answers it (412 without Tus-Resumable; with it, the 400 or 415 of a
    creation request whose body is not application/offset+octet-stream)."""
    if services.config.forms and forms.is_form(request.headers):
        return await forms.receive_form(request, services)
    return await create_upload(request, services)


def _connect(redis_url: str) -> aioredis.Redis:
    return redis_topology.connect(redis_urls.parse(redis_url))


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
    if error.status == 423:
        metrics.recorder().locked(error.code)
    response_headers = tus_headers()
    response_headers.update(error.headers)
    response_headers[headers.CACHE_CONTROL] = "no-store"
    if error.status == 412:
        response_headers[headers.TUS_VERSION] = ",".join(protocol.SUPPORTED_VERSIONS)
    if error.raw_body is not None:
        if not any(name.lower() == "content-type" for name in response_headers):
            response_headers["Content-Type"] = "text/plain; charset=utf-8"
        return Response(error.raw_body, status_code=error.status, headers=response_headers)
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
        body = _BodyWatch(scope, receive)
        response = await self.endpoint(Request(scope, body.receive, send))
        if body.left_unread() and not await body.drain():
            # Answered before its body was read to the end (a 409, 413, 423
            # ...), and the rest is not small: close the connection after the
            # answer. Kept alive, the client would go on pushing a body
            # nobody reads, and its next request would wait behind it
            # (Node's tus-js-client hangs so).
            response.headers["connection"] = "close"
        await response(scope, body.receive, send)


# A body left unread up to this size is read and dropped rather than the
# connection closed (a small PATCH answered 409 or 412 before its bytes).
_DRAIN_LIMIT = 64 * 1024
_DRAIN_SECONDS = 1.0


class _BodyWatch:
    """Passes the request's body messages on, noting whether the last one came."""

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self._receive = receive
        self.ended = False
        # The body the request announced: a Content-Length, or None for a
        # chunked one (its size unknown); no body at all counts as read.
        self._declared: int | None = None
        self._has_body = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value.strip()
                self._declared = int(length) if length.isdigit() else None
                self._has_body = length not in (b"0", b"")
                break
            if name == b"transfer-encoding":
                self._has_body = True
                break

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.ended = True
        return message

    def left_unread(self) -> bool:
        return self._has_body and not self.ended

    async def drain(self) -> bool:
        """Read and drop the rest of a small declared body, so the connection
        can stay open for the next request; False if it is large, unknown or
        does not arrive at once."""
        if self._declared is None or self._declared > _DRAIN_LIMIT:
            return False
        with anyio.move_on_after(_DRAIN_SECONDS):
            while not self.ended:
                await self.receive()
        return self.ended


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

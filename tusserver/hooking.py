"""Running hooks: the events of an upload's life, told to Python or HTTP hooks.

``HookRunner`` is what handlers see (``Services.hooks``):

- ``decide(type, info)`` for a blocking event (pre-create, pre-access,
  pre-terminate, pre-finish): waits for the hook's answer and returns it.
  A hook that cannot be reached, fails or runs past ``--hooks-timeout``
  raises a retryable 503: the request never goes through unchecked.
- ``notify(type, info)`` for post-create and post-terminate: fire and
  forget, in a bounded number of tasks (beyond that, dropped with a warning),
  so a slow receiver never slows an upload.
- ``progress(held)`` for post-receive: at most once per ``--progress-interval``
  per upload across all instances (a Redis key with that TTL), in the
  background; a StopUpload answer ends the running PATCH (see ``receiving``).
- ``announce_finish(upload)`` for post-finish: recorded durably and delivered
  at least once by ``hook_delivery``.

Every event describes the client request that caused it. The dispatcher
sets it once per request (``current_request``), so no layer in between has
to pass it along; credentials in it are redacted unless ``--hooks-forward-auth``.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar

import anyio
from anyio.abc import TaskGroup
from starlette.requests import Request

from tusserver import errors, metrics, protocol
from tusserver.hook_events import (
    FileInfo,
    HookEvent,
    HookResponse,
    HookType,
    HTTPRequest,
    encode_event,
)
from tusserver.hook_outbox import HookOutbox
from tusserver.hooks import Hook
from tusserver.http_hooks import HookFailed
from tusserver.log_format import current_request_id
from tusserver.log_safety import describe, origin
from tusserver.record import Upload
from tusserver.state import StateUnavailable

logger = logging.getLogger(__name__)

# The request being handled, for the events it causes (set by the dispatcher).
current_request: ContextVar[Request | None] = ContextVar("current_request", default=None)

# Notifications in flight per process; more are dropped rather than queued.
MAX_NOTIFICATIONS = 256
# Headers that carry the client's credentials: a hook receiver is another
# service, and logs what it receives.
_CREDENTIALS = frozenset({"authorization", "proxy-authorization", "cookie"})
REDACTED = "[redacted]"
# Told the answer of a post-receive hook that said StopUpload.
StopCallback = Callable[[HookResponse], None]


class HookRunner:
    def __init__(
        self,
        hooks: Mapping[HookType, Hook],
        *,
        timeout: float,
        forward_auth: bool,
        progress_interval: float,
        outbox: HookOutbox | None,
    ) -> None:
        self._hooks = dict(hooks)
        self._timeout = timeout
        self._forward_auth = forward_auth
        self._progress_ms = max(1, int(progress_interval * 1000))
        self._outbox = outbox
        self._tasks: TaskGroup | None = None
        self._in_flight = 0

    @classmethod
    def none(cls) -> HookRunner:
        """No hooks at all."""
        return cls({}, timeout=1.0, forward_auth=False, progress_interval=1.0, outbox=None)

    def enabled(self, event: HookType) -> bool:
        return event in self._hooks

    async def run(self) -> None:
        """Background task for the app's lifetime: the notifications' task group."""
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            try:
                await anyio.sleep_forever()
            finally:
                self._tasks = None

    async def settle(self) -> None:
        """Return once no notification is in flight: for a command that ends
        right after notifying (``tusserver uploads terminate``), where no
        lifespan keeps them running. Callers bound the wait."""
        # Polled: called once per command, where a 20 ms step costs nothing.
        while self._in_flight:  # noqa: ASYNC110
            await anyio.sleep(0.02)

    def event(self, event: HookType, info: FileInfo) -> HookEvent:
        return HookEvent(event, info, self._describe(current_request.get()))

    async def decide(self, event: HookType, info: FileInfo) -> HookResponse:
        """Ask a blocking hook; 503 if it gives no answer. No hook: no objection."""
        hook = self._hooks.get(event)
        if hook is None:
            return HookResponse()
        try:
            with anyio.fail_after(self.total_timeout(hook)):
                answer = await hook(self.event(event, info)) or HookResponse()
            metrics.recorder().hook(event.value, True)
            return answer
        except Exception as exc:  # any failure of the hook, ours or the application's
            metrics.recorder().hook(event.value, False)
            logger.warning(
                "upload %s: %s hook failed (%s); refusing the request",
                info.id or "(new)",
                event.value,
                hook_failure(exc),
            )
            raise errors.hook_unavailable(event.value) from None

    async def check_access(self, upload: Upload) -> None:
        """pre-access: before HEAD, PATCH, GET, DELETE of ``upload``, and for
        each part a final upload names. RejectAccess: its answer, 403 by default."""
        if not self.enabled(HookType.PRE_ACCESS):
            return
        answer = await self.decide(HookType.PRE_ACCESS, file_info(upload))
        if answer.reject_access:
            logger.info("upload %s: access refused by the pre-access hook", upload.id)
            raise rejection(
                answer, 403, "access_rejected", "The server refused access to this upload."
            )

    async def check_termination(self, upload: Upload) -> None:
        """pre-terminate: RejectTermination refuses the DELETE, 400 by default (as tusd)."""
        if not self.enabled(HookType.PRE_TERMINATE):
            return
        answer = await self.decide(HookType.PRE_TERMINATE, file_info(upload))
        if answer.reject_termination:
            logger.info("upload %s: termination refused by the pre-terminate hook", upload.id)
            raise rejection(
                answer, 400, "termination_rejected", "The server refused to terminate this upload."
            )

    def notify(self, event: HookType, info: FileInfo) -> None:
        """Tell a non-blocking hook, in the background. Never raises."""
        hook = self._hooks.get(event)
        if hook is None:
            return
        self._spawn(hook, self.event(event, info), None)

    def progress(self, upload: Upload, on_stop: StopCallback) -> None:
        """post-receive for ``upload`` at its current offset, if its interval
        has passed; ``on_stop`` is called with the answer if it says StopUpload."""
        hook = self._hooks.get(HookType.POST_RECEIVE)
        if hook is None or self._outbox is None:
            return
        self._spawn(hook, self.event(HookType.POST_RECEIVE, file_info(upload)), on_stop)

    async def announce_finish(
        self, upload: Upload, location: str | None = None, sha256: str | None = None
    ) -> str | None:
        """Announce that ``upload`` is about to be recorded finished (published
        as ``location``): the stream entry goes first (see ``hook_delivery``).
        Returns the event to store with the completion, or None without a
        post-finish hook."""
        if HookType.POST_FINISH not in self._hooks or self._outbox is None:
            return None
        info = file_info(upload, location=location, sha256=sha256)
        event = self.event(HookType.POST_FINISH, info)
        await self._outbox.announce(upload.id)
        return encode_event(event)

    def _spawn(self, hook: Hook, event: HookEvent, on_stop: StopCallback | None) -> None:
        if self._tasks is None:
            return  # not started, or shutting down
        if self._in_flight >= MAX_NOTIFICATIONS:
            logger.warning(
                "upload %s: %s hook dropped: %d notifications in flight",
                event.upload.id,
                event.type.value,
                self._in_flight,
            )
            return
        self._in_flight += 1
        self._tasks.start_soon(self._tell, hook, event, on_stop)

    async def _tell(self, hook: Hook, event: HookEvent, on_stop: StopCallback | None) -> None:
        try:
            if on_stop is not None:
                assert self._outbox is not None
                if not await self._outbox.progress_due(event.upload.id, self._progress_ms):
                    return
            with anyio.fail_after(self.total_timeout(hook)):
                answer = await hook(event)
            metrics.recorder().hook(event.type.value, True)
            if on_stop is not None and answer is not None and answer.stop_upload:
                logger.info("upload %s: stopped by the post-receive hook", event.upload.id)
                on_stop(answer)
        except StateUnavailable as exc:
            logger.warning("upload %s: post-receive skipped: %s", event.upload.id, describe(exc))
        except Exception as exc:  # a notification's failure is only logged
            metrics.recorder().hook(event.type.value, False)
            logger.warning(
                "upload %s: %s hook failed: %s",
                event.upload.id,
                event.type.value,
                hook_failure(exc),
            )
        finally:
            self._in_flight -= 1

    def total_timeout(self, hook: Hook) -> float:
        # An HTTP hook bounds each attempt itself and retries; this bounds the
        # whole call (a Python hook has only this).
        retries = int(getattr(hook, "retries", 0))
        backoff = sum(0.5 * 2**i for i in range(retries))
        return float(self._timeout * (retries + 1) + backoff)

    def _describe(self, request: Request | None) -> HTTPRequest:
        if request is None:
            return HTTPRequest("", "", "")
        header: dict[str, list[str]] = {}
        for name, value in request.headers.items():
            shown = value
            if not self._forward_auth and name in _CREDENTIALS:
                shown = REDACTED
            header.setdefault(_canonical(name), []).append(shown)
        request_id = current_request_id()
        if request_id is not None:
            # The id this request is logged under (the client's, or the one
            # made for it), so a receiver's logs can name the same request.
            header["X-Request-Id"] = [request_id]
        client = request.client
        query = request.url.query
        return HTTPRequest(
            method=request.method,
            uri=request.url.path + (f"?{query}" if query else ""),
            remote_addr=f"{client.host}:{client.port}" if client else "",
            header={name: tuple(values) for name, values in header.items()},
        )


def part_ids(concat: str, parts: Sequence[str]) -> tuple[str, ...] | None:
    """A final upload's part ids, from the part URLs it names (tusd's
    ``PartialUploads``); None for any other upload."""
    if concat != protocol.CONCAT_FINAL:
        return None
    return tuple(url.rstrip("/").rsplit("/", 1)[-1] for url in parts)


def file_info(
    upload: Upload, *, location: str | None = None, sha256: str | None = None
) -> FileInfo:
    """An upload as hooks see it. ``Storage`` only once its file is published
    (``location``, relative to the storage root: no machine path)."""
    location = location or upload.location
    sha256 = sha256 or upload.sha256
    storage = None
    if location is not None:
        storage = {"Type": "tusserver", "Location": location}
        if sha256 is not None:  # None with the file digest off: no SHA256 at all
            storage["SHA256"] = sha256
    return FileInfo(
        id=upload.id,
        size=upload.length,
        offset=upload.offset,
        metadata=metadata_text(upload.metadata.values),
        is_partial=upload.concat == protocol.CONCAT_PARTIAL,
        is_final=upload.concat == protocol.CONCAT_FINAL,
        partial_uploads=part_ids(upload.concat, upload.parts),
        storage=storage,
        owner=upload.owner,
    )


def rejection(
    answer: HookResponse, default_status: int, code: str, message: str
) -> errors.TusError:
    """A hook's refusal as the client's answer: its status, body and headers."""
    reply = answer.http_response
    return errors.hook_rejected(
        reply.status_code,
        reply.body,
        reply.header,
        default_status=default_status,
        code=code,
        message=message,
    )


def metadata_text(values: Mapping[str, bytes]) -> dict[str, str]:
    """Decoded metadata as tusd gives it: text (invalid UTF-8 replaced, as Go's JSON does)."""
    return {key: value.decode("utf-8", "replace") for key, value in values.items()}


def _canonical(name: str) -> str:
    """Go's CanonicalHeaderKey, as tusd's receivers see header names: Content-Type."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def hook_failure(exc: BaseException) -> str:
    """What failed, as log_safety shows it: never a hook answer's body, a
    URL, a header's value or a trace. HookFailed's text is tusserver's own."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, HookFailed):
        return f"{describe(exc)}: {exc}"
    kind = describe(exc)
    if isinstance(exc, OSError) and exc.errno is not None:
        # Raised by a Python hook, its strerror is the application's text,
        # not the system's: the errno's name says as much.
        kind = f"{type(exc).__name__} {errno.errorcode.get(exc.errno, str(exc.errno))}"
    return f"{kind} at {origin(exc)}"

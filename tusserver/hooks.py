"""Hooks an application that mounts tusserver gives to ``create_app``.

    async def check(event: HookEvent) -> HookResponse | None:
        if "filename" not in event.upload.metadata:
            return HookResponse(reject_upload=True, http_response=HTTPResponse(400, "name it"))
        return None

    create_app(config, hooks=Hooks(pre_create=check, post_finish=on_finish))

Each is an async callable given a ``HookEvent`` (tusserver.hook_events: the
content tusd's HTTP hooks carry) and returning a ``HookResponse`` with the
same decisions an HTTP hook's answer can make, or None for "no objection".
A blocking hook (``pre_*``) that raises or runs past ``hooks_timeout`` fails
the request with a retryable 503; ``post_finish`` is recorded in Redis and
called at least once, retried until it returns (see ``hook_delivery``); the
other ``post_*`` hooks are notifications whose failures are only logged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tusserver.hook_events import HookEvent, HookResponse, HookType

Hook = Callable[[HookEvent], Awaitable[HookResponse | None]]


@dataclass(frozen=True)
class Hooks:
    pre_create: Hook | None = None
    post_create: Hook | None = None
    post_receive: Hook | None = None
    pre_finish: Hook | None = None
    post_finish: Hook | None = None
    pre_terminate: Hook | None = None
    post_terminate: Hook | None = None
    pre_access: Hook | None = None

    def for_event(self, event: HookType) -> Hook | None:
        hook: Hook | None = getattr(self, event.value.replace("-", "_"))
        return hook

"""Building the hooks of one app from its Config and an application's Python
hooks: which callable answers each event, the shared HTTP client, and the
post-finish deliverer. Called from the app's lifespan, which owns them."""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass

import httpx

from tusserver.config import Config, ConfigError, parse_header
from tusserver.hook_delivery import Deliverer
from tusserver.hook_events import HookType
from tusserver.hook_outbox import HookOutbox
from tusserver.hooking import HookRunner
from tusserver.hooks import Hook, Hooks
from tusserver.http_hooks import HttpHook


@dataclass
class HookSet:
    runner: HookRunner
    deliverer: Deliverer | None  # None without a post-finish hook


def check_hooks(config: Config, hooks: Hooks | None) -> None:
    """At create_app: one source of hooks, so it is clear who decides."""
    if (
        config.hooks_url is not None
        and hooks is not None
        and any(hooks.for_event(event) for event in HookType)
    ):
        raise ConfigError("give hooks either as a hooks URL or as Python hooks, not both.")


async def open_hooks(
    config: Config,
    hooks: Hooks | None,
    outbox: HookOutbox,
    stack: AsyncExitStack,
) -> HookSet:
    chosen: dict[HookType, Hook] = {}
    if config.hooks_url is not None:
        # One client for the app's life: connections to the receiver are reused.
        client = httpx.AsyncClient(timeout=config.hooks_timeout, follow_redirects=False)
        stack.push_async_callback(client.aclose)
        http_hook = HttpHook(
            client,
            config.hooks_url,
            retries=config.hooks_retries,
            headers=dict(parse_header(header) for header in config.hooks_headers),
        )
        chosen = {HookType(event): http_hook for event in config.hooks_events}
    elif hooks is not None:
        chosen = {event: hook for event in HookType if (hook := hooks.for_event(event))}
    runner = HookRunner(
        chosen,
        timeout=config.hooks_timeout,
        forward_auth=config.hooks_forward_auth,
        progress_interval=config.progress_interval,
        outbox=outbox,
    )
    finish_hook = chosen.get(HookType.POST_FINISH)
    deliverer = None
    if finish_hook is not None:
        deliverer = Deliverer(
            outbox,
            finish_hook,
            timeout=runner.total_timeout(finish_hook),
            reclaim_after=config.hooks_reclaim_after,
        )
    return HookSet(runner, deliverer)

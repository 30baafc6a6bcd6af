"""HTTP hooks, as tusd v2 sends them: one POST per event to ``--hooks-url``
with the event as JSON (``hook_events.to_wire``), the answer read as tusd
reads it (``hook_events.response_from_wire``).

A transport error, a timeout or a non-2xx answer is retried ``--hooks-retries``
times with a doubling backoff, then raises ``HookFailed``; an answer that is
not tusd's format raises it at once (asking again would get the same).
Neither the answer's body nor the event is logged: both may carry what only
the client or the receiver should see.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

import anyio
import httpx

from tusserver.hook_events import HookEvent, HookResponse, response_from_wire, to_wire

logger = logging.getLogger(__name__)

# First pause between two attempts; doubled each time.
_BACKOFF_SECONDS = 0.5


class HookFailed(Exception):
    """The hook gave no usable answer; the message says why, without its body."""


class HttpHook:
    def __init__(
        self, client: httpx.AsyncClient, url: str, *, retries: int, headers: Mapping[str, str]
    ) -> None:
        self._client = client
        self._url = url
        self._retries = retries
        self._headers = {**headers, "Content-Type": "application/json"}

    @property
    def retries(self) -> int:
        return self._retries

    async def __call__(self, event: HookEvent) -> HookResponse:
        body = json.dumps(to_wire(event), separators=(",", ":")).encode()
        problem = ""
        for attempt in range(self._retries + 1):
            if attempt:
                await anyio.sleep(_BACKOFF_SECONDS * 2 ** (attempt - 1))
            try:
                response = await self._client.post(self._url, content=body, headers=self._headers)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}"
                logger.warning(
                    "upload %s: %s hook not reached (attempt %d): %s",
                    event.upload.id or "(new)",
                    event.type.value,
                    attempt + 1,
                    problem,
                )
                continue
            if not 200 <= response.status_code < 300:
                problem = f"answered {response.status_code}"
                logger.warning(
                    "upload %s: %s hook %s (attempt %d)",
                    event.upload.id or "(new)",
                    event.type.value,
                    problem,
                    attempt + 1,
                )
                continue
            try:
                return response_from_wire(response.content)
            except ValueError as exc:
                raise HookFailed(f"its answer is not a tusd hook response: {exc}") from None
        raise HookFailed(problem)

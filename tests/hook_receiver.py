"""A tusd-style hook receiver for the specs: a real HTTP server on 127.0.0.1.

``hook_receiver`` starts one per test. It records every hook request (its
JSON body and headers) and answers each event type as it is told:

    receiver.answer("pre-create", {"RejectUpload": True, ...})   # 200 + JSON
    receiver.answer("post-finish", status=500)                   # fails
    receiver.answer("pre-create", delay=2.0)                     # slow

Untold events get 200 with an empty JSON object, as a receiver that only
listens would answer.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest


@dataclass
class Answer:
    body: dict[str, Any] = field(default_factory=dict)
    status: int = 200
    delay: float = 0.0


@dataclass
class Received:
    type: str
    body: dict[str, Any]
    headers: dict[str, str]

    @property
    def upload(self) -> dict[str, Any]:
        upload: dict[str, Any] = self.body["Event"]["Upload"]
        return upload

    @property
    def request(self) -> dict[str, Any]:
        request: dict[str, Any] = self.body["Event"]["HTTPRequest"]
        return request


class HookReceiver:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._answers: dict[str, Answer] = {}
        self._received: list[Received] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                headers = {name.lower(): value for name, value in self.headers.items()}
                answer = receiver._record(Received(body["Type"], body, headers))
                if answer.delay:
                    time.sleep(answer.delay)
                content = json.dumps(answer.body).encode()
                self.send_response(answer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/tus-hooks"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answer(
        self,
        event: str,
        body: dict[str, Any] | None = None,
        *,
        status: int = 200,
        delay: float = 0.0,
    ) -> None:
        with self._lock:
            self._answers[event] = Answer(body or {}, status, delay)

    def _record(self, received: Received) -> Answer:
        with self._lock:
            self._received.append(received)
            return self._answers.get(received.type, Answer())

    def received(self, event: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self._received if event is None or r.type == event]

    def wait_for(self, event: str, count: int = 1, timeout: float = 15.0) -> list[Received]:
        """At least ``count`` requests of ``event``; fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.received(event)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                seen = [r.type for r in self.received()]
                raise AssertionError(f"{count} {event} hook(s) expected, received {seen}")
            time.sleep(0.02)


@pytest.fixture
def hook_receiver() -> Iterator[HookReceiver]:
    receiver = HookReceiver()
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()

"""How log lines look (``--log-format text|json``) and what they say of their request.

The request a line belongs to is not passed to every logger call: the app's
outermost layer (``tusserver/observing.py``) binds the request's id, method
and path in a context variable, the dispatcher and the creation path bind
the upload's id, and the formatters read them. A background task started by
a request (a hook notification) inherits them.

A line carries only what its message and these fields say: never an
exception's text or trace (``tusserver/log_safety.py``), a header's value
or a query string (where tokens travel).
"""

from __future__ import annotations

import json
import logging
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from uvicorn.logging import DefaultFormatter


@dataclass(frozen=True, slots=True)
class RequestFields:
    request_id: str
    method: str
    path: str


_request: ContextVar[RequestFields | None] = ContextVar("tusserver_request", default=None)
_upload_id: ContextVar[str | None] = ContextVar("tusserver_upload_id", default=None)


def bind_request(fields: RequestFields) -> None:
    """The request the lines logged from now on in this context belong to."""
    _request.set(fields)


def bind_upload(upload_id: str) -> None:
    """The upload the lines logged from now on in this context are about."""
    _upload_id.set(upload_id)


def current_request_id() -> str | None:
    fields = _request.get()
    return None if fields is None else fields.request_id


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and where
    they apply upload_id, request_id, method, path, status, duration (s)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _iso_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        upload_id = _upload_id.get()
        if upload_id is not None:
            line["upload_id"] = upload_id
        request = _request.get()
        if request is not None:
            line["request_id"] = request.request_id
            line["method"] = request.method
            line["path"] = request.path
        for name in ("status", "duration"):
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info and record.exc_info[0] is not None:
            # The kind only: a trace and an exception's text can carry paths and secrets.
            line["exception"] = record.exc_info[0].__name__
        return json.dumps(line, ensure_ascii=False)


class TextFormatter(DefaultFormatter):
    """uvicorn's lines, with the request id appended where there is one."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        request = _request.get()
        return text if request is None else f"{text} [request {request.request_id}]"

    def formatException(self, ei: Any) -> str:
        return f"({ei[0].__name__})" if ei and ei[0] is not None else ""


def formatter_config(log_format: str) -> dict[str, Any]:
    """The ``logging.config.dictConfig`` entry of a formatter for ``log_format``."""
    if log_format == "json":
        return {"()": JsonFormatter}
    return {"()": TextFormatter, "fmt": "%(levelprefix)s %(message)s", "use_colors": None}


def _iso_time(created: float) -> str:
    seconds = int(created)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{stamp}.{int((created - seconds) * 1000):03d}Z"

"""What a log line may say of an exception: its kind, never its message.

An exception's text can name a file path (``OSError.filename``, an SMB UNC
path), a Redis socket or URL, or a secret a foreign library put there; none
of that belongs in a log line. ``describe`` keeps what an operator needs to
act: the exception's type, its errno, and for an unexpected failure the
module and line that raised it.
"""

from __future__ import annotations

import errno

from tusserver.errors import TusError


def describe(exc: BaseException) -> str:
    """``exc`` as a log line may show it."""
    if isinstance(exc, TusError):
        return exc.code  # ours: says what the client was told, nothing more
    kind = type(exc).__name__
    if isinstance(exc, OSError) and exc.errno is not None:
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        return f"{kind} {name} ({exc.strerror})"
    if exc.__cause__ is not None:
        return f"{kind} ({type(exc.__cause__).__name__})"
    return kind


def origin(exc: BaseException) -> str:
    """Where ``exc`` was raised, as ``module:line`` (no file path)."""
    traceback = exc.__traceback__
    if traceback is None:
        return "unknown"
    while traceback.tb_next is not None:
        traceback = traceback.tb_next
    module = traceback.tb_frame.f_globals.get("__name__", "?")
    return f"{module}:{traceback.tb_lineno}"

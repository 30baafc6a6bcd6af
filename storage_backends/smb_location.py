"""Where an SMB storage lives and how to reach it, all from its URL:
``smb://USER@HOST[:PORT]/SHARE/PATH[?timeout=30s&connections=8]`` parsed into
its parts, and the UNC paths below it. The password never comes from the URL
(it is read from ``TUSSERVER_SMB_PASSWORD``, see ``storage_backends.smb``)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from urllib.parse import parse_qsl, unquote, urlsplit

from tusserver.config import parse_duration

_USAGE = "as in smb://USER@HOST/SHARE/PATH"


@dataclass(frozen=True)
class SMBOptions:
    """The backend's own settings, from the URL's query."""

    # Longest an SMB call may go without progress (and the connect timeout):
    # a share that stopped answering fails a request within this, retryably.
    timeout: float = 30.0
    # SMB connections, each with its worker thread, per process. A PATCH
    # writes on one of them at a time, several writes in flight (see
    # storage_backends.smb).
    connections: int = 8


@dataclass(frozen=True)
class SMBLocation:
    """Where ``smb://USER@HOST[:PORT]/SHARE[/PATH]`` points."""

    host: str
    port: int
    share: str
    path: tuple[str, ...]
    username: str
    options: SMBOptions = SMBOptions()

    @classmethod
    def parse(cls, url: str) -> SMBLocation:
        """Raises ``ValueError`` with a sentence naming what is wrong (never the password)."""
        parsed = urlsplit(url)
        if parsed.scheme != "smb":
            raise ValueError("an SMB storage URL starts with smb://")
        if parsed.password is not None:
            raise ValueError(
                "the SMB URL must not carry a password; set TUSSERVER_SMB_PASSWORD instead"
            )
        if not parsed.username:
            raise ValueError(f"the SMB URL needs a user, {_USAGE}")
        if not parsed.hostname:
            raise ValueError(f"the SMB URL needs a host, {_USAGE}")
        try:
            port = parsed.port or 445
        except ValueError:
            raise ValueError("the SMB URL's port is not a number from 1 to 65535") from None
        segments = [unquote(part) for part in parsed.path.split("/") if part]
        if not segments:
            raise ValueError(f"the SMB URL needs a share, {_USAGE}")
        for segment in segments:
            if segment in (".", "..") or any(c in segment for c in '\\:*?"<>|\x00'):
                raise ValueError(f"the SMB URL's path segment {segment!r} is not a valid name")
        user = unquote(parsed.username)
        options = _options(parsed.query)
        return cls(parsed.hostname, port, segments[0], tuple(segments[1:]), user, options)

    def unc(self, *parts: str) -> str:
        return "\\\\" + "\\".join((self.host, self.share, *self.path, *parts))


def _options(query: str) -> SMBOptions:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError(
            "the SMB URL's options must read like ?timeout=30s&connections=8"
        ) from None
    given: dict[str, str] = {}
    for name, value in pairs:
        if name == "password":
            # Never echo the value: it is the secret.
            raise ValueError(
                "the SMB URL must not carry a password; set TUSSERVER_SMB_PASSWORD instead"
            )
        if name not in ("timeout", "connections"):
            raise ValueError(
                f"the SMB URL's option {name!r} is unknown; use timeout or connections"
            )
        if name in given:
            raise ValueError(f"the SMB URL gives the option {name!r} more than once")
        given[name] = value
    options = SMBOptions()
    if "timeout" in given:
        timeout = parse_duration(given["timeout"], "the SMB URL's timeout")
        if timeout <= 0:
            raise ValueError("the SMB URL's timeout must be greater than zero")
        options = replace(options, timeout=timeout)
    if "connections" in given:
        text = given["connections"]
        if not (text.isdigit() and 1 <= int(text) <= 64):
            raise ValueError(
                f"the SMB URL's connections must be a number from 1 to 64, not {text!r}"
            )
        options = replace(options, connections=int(text))
    return options

"""Where an SMB storage lives: ``smb://USER@HOST[:PORT]/SHARE/PATH`` parsed
into its parts, and the UNC paths below it. The password never comes from
the URL (see the CLI: ``TUSSERVER_SMB_PASSWORD``)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

# Where a finalize records the name it is publishing under, before the rename


@dataclass(frozen=True)
class SMBLocation:
    """Where ``smb://USER@HOST[:PORT]/SHARE[/PATH]`` points."""

    host: str
    port: int
    share: str
    path: tuple[str, ...]
    username: str

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
            raise ValueError("the SMB URL needs a user, as in smb://USER@HOST/SHARE/PATH")
        if not parsed.hostname:
            raise ValueError("the SMB URL needs a host, as in smb://USER@HOST/SHARE/PATH")
        try:
            port = parsed.port or 445
        except ValueError:
            raise ValueError("the SMB URL's port is not a number from 1 to 65535") from None
        segments = [unquote(part) for part in parsed.path.split("/") if part]
        if not segments:
            raise ValueError("the SMB URL needs a share, as in smb://USER@HOST/SHARE/PATH")
        for segment in segments:
            if segment in (".", "..") or any(c in segment for c in '\\:*?"<>|\x00'):
                raise ValueError(f"the SMB URL's path segment {segment!r} is not a valid name")
        user = unquote(parsed.username)
        return cls(parsed.hostname, port, segments[0], tuple(segments[1:]), user)

    def unc(self, *parts: str) -> str:
        return "\\\\" + "\\".join((self.host, self.share, *self.path, *parts))

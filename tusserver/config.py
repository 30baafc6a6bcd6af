"""One settings object for the whole server, validated once at start-up.

Every field has a default and the reason for it beside it. The CLI maps its
flags (and ``TUSSERVER_*`` environment variables) 1:1 onto these fields; an
application that mounts tusserver builds a ``Config`` directly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


class ConfigError(ValueError):
    """A setting is unusable; the message is one sentence a person can act on."""


_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_DURATION_UNITS = {"ms": 0.001, "s": 1, "": 1, "m": 60, "h": 3600, "d": 86400}


def parse_size(text: str, setting: str) -> int:
    """``"10G"``, ``"512MiB"``, ``"1048576"`` -> bytes (binary units)."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if not match:
        raise ConfigError(f"{setting} must be a size such as 1048576, 500M or 10G, not {text!r}.")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


def parse_duration(text: str, setting: str) -> float:
    """``"60s"``, ``"24h"``, ``"250ms"``, ``"90"`` -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|)\s*", text, re.IGNORECASE)
    if not match:
        raise ConfigError(f"{setting} must be a duration such as 60s, 15m or 24h, not {text!r}.")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]


def format_duration(seconds: float) -> str:
    """The inverse of ``parse_duration`` for help texts, in the smallest unit
    that counts it whole and below 100: ``60.0`` -> ``"60s"``, ``86400.0`` -> ``"24h"``."""
    for unit in ("s", "m", "h", "d"):
        count = seconds / _DURATION_UNITS[unit]
        if count == int(count) and (count < 100 or unit == "d"):
            return f"{int(count)}{unit}"
    return f"{seconds:g}s"


def parse_mode(text: str, setting: str) -> int:
    """``"644"`` -> ``0o644``."""
    try:
        return int(text, 8)
    except ValueError:
        raise ConfigError(f"{setting} must be octal such as 644, not {text!r}.") from None


def redact_url(text: str) -> str:
    """A storage or Redis URL fit for a message: never a password, whether in
    the user info or in the query (``?password=``, which redis-py accepts)."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        return text if "@" not in text else "***"
    rest = rest.split("?", 1)[0].split("#", 1)[0]
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return scheme + sep + rest


LOG_LEVELS = ("debug", "info", "warning", "error")


# Keywords only: a setting is always named where it is given.
@dataclass(frozen=True, kw_only=True)
class Config:
    # How `tusserver serve` runs the app on uvicorn. An application that
    # mounts tusserver serves it its own way and ignores these five.
    # Loopback only: exposing an upload endpoint is a decision to make.
    host: str = "127.0.0.1"
    # Unprivileged, and the port tus examples commonly use.
    port: int = 8080
    # One process suffices for I/O-bound uploads; more share the same Redis.
    workers: int = 1
    # Start-up, expiry and failures, not every request (see access_log).
    log_level: str = "info"
    # One line per request is noise at upload rates (every PATCH is one).
    access_log: bool = False
    # Where finished files land: a folder path or the URL of a registered
    # backend (file://, smb://; storage_backends/registry.py), which carries
    # the backend's own options. Partials live in its `.partial/` subfolder
    # so finalize is one rename on one volume.
    storage: str = "./uploads"
    # Redis holding upload state. None: start an embedded redis-server on a
    # unix socket inside `data_dir`, so the quick start needs nothing else.
    redis_url: str | None = None
    # Local folder for server-owned state (the embedded Redis and its AOF).
    data_dir: Path = Path("./tusserver-data")
    # URL path the tus endpoint answers on; uploads live at <base_path><id>.
    base_path: str = "/files/"
    # Largest upload accepted, in bytes; None = no limit (Tus-Max-Size omitted).
    max_size: int | None = None
    # A PATCH that receives no bytes for this long is ended and what arrived is
    # kept (tus: store as much as possible); frees the lock of a dead client.
    idle_timeout: float = 60.0
    # How long a request waits for another request's lock (after asking it to
    # let go) before answering 423. Clients retry 423 (docs/clients.md).
    lock_wait: float = 3.0
    # Lock lifetime without progress. A crashed holder blocks its upload for at
    # most this long; a live holder extends it while bytes arrive.
    lock_ttl: float = 10.0
    # While a body streams, the bytes stored are committed every this many
    # bytes or seconds, whichever comes first, so that a process that dies
    # mid-PATCH (SIGKILL, OOM, a node drained) loses at most those. Each
    # commit is one Redis round trip beside the stream, never stalling it.
    checkpoint_bytes: int = 16 * 1024 * 1024
    checkpoint_interval: float = 1.0
    # Flush the stored bytes to stable storage (fdatasync, SMB FLUSH) before
    # each commit counts them. Off, a commit can count bytes still in the
    # page cache, which a crash of the machine (not of the process) loses;
    # the offset then runs ahead of the file. On, every checkpoint and every
    # PATCH pays for a flush.
    durable_commits: bool = False
    # Name of a finished file: `{id}` (default, never collides) or
    # `{filename}` (sanitized client metadata, falls back to the id).
    final_name: str = "{id}"
    # Permissions of finished files: readable by others (a web server, a
    # scanner), writable by the service only. A policy for published files,
    # not a backend's connection detail: every backend whose storage has
    # POSIX permissions honours it (an SMB share applies its own).
    file_mode: int = 0o644
    # Size of the blocks handed to storage: large writes are what disks and SMB
    # like, and per-request memory stays bounded by about two of them.
    block_size: int = 4 * 1024 * 1024
    # Upload-Metadata larger than this is refused with 400: it is stored in
    # Redis per upload and echoed on every HEAD.
    max_metadata_size: int = 16 * 1024
    # GET on an upload URL downloads the finished file (with Range). Off: GET
    # answers 405 like any method the URL does not offer, as tusd does.
    downloads: bool = True
    # GET on an unfinished upload serves the bytes received so far instead of
    # 404: useful for previews, but those bytes are not a whole file yet.
    download_unfinished: bool = False
    # An unfinished upload that receives no bytes for this long expires (tus
    # expiration): the sweeper removes its bytes and record. Each PATCH that
    # stores bytes moves the expiry this far into the future again.
    expire_after: float = 24 * 3600
    # How long a finished upload's record is kept, so HEAD still answers
    # Upload-Offset == Upload-Length to clients re-checking a stored URL.
    # None: kept until DELETE. The finished file itself is never swept.
    retention: float | None = None
    # How often each instance tries to sweep; a Redis lock lets only one
    # instance sweep at a time, so more instances do not mean more work.
    sweep_interval: float = 60.0
    # Origins whose pages may call the endpoint from a browser, like
    # https://app.example.com; "*" for any. Empty: same-origin pages only, the
    # safe default for a server that writes files.
    cors_origins: tuple[str, ...] = ()
    # Let browsers send cookies / HTTP auth cross-origin. Only with explicit
    # origins: with "*" any site could upload with the user's credentials.
    cors_allow_credentials: bool = False
    # The endpoint's URL as clients see it (https://example.com/files/):
    # Locations become absolute from it. None: relative Locations, which are
    # right behind any proxy that keeps the path.
    public_url: str | None = None
    # Trust Forwarded / X-Forwarded-Host, -Proto and -Prefix for Locations.
    # Off: any client could otherwise make the server hand out foreign URLs.
    behind_proxy: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be between 0 and 65535, not {self.port}.")
        if not 1 <= self.workers <= 64:
            raise ConfigError(f"workers must be between 1 and 64, not {self.workers}.")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"log level must be one of {', '.join(LOG_LEVELS)}.")
        if not (self.base_path.startswith("/") and self.base_path.endswith("/")):
            raise ConfigError(
                f"base path must start and end with '/', like /files/, not {self.base_path!r}."
            )
        if self.max_size is not None and self.max_size <= 0:
            raise ConfigError(
                "max size must be a positive number of bytes (or unset for no limit)."
            )
        for name in ("idle_timeout", "lock_wait", "lock_ttl", "checkpoint_interval"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name.replace('_', ' ')} must be greater than zero.")
        if self.checkpoint_bytes <= 0:
            raise ConfigError("checkpoint bytes must be greater than zero.")
        if not 64 * 1024 <= self.block_size <= 64 * 1024 * 1024:
            raise ConfigError("block size must be between 64 KiB and 64 MiB.")
        if "{id}" not in self.final_name and "{filename}" not in self.final_name:
            raise ConfigError("final name template must contain {id} or {filename}.")
        if not 0 <= self.file_mode <= 0o777:
            raise ConfigError("file mode must be an octal permission such as 644.")
        if self.redis_url is not None and not self.redis_url.startswith(
            ("redis://", "rediss://", "unix://")
        ):
            scheme, sep, _ = self.redis_url.partition("://")
            # Only the scheme, and only if there is one: the rest of the URL
            # (or all of it, without a scheme) may carry a password.
            shown = f", not {scheme}://" if sep else ""
            raise ConfigError(f"redis URL must start with redis://, rediss:// or unix://{shown}.")
        if self.download_unfinished and not self.downloads:
            raise ConfigError("downloading unfinished uploads needs downloads enabled.")
        for name in ("expire_after", "sweep_interval"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name.replace('_', ' ')} must be greater than zero.")
        if self.retention is not None and self.retention <= 0:
            raise ConfigError(
                "retention must be greater than zero (or unset to keep finished records)."
            )
        for origin in self.cors_origins:
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ConfigError(
                    f"CORS origin must be scheme://host[:port] with no path, "
                    f"like https://app.example.com, or *; not {origin!r}."
                )
        if self.cors_allow_credentials and "*" in self.cors_origins:
            raise ConfigError("CORS credentials need explicit origins: list them instead of '*'.")
        if self.public_url is not None and not _PUBLIC_URL.fullmatch(self.public_url):
            raise ConfigError(
                "public URL must be the endpoint's absolute http(s) URL, "
                f"like https://example.com/files/, not {self.public_url!r}."
            )


# What browsers send in Origin: a scheme, a host and maybe a port, nothing else
# (a trailing slash would never match).
_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#@\s]+", re.IGNORECASE)
_PUBLIC_URL = re.compile(r"https?://[^/?#@\s]+(/[^?#\s]*)?", re.IGNORECASE)

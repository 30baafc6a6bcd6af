"""One settings object for the whole server, validated once at start-up.

Every field has a default and the reason for it beside it. The CLI maps its
flags (and ``TUSSERVER_*`` environment variables) 1:1 onto these fields; an
application that mounts tusserver builds a ``Config`` directly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from tusserver import content_types, redis_urls
from tusserver.hook_events import HookType

# Every hook event, in the order of an upload's life.
HOOK_EVENTS: tuple[str, ...] = tuple(event.value for event in HookType)


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
LOG_FORMATS = ("text", "json")
# The HTTP servers `tusserver serve` can run on (tusserver/serving.py SERVERS).
SERVERS = ("granian", "uvicorn")
# Whole-file digests every upload gets (tusserver/digests.py): SHA-256, or none.
FILE_DIGESTS = ("sha256", "none")


# Keywords only: a setting is always named where it is given.
@dataclass(frozen=True, kw_only=True)
class Config:
    # How `tusserver serve` runs the app. An application that mounts
    # tusserver serves it its own way and ignores these six.
    # The HTTP server: granian (Rust; the default: the faster per core, and
    # the whole spec suite runs on it), or uvicorn, the reference ASGI server.
    server: str = "granian"
    # Loopback only: exposing an upload endpoint is a decision to make.
    host: str = "127.0.0.1"
    # Unprivileged, and the port tus examples commonly use.
    port: int = 8080
    # One process suffices for I/O-bound uploads; more share the same Redis.
    workers: int = 1
    # Whole-file digest of every upload, streamed as the bytes arrive and
    # recorded at completion (hooks see it): "sha256", or "none" to skip the
    # hashing (a client-declared checksum is still computed and verified).
    # A security-minded default; "none" saves about a second of CPU per GiB.
    file_digest: str = "sha256"
    # Start-up, expiry and failures, not every request (see access_log).
    log_level: str = "info"
    # One line per request is noise at upload rates (every PATCH is one).
    access_log: bool = False
    # When the server stops (`tusserver serve`: SIGTERM, as in a rolling
    # deploy or a drained node; an embedding app: the `Draining` it gave
    # create_app), running PATCHes may go on receiving for this long; then
    # they are cut, commit the bytes stored and release their locks, so
    # another instance takes their uploads over at once. Long enough for a
    # chunk in flight to end, short enough for an orchestrator's kill
    # timeout (Kubernetes waits 30 s by default).
    shutdown_grace: float = 10.0
    # Log lines as text for people, or as JSON objects (one per line) for a
    # log pipeline, with the request id, upload id, method, path, status.
    log_format: str = "text"
    # Prometheus metrics (tusserver/metrics.py): cheap, and what an operator
    # needs to see uploads, bytes and failures. Off: nothing is recorded.
    metrics: bool = True
    # Where the app answers scrapes, beside the tus endpoint.
    metrics_path: str = "/metrics"
    # A port of their own for the metrics instead (on `host`), to keep
    # scrapes off a public port. None: served on the app at metrics_path.
    metrics_port: int | None = None
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
    # Smallest upload accepted, in bytes; None = no lower bound. Checked when
    # the length is known (creation, or the PATCH that ends a deferred one).
    min_size: int | None = None
    # Media types an upload may be (image/*, application/pdf, */*), judged
    # by its metadata at creation and by its first bytes as they arrive
    # (tusserver/content_types.py). Empty: any type, and nothing is sniffed.
    allow_types: tuple[str, ...] = ()
    # A PATCH that receives no bytes for this long is ended and what arrived is
    # kept (tus: store as much as possible); frees the lock of a dead client.
    idle_timeout: float = 60.0
    # How long a request waits for another request's lock (after asking it to
    # let go) before answering 423. Clients retry 423 (docs/clients.md).
    lock_wait: float = 3.0
    # A request that finds the lock held asks the holder to let go, and a
    # holder that is receiving bytes keeps the upload: it lets go only once
    # no byte arrived for this long (a dead or stalled connection). So a
    # reconnecting client takes over its own dead PATCH, and a second writer
    # never interrupts a live one. Keep it below lock_wait, or a reconnecting
    # client gets a 423 first (and takes over on its retry).
    takeover_after: float = 1.0
    # How many Redis replicas must have an upload's final offset before its
    # file is published, and its completion before the client hears of it
    # (WAIT). A primary that dies before replicating a write loses it; with
    # this, a failover can lose only offsets a client has not yet been told
    # are final, which the storage still holds (docs/architecture.md, "Durability"). None:
    # 1 for redis+sentinel:// (which always has a replica to fail over to),
    # 0 otherwise; say 1 for a Redis Cluster with replicas.
    redis_replicas: int | None = None
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
    # Size of the blocks handed to storage; per-request memory stays bounded
    # by about three of them. None: the size the storage backend prefers
    # (half a MiB on local disk, 4 MiB on SMB; see tusserver/extensions.py).
    block_size: int | None = None
    # Upload-Metadata larger than this is refused with 400: it is stored in
    # Redis per upload and echoed on every HEAD.
    max_metadata_size: int = 16 * 1024
    # GET on an upload URL downloads the finished file (with Range). Off: GET
    # answers 405 like any method the URL does not offer, as tusd does.
    downloads: bool = True
    # GET on an unfinished upload serves the bytes received so far instead of
    # 404: useful for previews, but those bytes are not a whole file yet.
    download_unfinished: bool = False
    # POST of multipart/form-data (an HTML <form>, curl -F) to the endpoint
    # stores each file part as an upload, for clients that do not speak tus.
    # Off: such a POST is answered as any non-tus creation request is.
    forms: bool = True
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
    # tusd v2-compatible HTTP hooks: each enabled event is POSTed here as
    # tusd's JSON, so a receiver written for tusd works unchanged. None: no
    # HTTP hooks (an application that mounts tusserver may pass Python ones).
    hooks_url: str | None = None
    # The events sent to hooks_url. All by default: a receiver ignores what
    # it does not want more cheaply than an operator debugs a missing event.
    hooks_events: tuple[str, ...] = HOOK_EVENTS
    # Longest one hook call may take. A blocking hook (pre-*) holds its
    # request that long at most before the client gets a retryable 503.
    hooks_timeout: float = 5.0
    # Attempts after the first for a hook that is unreachable or answers
    # non-2xx (0.5 s, then doubling, between them); passing trouble on the
    # receiver's side should not fail an upload.
    hooks_retries: int = 2
    # Extra headers on every hook request ("Name: Value"), e.g. a shared
    # secret the receiver checks; never logged or shown.
    hooks_headers: tuple[str, ...] = field(default=(), repr=False)
    # Forward the client's Authorization, Proxy-Authorization and Cookie to
    # hooks. Off: redacted, since a receiver is another service with its own
    # logs; on for receivers that authenticate the client themselves.
    hooks_forward_auth: bool = False
    # post-receive is sent at most this often per upload (as tusd's
    # -progress-hooks-interval): progress, not a message per block.
    progress_interval: float = 1.0
    # A post-finish delivery taken by an instance that then went silent (it
    # died) is taken over by another after this long; a live instance keeps
    # touching the ones it retries.
    hooks_reclaim_after: float = 30.0
    # Bearer tokens (tusserver.auth): with a key, every request but OPTIONS
    # needs a valid JWT, and uploads belong to its `sub`. HS256 with this
    # secret, which comes from TUSSERVER_JWT_SECRET only (never a flag: argv
    # is visible to every local user) and is never shown by repr.
    jwt_secret: str | None = field(default=None, repr=False)
    # Or RS256/ES256 with this PEM public key; the key's type pins the algorithm.
    jwt_public_key: Path | None = None
    # Claims a token must carry when set (`aud` among them, `iss` equal).
    jwt_audience: str | None = None
    jwt_issuer: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be between 0 and 65535, not {self.port}.")
        if not 1 <= self.workers <= 64:
            raise ConfigError(f"workers must be between 1 and 64, not {self.workers}.")
        if self.server not in SERVERS:
            raise ConfigError(f"server must be one of {', '.join(SERVERS)}, not {self.server!r}.")
        if self.file_digest not in FILE_DIGESTS:
            raise ConfigError(
                f"file digest must be one of {', '.join(FILE_DIGESTS)}, not {self.file_digest!r}."
            )
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"log level must be one of {', '.join(LOG_LEVELS)}.")
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"log format must be one of {', '.join(LOG_FORMATS)}.")
        self._check_metrics()
        if not (self.base_path.startswith("/") and self.base_path.endswith("/")):
            raise ConfigError(
                f"base path must start and end with '/', like /files/, not {self.base_path!r}."
            )
        if self.max_size is not None and self.max_size <= 0:
            raise ConfigError(
                "max size must be a positive number of bytes (or unset for no limit)."
            )
        self._check_upload_rules()
        for name in (
            "idle_timeout",
            "lock_wait",
            "lock_ttl",
            "takeover_after",
            "checkpoint_interval",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name.replace('_', ' ')} must be greater than zero.")
        if self.shutdown_grace < 0:
            raise ConfigError("shutdown grace must not be negative.")
        if self.checkpoint_bytes <= 0:
            raise ConfigError("checkpoint bytes must be greater than zero.")
        if self.block_size is not None and not 64 * 1024 <= self.block_size <= 64 * 1024 * 1024:
            raise ConfigError("block size must be between 64 KiB and 64 MiB.")
        if "{id}" not in self.final_name and "{filename}" not in self.final_name:
            raise ConfigError("final name template must contain {id} or {filename}.")
        if not 0 <= self.file_mode <= 0o777:
            raise ConfigError("file mode must be an octal permission such as 644.")
        if self.redis_replicas is not None and not 0 <= self.redis_replicas <= 16:
            raise ConfigError("redis replicas must be between 0 and 16.")
        if self.redis_url is not None:
            try:
                redis_urls.parse(self.redis_url)
            except redis_urls.RedisUrlError as exc:
                raise ConfigError(str(exc)) from None
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
        self._check_jwt()
        if self.public_url is not None and not _PUBLIC_URL.fullmatch(self.public_url):
            raise ConfigError(
                "public URL must be the endpoint's absolute http(s) URL, "
                f"like https://example.com/files/, not {self.public_url!r}."
            )
        _check_hooks(self)

    def _check_metrics(self) -> None:
        if not _METRICS_PATH.fullmatch(self.metrics_path):
            raise ConfigError(
                f"metrics path must be a path like /metrics, not {self.metrics_path!r}."
            )
        if self.metrics_path in (self.base_path, self.base_path.rstrip("/")):
            raise ConfigError("metrics path must differ from the base path of the uploads.")
        if self.metrics_port is not None:
            if not 1 <= self.metrics_port <= 65535:
                raise ConfigError(
                    f"metrics port must be between 1 and 65535, not {self.metrics_port}."
                )
            if self.metrics_port == self.port:
                raise ConfigError("metrics port must differ from the port of the uploads.")

    def _check_jwt(self) -> None:
        if self.jwt_secret is not None and self.jwt_public_key is not None:
            raise ConfigError("set either the JWT secret or the JWT public key, not both.")
        # RFC 7518 3.2: an HS256 key at least as long as the hash (32 bytes).
        if self.jwt_secret is not None and len(self.jwt_secret.encode()) < 32:
            raise ConfigError("the JWT secret must be at least 32 bytes long.")
        keyless = self.jwt_secret is None and self.jwt_public_key is None
        if keyless and (self.jwt_audience is not None or self.jwt_issuer is not None):
            raise ConfigError(
                "a JWT audience or issuer needs TUSSERVER_JWT_SECRET or a JWT public key."
            )

    def _check_upload_rules(self) -> None:
        if self.min_size is not None and self.min_size < 0:
            raise ConfigError("min size must be a number of bytes (or unset for no minimum).")
        minimum, maximum = self.min_size, self.max_size
        if minimum is not None and maximum is not None and minimum > maximum:
            raise ConfigError("min size must not be larger than max size.")
        bad = content_types.bad_pattern(self.allow_types)
        if bad is not None:
            raise ConfigError(
                "allowed types must be media types such as image/*, video/mp4 or "
                f"application/pdf, not {bad!r}."
            )


def _check_hooks(config: Config) -> None:
    if config.hooks_url is not None and not _HOOKS_URL.fullmatch(config.hooks_url):
        raise ConfigError(
            "hooks URL must be an absolute http(s) URL, like http://127.0.0.1:8000/tus-hooks."
        )
    for event in config.hooks_events:
        if event not in HOOK_EVENTS:
            raise ConfigError(
                f"hook event {event[:40]!r} is unknown; the events are {', '.join(HOOK_EVENTS)}."
            )
    for name in ("hooks_timeout", "progress_interval", "hooks_reclaim_after"):
        if getattr(config, name) <= 0:
            raise ConfigError(f"{name.replace('_', ' ')} must be greater than zero.")
    if not 0 <= config.hooks_retries <= 10:
        raise ConfigError("hooks retries must be between 0 and 10.")
    for header in config.hooks_headers:
        parse_header(header)


def parse_header(text: str) -> tuple[str, str]:
    """``"X-Hook-Secret: s3cret"`` -> ("X-Hook-Secret", "s3cret")."""
    name, sep, value = text.partition(":")
    name, value = name.strip(), value.strip()
    named = bool(sep) and _HEADER_NAME.fullmatch(name) is not None
    if not named or not value or not _HEADER_VALUE.fullmatch(value):
        # Never the value, nor text without a colon: either is likely a
        # secret (the variable's list is split at spaces, so "Name: secret"
        # arrives as "Name:" and "secret").
        shown = f" ({name} has no usable value)" if named else ""
        raise ConfigError(f"hooks header must be NAME:VALUE, like X-Hook-Secret:abc{shown}.")
    return name, value


# What browsers send in Origin: a scheme, a host and maybe a port, nothing else
# (a trailing slash would never match).
_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#@\s]+", re.IGNORECASE)
_HOOKS_URL = re.compile(r"https?://[^/?#@\s]+(/[^#\s]*)?", re.IGNORECASE)
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_VALUE = re.compile(r"[^\x00-\x1f\x7f]*")
_METRICS_PATH = re.compile(r"/[A-Za-z0-9._~/-]*")
_PUBLIC_URL = re.compile(r"https?://[^/?#@\s]+(/[^?#\s]*)?", re.IGNORECASE)

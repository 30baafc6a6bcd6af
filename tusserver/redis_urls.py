"""The URL forms of the Redis holding the upload state: one server, a
Sentinel-watched primary, or a Cluster.

    redis://[[USER]:PASSWORD@]HOST[:PORT][/DB], rediss://..., unix://PATH
        one server (redis-py's own URL forms)
    redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB]
        the primary the sentinels name SERVICE; PASSWORD is the primary's
        and its replicas' (the sentinels themselves are asked without one)
    redis+cluster://[:PASSWORD@]HOST:PORT[,HOST:PORT...]
        a Redis Cluster, found through any of the given nodes

Parsed once, when the Config is validated; ``redis_topology`` connects.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from urllib.parse import unquote

SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEME = "redis+cluster"
_STANDALONE_SCHEMES = ("redis", "rediss", "unix")


class Topology(Enum):
    STANDALONE = "standalone"
    SENTINEL = "sentinel"
    CLUSTER = "cluster"


class RedisUrlError(ValueError):
    """The URL names no Redis this module can reach; the message never holds
    the password."""


@dataclass(frozen=True)
class RedisTarget:
    topology: Topology
    url: str  # as given (standalone: handed to redis-py as is)
    nodes: tuple[tuple[str, int], ...] = ()  # sentinels, or cluster seed nodes
    service: str = ""  # the sentinels' name of the primary
    db: int = 0
    password: str | None = None

    @property
    def sharded(self) -> bool:
        """Keys live on several servers: no command may touch two slots."""
        return self.topology is Topology.CLUSTER


def parse(url: str) -> RedisTarget:
    """The target ``url`` names; RedisUrlError (without the password) if malformed."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in (*_STANDALONE_SCHEMES, SENTINEL_SCHEME, CLUSTER_SCHEME):
        shown = f", not {scheme}://" if sep else ""
        raise RedisUrlError(
            "redis URL must start with redis://, rediss://, unix://, redis+sentinel://"
            f" or redis+cluster://{shown}."
        )
    if scheme in _STANDALONE_SCHEMES:
        return RedisTarget(Topology.STANDALONE, url)
    password, hosts, path = _split(rest)
    nodes = tuple(_node(entry, scheme) for entry in hosts.split(","))
    if scheme == CLUSTER_SCHEME:
        if path.strip("/"):
            raise RedisUrlError("a redis+cluster:// URL has no path: a cluster has one database.")
        return RedisTarget(Topology.CLUSTER, url, nodes, password=password)
    parts = [unquote(part) for part in path.strip("/").split("/")] if path.strip("/") else []
    if not parts or len(parts) > 2 or not parts[0]:
        raise RedisUrlError("a redis+sentinel:// URL ends in /SERVICE or /SERVICE/DB.")
    db = 0
    if len(parts) == 2:
        if not parts[1].isdigit():
            raise RedisUrlError("the database of a redis+sentinel:// URL is a number.")
        db = int(parts[1])
    return RedisTarget(Topology.SENTINEL, url, nodes, parts[0], db, password)


def _split(rest: str) -> tuple[str | None, str, str]:
    """``[:PASSWORD@]HOSTS[/PATH]`` -> (password, hosts, path)."""
    if "?" in rest or "#" in rest:
        raise RedisUrlError("a redis+sentinel:// or redis+cluster:// URL takes no query.")
    password = None
    if "@" in rest:
        userinfo, rest = rest.rsplit("@", 1)
        user, _, secret = userinfo.partition(":")
        if user:
            raise RedisUrlError("give only a password, as :PASSWORD@, not a user name.")
        password = unquote(secret) or None
    hosts, slash, path = rest.partition("/")
    return password, hosts, slash + path


def _node(entry: str, scheme: str) -> tuple[str, int]:
    host, sep, port = entry.rpartition(":")
    host = host.strip("[]")  # [::1]:26379
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RedisUrlError(f"each node of a {scheme}:// URL is HOST:PORT.")
    return host, int(port)

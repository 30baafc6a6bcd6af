"""The configuration: validated once, and never echoing a secret."""

from __future__ import annotations

import pytest

from tusserver import redis_urls
from tusserver.config import Config, ConfigError, redact_url
from tusserver.redis_urls import RedisTarget, RedisUrlError, Topology


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://user:hunter2@db:6379/0", "redis://***@db:6379/0"),
        ("unix:///run/redis.sock?password=hunter2", "unix:///run/redis.sock"),
        ("cifs://tus:hunter2@fileserver/share", "cifs://***@fileserver/share"),
        ("default:hunter2@redis:6379/0", "***"),
        ("./uploads", "./uploads"),
    ],
)
def test_urls_in_messages_never_show_a_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_a_redis_url_without_a_scheme_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as raised:
        Config(redis_url="default:hunter2@redis:6379/0")
    assert "hunter2" not in str(raised.value)


# --- the Redis URL forms (tusserver.redis_urls) -------------------------------


@pytest.mark.parametrize(
    "url", ["redis://db:6379/0", "rediss://db:6380", "unix:///run/redis.sock?db=2"]
)
def test_a_one_server_url_is_handed_to_redis_py_as_given(url: str) -> None:
    target = redis_urls.parse(url)
    assert (target.topology, target.url, target.sharded) == (Topology.STANDALONE, url, False)


def test_a_sentinel_url_names_its_sentinels_service_database_and_password() -> None:
    url = "redis+sentinel://:p%40ss@sentinel-a:26379,[::1]:26380/uploads/2"
    target = redis_urls.parse(url)
    assert target == RedisTarget(
        Topology.SENTINEL,
        url,
        nodes=(("sentinel-a", 26379), ("::1", 26380)),
        service="uploads",
        db=2,
        password="p@ss",
    )
    assert not target.sharded


def test_a_sentinel_url_without_database_or_password_means_database_0_and_none() -> None:
    target = redis_urls.parse("redis+sentinel://:@sentinel-a:26379/uploads")
    assert (target.service, target.db, target.password) == ("uploads", 0, None)


def test_an_unescaped_at_sign_in_a_password_ends_at_the_last_one() -> None:
    target = redis_urls.parse("redis+sentinel://:p@ss@sentinel-a:26379/uploads")
    assert target.password == "p@ss"
    assert target.nodes == (("sentinel-a", 26379),)


def test_a_cluster_url_names_its_seed_nodes_and_is_sharded() -> None:
    url = "redis+cluster://:secret@127.0.0.1:7000,127.0.0.1:7001/"
    target = redis_urls.parse(url)
    assert (target.topology, target.nodes, target.password, target.sharded) == (
        Topology.CLUSTER,
        (("127.0.0.1", 7000), ("127.0.0.1", 7001)),
        "secret",
        True,
    )


@pytest.mark.parametrize("port", [1, 65535])
def test_a_node_port_may_be_anything_from_1_to_65535(port: int) -> None:
    assert redis_urls.parse(f"redis+cluster://node:{port}").nodes == (("node", port),)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://hunter2@db:6379", "redis URL must start with redis://, rediss://, unix://"),
        ("redis+cluster://:hunter2@node:7000/0", "a redis+cluster:// URL has no path"),
        ("redis+sentinel://:hunter2@sentinel:26379", "ends in /SERVICE or /SERVICE/DB"),
        ("redis+sentinel://:hunter2@sentinel:26379/", "ends in /SERVICE or /SERVICE/DB"),
        ("redis+sentinel://:hunter2@sentinel:26379/up/0/1", "ends in /SERVICE or /SERVICE/DB"),
        ("redis+sentinel://:hunter2@sentinel:26379/up/x", "the database of a redis+sentinel"),
        ("redis+sentinel://:hunter2@sentinel:26379/up?db=1", "takes no query"),
        ("redis+cluster://:hunter2@node:7000#x", "takes no query"),
        ("redis+sentinel://user:hunter2@sentinel:26379/up", "not a user name"),
        ("redis+cluster://:hunter2@node", "each node of a redis+cluster:// URL is HOST:PORT"),
        ("redis+cluster://:hunter2@:7000", "is HOST:PORT"),
        ("redis+cluster://:hunter2@[]:7000", "is HOST:PORT"),
        ("redis+cluster://:hunter2@node:x", "is HOST:PORT"),
        ("redis+cluster://:hunter2@node:0", "is HOST:PORT"),
        ("redis+cluster://:hunter2@node:65536", "is HOST:PORT"),
        ("redis+sentinel://:hunter2@a:1,b/up", "each node of a redis+sentinel:// URL"),
    ],
)
def test_a_malformed_redis_url_is_refused_with_what_is_wrong_never_the_password(
    url: str, says: str
) -> None:
    with pytest.raises(RedisUrlError) as raised:
        redis_urls.parse(url)
    assert says in str(raised.value)
    assert "hunter2" not in str(raised.value)
    # The Config refuses it the same way, with the same sentence.
    with pytest.raises(ConfigError) as refused:
        Config(redis_url=url)
    assert says in str(refused.value)
    assert "hunter2" not in str(refused.value)


def test_a_url_without_a_scheme_is_not_said_to_have_one() -> None:
    with pytest.raises(RedisUrlError) as raised:
        redis_urls.parse("db:6379")
    assert ", not" not in str(raised.value)
    with pytest.raises(RedisUrlError) as named:
        redis_urls.parse("http://db:6379")
    assert str(named.value).endswith(", not http://.")

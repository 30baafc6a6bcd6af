"""The configuration: validated once, and never echoing a secret."""

from __future__ import annotations

import pytest

from tusserver.config import Config, ConfigError, redact_url


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

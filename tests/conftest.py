"""Shared pytest configuration: fixture plugins used across the test suite."""

import pytest

pytest_plugins = [
    "tests.redis_fixtures",
    "tests.redis_topologies",
    "tests.server_fixtures",
    "tests.process_fixtures",
    "tests.hook_receiver",
    "tests.e2e_clients",  # before js_fixtures, which imports it
    "tests.js_fixtures",
    "tests.samba_fixtures",
    "tests.nginx_fixtures",
    "tests.deployment_fixtures",
]


@pytest.fixture
def anyio_backend() -> str:
    """The event loop of the async specs (``pytest.mark.anyio``): tusserver runs on asyncio."""
    return "asyncio"

"""Shared pytest configuration: fixture plugins used across the test suite."""

pytest_plugins = [
    "tests.redis_fixtures",
    "tests.server_fixtures",
    "tests.js_fixtures",
    "tests.e2e_clients",
    "tests.samba_fixtures",
    "tests.nginx_fixtures",
]

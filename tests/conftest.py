"""Shared pytest configuration: fixture plugins used across the test suite."""

pytest_plugins = [
    "tests.redis_fixtures",
    "tests.server_fixtures",
    "tests.process_fixtures",
    "tests.hook_receiver",
    "tests.e2e_clients",  # before js_fixtures, which imports it
    "tests.js_fixtures",
    "tests.samba_fixtures",
    "tests.nginx_fixtures",
]

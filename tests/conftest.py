"""Shared pytest configuration: fixture plugins used across the test suite."""

pytest_plugins = ["tests.redis_fixtures", "tests.server_fixtures", "tests.samba_fixtures"]

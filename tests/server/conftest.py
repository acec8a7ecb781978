"""Fixtures for the server tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from logitcache.testing import ServerProcess


@pytest.fixture
def started() -> Iterator[list[ServerProcess]]:
    """Servers appended here are killed after the test."""
    servers: list[ServerProcess] = []
    yield servers
    for server in servers:
        server.stop()

"""Fixtures: a Redis server per test, started on a free port and stopped after it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.distributed.servers import Server, redis_server


@pytest.fixture
def redis() -> Iterator[Server]:
    server = redis_server().start()
    try:
        yield server
    finally:
        server.kill()

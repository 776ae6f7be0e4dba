"""Fixtures shared by every test area: real servers on free ports."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import procs


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """A real nats-server with JetStream for the whole session."""
    with procs.nats_server() as url:
        yield url


@pytest.fixture
def fresh_nats_url() -> Iterator[str]:
    """A nats-server of the test's own, for tests that stop or break it."""
    with procs.nats_server() as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with procs.redis_server() as url:
        yield url

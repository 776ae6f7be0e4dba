"""Simulated vLLM replicas started in the test's own event loop on free ports."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from pointsman.sim import SimConfig, SimServers, start_servers

StartSim = Callable[..., Awaitable[SimServers]]

#: fast enough for tests, slow enough that queueing and prefill cost stay visible
FAST = SimConfig(host="127.0.0.1", port=0, time_scale=0.05)


@pytest.fixture
async def start_sim() -> AsyncIterator[StartSim]:
    started: list[SimServers] = []

    async def start(count: int = 1, **overrides: Any) -> SimServers:
        servers = await start_servers(replace(FAST, **overrides), count)
        started.append(servers)
        return servers

    yield start
    for s in started:
        await s.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session

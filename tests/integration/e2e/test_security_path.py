"""Secure by default, through the whole stack (real Envoy, shim, collector, NATS with the
generated authorization): a pick naming an address outside the pool is refused by the shim and
counted, and the debug header is ignored unless enabled.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import httpx
import nats
import pytest

from pointsman.stack import Stack, StackOptions
from pointsman.v1 import PickReply, PickStatus, routes
from tests.integration.e2e.conftest import SIM_ARGS
from tests.integration.gateway.conftest import listener

pytestmark = pytest.mark.integration

CHAT = {"model": "alpha", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    options = StackOptions(
        models=["alpha"],
        replicas=2,
        gateway_port=0,
        sim_args=SIM_ARGS,
        overrides={"shim": {"pick_timeout_ms": 1000}},
    )
    with Stack(options) as s:
        yield s


def refused(stack: Stack) -> float:
    text = httpx.get(f"http://127.0.0.1:{stack.ports['shim_http']}/metrics").text
    match = re.search(r'pointsman_shim_refused_picks_total\{reason="not_in_pool"\} (\S+)', text)
    return float(match.group(1)) if match else 0.0


def test_debug_output_is_off_by_default(stack: Stack) -> None:
    r = httpx.post(
        f"{stack.gateway_url}/v1/chat/completions", json=CHAT, headers={"x-pointsman-debug": "1"}
    )
    assert r.status_code == 200
    assert r.headers["x-pointsman-route"] == "picked"
    assert "x-pointsman-scores" not in r.headers
    assert "x-pointsman-endpoint" not in r.headers


def test_a_pick_outside_the_pool_is_refused_and_counted(stack: Stack) -> None:
    """With the picker gone, a responder holding the picker's own credential (a compromised
    picker) names an address outside the pool: the shim refuses it, counts it, and the request
    takes the fail-open path inside the pool; the address is never contacted."""
    stack.stop_service("picker")
    before = refused(stack)
    with listener() as outside:

        async def run() -> list[httpx.Response]:
            nc = await nats.connect(**stack.nats_config("picker").connect_options("picker"))

            async def forge(msg: Any) -> None:
                reply = PickReply(status=PickStatus.OK, endpoints=[outside.endpoint])
                await msg.respond(routes.PICK.encode(reply))

            await nc.subscribe(routes.PICK.subject, queue=routes.PICK.queue, cb=forge)
            await nc.flush()
            try:
                async with httpx.AsyncClient() as client:
                    return [
                        await client.post(f"{stack.gateway_url}/v1/chat/completions", json=CHAT)
                        for _ in range(3)
                    ]
            finally:
                await nc.close()

        responses = asyncio.run(run())
        for r in responses:
            assert r.status_code == 200, r.text
            assert r.headers["x-pointsman-route"] == "fail-open"
            assert r.headers["x-sim-endpoint"] in stack.pools["alpha"]
        assert outside.connections == 0
    assert refused(stack) - before == 3

"""Picked routes through real Envoy: the pick is honoured inside the model's pool, never outside
it, and a dead picked endpoint costs a retry, not the request.

The picks come from a small ext_proc that names whatever the test asks (``x-test-pick``), as a
compromised shim or a forged pick reply on the bus would: what is tested is what Envoy does with
a pick, whoever made it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.integration.gateway.conftest import (
    Envoy,
    Listener,
    Replica,
    chat,
    envoy,
    listener,
    openai_error,
    replicas,
    send,
)

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"


@dataclass
class Fleet:
    gateway: Envoy
    alpha: list[str]
    beta: list[str]
    outside: Listener


@pytest.fixture(scope="module")
def fleet(picking_extproc: int) -> Iterator[Fleet]:
    with replicas("alpha", 2) as alpha, replicas("beta", 1) as beta, listener() as outside:
        pools = {"alpha": [r.endpoint for r in alpha], "beta": [r.endpoint for r in beta]}
        with envoy(pools, picking_extproc) as gateway:
            yield Fleet(gateway, pools["alpha"], pools["beta"], outside)


def post(gw: Envoy, model: str, pick: str | None, request_id: str = "") -> tuple[int, str]:
    """POST a chat request the ext_proc routes to ``model``'s pool with ``pick``; the status and
    the replica that answered (``x-sim-endpoint``)."""
    headers = {"x-test-model": model}
    if pick is not None:
        headers["x-test-pick"] = pick
    if request_id:
        headers["x-request-id"] = request_id
    r = send(gw.url, "POST", CHAT, body=chat(model), headers=headers)
    return r.status, r.headers.get("x-sim-endpoint", "")


def test_pick_inside_the_pool_is_honoured(fleet: Fleet) -> None:
    for endpoint in fleet.alpha:
        for _ in range(3):
            assert post(fleet.gateway, "alpha", endpoint) == (200, endpoint)


def test_pick_outside_the_pool_is_never_contacted(fleet: Fleet) -> None:
    """A pick naming an address the pool does not list is skipped: the next listed endpoint, or
    the pool's own balancing, serves the request, and the named address sees no connection."""
    gw, outside = fleet.gateway, fleet.outside.endpoint
    for _ in range(3):
        status, served = post(gw, "alpha", outside)
        assert status == 200 and served in fleet.alpha
    assert post(gw, "alpha", f"{outside},{fleet.alpha[1]}") == (200, fleet.alpha[1])
    # another model's replica is outside this pool too
    for _ in range(3):
        status, served = post(gw, "alpha", fleet.beta[0])
        assert status == 200 and served in fleet.alpha
    assert post(gw, "beta", f"{outside},{fleet.alpha[0]}") == (200, fleet.beta[0])
    # names that are not addresses at all
    for bogus in ("localhost:1", "not an address", "[::1]:1,,", "169.254.169.254:80"):
        status, served = post(gw, "alpha", bogus)
        assert status == 200 and served in fleet.alpha
    assert fleet.outside.connections == 0


@pytest.fixture
def pair() -> Iterator[list[Replica]]:
    with replicas("gamma", 2) as started:
        yield started


def test_dead_primary_is_retried_on_the_fallback(pair: list[Replica], picking_extproc: int) -> None:
    primary, fallback = pair
    with envoy({"gamma": [r.endpoint for r in pair]}, picking_extproc) as gw:
        primary.kill()
        both = f"{primary.endpoint},{fallback.endpoint}"
        assert post(gw, "gamma", both, "retry-listed") == (200, fallback.endpoint)
        logged = gw.logged("retry-listed")
        assert (logged["picked"], logged["attempts"]) == (both, 2)
        # the endpoint-picker protocol's report of where it went, for the shim's response path
        assert logged["served"] == fallback.endpoint
        # only the dead one picked: the retry goes to the pool's balancing, off the dead one
        assert post(gw, "gamma", primary.endpoint, "retry-pool") == (200, fallback.endpoint)
        assert gw.logged("retry-pool")["attempts"] == 2


def test_without_retries_the_dead_primary_fails_the_request(
    pair: list[Replica], picking_extproc: int
) -> None:
    """The control for the test above: the retry is what saved the request."""
    primary, fallback = pair
    pools = {"gamma": [r.endpoint for r in pair]}
    with envoy(pools, picking_extproc, gateway={"retries": 0}) as gw:
        primary.kill()
        r = send(
            gw.url,
            "POST",
            CHAT,
            body=chat("gamma"),
            headers={
                "x-test-model": "gamma",
                "x-test-pick": f"{primary.endpoint},{fallback.endpoint}",
            },
        )
        assert r.status == 503
        assert openai_error(r.body)["code"] == "upstream_unavailable"

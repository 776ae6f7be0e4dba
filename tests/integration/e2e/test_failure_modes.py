"""Fail-open and fail-closed, with the picker stopped and with the shim itself down; and the
FULL_DUPLEX_STREAMED body mode."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from pointsman.stack import Stack
from tests.integration.e2e.conftest import make_stack

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"


def chat(model: str, **extra: object) -> dict[str, object]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 4,
        **extra,
    }


def test_fail_open_when_picker_is_down(stack: Stack) -> None:
    stack.stop_service("picker")
    try:
        for model in ("alpha", "beta"):
            r = httpx.post(f"{stack.gateway_url}{CHAT}", json=chat(model), timeout=10)
            assert r.status_code == 200, r.text
            assert r.headers["x-pointsman-route"] == "fail-open"
            # Envoy's own load balancing over that model's pool served it
            assert r.headers["x-sim-endpoint"] in stack.pools[model]
            assert r.json()["model"] == model
        metrics = httpx.get(f"http://127.0.0.1:{stack.ports['shim_http']}/metrics").text
        assert 'pointsman_shim_fail_open_total{service="picker"}' in metrics
    finally:
        stack.restart_service("picker")


def test_fail_open_when_shim_is_down(stack: Stack) -> None:
    """failure_mode_allow: Envoy serves without ext_proc; the default pool takes the request."""
    stack.stop_service("shim")
    try:
        default = stack.config["shim"]["default_model"]
        r = httpx.post(f"{stack.gateway_url}{CHAT}", json=chat(default), timeout=10)
        assert r.status_code == 200, r.text
        assert r.headers["x-sim-endpoint"] in stack.pools[default]
        # and a client still cannot pick its own endpoint
        r = httpx.post(
            f"{stack.gateway_url}{CHAT}",
            json=chat(default),
            headers={"x-gateway-destination-endpoint": "127.0.0.1:1"},
            timeout=10,
        )
        assert r.status_code == 200, r.text
    finally:
        stack.restart_service("shim")


@pytest.fixture(scope="module")
def closed_stack() -> Iterator[Stack]:
    with make_stack(failure_mode="fail-closed", body_mode="FULL_DUPLEX_STREAMED") as s:
        yield s


def test_full_duplex_routes_and_rewrites(closed_stack: Stack) -> None:
    s = closed_stack
    r = httpx.post(f"{s.gateway_url}{CHAT}", json=chat("beta"))
    assert r.status_code == 200, r.text
    assert r.headers["x-pointsman-endpoint"] == r.headers["x-sim-endpoint"]
    # a rewritten body (auto -> default model) arrives whole, with a matching content-length
    r = httpx.post(f"{s.gateway_url}{CHAT}", json=chat("auto", padding="y" * 200_000))
    assert r.status_code == 200, r.text
    assert r.json()["model"] == s.config["shim"]["default_model"]
    with httpx.stream(
        "POST",
        f"{s.gateway_url}{CHAT}",
        json=chat("alpha", stream=True, stream_options={"include_usage": True}),
    ) as resp:
        lines = [line for line in resp.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"


def test_full_duplex_rejects_bad_input(closed_stack: Stack) -> None:
    r = httpx.post(
        f"{closed_stack.gateway_url}{CHAT}",
        content=b"{oops",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_json"


def test_fail_closed_when_picker_is_down(closed_stack: Stack) -> None:
    closed_stack.stop_service("picker")
    try:
        r = httpx.post(f"{closed_stack.gateway_url}{CHAT}", json=chat("alpha"), timeout=10)
        assert r.status_code == 503
        error = r.json()["error"]
        assert error["type"] == "service_unavailable"
        assert r.headers["x-pointsman-error"].startswith("bus_picker_")
    finally:
        closed_stack.restart_service("picker")


def test_fail_closed_when_shim_is_down(closed_stack: Stack) -> None:
    closed_stack.stop_service("shim")
    try:
        r = httpx.post(f"{closed_stack.gateway_url}{CHAT}", json=chat("alpha"), timeout=10)
        assert r.status_code >= 500
        assert "x-sim-endpoint" not in r.headers
    finally:
        closed_stack.restart_service("shim")

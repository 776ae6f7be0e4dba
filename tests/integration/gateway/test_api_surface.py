"""Only the LLM API is exposed, and every error Envoy makes itself is OpenAI-style JSON.

Real Envoy in front of the real shim (no picker on its bus: fail-open routing) and real simulated
replicas. The engines serve ``/metrics``, ``/health``, ``/version``...: only the gateway keeps
clients away from them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.integration.gateway.conftest import (
    MAX_BODY,
    Envoy,
    Listener,
    Replica,
    Shim,
    chat,
    dead_endpoint,
    envoy,
    listener,
    openai_error,
    replicas,
    send,
    wait_health,
)

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"
EXT_PROC_STREAMS = "http.gateway.ext_proc.streams_started"


@dataclass
class Fleet:
    gateway: Envoy
    alpha: list[Replica]
    beta: list[Replica]
    dead: str
    flaky: Listener


@pytest.fixture(scope="module")
def fleet(shim: Shim) -> Iterator[Fleet]:
    with (
        replicas("alpha", 2) as alpha,
        replicas("beta", 1) as beta,
        listener("drop") as flaky,
    ):
        dead = dead_endpoint()
        pools = {
            "alpha": [r.endpoint for r in alpha],
            "beta": [r.endpoint for r in beta],
            "dead": [dead],
            "flaky": [flaky.endpoint],
        }
        with envoy(pools, shim.port) as gateway:
            yield Fleet(gateway, alpha, beta, dead, flaky)


UNKNOWN = [
    ("GET", "/metrics"),
    ("GET", "/health"),
    ("GET", "/ping"),
    ("GET", "/version"),
    ("POST", "/tokenize"),
    ("POST", "/reset_prefix_cache"),
    ("GET", "/"),
    ("POST", "/v1/embeddings"),
    ("POST", "/v1/chat/completions/"),
    ("POST", "/v1//chat/completions"),
    ("GET", "/v1/models/../metrics"),
    ("POST", "/v1/chat%2Fcompletions"),
    ("GET", "/metrics?x=/v1/models"),
]


def test_only_the_api_reaches_the_shim_or_an_engine(fleet: Fleet) -> None:
    gw = fleet.gateway
    upstream, streams = gw.upstream_requests(), gw.stat(EXT_PROC_STREAMS)
    for method, path in UNKNOWN:
        r = send(gw.url, method, path, body=chat("alpha") if method == "POST" else None)
        assert r.status == 404, (method, path, r)
        assert r.headers["content-type"] == "application/json"
        error = openai_error(r.body)
        assert (error["code"], error["type"]) == ("unknown_url", "invalid_request_error")
        assert error["message"].startswith(f"Invalid URL ({method} {path.split('?')[0]})")
        assert r.headers["x-pointsman-error"] == "unknown_url"
    # Nothing went upstream and the shim was never asked.
    assert gw.upstream_requests() == upstream
    assert gw.stat(EXT_PROC_STREAMS) == streams
    # The engines do serve these paths: the gateway is what keeps them private.
    for path in ("/metrics", "/health", "/version"):
        assert httpx.get(f"http://{fleet.alpha[0].endpoint}{path}").status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", CHAT, "POST"),
        ("PUT", "/v1/completions", "POST"),
        ("DELETE", CHAT, "POST"),
        ("POST", "/v1/models", "GET"),
        ("HEAD", CHAT, "POST"),
        ("HEAD", "/v1/models", "GET"),
    ],
)
def test_wrong_method_is_a_json_405(fleet: Fleet, method: str, path: str, allow: str) -> None:
    gw = fleet.gateway
    upstream, streams = gw.upstream_requests(), gw.stat(EXT_PROC_STREAMS)
    r = send(gw.url, method, path, body=chat("alpha") if method in {"POST", "PUT"} else None)
    assert r.status == 405
    assert r.headers["allow"] == allow
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-pointsman-error"] == "method_not_allowed"
    if method == "HEAD":
        assert r.body == b""  # HTTP: a HEAD response has headers only
    else:
        error = openai_error(r.body)
        assert error["code"] == "method_not_allowed"
        assert error["message"] == f"Invalid method for URL ({method} {path})"
    assert gw.upstream_requests() == upstream
    assert gw.stat(EXT_PROC_STREAMS) == streams


def test_the_api_is_served(fleet: Fleet) -> None:
    gw, alpha = fleet.gateway, [r.endpoint for r in fleet.alpha]
    r = httpx.post(f"{gw.url}{CHAT}", json=chat("alpha"))
    assert r.status_code == 200, r.text
    assert r.headers["x-sim-endpoint"] in alpha
    assert r.headers["x-pointsman-route"] == "fail-open"  # no picker on this bus
    r = httpx.post(f"{gw.url}{CHAT}?trace=1", json=chat("beta"))
    assert r.status_code == 200, r.text
    assert r.headers["x-sim-endpoint"] == fleet.beta[0].endpoint
    body = {"model": "alpha", "prompt": "Hi", "max_tokens": 4}
    assert httpx.post(f"{gw.url}/v1/completions", json=body).status_code == 200
    models = httpx.get(f"{gw.url}/v1/models")
    assert models.status_code == 200
    assert models.json()["object"] == "list"


def test_body_over_envoys_buffer_is_a_json_413(fleet: Fleet) -> None:
    gw = fleet.gateway
    # Above the shim's limit, within Envoy's buffer: the shim's own 413, passed unchanged.
    r = send(gw.url, "POST", CHAT, body=chat("alpha", pad="x" * (MAX_BODY + 1000)))
    assert r.status == 413
    assert openai_error(r.body)["code"] == "body_too_large"
    assert r.headers["x-pointsman-error"] == "body_too_large"
    # Above Envoy's buffer (twice the shim's limit): Envoy's 413, mapped.
    r = send(gw.url, "POST", CHAT, body=chat("alpha", pad="x" * (3 * MAX_BODY)))
    assert r.status == 413
    assert r.headers["content-type"] == "application/json"
    assert openai_error(r.body)["code"] == "request_too_large"


def test_headers_too_large_or_too_many_are_a_json_431(fleet: Fleet) -> None:
    gw = fleet.gateway
    big = send(gw.url, "POST", CHAT, body=chat("alpha"), headers={"x-big": "y" * 70_000})
    many = send(
        gw.url, "POST", CHAT, body=chat("alpha"), headers=[(f"x-h{i}", "v") for i in range(120)]
    )
    for r in (big, many):
        assert r.status == 431
        assert r.headers["content-type"] == "application/json"
        assert openai_error(r.body)["code"] == "request_headers_too_large"


def test_many_headers_never_give_an_empty_error(fleet: Fleet) -> None:
    """Enough headers to leave no room for those the shim and Envoy add (it was an empty 500):
    a JSON 431, as if the client had sent too many itself."""
    for count in (80, 90, 95, 99):
        r = send(
            fleet.gateway.url,
            "POST",
            CHAT,
            body=chat("alpha"),
            headers=[(f"x-h{i}", "v") for i in range(count)],
        )
        assert r.headers["content-type"].startswith("application/json"), (count, r)
        assert r.status in {200, 431}, (count, r)
        if r.status != 200:
            assert openai_error(r.body)["code"] == "request_headers_too_large"


def test_no_healthy_endpoint_is_a_json_503(fleet: Fleet) -> None:
    gw = fleet.gateway
    wait_health(gw, "dead", fleet.dead, healthy=False)
    r = send(gw.url, "POST", CHAT, body=chat("dead"))
    assert r.status == 503
    assert r.headers["content-type"] == "application/json"
    error = openai_error(r.body)
    assert (error["code"], error["type"]) == ("no_healthy_upstream", "service_unavailable")


def test_endpoint_that_drops_the_request_is_a_json_503(fleet: Fleet) -> None:
    """It passes its health check but closes every request's connection without an answer:
    Envoy retries (same endpoint, the pool has no other), then answers itself."""
    gw = fleet.gateway
    wait_health(gw, "flaky", fleet.flaky.endpoint, healthy=True)
    r = send(gw.url, "POST", CHAT, body=chat("flaky"), headers={"x-request-id": "flaky-1"})
    assert r.status == 503
    error = openai_error(r.body)
    assert (error["code"], error["type"]) == ("upstream_unavailable", "service_unavailable")
    assert int(gw.logged("flaky-1")["attempts"]) == 2
    assert sum(1 for line in fleet.flaky.requests if line.startswith("POST ")) == 2


def test_upstream_timeout_is_a_json_504(shim: Shim) -> None:
    """Pointsman's routes have no timeout (generations are long); with one set, an endpoint that
    never answers gets Envoy's 504, mapped, and is not retried."""

    def one_second(config: dict[str, Any]) -> None:
        hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        for route in hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]:
            if "route" in route:
                route["route"]["timeout"] = "1s"

    with (
        listener("silent") as hung,
        envoy(
            {"alpha": [hung.endpoint]},
            shim.port,
            gateway={"health_check": {"enabled": False}},
            adjust=one_second,
        ) as gw,
    ):
        r = send(gw.url, "POST", CHAT, body=chat("alpha"), headers={"x-request-id": "slow-1"})
        assert r.status == 504, r
        error = openai_error(r.body)
        assert (error["code"], error["type"]) == ("upstream_timeout", "server_error")
        assert gw.logged("slow-1")["attempts"] == 1


def test_shim_and_engine_answers_pass_unchanged(fleet: Fleet) -> None:
    gw, engine = fleet.gateway, fleet.alpha[0].endpoint
    # The shim's own rejection keeps its code (Envoy's mappers only touch Envoy's replies).
    r = send(gw.url, "POST", CHAT, body=b"{oops")
    assert r.status == 400
    assert openai_error(r.body)["code"] == "invalid_json"
    assert r.headers["x-pointsman-error"] == "invalid_json"
    # An engine's errors, 4xx included, arrive exactly as the engine sent them.
    for body in (chat("alpha", max_tokens=0), chat("no-such-model")):
        direct = httpx.post(f"http://{engine}{CHAT}", json=body)
        assert direct.status_code in {400, 404}
        r = send(gw.url, "POST", CHAT, body=body)
        assert (r.status, r.body) == (direct.status_code, direct.content)
        assert "x-pointsman-error" not in r.headers


def test_ext_proc_failures_are_json(fleet: Fleet) -> None:
    """Fail-closed (``failure_mode_allow: false``): a shim that hangs past the message timeout,
    then one that refuses connections."""
    pools = {"alpha": [r.endpoint for r in fleet.alpha]}
    with (
        listener("silent") as hung,
        envoy(pools, hung.port, failure_mode_allow=False, message_timeout_ms=500) as gw,
    ):
        r = send(gw.url, "POST", CHAT, body=chat("alpha"))
        assert r.status == 504, r
        assert r.headers["content-type"] == "application/json"
        assert openai_error(r.body)["code"] == "gateway_processing_failed"
        hung.close()
        r = send(gw.url, "POST", CHAT, body=chat("alpha"))
        assert r.status in {500, 503}, r
        error = openai_error(r.body)
        assert (error["code"], error["type"]) == ("gateway_processing_failed", "server_error")
        # Still: unknown paths never needed the shim.
        assert send(gw.url, "GET", "/metrics").status == 404


@pytest.mark.parametrize("pool", ["dead", "flaky"])
def test_envoys_own_errors_on_the_messages_path_speak_anthropic(fleet: Fleet, pool: str) -> None:
    """The shim watches the Messages API's responses (docs/apis.md): Envoy's own answer, an
    OpenAI-style local reply, reaches an Anthropic client in Anthropic's format. (After the
    tests that count the flaky listener's requests.)"""
    gw = fleet.gateway
    endpoint = fleet.dead if pool == "dead" else fleet.flaky.endpoint
    wait_health(gw, pool, endpoint, healthy=pool != "dead")
    body = {"model": pool, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}
    r = send(gw.url, "POST", "/v1/messages", body=body)
    assert r.status == 503
    assert r.headers["x-pointsman-error"] in ("no_healthy_upstream", "upstream_unavailable")
    error = json.loads(r.body)
    assert error["type"] == "error" and error["error"]["type"] == "overloaded_error"
    assert error["error"]["message"]

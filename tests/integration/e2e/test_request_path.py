"""The whole request path through a real Envoy: routing, streaming, usage, bad input."""

from __future__ import annotations

import json
from collections import Counter

import httpx
import pytest

from pointsman.stack import Stack
from tests.integration.e2e.conftest import (
    mixed_requests,
    post_and_collect_completions,
    queue_filled,
    streams_reset_by,
)

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"


def chat_body(model: str = "alpha", **extra: object) -> dict[str, object]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Hello there"}],
        "max_tokens": 8,
        **extra,
    }


def test_models_lists_served_models(stack: Stack) -> None:
    r = httpx.get(f"{stack.gateway_url}/v1/models")
    assert r.status_code == 200
    data = r.json()
    assert data["object"] == "list"
    ids = {m["id"] for m in data["data"]}
    assert {"alpha", "beta"} <= ids
    assert all(m["object"] == "model" for m in data["data"])


def test_completion_served_by_the_picked_replica(stack: Stack) -> None:
    seen = set()
    for _ in range(12):
        r = httpx.post(f"{stack.gateway_url}{CHAT}", json=chat_body("beta"))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["choices"][0]["message"]["content"]
        assert body["usage"]["completion_tokens"] == 8
        # the engine that answered is the endpoint the shim reports
        assert r.headers["x-pointsman-endpoint"] == r.headers["x-sim-endpoint"]
        assert r.headers["x-selected-model"] == "beta"
        assert r.headers["x-pointsman-route"] == "picked"
        assert r.headers["x-pointsman-endpoint"] in stack.pools["beta"]
        seen.add(r.headers["x-pointsman-endpoint"])
    assert seen == set(stack.pools["beta"]), "idle replicas share the load"


def test_legacy_completions(stack: Stack) -> None:
    r = httpx.post(
        f"{stack.gateway_url}/v1/completions",
        json={"model": "alpha", "prompt": "Once upon", "max_tokens": 5},
    )
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 5
    assert r.headers["x-pointsman-endpoint"] in stack.pools["alpha"]


def test_streaming_passes_through_with_usage(stack: Stack) -> None:
    body = chat_body("alpha", stream=True, stream_options={"include_usage": True}, max_tokens=6)
    with httpx.stream("POST", f"{stack.gateway_url}{CHAT}", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-pointsman-endpoint"] == r.headers["x-sim-endpoint"]
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text
    assert chunks[-1]["usage"]["completion_tokens"] == 6


def test_usage_is_counted(stack: Stack) -> None:
    def tokens() -> float:
        text = httpx.get(f"http://127.0.0.1:{stack.ports['shim_http']}/metrics").text
        total = 0.0
        for line in text.splitlines():
            if (
                line.startswith("pointsman_shim_tokens_total{")
                and 'kind="completion"' in line
                and 'model="alpha"' in line
            ):
                total += float(line.rsplit(" ", 1)[1])
        return total

    before = tokens()
    httpx.post(f"{stack.gateway_url}{CHAT}", json=chat_body("alpha", max_tokens=7))
    with httpx.stream(
        "POST",
        f"{stack.gateway_url}{CHAT}",
        json=chat_body("alpha", max_tokens=4, stream=True, stream_options={"include_usage": True}),
    ) as r:
        r.read()
    assert tokens() - before == 11


def test_client_cannot_choose_its_endpoint(stack: Stack) -> None:
    # a bogus endpoint would fail the request if Envoy honoured it; a real one must be ignored too
    for forced in ["127.0.0.1:1", stack.pools["beta"][0]]:
        r = httpx.post(
            f"{stack.gateway_url}{CHAT}",
            json=chat_body("alpha"),
            headers={"x-gateway-destination-endpoint": forced, "x-selected-model": "beta"},
        )
        assert r.status_code == 200, r.text
        assert r.headers["x-pointsman-endpoint"] in stack.pools["alpha"]
        assert r.headers["x-sim-endpoint"] in stack.pools["alpha"]


def test_auto_goes_to_default_model_without_classifier(stack: Stack) -> None:
    r = httpx.post(f"{stack.gateway_url}{CHAT}", json=chat_body("auto"))
    assert r.status_code == 200, r.text
    assert r.headers["x-selected-model"] == stack.config["shim"]["default_model"]
    assert r.headers["x-pointsman-route"] == "default-model"
    assert r.json()["model"] == stack.config["shim"]["default_model"]


def test_paths_outside_the_api_are_a_json_404(stack: Stack) -> None:
    """The engines serve /health and /metrics; the gateway does not pass them on."""
    for path in ("/health", "/metrics"):
        assert httpx.get(f"http://{stack.pools['alpha'][0]}{path}").status_code == 200
        r = httpx.get(f"{stack.gateway_url}{path}")
        assert r.status_code == 404
        assert r.headers["content-type"] == "application/json"
        assert r.json()["error"]["code"] == "unknown_url"


BAD = [
    (b"{not json", 400, "invalid_json"),
    (b"[1,2,3]", 400, "body_not_object"),
    (b'{"messages": [{"role": "user", "content": "x"}]}', 400, "missing_model"),
    (b'{"model": 42, "messages": [{"role": "user", "content": "x"}]}', 400, "invalid_model"),
    (
        b'{"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}',
        404,
        "unknown_model",
    ),
    (b'{"model": "alpha", "messages": []}', 400, "empty_messages"),
    (
        b'{"model": "alpha", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
        400,
        "invalid_utf8",
    ),
    (b"", 400, "empty_body"),
]


@pytest.mark.parametrize(("raw", "status", "reason"), BAD, ids=[b[2] for b in BAD])
def test_bad_input_gets_openai_error(stack: Stack, raw: bytes, status: int, reason: str) -> None:
    r = httpx.post(
        f"{stack.gateway_url}{CHAT}", content=raw, headers={"content-type": "application/json"}
    )
    assert r.status_code == status, r.text
    assert r.headers["x-pointsman-error"] == reason
    error = r.json()["error"]
    assert error["message"] and error["type"] and error["code"]
    metrics = httpx.get(f"http://127.0.0.1:{stack.ports['shim_http']}/metrics").text
    assert f'pointsman_shim_rejections_total{{reason="{reason}",status="{status}"}}' in metrics


def test_body_over_limit(stack: Stack) -> None:
    limit = 4 * 1024 * 1024
    body = json.dumps(chat_body("alpha", pad="x" * (limit + 10))).encode()
    r = httpx.post(
        f"{stack.gateway_url}{CHAT}", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "body_too_large"


def test_load_spreads_by_queue_depth(stack: Stack) -> None:
    """A replica with a long waiting queue gets fewer requests than an idle one."""
    busy, idle = stack.pools["beta"]
    counts: Counter[str] = Counter()
    with (
        httpx.Client(timeout=60) as client,
        queue_filled(busy, "beta", requests=24, min_waiting=4, stack=stack),
    ):
        for _ in range(20):
            r = client.post(f"{stack.gateway_url}{CHAT}", json=chat_body("beta", max_tokens=2))
            assert r.status_code == 200
            counts[r.headers["x-pointsman-endpoint"]] += 1
    assert counts[idle] > counts[busy], counts
    assert counts[idle] >= 15, counts


def test_observer_publishes_completions_off_the_response_path(stack: Stack) -> None:
    """Envoy's observer filter (observability_mode) carries the response to the shim: each
    routed request ends in one completion event with the served endpoint and the usage, which
    is what the picker's in-flight counts wait for."""

    events, responses = post_and_collect_completions(
        stack,
        [
            (
                chat_body("alpha", max_tokens=3),
                {"x-request-id": f"observed-{i}", "x-pointsman-category": "spoofed"},
            )
            for i in range(3)
        ],
        "observed-",
    )
    by_id = {e.request_id: e for e in events}
    assert sorted(e.request_id for e in events) == ["observed-0", "observed-1", "observed-2"]
    for i, r in enumerate(responses):
        assert r.status_code == 200, r.text
        e = by_id[f"observed-{i}"]
        assert (e.model, e.status_code, e.stream) == ("alpha", 200, False)
        assert e.endpoint == r.headers["x-pointsman-endpoint"] == r.headers["x-sim-endpoint"]
        assert e.completion_tokens == 3 and e.prompt_tokens
        # a client cannot forge a report header: no classifier ran, so there is none at all
        assert "x-pointsman-category" not in r.headers


def test_the_shim_closes_every_ext_proc_stream_itself(stack: Stack) -> None:
    """Issue 12: Envoy resets an ext_proc stream its server leaves open (a decision stream when
    the request ends, an observer stream after deferred_close_timeout), and grpcio's asyncio
    server keeps native memory for each reset stream: the shim's RSS grew in the soak. The
    shim ends each stream as soon as nothing more is needed on it (routed, translated,
    observed), so requests that complete leave no reset stream."""
    assert streams_reset_by(stack, lambda: mixed_requests(stack)) == {
        "decision": 0,
        "observer": 0,
    }

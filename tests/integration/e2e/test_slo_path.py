"""SLO-aware scheduling and the joint model decision, end to end through Envoy.

* The ``slo`` profile's predictor learns from the completion events of streamed answers; then a
  request whose TTFT objective no endpoint can meet gets a 429 with its reason, while a
  reachable objective is served.
* ``model: auto`` with the best model's pool saturated is served by the second candidate.

Every wait is on a condition (a counter, a queue length), never on how fast something is.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

from pointsman.stack import Stack
from tests.helpers.promtext import parse
from tests.integration.e2e.conftest import make_stack, post_and_collect_completions, queue_filled

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"


def chat(model: str, *, stream: bool = False, max_tokens: int = 4) -> dict[str, object]:
    body: dict[str, object] = {
        "model": model,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": max_tokens,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def picker_metric(stack: Stack, name: str, **labels: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{stack.ports['picker_http']}/metrics").text
    samples = parse(text).samples.get(name, [])
    return sum(s.value for s in samples if all(s.labels.get(k) == v for k, v in labels.items()))


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_unreachable_slo_gets_429_with_reason_once_the_predictor_learnt() -> None:
    with make_stack(
        models=["solo"],
        replicas=2,
        overrides={"picker": {"profile": "slo-strict"}, "shim": {"pick_timeout_ms": 500}},
    ) as stack:
        url = f"{stack.gateway_url}{CHAT}"
        # Streamed answers with usage: their completion events carry TTFT and TPOT.
        events, responses = post_and_collect_completions(
            stack, [(chat("solo", stream=True), {}) for _ in range(3)], prefix=""
        )
        assert all(r.status_code == 200 for r in responses)
        streamed = [e for e in events if e.stream]
        assert streamed and all(e.ttft_ms is not None and e.ttft_ms > 0 for e in streamed)
        assert all(e.tpot_ms is not None for e in streamed)

        # Nothing learnt yet would have admitted anything; teach it until it has samples.
        def learnt() -> bool:
            if picker_metric(stack, "pointsman_picker_latency_samples_total") >= 12:
                return True
            httpx.post(url, json=chat("solo", stream=True), timeout=60)
            return False

        wait_for(learnt, "the predictor's samples")

        tight = httpx.post(
            url, json=chat("solo"), headers={"x-pointsman-slo-ttft-ms": "0.001"}, timeout=60
        )
        assert tight.status_code == 429, tight.text
        assert tight.headers["x-pointsman-shed-reason"] == "slo_unattainable"
        error = tight.json()["error"]
        assert error["type"] == "rate_limit_exceeded" and "latency objective" in error["message"]
        # llm-d's header name works the same.
        llmd = httpx.post(
            url, json=chat("solo"), headers={"x-llm-d-slo-ttft-ms": "0.001"}, timeout=60
        )
        assert llmd.status_code == 429, llmd.text
        # A reachable objective is served.
        ok = httpx.post(
            url, json=chat("solo"), headers={"x-pointsman-slo-ttft-ms": "600000"}, timeout=60
        )
        assert ok.status_code == 200, ok.text
        shed = picker_metric(
            stack, "pointsman_picker_shed_total", pool="solo", reason="slo_unattainable"
        )
        assert shed >= 2


LABELS = (
    "biology", "business", "chemistry", "computer science", "economics", "engineering", "health",
    "history", "law", "math", "other", "philosophy", "physics", "psychology",
)  # fmt: skip
#: Whatever the shipped heads make of a prompt, the same ranking: big-best, then fast-small.
RANKED = [{"model": "big-best", "score": 0.9}, {"model": "fast-small", "score": 0.75}]
CLASSIFIER = {
    "default_model": "fast-small",
    "category": {"threshold": 0.0, "fallback": "other"},
    "jailbreak": {"enabled": False},
    "categories": {label: {"models": RANKED} for label in LABELS},
}


def test_saturated_best_pool_moves_auto_to_the_second_model() -> None:
    with make_stack(
        models=["big-best", "fast-small"],
        replicas=1,
        classifier=True,
        overrides={
            "shim": {"pick_timeout_ms": 500, "classifier": {"timeout_ms": 5000}},
            "classifier": CLASSIFIER,
            "debug": {"report_model_choice": True},
        },
    ) as stack:
        url = f"{stack.gateway_url}{CHAT}"
        idle = httpx.post(url, json=chat("auto"), timeout=60)
        assert idle.status_code == 200, idle.text
        assert idle.headers["x-selected-model"] == "big-best"
        assert "x-pointsman-model-choice" not in idle.headers

        (endpoint,) = stack.pools["big-best"]
        with queue_filled(endpoint, "big-best", requests=16, min_waiting=8):
            # The picker sees the queue once the collector's next snapshot reaches it: until
            # then auto still goes to big-best (a loaded machine may take a while).
            deadline = time.monotonic() + 60
            while True:
                moved = httpx.post(url, json=chat("auto"), timeout=60)
                assert moved.status_code == 200, moved.text
                if moved.headers["x-selected-model"] == "fast-small":
                    break
                assert time.monotonic() < deadline, "auto never moved to the second model"
                time.sleep(0.2)
            assert moved.headers["x-sim-endpoint"] in stack.pools["fast-small"]
            assert moved.headers["x-pointsman-model-choice"] == "second; reason=saturated"
            # A client that named the model keeps it, saturated or not: it is served there, or
            # it waits in flow control's queue (shim.queue_wait_ms) and leaves with a drop
            # reason if the queue has not drained by then; it never moves to another model.
            named = httpx.post(url, json=chat("big-best", max_tokens=1), timeout=120)
            if named.status_code == 200:
                assert named.headers["x-selected-model"] == "big-best"
            else:
                assert named.status_code == 503, named.text
                assert named.headers["x-pointsman-drop-reason"] == "ttl_expired"
                assert named.json()["error"]["type"] == "service_unavailable"
        assert (
            picker_metric(
                stack, "pointsman_picker_model_choice_total", choice="second", reason="saturated"
            )
            >= 1
        )

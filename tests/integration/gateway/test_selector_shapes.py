"""Pointsman as the model selector in front of another endpoint picker, through a real Envoy.

One classifier, one selector shim (``shim.mode: selector``) and two simulated pools serve both
shapes:

* **Pointsman selects, another ext_proc picks**: Envoy runs two ext_proc filters. The first is
  Pointsman's selector; the second is each pool's own endpoint picker, set per route: Pointsman's
  picker behind a shim in ``picker`` mode for the math pool, and a minimal round-robin endpoint
  picker written for the test (the endpoint-picker protocol, nothing of Pointsman) for the chat
  pool.
* **Pointsman in front of an HTTP router**: each pool's Envoy cluster is a ``vllm-router``
  (round robin over the pool's replicas), standing in for the production stack's router.

In both, ``auto`` requests land on the right model's pool, and each test asserts which component
chose the pod.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.helpers import procs
from tests.integration.gateway import parts
from tests.integration.gateway.conftest import Replica, envoy, replicas, send

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"
MATH_MODEL, CHAT_MODEL = "qwen3-math", "general-chat"
MATH = "Solve for x: 3x^2 - 12x + 9 = 0. Then compute the derivative of x^3 + 2x at x = 2."
BUSINESS = "Draft a short summary of our quarterly revenue growth and sales pipeline for the board."
CLASSIFIER = {
    "default_model": CHAT_MODEL,
    "served_models": [MATH_MODEL, CHAT_MODEL],
    "categories": {
        "math": {"models": [{"model": MATH_MODEL, "score": 0.9, "reasoning": True}]},
        "business": {"models": [{"model": CHAT_MODEL, "score": 0.9}]},
    },
}


@dataclass
class Fleet:
    nats_url: str
    selector_port: int
    pools: dict[str, list[Replica]]

    def endpoints(self, model: str) -> list[str]:
        return [r.endpoint for r in self.pools[model]]


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    with procs.nats_server() as nats_url:
        classifier_port = procs.free_port()
        classifier = {
            "nats": {"url": nats_url},
            "classifier": {"http_port": classifier_port, **CLASSIFIER},
        }
        selector, selector_port, selector_http = parts.shim_config(
            nats_url,
            mode="selector",
            default_model=CHAT_MODEL,
            classifier={"enabled": True, "timeout_ms": 5000},
        )
        with (
            parts.service("classifier", classifier, classifier_port, timeout=180),
            parts.service("shim", selector, selector_http, name="selector"),
            replicas(MATH_MODEL, 2) as math,
            replicas(CHAT_MODEL, 2) as chat,
        ):
            yield Fleet(nats_url, selector_port, {MATH_MODEL: math, CHAT_MODEL: chat})


def ask(url: str, content: str, model: str = "auto") -> dict[str, object]:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 4}
    reply = send(url, "POST", CHAT, body)
    assert reply.status == 200, reply.body
    return {"headers": reply.headers, "json": reply.json()}


def test_selector_then_each_pools_own_endpoint_picker(fleet: Fleet) -> None:
    pools = {m: fleet.endpoints(m) for m in fleet.pools}
    with (
        parts.pointsman_picking(fleet.nats_url, {MATH_MODEL: pools[MATH_MODEL]}) as (epp, _),
        parts.round_robin_picker(pools[CHAT_MODEL]) as (rr_port, rr),
        envoy(
            pools,
            fleet.selector_port,
            default_pool=CHAT_MODEL,
            mode="selector",
            pool_pickers={MATH_MODEL: f"127.0.0.1:{epp}", CHAT_MODEL: f"127.0.0.1:{rr_port}"},
        ) as gw,
    ):
        # auto + a math prompt: the selector chose the math model; Pointsman's picker chose the pod
        for _ in range(4):
            r = ask(gw.url, MATH)
            h = r["headers"]
            assert isinstance(h, dict)
            assert h["x-selected-model"] == MATH_MODEL
            assert h["x-pointsman-category"] == "math"  # the selector's reports survive stage 2
            assert h["x-pointsman-route"] == "picked"  # the pool's Pointsman picker chose
            assert h["x-sim-endpoint"] in pools[MATH_MODEL]
            assert r["json"]["model"] == MATH_MODEL  # type: ignore[index]

        # auto + a business prompt: the chat pool, whose round-robin picker chose every pod in turn
        assert rr.picks == []  # the math requests never reached the chat pool's picker
        served = []
        for _ in range(4):
            r = ask(gw.url, BUSINESS)
            h = r["headers"]
            assert isinstance(h, dict)
            assert h["x-selected-model"] == CHAT_MODEL
            assert h["x-pointsman-route"] == "selected"  # Pointsman picked no endpoint
            served.append(h["x-sim-endpoint"])
        assert served == rr.picks  # exactly the pods the round-robin picker named, in order
        assert Counter(served) == Counter(dict.fromkeys(pools[CHAT_MODEL], 2))

        # a named model goes to its pool without the classifier's choice
        r = ask(gw.url, MATH, model=CHAT_MODEL)
        assert r["headers"]["x-selected-model"] == CHAT_MODEL  # type: ignore[index]


def test_selector_in_front_of_vllm_router(fleet: Fleet) -> None:
    with (
        parts.vllm_router(fleet.endpoints(MATH_MODEL)) as math_router,
        parts.vllm_router(fleet.endpoints(CHAT_MODEL)) as chat_router,
        envoy(
            {MATH_MODEL: [math_router], CHAT_MODEL: [chat_router]},
            fleet.selector_port,
            default_pool=CHAT_MODEL,
            mode="selector",
            report_endpoint=True,  # which router served is asserted (off by default)
        ) as gw,
    ):
        for prompt, model, router in (
            (MATH, MATH_MODEL, math_router),
            (BUSINESS, CHAT_MODEL, chat_router),
        ):
            served = []
            for _ in range(4):
                r = ask(gw.url, prompt)
                h = r["headers"]
                assert isinstance(h, dict)
                assert h["x-selected-model"] == model
                assert h["x-pointsman-route"] == "selected"
                assert h["x-pointsman-endpoint"] == router  # Envoy sent it to the model's router
                served.append(h["x-sim-endpoint"])  # ... and the router chose the pod
            assert set(served) <= set(fleet.endpoints(model))
            # round robin: every replica of the pool in turn, the router's choice, not Envoy's
            assert Counter(served) == Counter(dict.fromkeys(fleet.endpoints(model), 2))

"""``pointsman up --mode selector``: the shim chooses the model only, a second shim in endpoint-
picker mode is every pool's picker behind it (two ext_proc filters in Envoy)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from pointsman.stack import Stack
from tests.integration.e2e.conftest import make_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def selector_stack() -> Iterator[Stack]:
    with make_stack(mode="selector", replicas=2) as s:
        yield s


def test_the_selector_chooses_and_the_pool_picker_picks(selector_stack: Stack) -> None:
    assert {"alpha", "beta"} <= {m["id"] for m in selector_stack.models()["data"]}
    assert selector_stack.config["shim"]["mode"] == "selector"
    for model in ("beta", "auto"):  # auto: no classifier, the default model (the first pool)
        r = httpx.post(
            f"{selector_stack.gateway_url}/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        chosen = "beta" if model == "beta" else "alpha"
        assert r.headers["x-selected-model"] == chosen
        # the pool's picker (the second shim, Pointsman's picker behind it) chose the endpoint
        assert r.headers["x-pointsman-route"] == "picked"
        assert r.headers["x-pointsman-endpoint"] in selector_stack.pools[chosen]
        assert r.json()["model"] == chosen

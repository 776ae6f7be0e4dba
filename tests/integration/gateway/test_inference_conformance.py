"""The Gateway API Inference Extension's conformance cases, with Pointsman as the endpoint picker,
through a real Envoy (``conformance/tests/*.go`` of that project; each test names its case).

The gateway is the model-selector shape Pointsman renders: the first ext_proc puts the body's
model in ``x-selected-model`` (what the Inference Extension's body-based router does), the route
chooses the InferencePool, and the pool's endpoint picker is Pointsman (a shim in ``picker``
mode, its picker and collector). The conformance suite makes its picker deterministic with the
request header ``test-epp-endpoint-selection`` (``IP`` = any port of that pod, ``IP:port`` =
that port only); here Envoy turns that header into the protocol's subset hint
(``envoy.lb.subset_hint``), which Pointsman honours, so no test-only code is in Pointsman.

"Pods" are loopback addresses (127.0.0.2, .3, ...) of one simulator process bound to every
address, each port a data-parallel rank; the simulator reports the address a request reached
(``x-sim-endpoint``), standing in for the suite's echo server.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

from pointsman.stack.procs import free_port_block
from tests.helpers import procs
from tests.integration.gateway import parts
from tests.integration.gateway.conftest import Envoy, envoy, send

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"
SELECT = "test-epp-endpoint-selection"
PRIMARY, SECONDARY, DP, NO_EPP = "primary-model", "secondary-model", "dp-model", "no-epp-model"
MODELS = (PRIMARY, SECONDARY, DP, NO_EPP)
RANKS = 3  # ports per pod (data-parallel ranks); the suite's dp pods have 3000, 3002, 3004
PODS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


@dataclass
class Conformance:
    nats_url: str
    selector_port: int
    epp_port: int
    pools: dict[str, list[str]]
    ports: dict[str, list[int]]  # model -> its rank ports
    gw: Envoy

    def pod_endpoints(self, model: str, pod: str) -> list[str]:
        return [f"{pod}:{p}" for p in self.ports[model]]


def subset_header(config: dict[str, Any]) -> None:
    """Envoy's header_to_metadata: the suite's selection header -> the subset hint, removed."""
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    hcm["typed_config"]["http_filters"].insert(
        0,
        {
            "name": "envoy.filters.http.header_to_metadata",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config",
                "request_rules": [
                    {
                        "header": SELECT,
                        "on_header_present": {
                            "metadata_namespace": "envoy.lb.subset_hint",
                            "key": "x-gateway-destination-endpoint-subset",
                            "type": "STRING",
                        },
                        "remove": True,
                    }
                ],
            },
        },
    )


def start_pods() -> tuple[procs.Proc, dict[str, list[int]]]:
    """One simulator on every address, RANKS ports per model; a port block another program
    took in between (on any address) is tried again with a new one."""
    for attempt in range(3):
        base = free_port_block(RANKS * len(MODELS))
        argv = [sys.executable, "-m", "pointsman.sim", "--host", "0.0.0.0", "--port", str(base)]
        argv += ["--count", str(RANKS), "--time-scale", "0.02", "--max-num-seqs", "16"]
        for model in MODELS:
            argv += ["--model", model]
        ports = {m: [base + i * RANKS + r for r in range(RANKS)] for i, m in enumerate(MODELS)}
        sim = procs.spawn("sim-pods", argv)
        last = f"127.0.0.1:{base + RANKS * len(MODELS) - 1}"
        try:
            procs.wait_until(
                lambda u=last: procs.http_ok(f"http://{u}/health"), 60, "simulator", sim
            )
            return sim, ports
        except Exception:
            sim.stop()
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def conformance() -> Iterator[Conformance]:
    sim, ports = start_pods()
    # pools: every pod of the primary/secondary/no-epp pools serves on its first rank port only;
    # the dp pool's pods serve on all three
    pools = {m: [f"{pod}:{ports[m][0]}" for pod in PODS] for m in (PRIMARY, SECONDARY, NO_EPP)}
    pools[DP] = [f"{pod}:{p}" for pod in PODS for p in ports[DP]]
    try:
        with procs.nats_server() as nats_url:
            selector, selector_port, selector_http = parts.shim_config(nats_url, mode="selector")
            picked = {m: pools[m] for m in (PRIMARY, SECONDARY, DP)}
            with (
                parts.service("shim", selector, selector_http, name="selector"),
                parts.pointsman_picking(nats_url, picked) as (epp_port, _),
                envoy(
                    pools,
                    selector_port,
                    default_pool=PRIMARY,
                    mode="selector",
                    response_path="inline",
                    pool_pickers={m: f"127.0.0.1:{epp_port}" for m in picked},
                    adjust=subset_header,
                    report_endpoint=True,  # the served endpoint is asserted (off by default)
                ) as gw,
            ):
                yield Conformance(nats_url, selector_port, epp_port, pools, ports, gw)
    finally:
        sim.stop()


def request(
    url: str,
    model: str,
    selection: str | None = None,
    prompt: str = "Write as if you were a critic: San Francisco",
) -> Any:
    headers = {SELECT: selection} if selection is not None else {}
    body = {"model": model, "prompt": prompt, "max_tokens": 4}
    return send(url, "POST", "/v1/completions", body, headers)


def test_gateway_destination_endpoint_served(conformance: Conformance) -> None:
    """GatewayDestinationEndpointServed: for each pod the picker is told to choose, the request
    is served by that pod, and the gateway reports the endpoint that served it (the protocol's
    ``x-gateway-destination-endpoint-served`` metadata, read by the picker on the response)."""
    for pod in PODS:
        r = request(conformance.gw.url, PRIMARY, pod)
        assert r.status == 200, r.body
        expected = f"{pod}:{conformance.ports[PRIMARY][0]}"
        assert r.headers["x-sim-endpoint"] == expected
        assert r.headers["x-pointsman-endpoint"] == expected


def test_gateway_following_epp_routing_with_data_parallelism(conformance: Conformance) -> None:
    """GatewayFollowingEPPRoutingWithDataParallelism: with several target ports per pod (DP
    ranks), traffic reaches only the pods the picker was allowed, and only the allowed ranks."""
    ports = conformance.ports[DP]
    cases = [
        ({PODS[1]: set()}, {PODS[1]}),  # one pod, any rank
        ({PODS[0]: set(), PODS[2]: {ports[1]}}, {PODS[0], PODS[2]}),  # one pod pinned to a rank
        ({PODS[0]: set(), PODS[1]: {ports[0], ports[2]}, PODS[2]: set()}, set(PODS)),
    ]
    for allowed, expected_pods in cases:
        tokens = []
        for ip in sorted(allowed):
            tokens += [f"{ip}:{p}" for p in sorted(allowed[ip])] or [ip]
        selection = ",".join(tokens)
        with ThreadPoolExecutor(5) as pool:
            replies = list(
                pool.map(lambda _, s=selection: request(conformance.gw.url, DP, s), range(30))
            )
        seen_pods = set()
        for r in replies:
            assert r.status == 200, r.body
            host, _, port = r.headers["x-sim-endpoint"].rpartition(":")
            assert host in allowed, (host, selection)
            assert int(port) in (allowed[host] or set(ports)), (port, selection)
            seen_pods.add(host)
        assert seen_pods <= expected_pods


def test_gateway_weighted_across_two_inference_pools(conformance: Conformance) -> None:
    """GatewayWeightedAcrossTwoInferencePools: 70/30 over two pools, within 10 points or three
    binomial sigmas, and every request served by an endpoint of the pool it was sent to. The
    split is Pointsman's own (an InferenceModelRewrite with two targets, one per pool) rather
    than the HTTPRoute's backendRef weights; each pool's picker still picks in its pool."""
    rewrite = {
        "name": "weighted-two-pools",
        "rules": [
            {
                "matches": ["conformance-fake-model"],
                "targets": [{"model": PRIMARY, "weight": 70}, {"model": SECONDARY, "weight": 30}],
            }
        ],
    }
    selector, port, http_port = parts.shim_config(
        conformance.nats_url, mode="selector", model_rewrites=[rewrite]
    )
    everyone = ",".join(PODS)  # the suite lists every pod of both pools
    with (
        parts.service("shim", selector, http_port, name="weighted-selector"),
        envoy(
            conformance.pools,
            port,
            default_pool=PRIMARY,
            mode="selector",
            pool_pickers={m: f"127.0.0.1:{conformance.epp_port}" for m in (PRIMARY, SECONDARY)},
            adjust=subset_header,
        ) as gw,
    ):
        total = 200
        with ThreadPoolExecutor(5) as pool:
            replies = list(
                pool.map(
                    lambda _: request(gw.url, "conformance-fake-model", everyone), range(total)
                )
            )
    hits: Counter[str] = Counter()
    for r in replies:
        assert r.status == 200, r.body
        model = r.headers["x-selected-model"]
        assert r.headers["x-pointsman-rewrite"] == model
        assert r.headers["x-sim-endpoint"] in conformance.pools[model]  # inside the chosen pool
        hits[model] += 1
    assert sum(hits.values()) == total
    observed, expected = hits[PRIMARY] / total, 0.7
    tolerance = max(0.10, 3 * math.sqrt(expected * (1 - expected) / total))
    assert abs(observed - expected) <= tolerance, hits


def test_inference_pool_without_an_endpoint_picker(conformance: Conformance) -> None:
    """InferencePoolMissingEPPRef: the suite checks the route and pool status conditions a
    gateway controller writes (not Pointsman's part). What Pointsman's gateway does with such a
    pool: the route is served, by Envoy's own balancing over the pool's endpoints, and no
    endpoint picker is asked (the selection header has no effect)."""
    served = set()
    for _ in range(6):
        r = request(conformance.gw.url, NO_EPP, PODS[0])
        assert r.status == 200, r.body
        assert r.headers["x-selected-model"] == NO_EPP
        assert r.headers["x-pointsman-route"] == "selected"
        served.add(r.headers["x-sim-endpoint"])
    assert served <= set(conformance.pools[NO_EPP])
    assert len(served) > 1  # not pinned to the one pod named: nobody picked


def test_epp_unavailable_fail_open(conformance: Conformance) -> None:
    """EppUnAvailableFailOpen: with the picker up, the pod it is told to pick serves; with the
    picker gone (its ext_proc server stopped), requests still succeed, served by any pod of the
    pool (the pool's ``failureMode: FailOpen``: Envoy balances)."""
    shim, port, http_port = parts.shim_config(conformance.nats_url, mode="picker")
    config = {**shim, "pools": {PRIMARY: conformance.pools[PRIMARY]}}
    selector, sel_port, sel_http = parts.shim_config(conformance.nats_url, mode="selector")
    with (
        parts.service("shim", selector, sel_http, name="failopen-selector"),
        parts.service("shim", config, http_port, name="failopen-epp") as epp,
        envoy(
            conformance.pools,
            sel_port,
            default_pool=PRIMARY,
            mode="selector",
            pool_pickers={PRIMARY: f"127.0.0.1:{port}"},
            adjust=subset_header,
        ) as gw,
    ):
        target = f"{PODS[0]}:{conformance.ports[PRIMARY][0]}"
        r = request(gw.url, PRIMARY, PODS[0])
        assert r.status == 200, r.body
        assert r.headers["x-sim-endpoint"] == target  # phase 1: the picker's pod
        epp.stop()  # phase 2: the endpoint picker is gone
        for _ in range(6):
            r = request(gw.url, PRIMARY, PODS[0])
            assert r.status == 200, r.body
            assert r.headers["x-sim-endpoint"] in conformance.pools[PRIMARY]

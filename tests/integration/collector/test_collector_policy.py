"""InferenceObjectives and InferenceModelRewrites read from Kubernetes (kubernetes-asyncio against
a fake API server: real HTTP, real API JSON, list + watch, 410 Gone) and published on the bus."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import nats
import pytest
from collector_fake_kube import FakeKube  # type: ignore[import-not-found]

from pointsman.bus import NatsConfig
from pointsman.runtime import cancel_and_wait
from pointsman.v1 import routes
from pointsman.v1.policy import InferencePolicy, ModelRewrite, Objective, RewriteTarget
from pointsman_collector.app import Collector, build_sources
from pointsman_collector.config import CollectorConfig, KubernetesConfig
from pointsman_collector.core import policy as core
from pointsman_collector.discovery.kubernetes import KubernetesDiscovery
from tests.helpers.procs import free_port

pytestmark = pytest.mark.integration

X_API = "inference.networking.x-k8s.io/v1alpha2"


def objective(name: str, pool: str, priority: int | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"poolRef": {"name": pool}}
    if priority is not None:
        spec["priority"] = priority
    return {
        "apiVersion": X_API,
        "kind": "InferenceObjective",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }


def model_rewrite(
    name: str, pool: str, model: str, targets: list[tuple[str, int]], created: str
) -> dict[str, Any]:
    return {
        "apiVersion": X_API,
        "kind": "InferenceModelRewrite",
        "metadata": {"name": name, "namespace": "default", "creationTimestamp": created},
        "spec": {
            "poolRef": {"group": "inference.networking.k8s.io", "name": pool},
            "rules": [
                {
                    "matches": [{"model": {"type": "Exact", "value": model}}],
                    "targets": [{"modelRewrite": m, "weight": w} for m, w in targets],
                }
            ],
        },
    }


def kube_config(kube: FakeKube) -> KubernetesConfig:
    return KubernetesConfig.model_validate(
        {
            "api_url": kube.url,
            "retry_s": 0.1,
            "policy": {"enabled": True, "interval_s": 0.2},
            # The InferencePool vllm-llama-pool serves the Pointsman pool llama-3-8b.
            "sources": [{"pool": "llama-3-8b", "inference_pool": "vllm-llama-pool"}],
        }
    )


async def until(cond: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


def test_builder_maps_pools_defaults_and_rejects_bad_shapes() -> None:
    pools = {"vllm-llama-pool": "llama-3-8b"}
    assert core.objective(objective("chat", "vllm-llama-pool"), pools) == Objective(
        "chat", 0, "llama-3-8b"
    )
    assert core.objective(objective("x", "other", 4), pools).pool == "other"
    rw = core.rewrite(
        model_rewrite(
            "c", "vllm-llama-pool", "llama", [("a", 9), ("b", 1)], "2026-01-02T00:00:00Z"
        ),
        pools,
    )
    assert rw.rules[0].models == ["llama"]
    assert rw.rules[0].targets == [RewriteTarget("a", 9), RewriteTarget("b", 1)]
    assert rw.created > 0 and rw.pool == "llama-3-8b"
    bad = objective("x", "p")
    bad["spec"]["priority"] = "high"
    with pytest.raises(core.PolicyError, match="priority"):
        core.objective(bad, pools)
    with pytest.raises(core.PolicyError, match="poolRef"):
        core.objective({"metadata": {"name": "x"}, "spec": {}}, pools)
    prefix = model_rewrite("p", "pool", "m", [("a", 1)], "")
    prefix["spec"]["rules"][0]["matches"][0]["model"]["type"] = "Prefix"
    with pytest.raises(core.PolicyError, match="Exact"):
        core.rewrite(prefix, pools)


async def test_list_watch_and_relist_after_410(kube: FakeKube) -> None:
    kube.apply("objectives", objective("critical", "vllm-llama-pool", 10))
    kube.apply(
        "rewrites",
        model_rewrite(
            "canary", "vllm-llama-pool", "llama-3-8b", [("llama-3-8b", 90), ("lora", 10)],
            "2026-01-01T00:00:00Z",
        ),
    )  # fmt: skip
    seen: list[InferencePolicy] = []
    discovery = KubernetesDiscovery(kube_config(kube), on_policy=seen.append)
    task = asyncio.create_task(discovery.run(lambda _name, _eps: None))
    try:
        await until(lambda: bool(seen), "first policy")
        first = seen[-1]
        assert first.objectives == [Objective("critical", 10, "llama-3-8b")]
        assert [r.name for r in first.rewrites] == ["canary"]
        assert first.source == "kubernetes/default"

        kube.apply("objectives", objective("batch", "vllm-llama-pool", -1))  # watch: ADDED
        await until(lambda: len(seen[-1].objectives) == 2, "added objective")
        kube.apply("objectives", objective("critical", "vllm-llama-pool", 20))  # MODIFIED
        await until(
            lambda: Objective("critical", 20, "llama-3-8b") in seen[-1].objectives, "modified"
        )
        kube.delete("rewrites", "canary")  # DELETED
        await until(lambda: seen[-1].rewrites == [], "deleted rewrite")

        lists = kube.lists
        kube.expire_watches()  # 410 Gone: list again, and keep the same view
        await until(lambda: kube.lists >= lists + 2, "re-list of both kinds after 410")
        kube.apply("objectives", objective("late", "vllm-llama-pool", 3))
        await until(lambda: len(seen[-1].objectives) == 3, "watch resumed after the re-list")
        # a bad object is left out, the others stay
        bad = objective("bad", "vllm-llama-pool")
        bad["spec"]["priority"] = "high"
        kube.apply("objectives", bad)
        kube.apply("objectives", objective("after-bad", "vllm-llama-pool", 1))
        await until(lambda: len(seen[-1].objectives) == 4, "good objectives kept")
        assert "bad" not in {o.name for o in seen[-1].objectives}
    finally:
        await cancel_and_wait([task])  # cancels again if a cancel is dropped


async def test_collector_publishes_the_policy_on_the_bus(kube: FakeKube, nats_url: str) -> None:
    kube.apply("objectives", objective("critical", "vllm-llama-pool", 10))
    unique = uuid.uuid4().hex[:8]
    cfg = CollectorConfig.model_validate(
        {
            "id": f"c-{unique}",
            "http_port": free_port(),
            "sharding": {"subject": f"test.{unique}.heartbeat"},
            "latest": {"enabled": False},
            "kubernetes": kube_config(kube).model_dump(),
        }
    )
    nc = await nats.connect(nats_url)
    received: list[InferencePolicy] = []

    async def on_msg(msg: Any) -> None:
        received.append(routes.POLICY.decode(msg.data))

    await nc.subscribe(routes.POLICY.subject, cb=on_msg)
    collector = Collector(cfg, nats=NatsConfig(url=nats_url), sources=build_sources(cfg, None))
    try:
        assert await collector.start()
        await until(lambda: bool(received), "a published policy")
        assert received[-1].objectives == [Objective("critical", 10, "llama-3-8b")]
        count = len(received)
        await until(lambda: len(received) >= count + 2, "republished for late joiners")
        kube.apply(
            "rewrites",
            model_rewrite("ab", "vllm-llama-pool", "m", [("a", 1)], "2026-01-01T00:00:00Z"),
        )
        await until(lambda: [r.name for r in received[-1].rewrites] == ["ab"], "a change published")
        assert isinstance(received[-1].rewrites[0], ModelRewrite)
    finally:
        await collector.stop()
        await nc.close()

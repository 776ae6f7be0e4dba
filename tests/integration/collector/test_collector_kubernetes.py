"""Kubernetes discovery through kubernetes-asyncio against a fake API server (real HTTP, real
API JSON, list + watch)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence

import pytest
from collector_fake_kube import (  # type: ignore[import-not-found]
    FakeKube,
    inference_pool,
    pod,
)

from pointsman.runtime import cancel_and_wait
from pointsman_collector.config import KubernetesConfig
from pointsman_collector.core.endpoints import Endpoint
from pointsman_collector.discovery.kubernetes import KubernetesDiscovery

pytestmark = pytest.mark.integration


class View:
    def __init__(self) -> None:
        self.endpoints: list[Endpoint] = []
        self.reports = 0

    def report(self, _: str, endpoints: Sequence[Endpoint]) -> None:
        self.endpoints = list(endpoints)
        self.reports += 1

    def addresses(self) -> set[str]:
        return {e.address for e in self.endpoints}

    async def until(self, cond: Callable[[], bool], what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"{what}: view is {sorted(self.addresses())}")


@contextlib.asynccontextmanager
async def discovery(cfg: KubernetesConfig, view: View) -> AsyncIterator[None]:
    task = asyncio.create_task(KubernetesDiscovery(cfg).run(view.report))
    try:
        yield
    finally:
        await cancel_and_wait([task])  # cancels again if a cancel is dropped


async def test_label_selector_follows_ready_pods(kube: FakeKube) -> None:
    kube.apply_pod(pod("llama-0", "10.0.0.1", {"app": "llama"}))
    kube.apply_pod(pod("llama-1", "10.0.0.2", {"app": "llama"}, ready=False))
    kube.apply_pod(pod("qwen-0", "10.0.0.3", {"app": "qwen"}))
    cfg = KubernetesConfig.model_validate(
        {
            "api_url": kube.url,
            "retry_s": 0.1,
            "sources": [{"pool": "llama", "selector": "app=llama", "port": 8000}],
        }
    )
    view = View()
    async with discovery(cfg, view):
        await view.until(lambda: view.addresses() == {"10.0.0.1:8000"}, "initial list")
        ep = view.endpoints[0]
        assert ep.pool == "llama" and ep.labels["app"] == "llama" and ep.labels["pod"] == "llama-0"

        kube.apply_pod(pod("llama-2", "10.0.0.4", {"app": "llama"}))  # watch: ADDED
        await view.until(lambda: view.addresses() == {"10.0.0.1:8000", "10.0.0.4:8000"}, "added")
        kube.apply_pod(pod("llama-1", "10.0.0.2", {"app": "llama"}))  # becomes ready
        await view.until(lambda: "10.0.0.2:8000" in view.addresses(), "became ready")
        kube.delete_pod("llama-0")
        await view.until(lambda: view.addresses() == {"10.0.0.2:8000", "10.0.0.4:8000"}, "deleted")

        # The API server expires the watch (410 Gone): the client lists again and carries on.
        lists = kube.lists
        kube.expire_watches()
        await view.until(lambda: kube.lists > lists, "re-list after 410")
        kube.apply_pod(pod("llama-3", "10.0.0.5", {"app": "llama"}))
        await view.until(lambda: "10.0.0.5:8000" in view.addresses(), "watch after re-list")


async def test_inference_pool_selector_and_target_ports(kube: FakeKube) -> None:
    kube.apply_pool(inference_pool("llama-pool", {"app": "llama"}, [8000, 8001]))
    kube.apply_pod(pod("llama-0", "10.0.0.1", {"app": "llama"}))
    kube.apply_pod(pod("llama2-0", "10.0.1.1", {"app": "llama2"}))
    cfg = KubernetesConfig.model_validate(
        {
            "api_url": kube.url,
            "retry_s": 0.1,
            "sources": [
                {
                    "pool": "meta-llama/Llama-3.1-8B",
                    "inference_pool": "llama-pool",
                    "engine": "vllm",
                }
            ],
        }
    )
    view = View()
    async with discovery(cfg, view):
        await view.until(
            lambda: view.addresses() == {"10.0.0.1:8000", "10.0.0.1:8001"}, "pool's pods x ports"
        )
        assert {e.pool for e in view.endpoints} == {"meta-llama/Llama-3.1-8B"}
        assert {e.engine for e in view.endpoints} == {"vllm"}

        # Editing the InferencePool's selector and ports moves discovery to the new pods.
        kube.apply_pool(inference_pool("llama-pool", {"app": "llama2"}, [9000]))
        await view.until(lambda: view.addresses() == {"10.0.1.1:9000"}, "pool edited")
        kube.apply_pod(pod("llama2-1", "10.0.1.2", {"app": "llama2"}))
        await view.until(lambda: view.addresses() == {"10.0.1.1:9000", "10.0.1.2:9000"}, "new pod")


async def test_collector_scrapes_pods_of_an_inference_pool(
    kube: FakeKube, fleet: object, nats_url: str, unique: str
) -> None:
    """End to end: InferencePool -> pods -> scrapes -> snapshot on NATS."""
    import nats

    from pointsman.bus import NatsConfig
    from pointsman.v1 import PoolSnapshot, decode, subjects
    from pointsman_collector.app import Collector, build_sources
    from pointsman_collector.config import CollectorConfig
    from tests.helpers import procs

    engine = await fleet.add(waiting=4)  # type: ignore[attr-defined]
    port = int(engine.address.rsplit(":", 1)[1])
    kube.apply_pool(inference_pool("llama-pool", {"app": "llama"}, [port]))
    kube.apply_pod(pod("llama-0", "127.0.0.1", {"app": "llama", "role": "decode"}))
    pool = f"llama-{unique}"
    cfg = CollectorConfig.model_validate(
        {
            "http_port": procs.free_port(),
            "sharding": {"enabled": False},
            "latest": {"enabled": False},
            "kubernetes": {
                "api_url": kube.url,
                "sources": [{"pool": pool, "inference_pool": "llama-pool"}],
            },
        }
    )
    nc = await nats.connect(nats_url)
    got: asyncio.Queue[PoolSnapshot] = asyncio.Queue()

    async def cb(msg: object) -> None:
        got.put_nowait(decode(msg.data, PoolSnapshot))  # type: ignore[attr-defined]

    await nc.subscribe(subjects.metrics(pool), cb=cb)
    collector = Collector(cfg, nats=NatsConfig(url=nats_url), sources=build_sources(cfg, None))
    await collector.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            snap = await asyncio.wait_for(got.get(), 60)
            if snap.endpoints and snap.endpoints[0].healthy:
                break
        [ep] = snap.endpoints
        assert (ep.address, ep.waiting, ep.engine) == (engine.address, 4, "vllm")
        assert ep.labels["role"] == "decode" and ep.labels["pod"] == "llama-0"
    finally:
        await collector.stop()
        await nc.close()

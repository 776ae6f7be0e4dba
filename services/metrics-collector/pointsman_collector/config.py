"""The ``collector:`` section of the shared config file (every key is in the README)."""

from __future__ import annotations

import os
import socket
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pointsman.v1 import subjects
from pointsman_collector.core.engines import BUILTIN, EngineSpec


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EngineMapping(_Strict):
    """Metric names of an engine (a new one, or an override of ``vllm``/``sglang``)."""

    detect: str = ""
    waiting: list[str] = Field(default_factory=list)
    running: list[str] = Field(default_factory=list)
    kv_usage: list[str] = Field(default_factory=list)
    kv_usage_scale: float = Field(default=1.0, gt=0)
    lora_info: str | None = None
    cache_config_info: str | None = None
    num_blocks: list[str] = Field(default_factory=list)
    block_size: int = Field(default=0, ge=0)

    def spec(self, name: str) -> EngineSpec:
        return EngineSpec(
            name=name,
            detect=self.detect,
            waiting=tuple(self.waiting),
            running=tuple(self.running),
            kv_usage=tuple(self.kv_usage),
            kv_usage_scale=self.kv_usage_scale,
            lora_info=self.lora_info,
            cache_config_info=self.cache_config_info,
            num_blocks=tuple(self.num_blocks),
            block_size=self.block_size,
        )


class KubernetesSource(_Strict):
    """Pods of one pool, selected by labels or by an InferencePool."""

    pool: str
    namespace: str = "default"
    #: A label selector (``app=vllm,tier=gpu``); or name an InferencePool instead.
    selector: str | None = None
    inference_pool: str | None = None
    #: Port to scrape for a plain selector (an InferencePool gives its ``targetPorts``).
    port: int | None = Field(default=None, gt=0, lt=65536)
    engine: str | None = None

    @model_validator(mode="after")
    def _one_selector(self) -> KubernetesSource:
        if (self.selector is None) == (self.inference_pool is None):
            raise ValueError("give exactly one of 'selector' and 'inference_pool'")
        if self.selector is not None and self.port is None:
            raise ValueError("'port' is required with 'selector'")
        return self


class PolicyWatchConfig(_Strict):
    """InferenceObjectives and InferenceModelRewrites, published to the shims and pickers."""

    #: Watch them (needs the Inference Extension's CRDs and read access to them).
    enabled: bool = False
    namespace: str = "default"
    #: The policy is published at once on a change and again this often (for late joiners).
    interval_s: float = Field(default=5.0, gt=0)


class KubernetesConfig(_Strict):
    #: Path of a kubeconfig file; None = in-cluster service account, else ``$KUBECONFIG``.
    kubeconfig: str | None = None
    #: API server URL overriding the kubeconfig's (tests; ``kubectl proxy``).
    api_url: str | None = None
    sources: list[KubernetesSource] = Field(default_factory=list)
    #: Seconds to wait before re-listing after a watch fails.
    retry_s: float = Field(default=2.0, gt=0)
    policy: PolicyWatchConfig = PolicyWatchConfig()


class ShardingConfig(_Strict):
    enabled: bool = True
    subject: str = subjects.COLLECTOR_HEARTBEAT
    heartbeat_ms: int = Field(default=100, gt=0)
    #: A replica not heard from for this long is dead and its endpoints move.
    lease_ms: int = Field(default=400, gt=0)


class LatestConfig(_Strict):
    """Latest snapshot per (pool, replica) kept in a JetStream KV bucket for late joiners."""

    enabled: bool = True
    bucket: str = subjects.METRICS_BUCKET
    #: Entries of a replica that stopped writing expire after this many seconds.
    ttl_s: float = Field(default=30.0, gt=0)
    #: ``memory``: the latest state needs no disk (collectors rewrite it every tick).
    storage: Literal["memory", "file"] = "memory"


class CollectorConfig(_Strict):
    #: Address of the HTTP port (/metrics, /healthz, /readyz); ``pointsman up``: 127.0.0.1.
    http_host: str = "0.0.0.0"
    http_port: int = Field(default=9104, ge=0, lt=65536)
    interval_ms: int = Field(default=50, gt=0)
    #: Per-scrape timeout. Real vLLM on two busy cores answered ``/metrics`` in 180-270 ms at
    #: the median, 1.0-1.4 s at p99, up to 4 s, and up to four answers in a row took over 1 s
    #: (1000 ms evicted a serving replica); never two over 2 s in a row
    #: (``python -m bench.collector.vllm_scrape``, docs/reliability.md).
    timeout_ms: int = Field(default=2000, gt=0)
    #: Failed scrapes in a row that mark an endpoint unhealthy (a refused connection: at once).
    unhealthy_after: int = Field(default=3, ge=1)
    #: Accepted for compatibility and unused: the raw client keeps one connection per
    #: endpoint, so every owned endpoint is scraped each tick.
    concurrency: int = Field(default=256, gt=0)
    #: Snapshots mark an endpoint stale when its last good scrape is older than this.
    stale_ms: int = Field(default=1000, gt=0)
    static_file: str | None = None
    #: How often the config file and ``static_file`` are checked for changes (hot reload).
    reload_ms: int = Field(default=1000, gt=0)
    #: Engine of endpoints that do not name one: ``auto`` detects it from the page.
    engine: str = "auto"
    engines: dict[str, EngineMapping] = Field(default_factory=dict)
    #: Only ``fast`` (read only the needed families) remains; the key stays so that configs
    #: that name it still load. The general parser was 44x slower on a real vLLM page.
    parser: Literal["fast"] = "fast"
    #: Only ``raw`` (the callback-driven keep-alive client) remains; the key stays so that
    #: configs that name it still load. aiohttp cost 3x more CPU per scrape (bench/collector).
    client: Literal["raw"] = "raw"
    max_body_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    #: A pool snapshot larger than this is split into parts; 0 = 90% of the server's max_payload.
    max_snapshot_bytes: int = Field(default=0, ge=0)
    #: Replica id (a NATS subject token); default ``<hostname>-<pid>``.
    id: str | None = None
    path: str = "/metrics"
    kubernetes: KubernetesConfig = KubernetesConfig()
    sharding: ShardingConfig = ShardingConfig()
    latest: LatestConfig = LatestConfig()

    @model_validator(mode="after")
    def _engine_known(self) -> CollectorConfig:
        known = {"auto", *BUILTIN, *self.engines}
        if self.engine not in known:
            raise ValueError(f"unknown engine {self.engine!r}; known: {sorted(known)}")
        return self

    def specs(self) -> dict[str, EngineSpec]:
        """Built-in engines overlaid with the configured mappings."""
        out = dict(BUILTIN)
        for name, mapping in self.engines.items():
            out[name] = mapping.spec(name)
        return out

    def replica_id(self) -> str:
        raw = self.id or f"{socket.gethostname()}-{os.getpid()}"
        return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in raw)

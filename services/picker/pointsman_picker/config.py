"""The ``picker`` section of the Pointsman config file.

Every key has a default, so an empty section gives a working picker (the default profile:
queue 2, KV cache 2, prefix cache 3, max-score picker; no shared state). Unknown keys fail at
start-up with their path. ``services/picker/README.md`` documents every key.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pointsman_picker.core.objectives import CRITICALITY, Criticality


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PluginDef(_Strict):
    """A configured plugin instance; profiles refer to it by ``name`` (default: its type)."""

    type: str
    name: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)


class ProfileEntry(_Strict):
    """One plugin of a profile: a plugin instance name or a plugin type; scorers take a weight."""

    plugin: str
    weight: float | None = Field(default=None, ge=0)


class SaturationConfig(_Strict):
    queue_depth_threshold: int = Field(default=5, ge=0)
    kv_cache_util_threshold: float = Field(default=0.8, ge=0, le=1)
    #: An endpoint with this many requests in flight (picked, not completed, every picker
    #: replica's) is full: flow control holds requests while every endpoint is, and a pick goes
    #: to one that is not. Set to the engines' batch (vLLM ``--max-num-seqs``) to keep the queue
    #: in the picker, where flow control orders it, instead of in the engine. 0: no such bound.
    max_in_flight: int = Field(default=0, ge=0)
    #: An endpoint with more than this many milliseconds of prompt work queued behind the prompt
    #: it computes now (uncached prompts this replica sent it before its newest request and it
    #: has presumably not computed yet, at the pool's learnt prefill speed; needs
    #: ``latency.enabled``) is full. 0: one prompt in progress and none queued behind it. With
    #: flow control a request then waits in the picker until an endpoint has at most the prompt
    #: in progress, and goes there: it gets an engine step of its own next, instead of sharing
    #: one with prompts queued before it (a step that computes several prompts gives each its
    #: first token only at the step's end). ``null``: no such bound.
    max_prefill_ms: float | None = Field(default=None, ge=0)


class ObjectiveConfig(_Strict):
    """An objective's priority, given directly or as the older InferenceModel criticality
    (``Critical`` 1, ``Standard`` 0, ``Sheddable`` -1); ``priority`` wins when both are set."""

    priority: int | None = None
    criticality: Criticality | None = None
    #: The objective's latency SLO in milliseconds, for requests that send no SLO header
    #: (``x-pointsman-slo-ttft-ms`` / ``-tpot-ms``); ``null``: none.
    slo_ttft_ms: float | None = Field(default=None, gt=0)
    slo_tpot_ms: float | None = Field(default=None, gt=0)

    def value(self) -> int:
        if self.priority is not None:
            return self.priority
        return CRITICALITY[self.criticality] if self.criticality else 0


class PoolConfig(_Strict):
    """Per-pool overrides; anything left out comes from the picker-wide setting."""

    profile: str | None = None
    prefill_profile: str | None = None
    saturation: SaturationConfig | None = None
    pd_threshold_bytes: int | None = Field(default=None, ge=0)


class SharedStateConfig(_Strict):
    #: ``redis://host:port/db``; unset = each replica keeps its own state (fine for one replica).
    #: ``$POINTSMAN_REDIS_URL`` wins when set.
    redis_url: str | None = None
    key_prefix: str = "pointsman:picker"
    #: How often buffered updates are written to Redis and published to the other replicas.
    flush_interval_ms: float = Field(default=2.0, gt=0)
    #: Give up on one Redis operation after this long (the hot path never waits on it).
    timeout_ms: float = Field(default=500.0, gt=0)


class LatencyConfig(_Strict):
    """The latency predictor (``core/latency.py``) the ``slo`` profile's plugins read."""

    #: Learn from completion events (and answer predictions); off = the plugins stay neutral.
    enabled: bool = True
    #: RLS forgetting factor per sample: 1 never forgets, 0.99 follows change within ~100.
    forgetting: float = Field(default=0.995, gt=0.5, le=1)
    #: Samples after which an endpoint's own speed factor counts fully (before: closer to 1).
    min_samples: int = Field(default=8, ge=1)
    #: Picks remembered while waiting for their completion event (oldest dropped first).
    max_tracked: int = Field(default=100_000, ge=1)


class JointConfig(_Strict):
    """One decision for model and endpoint (``core/joint.py``), for ``model: auto``."""

    #: Quality points one second of predicted time to first token costs.
    latency_penalty_per_s: float = Field(default=0.1, ge=0)
    #: Quality points a pool whose every endpoint is saturated costs.
    saturation_penalty: float = Field(default=0.3, ge=0)
    #: Quality points a predicted miss of the request's SLO costs.
    slo_miss_penalty: float = Field(default=1.0, ge=0)
    #: A candidate more than this below the first one's quality is never chosen.
    max_quality_drop: float = Field(default=0.5, ge=0)


class ReserveConfig(_Strict):
    """Capacity held back for tenants under their fair share of the recent service (see
    ``core/flow.py``). Off (the defaults): every tenant may take every slot."""

    #: Per endpoint, the last batch slots of ``saturation.max_in_flight`` that a tenant over
    #: its share may not take (needs ``max_in_flight``); 0: none.
    slots: int = Field(default=0, ge=0)
    #: A tenant over its share is not sent to an endpoint whose prefill backlog (the latency
    #: predictor's estimate, thousand tokens) exceeds this; null: no such bound.
    backlog_ktokens: float | None = Field(default=None, ge=0)
    #: Half-life of the recent service a tenant's share is judged on, and how long a tenant
    #: counts as active after it was last served (seconds).
    window_s: float = Field(default=10.0, gt=0)


class FlowControlConfig(_Strict):
    """Flow control: when a pool is saturated, requests wait here (fair across tenants by the
    Virtual Token Counter, higher priority first) instead of being shed at once."""

    #: Off: a saturated pool sheds requests below priority 0 at once (429), as before.
    enabled: bool = True
    #: Request header naming the tenant. The default is set by the shim only (SHA-256 of the
    #: request's ``authorization``), so a client cannot pick its own tenant; name a header your
    #: gateway sets after authentication (and the shim forwards, e.g. ``x-tenant-id``) to use it.
    tenant_header: str = "x-pointsman-tenant"
    #: The tenant of a request without that header.
    default_tenant: str = "default"
    #: Longest wait in the queue; the shim's ``queue_wait_ms`` (sent with each pick) caps it.
    ttl_ms: float = Field(default=30_000.0, gt=0)
    #: Requests waiting per pool in this replica; more are answered 429 ``queue_full``.
    max_queued: int = Field(default=1000, ge=1)
    #: Requests waiting per pool and tenant in this replica (429 ``tenant_queue_full``).
    max_queued_per_tenant: int = Field(default=250, ge=1)
    #: Weight of one prompt token in a tenant's counter.
    input_token_weight: float = Field(default=1.0, ge=0)
    #: Weight of one generated token in a tenant's counter.
    output_token_weight: float = Field(default=2.0, ge=0)
    #: A request with a TTFT objective that no endpoint with room is predicted to meet (the
    #: latency predictor) waits here until one is, rather than going to an endpoint where it
    #: would be late; it leaves with 429 ``slo_unattainable`` once its objective has passed.
    #: Off: such a request is served at once (or refused by ``slo-admission``).
    slo_hold: bool = False
    #: With ``shared_state.redis_url``: how often the tenant counters are exchanged in Redis.
    sync_interval_ms: float = Field(default=50.0, gt=0)
    #: Capacity held back for tenants under their fair share (off by default).
    reserve: ReserveConfig = Field(default_factory=ReserveConfig)


class PickerConfig(_Strict):
    http_host: str = "0.0.0.0"
    http_port: int = Field(default=9103, ge=0, le=65535)
    #: Identifies this replica in replies, logs and shared-state messages.
    replica_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    #: An endpoint whose last successful scrape is older than this is stale: not picked while
    #: a fresh one is healthy; when none is, the stale ones are (see the README's staleness
    #: policy). Above the collector's ``timeout_ms`` so one slow scrape does not make it stale.
    stale_after_ms: int = Field(default=3000, gt=0)
    #: An in-flight assignment with no completion event after this long is dropped.
    in_flight_ttl_s: float = Field(default=300.0, gt=0)
    #: An endpoint that no snapshot has named for this long is forgotten.
    forget_after_s: float = Field(default=300.0, gt=0)
    #: Wait at most this long for a first snapshot before joining the pick queue group.
    warmup_ms: int = Field(default=500, ge=0)
    #: LoRA adapter name -> the pool (base model) that serves it.
    adapters: dict[str, str] = Field(default_factory=dict)
    #: Plugin instances with parameters (a profile may also name a plugin type directly).
    plugins: list[PluginDef] = Field(default_factory=list)
    #: Profile name -> its plugins in order (filters, scorers with weights, one picker).
    profiles: dict[str, list[ProfileEntry | str]] = Field(default_factory=dict)
    #: The profile used for pools without their own.
    profile: str = "default"
    #: The profile that picks the prefill endpoint when a pool has prefill-role endpoints.
    prefill_profile: str = "default"
    #: Endpoint label holding its P/D role: ``prefill``, ``decode`` or ``both`` (missing = both).
    role_label: str = "role"
    #: Prompts shorter than this many UTF-8 bytes are not disaggregated.
    pd_threshold_bytes: int = Field(default=0, ge=0)
    saturation: SaturationConfig = Field(default_factory=SaturationConfig)
    #: Objective name (``x-gateway-inference-objective`` / ``x-llm-d-inference-objective``) ->
    #: priority, or ``{priority, criticality}``; below 0 may be shed. InferenceObjectives from
    #: Kubernetes (through the collector) add to these.
    objectives: dict[str, int | ObjectiveConfig] = Field(default_factory=dict)
    #: Priority of a request that names no (known) objective and no priority.
    default_priority: int = 0
    pools: dict[str, PoolConfig] = Field(default_factory=dict)
    shared_state: SharedStateConfig = Field(default_factory=SharedStateConfig)
    latency: LatencyConfig = Field(default_factory=LatencyConfig)
    joint: JointConfig = Field(default_factory=JointConfig)
    flow_control: FlowControlConfig = Field(default_factory=FlowControlConfig)

    def objective_slos(self) -> dict[str, tuple[float | None, float | None]]:
        """Objective name -> (TTFT, TPOT) SLO in ms, for the objectives that set one."""
        return {
            name: (value.slo_ttft_ms, value.slo_tpot_ms)
            for name, value in self.objectives.items()
            if isinstance(value, ObjectiveConfig)
            and (value.slo_ttft_ms is not None or value.slo_tpot_ms is not None)
        }

    def objective_priorities(self) -> dict[str, int]:
        """``objectives`` with every entry as its priority."""
        return {
            name: value if isinstance(value, int) else value.value()
            for name, value in self.objectives.items()
        }

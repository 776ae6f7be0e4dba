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


class ObjectiveConfig(_Strict):
    """An objective's priority, given directly or as the older InferenceModel criticality
    (``Critical`` 1, ``Standard`` 0, ``Sheddable`` -1); ``priority`` wins when both are set."""

    priority: int | None = None
    criticality: Criticality | None = None

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

    def objective_priorities(self) -> dict[str, int]:
        """``objectives`` with every entry as its priority."""
        return {
            name: value if isinstance(value, int) else value.value()
            for name, value in self.objectives.items()
        }

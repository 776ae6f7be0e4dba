"""The Gateway API Inference Extension's per-model policy, as the services share it.

Two resources of the Inference Extension (``inference.networking.x-k8s.io/v1alpha2``) say what a
gateway does with a model name before it picks an endpoint:

* an **InferenceObjective** gives requests that name it (header ``x-gateway-inference-objective``,
  or llm-d's ``x-llm-d-inference-objective``) a priority: the picker sheds a priority below 0
  when the pool is saturated, and a flow-control step orders by it;
* an **InferenceModelRewrite** sends a model name to weighted target models (a canary LoRA,
  an A/B split): the shim rewrites the body's ``model`` before the route and the pick.

The metrics-collector reads both from Kubernetes (it already watches InferencePools and holds
the only API token) and publishes an :class:`InferencePolicy` on :data:`POLICY` when they change
and every ``collector.policy.interval_s``; the shim takes the rewrites, the picker the
objectives. The same entries can be written in the config file (``shim.model_rewrites``,
``picker.objectives``); Kubernetes' entries are added to them.
"""

from __future__ import annotations

import msgspec

from pointsman.v1.subjects import PREFIX

#: Pub/sub, collector -> every shim and picker: the whole current :class:`InferencePolicy`.
POLICY = f"{PREFIX}.policy"


class Objective(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """One InferenceObjective: requests naming ``name`` get ``priority`` (higher is served
    first; below 0 may be shed). ``pool`` is the Pointsman pool (served model name) of its
    InferencePool, for reporting."""

    name: str
    priority: int = 0
    pool: str = ""


class RewriteTarget(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """A weighted destination: ``weight / sum(weights)`` of the matched requests go to ``model``."""

    model: str
    weight: int = 1


class RewriteRule(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """``models``: the exact model names the rule matches; empty: every request for the
    rewrite's pool (its served model name)."""

    targets: list[RewriteTarget]
    models: list[str] = []


class ModelRewrite(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """One InferenceModelRewrite. ``created`` (Unix time) breaks ties between resources: the
    older one wins, as the Inference Extension specifies."""

    name: str
    rules: list[RewriteRule]
    pool: str = ""
    created: float = 0.0


class InferencePolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """Everything the collector read from Kubernetes; ``source`` names who sent it."""

    objectives: list[Objective] = []
    rewrites: list[ModelRewrite] = []
    source: str = ""

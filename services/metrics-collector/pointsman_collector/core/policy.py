"""InferenceObjectives and InferenceModelRewrites (Kubernetes objects) as the bus's
:class:`~pointsman.v1.policy.InferencePolicy`. Pure: plain dicts in, contract structs out.

An object's ``spec.poolRef.name`` names an InferencePool; Pointsman names pools by their served
model, so the collector's ``kubernetes.sources`` (``inference_pool`` -> ``pool``) translate it, and
an InferencePool no source names keeps its own name. An object that does not have the shape the
CRD requires is skipped (and logged by the caller), never half-applied.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from pointsman.v1.policy import (
    InferencePolicy,
    ModelRewrite,
    Objective,
    RewriteRule,
    RewriteTarget,
)


class PolicyError(ValueError):
    """An object that does not have the shape its CRD requires."""


def _pool(spec: Mapping[str, Any], pools: Mapping[str, str]) -> str:
    ref = spec.get("poolRef")
    if not isinstance(ref, Mapping) or not isinstance(ref.get("name"), str) or not ref["name"]:
        raise PolicyError("spec.poolRef.name is required")
    name = str(ref["name"])
    return pools.get(name, name)


def _name(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise PolicyError("metadata.name is required")
    return name


def _created(obj: Mapping[str, Any]) -> float:
    stamp = (obj.get("metadata") or {}).get("creationTimestamp")
    if not isinstance(stamp, str):
        return 0.0
    try:
        return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def objective(obj: Mapping[str, Any], pools: Mapping[str, str]) -> Objective:
    """One InferenceObjective; an unset ``priority`` is 0, as the API says."""
    spec = obj.get("spec") or {}
    priority = spec.get("priority", 0)
    if priority is None:
        priority = 0
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise PolicyError("spec.priority must be an integer")
    return Objective(name=_name(obj), priority=priority, pool=_pool(spec, pools))


def rewrite(obj: Mapping[str, Any], pools: Mapping[str, str]) -> ModelRewrite:
    """One InferenceModelRewrite: each rule's exact model matches and weighted targets (a
    target without a weight gets 1, so a rule whose targets all omit it splits evenly)."""
    spec = obj.get("spec") or {}
    rules: list[RewriteRule] = []
    raw_rules = spec.get("rules")
    if not isinstance(raw_rules, list):
        raise PolicyError("spec.rules must be a list")
    for i, raw in enumerate(raw_rules):
        if not isinstance(raw, Mapping):
            raise PolicyError(f"spec.rules[{i}] must be an object")
        models = []
        for match in raw.get("matches") or []:
            model = (match or {}).get("model") or {}
            kind = model.get("type", "Exact") or "Exact"
            value = model.get("value")
            if kind != "Exact" or not isinstance(value, str) or not value:
                raise PolicyError(f"spec.rules[{i}].matches: only Exact model matches are known")
            models.append(value)
        targets = []
        for target in raw.get("targets") or []:
            model = (target or {}).get("modelRewrite")
            weight = (target or {}).get("weight") or 1
            if not isinstance(model, str) or not model or not isinstance(weight, int):
                raise PolicyError(f"spec.rules[{i}].targets: modelRewrite and an integer weight")
            targets.append(RewriteTarget(model=model, weight=weight))
        if not targets:
            continue  # a rule without an action changes nothing
        rules.append(RewriteRule(targets=targets, models=models))
    return ModelRewrite(
        name=_name(obj), rules=rules, pool=_pool(spec, pools), created=_created(obj)
    )


def build(
    objectives: Iterable[Objective], rewrites: Iterable[ModelRewrite], source: str
) -> InferencePolicy:
    """The policy to publish, in a stable order (so an unchanged cluster gives equal policies)."""
    return InferencePolicy(
        objectives=sorted(objectives, key=lambda o: o.name),
        rewrites=sorted(rewrites, key=lambda r: (r.created, r.name)),
        source=source,
    )

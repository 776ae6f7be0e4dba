"""Pure decisions of the semantic cache: who may use it, under which key, what may be stored.

Nothing here does I/O. :func:`plan` says whether one request may be answered from and stored in
the cache and in which partition; :func:`storable` whether an answer may be kept. A hit travels to
the shim as the stored answer (``pointsman.v1.classify.CachedAnswer``), which the shim renders in
the format of the API the client spoke.

A partition is the hash of (tenant, effective model, parameter fingerprint): only entries of the
same partition are ever compared, so one tenant's prompt can never find another tenant's answer,
and an answer produced with other tools, response format, token limit, conversation history or
injected system prompt is never returned.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import msgspec

from pointsman.v1.classify import AnswerText, ClassifyReply, ClassifyRequest
from pointsman_classifier.cache.config import CacheConfig

H_CACHE = "x-pointsman-cache"
H_SIMILARITY = "x-pointsman-cache-similarity"

#: Request parameters that change the answer and so must match exactly (temperature is bounded
#: instead, ``stream`` and ``stream_options`` only change the rendering).
KEY_PARAMS = (
    "tools",
    "tool_choice",
    "response_format",
    "max_tokens",
    "max_completion_tokens",
    "seed",
    "stop",
    "top_p",
)

_enc = msgspec.json.Encoder(order="sorted")


class StoredAnswer(AnswerText, kw_only=True):
    """What the cache keeps of one answer (the Redis value, msgspec JSON): the answer, and whose
    it is."""

    category: str | None = None
    tenant: str = ""
    partition: str = ""


@dataclass(frozen=True)
class Plan:
    """What the cache may do for one request. ``reason`` says why not, for metrics and logs."""

    lookup: bool
    store: bool
    reason: str = ""
    tenant: str = ""
    partition: str = ""
    threshold: float = 1.0


SKIP = Plan(lookup=False, store=False, reason="not_applicable")


def cache_control(headers: dict[str, str]) -> set[str]:
    """The directives of the request's ``cache-control`` header, lower case."""
    value = headers.get("cache-control", "")
    return {d.strip().split("=", 1)[0].lower() for d in value.split(",") if d.strip()}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def fingerprint(req: ClassifyRequest, reply: ClassifyReply) -> str:
    """Everything besides the embedded prompt that decides the answer, hashed.

    The conversation before the last user turn is part of it: the embedding covers the newest
    question, so the same question after another history is another entry.
    """
    turns = [(m.role, m.content) for m in req.messages]
    if turns and turns[-1][0] == "user":
        turns = turns[:-1]
    key = {
        "kind": "completion" if req.prompt is not None else "chat",
        "params": {k: req.params[k] for k in KEY_PARAMS if k in req.params},
        "context": turns,
        "system_prompt": [reply.system_prompt, reply.system_prompt_mode],
        "body_set": reply.body_set,
    }
    return hashlib.sha256(_enc.encode(key)).hexdigest()[:32]


def partition_key(tenant: str, model: str, fp: str) -> str:
    raw = _enc.encode([tenant, model, fp])
    return hashlib.sha256(raw).hexdigest()[:32]


def plan(req: ClassifyRequest, reply: ClassifyReply, cfg: CacheConfig) -> Plan:
    """Whether the request may use the cache, after the classifier's decision ``reply``."""
    decided = reply.block is not None or reply.answer is not None or reply.cached is not None
    if not cfg.enabled or decided or reply.error:
        return SKIP
    params = req.params
    n = params.get("n", 1)
    if n not in (None, 1):
        return Plan(lookup=False, store=False, reason="n")
    temperature = _number(params.get("temperature"))
    if temperature is None:
        temperature = cfg.default_temperature
    if temperature > cfg.max_temperature:
        return Plan(lookup=False, store=False, reason="temperature")
    directives = cache_control(req.headers)
    if "no-store" in directives:
        return Plan(lookup=False, store=False, reason="no_store")
    threshold = cfg.threshold
    cat = cfg.categories.get(reply.category or "") if reply.category else None
    if cat is not None:
        if cat.enabled is False:
            return Plan(lookup=False, store=False, reason="category")
        if cat.threshold is not None:
            threshold = cat.threshold
    mod = cfg.models.get(reply.model)
    if mod is not None:
        if mod.enabled is False:
            return Plan(lookup=False, store=False, reason="model")
        if mod.threshold is not None:
            threshold = mod.threshold
    tenant = req.headers.get(cfg.tenant_header, "")
    part = partition_key(tenant, reply.model, fingerprint(req, reply))
    return Plan(
        lookup="no-cache" not in directives,
        store=True,
        reason="no_cache" if "no-cache" in directives else "",
        tenant=tenant,
        partition=part,
        threshold=threshold,
    )


def storable(answer: StoredAnswer, cfg: CacheConfig) -> str:
    """Why an answer must not be stored ("" = store it)."""
    if answer.finish_reason == "length" and not cfg.store_truncated:
        return "truncated"
    if answer.finish_reason not in ("stop", "length", "eos", None):
        return "finish_reason"
    if len(answer.content.encode()) > cfg.max_answer_bytes:
        return "too_large"
    if not answer.content:
        return "empty"
    return ""

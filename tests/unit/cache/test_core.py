"""Semantic cache: eligibility, keys, what may be stored (the shim renders a hit: test_dialects)."""

from __future__ import annotations

import pytest

from pointsman.v1.classify import Block, CachedAnswer, ClassifyReply, ClassifyRequest, Message
from pointsman_classifier.cache.config import CacheConfig, CacheOverride
from pointsman_classifier.cache.core import StoredAnswer, fingerprint, plan, storable

ON = CacheConfig(enabled=True)


def req(text: str = "What is the capital of France?", **kw: object) -> ClassifyRequest:
    headers = kw.pop("headers", {})
    params = kw.pop("params", {"temperature": 0})
    msgs = kw.pop("messages", [Message(role="user", content=text)])
    return ClassifyRequest(
        request_id="r",
        model="auto",
        messages=msgs,  # type: ignore[arg-type]
        headers=headers,  # type: ignore[arg-type]
        params=params,  # type: ignore[arg-type]
    )


def reply(model: str = "alpha", category: str | None = "history") -> ClassifyReply:
    return ClassifyReply(model=model, selected=True, category=category)


def test_disabled_or_blocked_skips() -> None:
    assert not plan(req(), reply(), CacheConfig()).lookup
    blocked = reply()
    blocked.block = Block(message="no", code="x", reason="jailbreak")
    p = plan(req(), blocked, ON)
    assert not p.lookup and not p.store
    answered = reply()
    answered.cached = CachedAnswer(content="Paris")
    assert plan(req(), answered, ON).reason == "not_applicable"


def test_plan_partition_and_threshold() -> None:
    p = plan(req(), reply(), ON)
    assert p.lookup and p.store and p.threshold == ON.threshold and len(p.partition) == 32
    # per category, then per model (the model wins)
    cfg = CacheConfig(
        enabled=True,
        categories={"history": CacheOverride(threshold=0.8)},
        models={"alpha": CacheOverride(threshold=0.7)},
    )
    assert plan(req(), reply("beta"), cfg).threshold == 0.8
    assert plan(req(), reply("alpha"), cfg).threshold == 0.7


@pytest.mark.parametrize(
    ("cfg", "r", "reason"),
    [
        (CacheConfig(enabled=True, categories={"history": CacheOverride(enabled=False)}), reply(), "category"),
        (CacheConfig(enabled=True, models={"alpha": CacheOverride(enabled=False)}), reply(), "model"),
    ],
)  # fmt: skip
def test_opt_out_by_config(cfg: CacheConfig, r: ClassifyReply, reason: str) -> None:
    p = plan(req(), r, cfg)
    assert (p.lookup, p.store, p.reason) == (False, False, reason)


def test_opt_out_by_request() -> None:
    no_cache = plan(req(headers={"cache-control": "no-cache"}), reply(), ON)
    assert (no_cache.lookup, no_cache.store) == (False, True)
    no_store = plan(req(headers={"cache-control": "max-age=0, No-Store"}), reply(), ON)
    assert (no_store.lookup, no_store.store) == (False, False)


def test_temperature_bound_and_n() -> None:
    cfg = CacheConfig(enabled=True, max_temperature=0.5, default_temperature=1.0)
    assert plan(req(params={"temperature": 0.5}), reply(), cfg).lookup
    assert plan(req(params={"temperature": 0.7}), reply(), cfg).reason == "temperature"
    assert plan(req(params={}), reply(), cfg).reason == "temperature"  # default 1.0 > 0.5
    assert plan(req(params={"n": 2}), reply(), ON).reason == "n"


def test_partition_separates_tenant_model_params_history() -> None:
    base = plan(req(), reply(), ON).partition
    assert plan(req(headers={"x-tenant-id": "t2"}), reply(), ON).partition != base
    assert plan(req(), reply("beta"), ON).partition != base
    assert plan(req(params={"max_tokens": 5}), reply(), ON).partition != base
    assert plan(req(params={"tools": [{"type": "function"}]}), reply(), ON).partition != base
    assert (
        plan(req(params={"response_format": {"type": "json_object"}}), reply(), ON).partition
        != base
    )
    history = [Message(role="user", content="hi"), Message(role="assistant", content="hello")]
    longer = req(
        messages=[*history, Message(role="user", content="What is the capital of France?")]
    )
    assert plan(longer, reply(), ON).partition != base
    # the question itself is not part of the key (the embedding compares it), nor is streaming
    assert plan(req("Name France's capital"), reply(), ON).partition == base
    assert plan(req(params={"temperature": 0, "stream": True}), reply(), ON).partition == base


def test_fingerprint_counts_injected_system_prompt() -> None:
    r2 = reply()
    r2.system_prompt = "You are a historian."
    assert fingerprint(req(), r2) != fingerprint(req(), reply())


def test_storable() -> None:
    a = StoredAnswer(content="Paris", finish_reason="stop")
    assert storable(a, ON) == ""
    assert storable(StoredAnswer(content="Par", finish_reason="length"), ON) == "truncated"
    cfg = CacheConfig(enabled=True, store_truncated=True, max_answer_bytes=4)
    assert storable(StoredAnswer(content="Par", finish_reason="length"), cfg) == ""
    assert storable(a, cfg) == "too_large"
    assert storable(StoredAnswer(content="x", finish_reason="tool_calls"), ON) == "finish_reason"

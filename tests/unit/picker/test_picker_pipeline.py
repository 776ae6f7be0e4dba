"""The whole decision (``schedule``), the plan builder's errors, and the prefix index."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pointsman.configfile import ConfigError
from pointsman.v1 import PickRequest, PickStatus
from pointsman_picker.config import PickerConfig
from pointsman_picker.core.framework import Assigned, PrefixStored
from pointsman_picker.core.pipeline import PoolPlan, schedule
from pointsman_picker.core.prefix import PrefixIndex, block_hashes
from pointsman_picker.core.request import priority_of, to_request
from pointsman_picker.plan import build_plans
from tests.unit.picker.conftest import NOW, cycle, ep


def plan(**picker: Any) -> PoolPlan:
    return build_plans(PickerConfig.model_validate(picker)).default


# --- schedule ----------------------------------------------------------------------------------


def test_ok_orders_best_first_and_records_updates() -> None:
    eps = [ep("a", waiting=4), ep("b", waiting=0), ep("c", waiting=2)]
    d = schedule(plan(), cycle("x" * 200, max_endpoints=3), eps)
    assert d.status is PickStatus.OK
    assert d.endpoints == ["b", "c", "a"]
    assert Assigned("r1", "m", "b", NOW) in d.updates
    assert any(isinstance(u, PrefixStored) and u.endpoint == "b" for u in d.updates)


def test_max_endpoints_limits_fallbacks() -> None:
    eps = [ep(f"e{i}") for i in range(5)]
    assert len(schedule(plan(), cycle(max_endpoints=2), eps).endpoints) == 2


def test_subset_hint_is_honoured() -> None:
    eps = [ep("a"), ep("b", waiting=9)]
    d = schedule(plan(), cycle(subset=frozenset({"b"})), eps)
    assert d.endpoints == ["b"]
    d = schedule(plan(), cycle(subset=frozenset({"zzz"})), eps)
    assert d.status is PickStatus.NO_ENDPOINTS


def test_unhealthy_and_stale_never_picked() -> None:
    eps = [ep("sick", healthy=False), ep("old", scraped_at=NOW - 5), ep("ok", waiting=50)]
    assert schedule(plan(), cycle(), eps).endpoints == ["ok"]
    d = schedule(plan(), cycle(), eps[:2])
    assert d.status is PickStatus.NO_ENDPOINTS and d.updates == []


def test_prefix_affinity_beats_a_small_queue_difference() -> None:
    index = PrefixIndex()
    prompt = "system prompt shared by a group " * 20
    index.add("b", block_hashes(prompt, block_size=64, max_blocks=256, seed="m"), 1000)
    eps = [ep("a", waiting=0), ep("b", waiting=2), ep("c", waiting=2)]
    assert schedule(plan(), cycle(prompt, prefix=index), eps).endpoints[0] == "b"
    # ...but not a saturated endpoint's huge queue and full KV
    eps = [ep("a", waiting=0), ep("b", waiting=40, kv_usage=0.99), ep("c", waiting=2)]
    assert schedule(plan(), cycle(prompt, prefix=index), eps).endpoints[0] == "a"


SATURATED = [ep("a", waiting=9), ep("b", kv_usage=0.95), ep("c", healthy=False)]


@pytest.mark.parametrize(
    ("endpoints", "priority", "status"),
    [
        (SATURATED, -1, PickStatus.SHED),
        (SATURATED, 0, PickStatus.OK),  # not sheddable: still routed
        ([*SATURATED, ep("d", waiting=1)], -1, PickStatus.OK),  # one has room
        ([ep("stale", scraped_at=NOW - 9)], -1, PickStatus.SHED),
        ([ep("stale", scraped_at=NOW - 9)], 0, PickStatus.NO_ENDPOINTS),
    ],
)
def test_shedding(endpoints: list[Any], priority: int, status: PickStatus) -> None:
    d = schedule(plan(), cycle(priority=priority), endpoints)
    assert d.status is status
    if status is PickStatus.SHED:
        assert d.reason == "saturated" and d.updates == []


def test_saturation_thresholds_are_configurable() -> None:
    p = plan(saturation={"queue_depth_threshold": 20, "kv_cache_util_threshold": 0.99})
    assert schedule(p, cycle(priority=-1), SATURATED).status is PickStatus.OK


def test_prefill_decode_roles() -> None:
    eps = [
        ep("p1", labels={"role": "prefill"}, waiting=3),
        ep("p2", labels={"role": "prefill"}),
        ep("d1", labels={"role": "decode"}),
        ep("d2", labels={"role": "decode"}, waiting=5),
    ]
    d = schedule(plan(), cycle("hello " * 50), eps)
    assert d.endpoints[0] == "d1"
    assert set(d.endpoints) <= {"d1", "d2"}
    assert d.prefill == "p2"
    prefill_blocks = [u for u in d.updates if isinstance(u, PrefixStored) and u.endpoint == "p2"]
    assert prefill_blocks, "the prefill endpoint now holds the prompt's blocks"
    # short prompts stay on the decode endpoint when a threshold is set
    d = schedule(plan(pd_threshold_bytes=10_000), cycle("hello " * 50), eps)
    assert d.prefill is None and d.endpoints[0] == "d1"


def test_pool_without_prefill_role_is_not_disaggregated() -> None:
    d = schedule(plan(), cycle("x" * 100), [ep("a", labels={"role": "decode"}), ep("b")])
    assert d.prefill is None


def test_debug_scores() -> None:
    d = schedule(plan(), cycle("x", debug=True), [ep("a"), ep("b", waiting=3)])
    assert d.scores["a"] > d.scores["b"]
    assert d.scores["a/queue-scorer"] == 1.0
    assert schedule(plan(), cycle("x"), [ep("a")]).scores == {}


# --- request / priority ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, (0, None)),
        ({"x-llm-d-inference-objective": "batch"}, (-1, "batch")),
        ({"x-llm-d-inference-objective": "unknown"}, (0, "unknown")),
        ({"x-pointsman-priority": "-5"}, (-5, None)),
        ({"x-pointsman-priority": "7", "x-llm-d-inference-objective": "batch"}, (7, "batch")),
        ({"x-pointsman-priority": "junk", "x-llm-d-inference-objective": "batch"}, (-1, "batch")),
        ({"x-gateway-inference-objective": "critical"}, (10, "critical")),
        (
            {"x-gateway-inference-objective": "critical", "x-llm-d-inference-objective": "batch"},
            (10, "critical"),
        ),
    ],
)
def test_priority(headers: dict[str, str], expected: tuple[int, str | None]) -> None:
    assert priority_of(headers, {"batch": -1, "critical": 10}) == expected


def test_to_request_maps_adapters_and_headers() -> None:
    pick = PickRequest(
        request_id="r",
        model="sql-lora",
        subset=["a:1"],
        headers={"x-session-id": "s", "x-pointsman-debug": "1"},
        prompt="p",
    )
    req = to_request(pick, adapters={"sql-lora": "llama"}, objectives={})
    assert (req.pool, req.adapter, req.session, req.debug) == ("llama", "sql-lora", "s", True)
    assert req.subset == frozenset({"a:1"})
    base = to_request(PickRequest(request_id="r", model="llama"), adapters={}, objectives={})
    assert base.adapter is None and base.session is None


# --- plan building: errors name the key ------------------------------------------------------


@pytest.mark.parametrize(
    ("picker", "message"),
    [
        (
            {"profiles": {"p": [{"plugin": "queue_scorer", "weight": 1}]}},
            "picker.profiles.p[0].plugin: unknown plugin 'queue_scorer'; "
            "did you mean 'queue-scorer'?",
        ),
        (
            {"plugins": [{"type": "prefix-cache-scorer", "parameters": {"blok_size": 3}}]},
            "picker.plugins[0].parameters.blok_size: Unexpected keyword argument; "
            "did you mean 'block_size'?",
        ),
        (
            {"plugins": [{"type": "prefix-cache-scorer", "parameters": {"blockSize": 0}}]},
            "picker.plugins[0].parameters.blockSize",
        ),
        (
            {"plugins": [{"type": "prefix-cache-scorrer"}]},
            "picker.plugins[0]: unknown plugin type 'prefix-cache-scorrer'; "
            "did you mean 'prefix-cache-scorer'?",
        ),
        (
            {"pools": {"m": {"profile": "defualt"}}},
            "picker.pools.m.profile: unknown profile 'defualt'; did you mean 'default'?",
        ),
        (
            {"profiles": {"p": [{"plugin": "max-score-picker", "weight": 2}]}},
            "picker.profiles.p[0].weight: only scorers take a weight",
        ),
        (
            {"profiles": {"p": ["random-picker", "max-score-picker"]}},
            "picker.profiles.p: more than one picker",
        ),
    ],
)
def test_config_errors_name_the_key(picker: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_plans(PickerConfig.model_validate(picker))
    assert message in str(info.value)


def test_llm_d_camel_case_parameters_and_named_instances() -> None:
    cfg = PickerConfig.model_validate(
        {
            "plugins": [
                {"type": "prefix-cache-scorer", "name": "px", "parameters": {"blockSize": 16}},
            ],
            "profiles": {"mine": [{"plugin": "px", "weight": 5}, "health-filter"]},
            "pools": {"m": {"profile": "mine"}},
        }
    )
    plans = build_plans(cfg)
    prof = plans.for_pool("m").profile
    assert prof.scorers[0].name == "px" and prof.scorers[0].weight == 5
    assert prof.scorers[0].scorer.block_size == 16  # type: ignore[attr-defined]
    assert len(prof.filters) == 1
    assert plans.for_pool("other").profile.name == "default"


def test_default_profile_weights() -> None:
    prof = plan().profile
    assert {s.name: s.weight for s in prof.scorers} == {
        "queue-scorer": 2,
        "kv-cache-utilization-scorer": 2,
        "prefix-cache-scorer": 3,
    }


# --- prefix index ------------------------------------------------------------------------------


def test_block_hashes_chain() -> None:
    a = block_hashes("aaaabbbbcccc", block_size=4, max_blocks=10)
    b = block_hashes("XXXXbbbbcccc", block_size=4, max_blocks=10)
    assert len(a) == 3 and a[0] != b[0] and a[1] != b[1], "a block's hash depends on its prefix"
    assert block_hashes("aaaabbbbcc", block_size=4, max_blocks=10) == a[:2]
    assert block_hashes("aaaabbbbcccc", block_size=4, max_blocks=2) == a[:2]


def test_index_lru_and_match() -> None:
    idx = PrefixIndex()
    h = block_hashes("abcdefghijkl", block_size=2, max_blocks=10)  # 6 blocks
    idx.add("a", h[:4], capacity=100)
    idx.add("b", h, capacity=100)
    assert idx.match(h) == {"a": 4, "b": 6}
    idx.add("b", (11, 12, 13), capacity=4)  # evicts b's oldest blocks
    assert idx.blocks("b") == 4
    assert idx.match(h) == {"a": 4}
    idx.remove_endpoint("a")
    assert idx.match(h) == {}


@settings(max_examples=80, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c", "d"]),
            st.integers(0, 2),  # which prefix family
            st.integers(0, 12),  # how many blocks
            st.integers(1, 20),  # LRU capacity
            st.booleans(),  # remove the endpoint afterwards
        ),
        max_size=25,
    ),
    query=st.tuples(st.integers(0, 2), st.integers(0, 14)),
)
def test_index_match_equals_naive_model(
    ops: list[tuple[str, int, int, int, bool]], query: tuple[int, int]
) -> None:
    """The bit-mask index answers as a plain per-endpoint LRU would."""
    idx = PrefixIndex()
    naive: dict[str, list[int]] = {}
    for endpoint, family, n, cap, remove in ops:
        hashes = [family * 1000 + i for i in range(n)]
        idx.add(endpoint, hashes, cap)
        lru = naive.setdefault(endpoint, [])
        for h in hashes:
            if h in lru:
                lru.remove(h)
            lru.append(h)
        del lru[: max(0, len(lru) - cap)]
        if remove:
            idx.remove_endpoint(endpoint)
            naive.pop(endpoint)
    q = [query[0] * 1000 + i for i in range(query[1])]
    expected = {}
    for endpoint, lru in naive.items():
        depth = 0
        while depth < len(q) and q[depth] in lru:
            depth += 1
        if depth:
            expected[endpoint] = depth
    assert dict(idx.match(q)) == expected

"""Each built-in plugin, table-driven, plus the invariants every plugin must keep."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pointsman_picker.core.framework import Filter, Picker, PrefixStored, Scorer, Session
from pointsman_picker.core.plugins.filters import HealthFilter, LabelFilter, StalenessFilter
from pointsman_picker.core.plugins.load import (
    KVCacheUtilizationScorer,
    QueueScorer,
    RunningRequestsSizeScorer,
)
from pointsman_picker.core.plugins.lora import LoraAffinityScorer
from pointsman_picker.core.plugins.pickers import (
    MaxScorePicker,
    RandomPicker,
    WeightedRandomPicker,
)
from pointsman_picker.core.plugins.prefix_cache import PrefixCacheScorer
from pointsman_picker.core.plugins.session import SessionAffinityScorer
from pointsman_picker.core.prefix import PrefixIndex
from pointsman_picker.core.registry import REGISTRY
from pointsman_picker.core.types import Endpoint
from tests.unit.picker.conftest import NOW, cycle, ep


def addrs(eps: list[Endpoint]) -> list[str]:
    return [e.address for e in eps]


# --- filters ---------------------------------------------------------------------------------


def test_health_filter() -> None:
    eps = [ep("a"), ep("b", healthy=False)]
    assert addrs(HealthFilter().filter(cycle(), eps)) == ["a"]


def test_staleness_filter() -> None:
    eps = [ep("a", scraped_at=NOW - 0.1), ep("b", scraped_at=NOW - 0.3)]
    assert addrs(StalenessFilter(max_age_ms=200).filter(cycle(), eps)) == ["a"]


@pytest.mark.parametrize(("allows_no_label", "expected"), [(False, ["d"]), (True, ["d", "none"])])
def test_label_filter(allows_no_label: bool, expected: list[str]) -> None:
    eps = [ep("p", labels={"role": "prefill"}), ep("d", labels={"role": "decode"}), ep("none")]
    f = LabelFilter(label="role", valid_values=("decode",), allows_no_label=allows_no_label)
    assert addrs(f.filter(cycle(), eps)) == expected


# --- scorers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scorer", "endpoints", "expected"),
    [
        (QueueScorer(), [ep("a", waiting=0), ep("b", waiting=10), ep("c", waiting=5)], [1, 0, 0.5]),
        (QueueScorer(), [ep("a", waiting=3), ep("b", waiting=3)], [1, 1]),
        (QueueScorer(), [ep("a", waiting=0, pending=4), ep("b", waiting=2)], [0, 1]),
        (KVCacheUtilizationScorer(), [ep("a", kv_usage=0.25), ep("b", kv_usage=1.0)], [0.75, 0]),
        (RunningRequestsSizeScorer(), [ep("a", running=2), ep("b", running=6)], [1, 0]),
        (RunningRequestsSizeScorer(), [ep("a", running=2, pending=4), ep("b", running=4)], [0, 1]),
    ],
)
def test_load_scorers(scorer: Scorer, endpoints: list[Endpoint], expected: list[float]) -> None:
    assert scorer.score(cycle(), endpoints) == pytest.approx(expected)


def test_prefix_scorer_scores_matched_fraction_and_learns() -> None:
    scorer = PrefixCacheScorer(block_size=4, max_prefix_blocks_to_match=100)
    index = PrefixIndex()
    prompt = "abcdefghijklmnop"  # 4 blocks
    c = cycle(prompt, prefix=index)
    assert scorer.score(c, [ep("a"), ep("b")]) == [0, 0]
    (update,) = scorer.routed(c, ep("a"))
    assert isinstance(update, PrefixStored)
    assert update.endpoint == "a" and len(update.hashes) == 4
    index.add("a", update.hashes, update.capacity)
    # same first two blocks, different rest: half the blocks match
    c2 = cycle("abcdefghXXXXXXXX", prefix=index)
    assert scorer.score(c2, [ep("a"), ep("b")]) == [0.5, 0]
    assert scorer.score(cycle(prompt, prefix=index), [ep("a")]) == [1.0]


def test_prefix_scorer_short_prompt_scores_zero() -> None:
    scorer = PrefixCacheScorer(block_size=64)
    assert scorer.score(cycle("short"), [ep("a")]) == [0.0]
    assert scorer.routed(cycle("short"), ep("a")) == []


def test_prefix_hashes_depend_on_model() -> None:
    """A LoRA adapter's KV differs from its base model's: no cross-model affinity."""
    scorer = PrefixCacheScorer(block_size=4)
    assert scorer.hashes(cycle("abcdefgh", model="x")) != scorer.hashes(
        cycle("abcdefgh", model="y")
    )


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        (ep("loaded", lora_running=("ad",), max_lora=2), 1.0),
        (ep("waiting", lora_waiting=("ad",), max_lora=1), 1.0),
        (ep("room", lora_running=("other",), max_lora=2), 0.5),
        (ep("unknown-limit", lora_running=("other",)), 0.5),
        (ep("full", lora_running=("x", "y"), max_lora=2), 0.0),
    ],
)
def test_lora_affinity(endpoint: Endpoint, expected: float) -> None:
    c = cycle(adapter="ad")
    assert LoraAffinityScorer().score(c, [endpoint]) == [expected]


def test_lora_affinity_base_model_is_neutral() -> None:
    assert LoraAffinityScorer().score(cycle(), [ep("a"), ep("b", max_lora=1)]) == [1, 1]


def test_session_affinity() -> None:
    scorer = SessionAffinityScorer(ttl_s=60)
    sessions = {"s1": Session("b", NOW - 10), "old": Session("a", NOW - 100)}
    eps = [ep("a"), ep("b")]
    assert scorer.score(cycle(session="s1", sessions=sessions), eps) == [0, 1]
    assert scorer.score(cycle(session="old", sessions=sessions), eps) == [0, 0]
    assert scorer.score(cycle(session="new", sessions=sessions), eps) == [0, 0]
    assert scorer.score(cycle(sessions=sessions), eps) == [0, 0]
    (bound,) = scorer.routed(cycle(session="new"), ep("a"))
    assert bound.endpoint == "a" and bound.session == "new"  # type: ignore[union-attr]
    assert scorer.routed(cycle(), ep("a")) == []


# --- pickers ---------------------------------------------------------------------------------


def test_max_score_picker_orders_by_score() -> None:
    eps = [ep("a"), ep("b"), ep("c")]
    assert addrs(MaxScorePicker().pick(cycle(), eps, [0.1, 0.9, 0.5], 3)) == ["b", "c", "a"]
    assert addrs(MaxScorePicker().pick(cycle(), eps, [0.1, 0.9, 0.5], 1)) == ["b"]


def test_max_score_picker_breaks_ties_at_random() -> None:
    eps = [ep(f"e{i}") for i in range(4)]
    firsts = Counter(
        MaxScorePicker().pick(cycle(seed=s), eps, [1.0] * 4, 1)[0].address for s in range(400)
    )
    assert set(firsts) == {"e0", "e1", "e2", "e3"}
    assert min(firsts.values()) > 50


def test_weighted_random_picker_follows_weights() -> None:
    eps = [ep("a"), ep("b"), ep("zero")]
    firsts = Counter(
        WeightedRandomPicker().pick(cycle(seed=s), eps, [3.0, 1.0, 0.0], 1)[0].address
        for s in range(1000)
    )
    assert firsts["zero"] == 0
    assert 650 < firsts["a"] < 850


def test_random_picker_returns_all_once() -> None:
    eps = [ep("a"), ep("b"), ep("c")]
    assert sorted(addrs(RandomPicker().pick(cycle(), eps, [0, 0, 0], 5))) == ["a", "b", "c"]


# --- invariants over every registered plugin -------------------------------------------------

endpoint_st = st.builds(
    Endpoint,
    address=st.sampled_from(["a:1", "b:2", "c:3", "d:4", "e:5"]),
    healthy=st.booleans(),
    scraped_at=st.floats(NOW - 3, NOW),
    waiting=st.integers(0, 500),
    running=st.integers(0, 500),
    kv_usage=st.floats(-0.5, 1.5),
    pending=st.integers(0, 50),
    labels=st.dictionaries(st.sampled_from(["role"]), st.sampled_from(["prefill", "decode"])),
    lora_running=st.lists(st.sampled_from(["ad", "x", "y"]), max_size=3).map(tuple),
    max_lora=st.integers(0, 3),
)

PLUGINS = [
    cls(label="role", valid_values=("decode",)) if cls is LabelFilter else cls()
    for cls in REGISTRY.values()
]


@settings(max_examples=60, deadline=None)
@given(
    endpoints=st.lists(endpoint_st, max_size=8),
    prompt=st.text(max_size=300),
    adapter=st.sampled_from([None, "ad"]),
    session=st.sampled_from([None, "s"]),
)
def test_plugin_invariants(
    endpoints: list[Endpoint], prompt: str, adapter: str | None, session: str | None
) -> None:
    index = PrefixIndex()
    scorer = PrefixCacheScorer(block_size=8)
    for i, e in enumerate(endpoints[:3]):
        index.add(e.address, scorer.hashes(cycle(prompt[: 8 * (i + 1)])), 100)
    sessions = {"s": Session("b:2", NOW)}
    c = cycle(prompt, prefix=index, sessions=sessions, adapter=adapter, session=session)
    for plugin in PLUGINS:
        if isinstance(plugin, Filter):
            kept = plugin.filter(c, endpoints)
            assert all(any(k is e for e in endpoints) for k in kept), plugin
            assert len(kept) <= len(endpoints)
        if isinstance(plugin, Scorer):
            scores = plugin.score(c, endpoints)
            assert len(scores) == len(endpoints)
            assert all(0.0 <= s <= 1.0 for s in scores), (plugin, scores)
        if isinstance(plugin, Picker):
            picked = plugin.pick(c, endpoints, [0.5] * len(endpoints), 3)
            assert len(picked) == min(3, len(endpoints))
            assert all(any(p is e for e in endpoints) for p in picked)

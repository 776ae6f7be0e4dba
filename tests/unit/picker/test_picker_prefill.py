"""``prefill-scorer`` and ``saturation.max_prefill_ms``: routing by the prompt work ahead of a
request (the predictor's fluid prefill backlog) plus its own uncached prompt, and holding a
request while every endpoint's backlog is above a bound."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import pytest

from pointsman.v1 import EndpointMetrics, PickReply, PickRequest, PickStatus, PoolSnapshot
from pointsman_picker.config import PickerConfig
from pointsman_picker.core.framework import PrefixStored
from pointsman_picker.core.latency import Backlog, LatencyModel
from pointsman_picker.core.pipeline import PoolPlan, Profile, Saturation, has_room, saturated
from pointsman_picker.core.plugins.latency import PrefillScorer, prefill_end
from pointsman_picker.core.plugins.pickers import MaxScorePicker
from pointsman_picker.core.plugins.prefix_cache import PrefixCacheScorer
from pointsman_picker.flow import FlowControl, next_sleep
from pointsman_picker.plan import build_plans
from pointsman_picker.scheduler import Scheduler
from pointsman_picker.state import endpoint_view
from pointsman_picker.telemetry import Telemetry
from tests.unit.picker.conftest import NOW, cycle, ep

#: About 1000 tokens (4 UTF-8 bytes a token).
PROMPT = "x" * 4000


class _Holds:
    """A prefix index in which ``address`` holds every block of any prompt."""

    def __init__(self, address: str) -> None:
        self.address = address

    def match(self, hashes: Sequence[int]) -> Mapping[str, int]:
        return {self.address: len(hashes)}


def _cycle(backlog: dict[str, float], holder: str | None = None):  # type: ignore[no-untyped-def]
    c = cycle(PROMPT, prefix=_Holds(holder) if holder else None)
    c.latency = LatencyModel()
    c.backlog = lambda address: backlog.get(address, 0.0)
    return c


def test_prefill_end_is_the_backlog_plus_the_uncached_prompt() -> None:
    c = _cycle({"a:1": 2.0, "b:1": 0.5}, holder="b:1")
    assert prefill_end(c, ep("a:1")) == pytest.approx(3.0)  # 2.0 ahead + 1.0 of its own
    assert prefill_end(c, ep("b:1")) == pytest.approx(0.5)  # b caches the whole prompt


@pytest.mark.parametrize(
    ("backlog", "holder", "expected"),
    [
        # the least work -> 1, twice the work -> 0.5
        ({"a:1": 0.0, "b:1": 1.0, "c:1": 3.0}, None, [1.0, 0.5, 0.25]),
        # a cache hit is less work: b's longer backlog is still the sooner start and end
        ({"a:1": 0.0, "b:1": 0.5}, "b:1", [0.5, 1.0]),
        # ... until its backlog exceeds the prompt it would spare
        ({"a:1": 0.0, "b:1": 2.0}, "b:1", [1.0, 0.5]),
        # nothing ahead anywhere: all equal
        ({}, None, [1.0, 1.0]),
    ],
)
def test_scorer_prefers_the_soonest_prefill_end(
    backlog: dict[str, float], holder: str | None, expected: list[float]
) -> None:
    eps = [ep(a) for a in ("a:1", "b:1", "c:1")[: len(expected)]]
    scores = PrefillScorer().score(_cycle(backlog, holder), eps)
    assert scores == pytest.approx(expected)
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_scorer_is_neutral_without_the_predictor() -> None:
    c = cycle(PROMPT)
    c.backlog = lambda address: 5.0 if address == "a:1" else 0.0
    assert PrefillScorer().score(c, [ep("a:1"), ep("b:1")]) == [1.0, 1.0]
    assert PrefillScorer().score(_cycle({}), []) == []


def test_a_full_cache_hit_on_an_idle_endpoint_does_not_divide_by_zero() -> None:
    scores = PrefillScorer().score(_cycle({"a:1": 1.0}, holder="b:1"), [ep("a:1"), ep("b:1")])
    assert scores[1] == 1.0
    assert 0.0 <= scores[0] < 0.01


def _plan(max_prefill_ms: float | None) -> PoolPlan:
    profile = Profile("p", (), (), MaxScorePicker())
    return PoolPlan(profile, saturation=Saturation(max_prefill_ms=max_prefill_ms))


@pytest.mark.parametrize(
    ("bound", "prefill_ms", "room"),
    [(None, 10_000.0, True), (100.0, 100.0, True), (100.0, 100.5, False), (0.0, 0.0, True)],
)
def test_max_prefill_ms_fills_an_endpoint(
    bound: float | None, prefill_ms: float, room: bool
) -> None:
    assert has_room(ep("a:1", prefill_ms=prefill_ms), NOW, _plan(bound)) is room


def test_pool_is_saturated_only_when_every_backlog_is_over_the_bound() -> None:
    plan = _plan(100.0)
    busy, idle = ep("a:1", prefill_ms=500.0), ep("b:1", prefill_ms=20.0)
    assert not saturated([busy, idle], NOW, plan)
    assert saturated([busy, ep("b:1", prefill_ms=101.0)], NOW, plan)


def test_prefill_profile_is_built_in() -> None:
    plans = build_plans(PickerConfig(profile="prefill"))
    names = [w.name for w in plans.for_pool("m").profile.scorers]
    assert names[0] == "prefill-scorer"


def test_backlog_queued_is_the_work_ahead_of_the_newest_prompt() -> None:
    b = Backlog()
    assert b.queued("m", "a", 0.0, 1.0) == 0.0
    b.add("m", "a", 2.0, 0.0, 1.0)  # 2 s of work at 1k tokens/s: the prompt in progress
    assert b.queued("m", "a", 0.0, 1.0) == 0.0
    b.add("m", "a", 1.0, 0.0, 1.0)  # a second one queued behind it
    assert b.at("m", "a", 0.0, 1.0) == pytest.approx(3.0)
    assert b.queued("m", "a", 0.0, 1.0) == pytest.approx(2.0)
    assert b.queued("m", "a", 1.5, 1.0) == pytest.approx(0.5)
    assert b.queued("m", "a", 2.5, 1.0) == 0.0  # the newest is in progress now
    assert b.at("m", "a", 2.5, 1.0) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("now", "wake_at", "sleep"),
    [(10.0, None, 0.05), (10.0, 10.02, 0.02), (10.0, 11.0, 0.05), (10.0, 9.0, 0.001)],
)
def test_tick_sleeps_until_the_predicted_room_within_its_interval(
    now: float, wake_at: float | None, sleep: float
) -> None:
    assert next_sleep(0.05, now, wake_at) == pytest.approx(sleep)


def _two_endpoints(**cfg: object) -> tuple[Scheduler, list[float]]:
    clock = [1000.0]
    config = PickerConfig.model_validate({"replica_id": "t", "profile": "prefill", **cfg})
    s = Scheduler(config, Telemetry(), clock=lambda: clock[0], rng=random.Random(0))
    s.on_snapshot(
        PoolSnapshot(
            pool="m", collector="t", published_at=clock[0],
            endpoints=[EndpointMetrics(address=a, scraped_at=clock[0]) for a in ("a:1", "b:1")],
        )
    )  # fmt: skip
    return s, clock


def test_scheduler_fills_endpoints_by_queued_prompt_work_and_predicts_when_one_frees() -> None:
    s, clock = _two_endpoints(saturation={"max_prefill_ms": 0})
    assert s.saturated("m") is False
    assert s.room_at("m") == pytest.approx(clock[0])
    # prompts of about 1000 tokens (125 ms at the default 8000 tokens/s before the predictor
    # learnt a speed) go to the endpoint with the least work: one each, then one more each
    picked = [
        s.pick(PickRequest(request_id=f"r{i}", model="m", prompt=f"{i}" * 4000)).endpoints[0]
        for i in range(4)
    ]
    assert sorted(picked) == ["a:1", "a:1", "b:1", "b:1"]
    views = s.views("m")
    assert views is not None
    # on each, the second prompt waits behind the first: 125 ms of work queued
    assert [v.prefill_ms for v in views] == pytest.approx([125.0, 125.0])
    assert s.saturated("m") is True
    assert s.room_at("m") == pytest.approx(clock[0] + 0.125)
    clock[0] += 0.13  # the first prompts are done: the second ones are in progress
    assert s.saturated("m") is False


def test_room_at_is_none_without_the_bound_or_the_predictor() -> None:
    s, _ = _two_endpoints()
    assert s.room_at("m") is None
    s, _ = _two_endpoints(saturation={"max_prefill_ms": 0}, latency={"enabled": False})
    assert s.room_at("m") is None
    assert s.room_at("unknown") is None


async def test_flow_control_holds_while_prompts_are_queued_and_wakes_when_one_frees() -> None:
    s, clock = _two_endpoints(saturation={"max_prefill_ms": 0})
    flow = FlowControl(s, s.config.flow_control, clock=lambda: clock[0])
    assert flow.wake_at() is None  # nobody waits

    def pick(i: int) -> PickRequest:
        return PickRequest(request_id=f"r{i}", model="m", prompt=f"{i}" * 4000, max_wait_ms=5000)

    for i in range(4):
        assert isinstance(flow.try_pick(pick(i)), PickReply)
    waiter = flow.try_pick(pick(4))
    assert not isinstance(waiter, PickReply)  # two prompts on each endpoint: it waits
    assert flow.now() == clock[0]
    assert flow.wake_at() == pytest.approx(clock[0] + 0.125)
    clock[0] += 0.13
    assert flow.dispatch_all() == 1
    reply = await flow.wait(waiter)
    assert reply.status is PickStatus.OK


@pytest.mark.parametrize(
    ("kv_tokens", "engine_capacity", "blocks"),
    [
        (0, True, 31250),  # not reported: the configured size
        (49_152, True, 3072),  # 49,152 tokens x 4 bytes / 64-byte blocks
        (49_152, False, 31250),  # off: the configured size
        (10_000_000, True, 31250),  # never more than the configured size
        (1, True, 1),  # at least one block
    ],
)
def test_prefix_index_is_sized_to_the_engines_kv_cache(
    kv_tokens: int, engine_capacity: bool, blocks: int
) -> None:
    scorer = PrefixCacheScorer(engine_capacity=engine_capacity)
    assert scorer.capacity(ep("a:1", kv_tokens=kv_tokens)) == blocks
    (stored,) = scorer.routed(cycle("y" * 640), ep("a:1", kv_tokens=kv_tokens))
    assert isinstance(stored, PrefixStored)
    assert stored.capacity == blocks


def test_endpoint_view_carries_the_kv_capacity_the_collector_read() -> None:
    m = EndpointMetrics(address="a:1", block_size=16, num_blocks=3072)
    assert endpoint_view(m, 0).kv_tokens == 49_152
    assert endpoint_view(EndpointMetrics(address="a:1"), 0).kv_tokens == 0


def test_an_index_as_large_as_the_cache_forgets_what_the_engine_evicted() -> None:
    """Through the scheduler: with the endpoints' KV size known, a prompt routed long ago (many
    prompts since, more than the cache holds) no longer counts as cached there."""
    s = Scheduler(PickerConfig(replica_id="t"), Telemetry(), clock=lambda: 1000.0)
    s.on_snapshot(
        PoolSnapshot(
            pool="m", collector="t", published_at=1000.0,
            endpoints=[EndpointMetrics(address="a:1", scraped_at=1000.0, block_size=16,
                                       num_blocks=64)],  # 1024 tokens: 64 blocks of 64 bytes
        )
    )  # fmt: skip
    first = "first " + "z" * 2000
    s.pick(PickRequest(request_id="r0", model="m", prompt=first))
    hashes = PrefixCacheScorer().hashes(cycle(first))  # the same blocks as the pick's (model m)
    assert s.affinity.prefix("m").match(hashes).get("a:1", 0) > 0
    for i in range(3):  # 3 x 2000 bytes: more than the 4096 bytes the index keeps
        s.pick(PickRequest(request_id=f"r{i + 1}", model="m", prompt=f"other {i} " + "w" * 2000))
    assert s.affinity.prefix("m").match(hashes).get("a:1", 0) == 0

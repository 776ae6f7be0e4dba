"""The latency predictor, the SLO plugins, the SLO of a request and the joint model decision."""

from __future__ import annotations

import random

import msgspec
import pytest

from pointsman.v1 import (
    CompletionEvent,
    EndpointMetrics,
    ModelCandidate,
    PickRequest,
    PickStatus,
    PoolSnapshot,
)
from pointsman_picker.config import PickerConfig
from pointsman_picker.core import joint
from pointsman_picker.core.framework import Update
from pointsman_picker.core.latency import RLS, Backlog, LatencyModel, LatencySample, features
from pointsman_picker.core.plugins.latency import (
    SLO_UNATTAINABLE,
    LatencyScorer,
    SloAdmission,
    SloHeadroomFilter,
)
from pointsman_picker.core.slo import slo_of
from pointsman_picker.plan import build_plans
from pointsman_picker.scheduler import Scheduler
from pointsman_picker.telemetry import Telemetry
from tests.unit.picker.conftest import cycle, ep

# --- the predictor --------------------------------------------------------------------------


def _truth_ttft(x: tuple[float, ...]) -> float:
    # 20 ms base, 150 ms per 1000 new tokens, 10 per 1000 cached, 40 per queued, 3 per running,
    # 50 at full KV.
    return 20 + 150 * x[1] + 10 * x[2] + 40 * x[3] + 3 * x[4] + 50 * x[5]


def _truth_tpot(x: tuple[float, ...]) -> float:
    return 8 + 0.5 * x[4] + 10 * x[5]


def _synthetic(rng: random.Random) -> tuple[float, ...]:
    prompt = rng.uniform(50, 4000)
    return features(
        prompt_tokens=prompt,
        cached_tokens=rng.uniform(0, prompt),
        queue=rng.randint(0, 12),
        running=rng.randint(0, 32),
        kv_usage=rng.random(),
    )


def test_rls_converges_on_synthetic_data_with_noise() -> None:
    rng = random.Random(7)
    model = RLS(lam=0.999)
    for _ in range(600):
        x = _synthetic(rng)
        model.update(x, _truth_ttft(x) + rng.gauss(0, 2.0))
    errors = []
    for _ in range(200):
        x = _synthetic(rng)
        errors.append(abs(model.predict(x) - _truth_ttft(x)) / _truth_ttft(x))
    assert sum(errors) / len(errors) < 0.05
    # The coefficients themselves are learnt, not just the fit: the queue costs ~40 ms.
    assert model.w[3] == pytest.approx(40, rel=0.1)


def test_model_learns_each_endpoint_apart_and_falls_back_to_the_pool() -> None:
    rng = random.Random(3)
    m = LatencyModel(forgetting=0.999, min_samples=8)
    x0 = features(prompt_tokens=1000, cached_tokens=0, queue=2, running=4, kv_usage=0.3)
    assert m.predict("p", "a:1", x0).ttft_ms is None  # nothing learnt: no prediction
    for _ in range(400):
        x = _synthetic(rng)
        m.learn(LatencySample("p", "a:1", x, _truth_ttft(x), _truth_tpot(x)))
        m.learn(LatencySample("p", "b:1", x, 3 * _truth_ttft(x), 2 * _truth_tpot(x)))
    fast, slow = m.predict("p", "a:1", x0), m.predict("p", "b:1", x0)
    assert fast.ttft_ms == pytest.approx(_truth_ttft(x0), rel=0.05)
    assert slow.ttft_ms == pytest.approx(3 * _truth_ttft(x0), rel=0.05)
    assert slow.tpot_ms == pytest.approx(2 * _truth_tpot(x0), rel=0.05)
    # An endpoint never seen gets the pool's model, somewhere between the two.
    new = m.predict("p", "c:1", x0).ttft_ms
    assert new is not None and fast.ttft_ms is not None and slow.ttft_ms is not None
    assert fast.ttft_ms < new < slow.ttft_ms


def test_model_follows_a_change_and_rejects_bad_samples() -> None:
    rng = random.Random(5)
    m = LatencyModel(forgetting=0.98, min_samples=1)
    for _ in range(300):
        x = _synthetic(rng)
        m.learn(LatencySample("p", "a:1", x, _truth_ttft(x)))
    for _ in range(400):  # the endpoint got twice as slow
        x = _synthetic(rng)
        m.learn(LatencySample("p", "a:1", x, 2 * _truth_ttft(x)))
    x0 = features(prompt_tokens=500, cached_tokens=0, queue=3, running=2, kv_usage=0.5)
    assert m.predict("p", "a:1", x0).ttft_ms == pytest.approx(2 * _truth_ttft(x0), rel=0.1)
    assert not m.learn(LatencySample("p", "a:1", (1.0, 2.0), 10.0))  # wrong shape
    assert not m.learn(LatencySample("p", "a:1", x0, float("nan")))
    assert not m.learn(LatencySample("p", "a:1", x0, None, -1.0))


def test_sample_travels_in_the_shared_state_union() -> None:
    s = LatencySample("p", "a:1", (1.0, 0.5, 0.0, 2.0, 1.0, 0.1), 12.5, None)
    data = msgspec.msgpack.encode([s])
    assert msgspec.msgpack.decode(data, type=list[Update]) == [s]


# --- the SLO of a request ---------------------------------------------------------------------


def test_slo_from_headers_llmd_names_and_objective() -> None:
    table = {"chat": (500.0, 40.0)}
    assert slo_of({"x-pointsman-slo-ttft-ms": "200"}, None, table) == (200.0, None)
    assert slo_of({"x-llm-d-slo-ttft-ms": "300", "x-llm-d-slo-tpot-ms": "20"}, None, {}) == (
        300.0,
        20.0,
    )
    # Ours win over llm-d's; the objective fills what the headers leave out.
    both = {"x-pointsman-slo-ttft-ms": "100", "x-llm-d-slo-ttft-ms": "900"}
    assert slo_of(both, "chat", table) == (100.0, 40.0)
    for bad in ("", "fast", "-5", "0", "nan", "inf"):
        assert slo_of({"x-pointsman-slo-ttft-ms": bad}, None, table) == (None, None)


# --- the plugins ----------------------------------------------------------------------------


def _taught(ttft_by_endpoint: dict[str, float]) -> LatencyModel:
    """A model where each endpoint's TTFT is ``factor * (50 + 30 * queue)`` ms."""
    m = LatencyModel(forgetting=0.999, min_samples=4)
    rng = random.Random(1)
    for _ in range(60):
        for address, factor in ttft_by_endpoint.items():
            q = rng.randint(0, 10)
            x = features(prompt_tokens=0.5, cached_tokens=0, queue=q, running=0, kv_usage=0.0)
            m.learn(LatencySample("m", address, x, factor * (50 + 30 * q), factor * 10.0))
    return m


def test_scorer_filter_and_admission_use_predictions() -> None:
    model = _taught({"a:1": 1.0, "b:1": 4.0})  # b is 4x slower: 200 ms with an empty queue
    eps = [ep("a:1", waiting=0), ep("b:1", waiting=0)]
    c = cycle("hi", slo_ttft_ms=150.0)
    c.latency = model
    assert [e.address for e in SloHeadroomFilter().filter(c, eps)] == ["a:1"]
    s = LatencyScorer().score(c, eps)
    assert s[0] > 0.6 and s[1] == 0.0
    assert SloAdmission().admit(c, eps) is None

    # With a queue of 10 on a (350 ms), neither meets 150 ms: refused, the filter keeps all.
    busy = [ep("a:1", waiting=10), ep("b:1", waiting=0)]
    c2 = cycle("hi", slo_ttft_ms=150.0)
    c2.latency = model
    assert SloAdmission().admit(c2, busy) == SLO_UNATTAINABLE
    assert len(SloHeadroomFilter().filter(c2, busy)) == 2
    # ... unless the request's priority is exempt.
    c3 = cycle("hi", slo_ttft_ms=150.0, priority=1)
    c3.latency = model
    assert SloAdmission(exempt_priority=1).admit(c3, busy) is None


def test_plugins_stay_neutral_without_slo_or_predictions() -> None:
    eps = [ep("a:1"), ep("b:1")]
    c = cycle("hi", slo_ttft_ms=1.0)  # no predictor at all
    assert SloAdmission().admit(c, eps) is None
    assert LatencyScorer().score(c, eps) == [1.0, 1.0]
    c2 = cycle("hi")  # a predictor, but no SLO: never refused; scored by predicted cost
    c2.latency = _taught({"a:1": 1.0, "b:1": 4.0})
    assert SloAdmission().admit(c2, eps) is None
    assert SloHeadroomFilter().filter(c2, eps) == eps
    fast, slow = LatencyScorer().score(c2, eps)
    assert fast == 1.0 and slow == pytest.approx(0.25, abs=0.05)  # 4x the predicted cost


# --- the joint decision (pure) ----------------------------------------------------------------


def test_joint_choice_trades_quality_against_latency() -> None:
    p = joint.Penalties()
    best = joint.Option("big", 0.9, ok=True, ttft_ms=100)
    second = joint.Option("small", 0.7, ok=True, ttft_ms=50)
    assert joint.choose([best, second], p) == (0, "best")
    saturated = joint.Option("big", 0.9, ok=True, saturated=True, ttft_ms=100)
    assert joint.choose([saturated, second], p) == (1, "saturated")
    missing = joint.Option("big", 0.9, ok=True, ttft_ms=900, meets_slo=False)
    assert joint.choose([missing, second], p) == (1, "slo")
    slow = joint.Option("big", 0.9, ok=True, ttft_ms=5000)  # 0.5 points of latency
    assert joint.choose([slow, second], p) == (1, "latency")
    down = joint.Option("big", 0.9, ok=False)
    assert joint.choose([down, second], p) == (1, "unavailable")
    # Too big a drop in quality is never taken, and nothing that can serve -> None.
    poor = joint.Option("tiny", 0.2, ok=True, ttft_ms=1)
    assert joint.choose([saturated, poor], p) == (0, "best")
    assert joint.choose([down, joint.Option("x", 0.8, ok=False)], p) is None
    # A zero penalty keeps the best model whatever its pool looks like.
    none = joint.Penalties(0, 0, 0, 0.5)
    assert joint.choose([saturated, second], none) == (0, "best")


# --- through the scheduler ------------------------------------------------------------------


def _snap(pool: str, now: float, **waiting: int) -> PoolSnapshot:
    return PoolSnapshot(
        pool=pool,
        collector="t",
        published_at=now,
        endpoints=[
            EndpointMetrics(address=a.replace("-", ":"), scraped_at=now, waiting=w)
            for a, w in waiting.items()
        ],
    )


def _scheduler(**cfg: object) -> tuple[Scheduler, list[Update]]:
    now = 1000.0
    config = PickerConfig.model_validate({"replica_id": "t", **cfg})
    s = Scheduler(config, Telemetry(), clock=lambda: now, rng=random.Random(0))
    sent: list[Update] = []
    s.sink = sent.extend
    return s, sent


def test_scheduler_learns_from_completions_and_shares_samples() -> None:
    s, sent = _scheduler(profile="slo-strict")
    s.on_snapshot(_snap("m", 1000.0, **{"a-1": 0}))
    for i in range(20):
        reply = s.pick(PickRequest(request_id=f"r{i}", model="m", prompt="x" * 400))
        assert reply.status is PickStatus.OK
        s.on_completion(
            CompletionEvent(
                request_id=f"r{i}", model="m", endpoint="a:1", status_code=200, stream=True,
                ttft_ms=80.0, tpot_ms=9.0,
            )
        )  # fmt: skip
    samples = [u for u in sent if isinstance(u, LatencySample)]
    assert len(samples) == 20 and s.latency is not None and s.latency.samples == 20
    # A second replica learns the same model from the shared samples alone.
    other, _ = _scheduler(profile="slo-strict")
    other.on_remote(samples)
    assert other.latency is not None and other.latency.samples == 20
    x = samples[0].features
    assert other.latency.predict("m", "a:1", x).ttft_ms == pytest.approx(80.0, rel=0.05)
    # A completion for a request this replica never picked, or a failed one, teaches nothing.
    s.on_completion(
        CompletionEvent(request_id="zz", model="m", endpoint="a:1", status_code=200,
                        stream=True, ttft_ms=1.0)
    )  # fmt: skip
    assert s.latency.samples == 20


def test_scheduler_refuses_an_slo_no_endpoint_meets() -> None:
    s, _ = _scheduler(profile="slo-strict")
    # scraped a second ago: r1, picked now, counts as pending (the endpoint is not idle after it)
    s.on_snapshot(_snap("m", 999.0, **{"a-1": 0}))
    assert s.latency is not None
    x = features(prompt_tokens=100, cached_tokens=0, queue=0, running=0, kv_usage=0.0)
    for _ in range(10):
        s.latency.learn(LatencySample("m", "a:1", x, 900.0, 30.0))
    ok = s.pick(PickRequest(request_id="r1", model="m", prompt="x" * 400))
    assert ok.status is PickStatus.OK
    tight = {"x-pointsman-slo-ttft-ms": "100"}
    shed = s.pick(PickRequest(request_id="r2", model="m", prompt="x" * 400, headers=tight))
    assert (shed.status, shed.reason) == (PickStatus.SHED, SLO_UNATTAINABLE)
    loose = {"x-llm-d-slo-ttft-ms": "5000"}
    fine = s.pick(PickRequest(request_id="r3", model="m", prompt="x" * 400, headers=loose))
    assert fine.status is PickStatus.OK
    # The default profile has no admission step: the same SLO is not enforced there.
    d, _ = _scheduler()
    d.on_snapshot(_snap("m", 1000.0, **{"a-1": 0}))
    assert d.pick(PickRequest(request_id="r4", model="m", headers=tight)).status is PickStatus.OK


def test_scheduler_moves_auto_to_the_second_model_when_the_best_pool_is_saturated() -> None:
    s, _ = _scheduler()
    s.on_snapshot(_snap("big", 1000.0, **{"a-1": 9, "a-2": 9}))
    s.on_snapshot(_snap("small", 1000.0, **{"b-1": 0}))
    cands = [ModelCandidate(model="big", score=0.9), ModelCandidate(model="small", score=0.75)]
    reply = s.pick(PickRequest(request_id="r1", model="big", candidates=cands))
    assert reply.status is PickStatus.OK
    assert (reply.model, reply.model_rank, reply.model_reason) == ("small", 1, "saturated")
    assert reply.endpoints[0] == "b:1"
    assert len(s.in_flight) == 1  # only the chosen pool's assignment is remembered
    s.on_snapshot(_snap("big", 1000.0, **{"a-1": 0, "a-2": 1}))
    again = s.pick(PickRequest(request_id="r2", model="big", candidates=cands))
    assert (again.model, again.model_rank, again.model_reason) == ("big", 0, "best")
    # A candidate no pool serves is skipped; one candidate alone is an ordinary pick.
    ghost = [ModelCandidate(model="nope", score=0.95), *cands]
    r3 = s.pick(PickRequest(request_id="r3", model="nope", candidates=ghost))
    assert (r3.model, r3.model_reason) == ("big", "unavailable")
    plain = s.pick(PickRequest(request_id="r4", model="big", candidates=cands[:1]))
    assert plain.model is None and plain.status is PickStatus.OK


def test_slo_profile_is_built_in_and_config_can_replace_it() -> None:
    plans = build_plans(PickerConfig())
    slo, strict = plans.profiles["slo"], plans.profiles["slo-strict"]
    assert len(slo.admitters) == 0 and len(slo.filters) == 0
    assert len(strict.admitters) == 1 and len(strict.filters) == 1
    own = build_plans(PickerConfig.model_validate({"profiles": {"slo": ["queue-scorer"]}}))
    assert own.profiles["slo"].admitters == ()


def test_joint_choice_names_an_slo_refusal_and_a_shed_saturated_pool() -> None:
    p = joint.Penalties()
    second = joint.Option("small", 0.7, ok=True, ttft_ms=50)
    refused = joint.Option("big", 0.9, ok=False, meets_slo=False)
    assert joint.choose([refused, second], p) == (1, "slo")
    shed = joint.Option("big", 0.9, ok=False, saturated=True)
    assert joint.choose([shed, second], p) == (1, "saturated")


def test_scheduler_moves_auto_off_a_model_whose_slo_admission_refuses() -> None:
    s, _ = _scheduler(profile="slo-strict")
    s.on_snapshot(_snap("big", 1000.0, **{"a-1": 0}))
    s.on_snapshot(_snap("small", 1000.0, **{"b-1": 0}))
    assert s.latency is not None
    x = features(prompt_tokens=1, cached_tokens=0, queue=0, running=0, kv_usage=0.0)
    for _ in range(10):
        s.latency.learn(LatencySample("big", "a:1", x, 900.0, 30.0))
        s.latency.learn(LatencySample("small", "b:1", x, 40.0, 5.0))
    cands = [ModelCandidate(model="big", score=0.9), ModelCandidate(model="small", score=0.7)]
    tight = {"x-pointsman-slo-ttft-ms": "200"}
    reply = s.pick(PickRequest(request_id="r1", model="big", candidates=cands, headers=tight))
    assert (reply.status, reply.model, reply.model_reason) == (PickStatus.OK, "small", "slo")


def test_backlog_is_a_fluid_queue_per_endpoint() -> None:
    b = Backlog()
    b.add("m", "a:1", 2.0, now=10.0, rate=4.0)  # 2000 tokens at 4000 tokens/s: 0.5 s of work
    b.add("m", "a:1", 1.0, now=10.25, rate=4.0)  # 1.0 left + 1.0
    assert b.at("m", "a:1", 10.25, 4.0) == pytest.approx(2.0)
    assert b.at("m", "a:1", 10.5, 4.0) == pytest.approx(1.0)
    assert b.at("m", "a:1", 20.0, 4.0) == 0.0
    assert b.at("m", "b:1", 10.5, 4.0) == 0.0
    b.forget_endpoint("m", "a:1")
    assert b.at("m", "a:1", 10.25, 4.0) == 0.0


def test_model_knows_the_pools_prefill_speed_from_its_slope() -> None:
    model = LatencyModel()
    assert model.prefill_rate("m") is None
    rng = random.Random(3)
    for _ in range(300):
        x = _synthetic(rng)
        model.learn(LatencySample("m", "a:1", x, _truth_ttft(x), _truth_tpot(x)))
    # 150 ms per 1000 new tokens: about 6.7 thousand tokens a second
    assert model.prefill_rate("m") == pytest.approx(1000 / 150, rel=0.1)


def test_scheduler_learns_ttft_without_the_flow_control_wait_and_counts_its_error() -> None:
    s, sent = _scheduler(profile="slo")
    s.on_snapshot(_snap("m", 1000.0, **{"a-1": 0}))
    for i in range(30):
        assert s.pick(PickRequest(request_id=f"r{i}", model="m", prompt="x" * 400)).endpoints
        s.note_wait(f"r{i}", 2.0)  # held 2 s in flow control before the pick
        s.on_completion(
            CompletionEvent(
                request_id=f"r{i}", model="m", endpoint="a:1", status_code=200, stream=True,
                ttft_ms=2080.0, tpot_ms=9.0,
            )
        )  # fmt: skip
    samples = [u for u in sent if isinstance(u, LatencySample)]
    assert {round(v.ttft_ms or 0) for v in samples} == {80}
    # each completion after the first was predicted before it was learnt: one ratio each
    name = "pointsman_picker_latency_ttft_prediction_ratio"
    value = s.telemetry.registry.get_sample_value
    assert value(f"{name}_count") == 29
    # once learnt, the predictions are within 10% (the 0.9-1.11 buckets)
    near = (value(f"{name}_bucket", {"le": "1.11"}) or 0) - (
        value(f"{name}_bucket", {"le": "0.8"}) or 0
    )
    assert near >= 25


def test_picks_fill_the_backlog_feature_of_their_endpoint() -> None:
    s, sent = _scheduler(profile="slo")
    s.on_snapshot(_snap("m", 1000.0, **{"a-1": 0}))
    # distinct prompts (no prefix hit) of about 1000 tokens each
    s.pick(PickRequest(request_id="r0", model="m", prompt="a" * 4000))
    s.on_completion(
        CompletionEvent(request_id="r0", model="m", endpoint="a:1", status_code=200,
                        stream=True, ttft_ms=100.0, tpot_ms=9.0)
    )  # fmt: skip
    s.pick(PickRequest(request_id="r1", model="m", prompt="b" * 4000))
    s.pick(PickRequest(request_id="r2", model="m", prompt="c" * 4000))
    for rid in ("r1", "r2"):
        s.on_completion(
            CompletionEvent(request_id=rid, model="m", endpoint="a:1", status_code=200,
                            stream=True, ttft_ms=100.0, tpot_ms=9.0)
        )  # fmt: skip
    backlog = [u.features[6] for u in sent if isinstance(u, LatencySample)]
    # the clock stands still: r0, r1 and r2 each saw the uncached prompts picked before them
    assert backlog == pytest.approx([0.0, 1.0, 2.0], rel=0.02)

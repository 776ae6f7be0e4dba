"""Flow control: the VTC ordering (pure core) and the queues around it (the shell, with the real
scheduler and snapshots; no bus)."""

from __future__ import annotations

import asyncio
import time

import pytest

from pointsman.runtime import cancel_and_wait
from pointsman.v1 import (
    CompletionEvent,
    EndpointMetrics,
    PickReply,
    PickRequest,
    PickStatus,
    PoolSnapshot,
)
from pointsman_picker.config import FlowControlConfig, PickerConfig, SaturationConfig
from pointsman_picker.core import flow
from pointsman_picker.core.flow import Head, Weights
from pointsman_picker.core.latency import LatencySample, features
from pointsman_picker.flow import Counters, FlowControl, Waiter, tick
from pointsman_picker.scheduler import Scheduler
from pointsman_picker.telemetry import Telemetry

# --- the pure core ------------------------------------------------------------------------------


def test_higher_band_first_whatever_the_counters() -> None:
    heads = [Head(0, "light", 1), Head(1, "heavy", 2)]
    chosen = flow.next_head(heads, {"light": 0.0, "heavy": 1e9})
    assert chosen == Head(1, "heavy", 2)


def test_lowest_counter_first_within_a_band_then_oldest() -> None:
    heads = [Head(0, "a", 5), Head(0, "b", 9), Head(0, "c", 7)]
    assert flow.next_head(heads, {"a": 300.0, "b": 100.0, "c": 100.0}) == Head(0, "c", 7)
    assert flow.next_head(heads, {"a": 50.0, "b": 100.0, "c": 100.0}) == Head(0, "a", 5)
    assert flow.next_head([], {}) is None


def test_a_tie_goes_to_the_shorter_queue_then_the_oldest() -> None:
    heavy, light = Head(0, "heavy", 1, queued=40), Head(0, "light", 9, queued=1)
    assert flow.next_head([heavy, light], {"heavy": 500.0, "light": 500.0}) == light
    assert flow.next_head([heavy, light], {"heavy": 500.0, "light": 501.0}) == heavy
    older = Head(0, "other", 3, queued=40)
    assert flow.next_head([heavy, older], {}) == heavy


def test_unknown_tenant_counts_as_zero() -> None:
    assert flow.next_head([Head(0, "a", 1), Head(0, "new", 2)], {"a": 1.0}) == Head(0, "new", 2)


def test_newcomer_starts_at_the_lowest_waiting_counter() -> None:
    assert flow.lifted(None, [400.0, 250.0], last_served=900.0) == 250.0
    assert flow.lifted(None, [], last_served=900.0) == 900.0
    assert flow.lifted(None, [], last_served=None) == 0.0


def test_returning_tenant_is_raised_never_lowered() -> None:
    assert flow.lifted(10.0, [250.0], last_served=None) == 250.0  # no banked credit
    assert flow.lifted(500.0, [250.0], last_served=None) == 500.0  # keeps what it used
    assert flow.lifted(10.0, [], last_served=None) == 10.0


def test_cost_weights_output_and_ignores_negative_counts() -> None:
    w = Weights(input=1.0, output=2.0)
    assert flow.cost(100, 10, w) == 120.0
    assert flow.cost(-5, -1, w) == 0.0
    assert flow.estimate_prompt_tokens("abcd" * 25) == 25.0
    assert flow.estimate_prompt_tokens(None) == 0.0


def test_admission_bounds_pool_and_tenant() -> None:
    assert flow.admit(0, 10, 0, 5) is None
    assert flow.admit(10, 10, 0, 5) == flow.QUEUE_FULL
    assert flow.admit(6, 10, 5, 5) == flow.TENANT_QUEUE_FULL


def test_tenant_from_header_or_default() -> None:
    assert flow.tenant_of({"x-t": " acme "}, "x-t", "default") == "acme"
    assert flow.tenant_of({"x-t": ""}, "x-t", "default") == "default"
    assert flow.tenant_of({}, "x-t", "default") == "default"


def test_vtc_serves_tokens_equally_whatever_the_offered_load() -> None:
    """Replaying the ordering: a heavy tenant with 10x the backlog and a light one, same
    request size; while both wait, each dispatch goes to the lower counter, so the light tenant
    gets half the service, not a tenth."""
    backlog = {"heavy": 100, "light": 10}
    counters = {"heavy": 0.0, "light": 0.0}
    served = {"heavy": 0, "light": 0}
    seq = 0
    for _ in range(20):
        heads = [Head(0, t, seq + i) for i, (t, n) in enumerate(backlog.items()) if n]
        seq += 2
        h = flow.next_head(heads, counters)
        assert h is not None
        backlog[h.tenant] -= 1
        served[h.tenant] += 1
        counters[h.tenant] += flow.cost(100, 20, Weights())
    assert served == {"heavy": 10, "light": 10}


def test_ordered_heads_starts_with_next_head() -> None:
    heads = [Head(0, "heavy", 1, queued=40), Head(0, "light", 9, queued=1), Head(1, "vip", 5)]
    counters = {"heavy": 500.0, "light": 500.0, "vip": 1e9}
    order = flow.ordered_heads(heads, counters)
    assert order[0] == flow.next_head(heads, counters)
    assert [h.tenant for h in order] == ["vip", "light", "heavy"]


def test_recent_service_decays_and_judges_the_share_of_active_tenants() -> None:
    r = flow.RecentService(window_s=10.0)
    r.charge("heavy", 1000.0, now=0.0)
    assert r.value("heavy", 10.0) == pytest.approx(500.0)  # one half-life
    # alone, a tenant is never over its share: nothing is held back from it
    assert r.standing("heavy", 1.0) == (False, False)
    r.charge("light", 100.0, now=1.0)
    assert r.standing("heavy", 1.0) == (True, False)
    assert r.standing("light", 1.0) == (False, True)
    # the light tenant left long ago: the heavy one is alone again
    assert r.standing("heavy", 30.0) == (False, False)
    # ... unless the light one waits now
    assert r.standing("heavy", 30.0, waiting={"light"}) == (True, False)
    # a completion's correction does not make a tenant active again
    r.charge("light", 50.0, now=40.0, served=False)
    assert r.active(40.0) == set()
    r.forget_idle(now=1000.0)
    assert r.value("heavy", 1000.0) == 0.0


def test_restriction_holds_back_slots_and_backlog_from_a_tenant_over_its_share() -> None:
    off = flow.Reserve()
    assert not off.enabled
    assert flow.restriction(off, 4, over=True, contended=False) is None
    res = flow.Reserve(slots=1, backlog_ktokens=0.0)
    over = flow.restriction(res, 4, over=True, contended=False)
    assert over == flow.Restriction(max_in_flight=3, max_backlog_ktokens=0.0)
    # under its share while another is over: go where the prefill starts soonest
    assert flow.restriction(res, 4, over=False, contended=True) == flow.Restriction(soonest=True)
    assert flow.restriction(res, 4, over=False, contended=False) is None
    # slots need max_in_flight; a tenant over its share always keeps one slot
    assert flow.restriction(flow.Reserve(slots=1), 0, over=True, contended=False) == (
        flow.Restriction()
    )
    assert flow.restriction(flow.Reserve(slots=9), 4, over=True, contended=False) == (
        flow.Restriction(max_in_flight=1)
    )


# --- the shell ------------------------------------------------------------------------------------


def _snapshot(waiting: int, *, pool: str = "m") -> PoolSnapshot:
    now = time.time()
    return PoolSnapshot(
        pool=pool, collector="t", published_at=now,
        endpoints=[EndpointMetrics(address="10.0.0.1:8000", scraped_at=now, waiting=waiting)],
    )  # fmt: skip


def _flow(**cfg: object) -> tuple[Scheduler, FlowControl]:
    config = PickerConfig(replica_id="t", flow_control=FlowControlConfig(**cfg))  # type: ignore[arg-type]
    scheduler = Scheduler(config, Telemetry(), clock=time.time)
    return scheduler, FlowControl(scheduler, config.flow_control)


def _pick(
    rid: str, tenant: str, *, priority: int = 0, wait_ms: float = 10_000, size: int = 400
) -> PickRequest:
    return PickRequest(
        request_id=rid, model="m", prompt="x" * size, max_wait_ms=wait_ms,
        headers={"x-pointsman-tenant": tenant, "x-pointsman-priority": str(priority)},
    )  # fmt: skip


async def test_room_means_no_queue_and_the_tenant_is_charged() -> None:
    s, fc = _flow()
    s.on_snapshot(_snapshot(0))
    got = fc.try_pick(_pick("r1", "a"))
    assert not isinstance(got, Waiter) and got.status is PickStatus.OK
    assert fc.counters.value("m", "a") == pytest.approx(100.0)  # 400 bytes: about 100 tokens
    fc.on_completion(
        CompletionEvent(request_id="r1", model="m", endpoint="10.0.0.1:8000", status_code=200,
                        stream=False, prompt_tokens=120, completion_tokens=10)
    )  # fmt: skip
    assert fc.counters.value("m", "a") == pytest.approx(100.0 + 20 + 2 * 10)


async def test_saturated_pool_queues_then_dispatches_fairly_when_room_comes() -> None:
    s, fc = _flow()
    s.on_snapshot(_snapshot(9))  # over the queue threshold (5): saturated
    heavy = [fc.try_pick(_pick(f"h{i}", "heavy")) for i in range(6)]
    light = [fc.try_pick(_pick(f"l{i}", "light")) for i in range(2)]
    assert all(isinstance(w, Waiter) for w in heavy + light)
    assert fc.queued("m") == 8
    # Room for exactly two (waiting 3, threshold 5; each dispatch adds a pending assignment).
    s.on_snapshot(_snapshot(3))
    fc.on_snapshot("m")
    done = [w for w in heavy + light if isinstance(w, Waiter) and w.future.done()]
    assert len(done) == 2
    # heavy queued first and was served first; then light, whose lifted counter equals heavy's
    # starting point, is below heavy's charged counter.
    assert {w.tenant for w in done} == {"heavy", "light"}
    assert all(w.future.result().status is PickStatus.OK for w in done)
    assert fc.queued("m") == 6


async def test_fast_engine_whose_answers_come_back_does_not_queue() -> None:
    """Six requests in flight at once: all sent since the scrape and none back is a burst (the
    pool is full at five); the same six when as many have come back since the scrape (the
    engine answers as fast as it gets them) is not."""
    s, fc = _flow()
    s.on_snapshot(_snapshot(0))
    first = [fc.try_pick(_pick(f"a{i}", "t")) for i in range(5)]
    assert all(not isinstance(r, Waiter) for r in first)
    assert isinstance(fc.try_pick(_pick("burst", "t")), Waiter)  # 5 pending: full
    s.on_snapshot(_snapshot(0))  # a new scrape: the five are in its metrics (running)
    for i in range(5):
        s.on_completion(
            CompletionEvent(request_id=f"a{i}", model="m", endpoint="10.0.0.1:8000",
                            status_code=200, stream=False)
        )  # fmt: skip
    fc.dispatch("m")
    assert fc.queued("m") == 0
    again = [fc.try_pick(_pick(f"b{i}", "t")) for i in range(4)]
    assert all(not isinstance(r, Waiter) for r in again)  # 6 pending, 5 freed: backlog 1


async def test_newcomer_joining_a_busy_queue_cannot_bank_credit() -> None:
    s, fc = _flow()
    s.on_snapshot(_snapshot(0))
    for i in range(5):  # "old" used the pool while it had room: counter 500
        fc.try_pick(_pick(f"o{i}", "old"))
    s.on_snapshot(_snapshot(9))
    fc.try_pick(_pick("o9", "old"))
    fc.try_pick(_pick("n1", "new"))
    assert fc.counters.value("m", "new") == pytest.approx(fc.counters.value("m", "old") or 0)


async def test_higher_priority_waits_less() -> None:
    s, fc = _flow()
    s.on_snapshot(_snapshot(9))
    low = fc.try_pick(_pick("low", "a", priority=0))
    high = fc.try_pick(_pick("high", "b", priority=2))
    s.on_snapshot(_snapshot(4))  # room for one
    fc.on_snapshot("m")
    assert isinstance(high, Waiter) and high.future.done()
    assert isinstance(low, Waiter) and not low.future.done()


async def test_full_queues_answer_shed_with_the_reason() -> None:
    s, fc = _flow(max_queued=3, max_queued_per_tenant=2)
    s.on_snapshot(_snapshot(9))
    fc.try_pick(_pick("a1", "a"))
    fc.try_pick(_pick("a2", "a"))
    got = fc.try_pick(_pick("a3", "a"))
    assert not isinstance(got, Waiter)
    assert (got.status, got.reason) == (PickStatus.SHED, flow.TENANT_QUEUE_FULL)
    assert isinstance(fc.try_pick(_pick("b1", "b")), Waiter)
    got = fc.try_pick(_pick("c1", "c"))
    assert not isinstance(got, Waiter)
    assert (got.status, got.reason) == (PickStatus.SHED, flow.QUEUE_FULL)


async def test_ttl_drops_with_reason_and_leaves_the_queue() -> None:
    s, fc = _flow(ttl_ms=50)
    s.on_snapshot(_snapshot(9))
    got = fc.try_pick(_pick("r1", "a", wait_ms=10_000))  # the config's 50 ms wins
    assert isinstance(got, Waiter)
    reply = await fc.wait(got)
    assert (reply.status, reply.reason) == (PickStatus.DROPPED, flow.TTL_EXPIRED)
    assert fc.queued("m") == 0


async def test_shim_that_will_not_wait_gets_the_old_shedding() -> None:
    s, fc = _flow()
    s.on_snapshot(_snapshot(9))
    got = fc.try_pick(_pick("r1", "a", priority=-1, wait_ms=0))
    assert not isinstance(got, Waiter) and got.status is PickStatus.SHED
    assert got.reason == "saturated"
    got = fc.try_pick(_pick("r2", "a", priority=0, wait_ms=0))
    assert not isinstance(got, Waiter) and got.status is PickStatus.OK


async def test_disabled_flow_control_is_the_plain_scheduler() -> None:
    s, fc = _flow(enabled=False)
    s.on_snapshot(_snapshot(9))
    got = fc.try_pick(_pick("r1", "a", priority=-1))
    assert not isinstance(got, Waiter) and got.status is PickStatus.SHED


async def test_cancelled_wait_leaves_the_queue() -> None:
    s, fc = _flow()
    s.on_snapshot(_snapshot(9))
    got = fc.try_pick(_pick("r1", "a"))
    assert isinstance(got, Waiter)
    task = asyncio.create_task(fc.wait(got))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fc.queued("m") == 0


def test_counters_shared_base_plus_unsent_delta() -> None:
    c = Counters(shared=True)
    assert c.value("m", "a") is None
    c.add("m", "a", 5)
    sent = c.take_deltas()
    assert sent == {"m": {"a": 5.0}} and c.value("m", "a") is None
    c.add("m", "a", 1)
    c.restore(sent)  # the exchange failed: owed again
    assert c.value("m", "a") == 6.0
    c.set_base("m", {"a": 100.0, "b": 7.0})
    assert c.view("m", {"a", "b", "z"}) == {"a": 106.0, "b": 7.0, "z": 0.0}


async def test_auto_with_a_free_second_pool_does_not_wait() -> None:
    """The joint decision (model: auto with candidates) moves the request to a candidate whose
    pool has room; flow control holds it only when every candidate's pool is saturated."""
    v1 = pytest.importorskip("pointsman.v1")
    if not hasattr(v1, "ModelCandidate"):
        pytest.skip("no joint model decision in this checkout (issue 17 item 3)")
    s, fc = _flow()
    s.on_snapshot(_snapshot(9, pool="best"))
    s.on_snapshot(_snapshot(0, pool="second"))
    ranked = [
        v1.ModelCandidate(model="best", score=0.9),
        v1.ModelCandidate(model="second", score=0.8),
    ]
    pick = PickRequest(  # type: ignore[call-arg]
        request_id="a1", model="best", prompt="x" * 40, max_wait_ms=10_000, candidates=ranked
    )
    got = fc.try_pick(pick)
    assert not isinstance(got, Waiter)
    assert got.status is PickStatus.OK and got.model == "second"  # type: ignore[attr-defined]
    assert fc.counters.value("second", "default") == pytest.approx(10.0)
    s.on_snapshot(_snapshot(9, pool="second"))
    pick2 = PickRequest(  # type: ignore[call-arg]
        request_id="a2", model="best", prompt="x" * 40, max_wait_ms=10_000, candidates=ranked
    )
    assert isinstance(fc.try_pick(pick2), Waiter)


def _two_endpoints(
    queue_depth_threshold: int = 100, **flow_cfg: object
) -> tuple[Scheduler, FlowControl]:
    """Pool ``m`` of two idle endpoints whose batches hold two requests each (``max_in_flight``)."""
    saturation = {"max_in_flight": 2, "queue_depth_threshold": queue_depth_threshold}
    config = PickerConfig.model_validate(
        {"replica_id": "t", "saturation": saturation, "flow_control": flow_cfg}
    )
    s = Scheduler(config, Telemetry(), clock=time.time)
    now = time.time()
    s.on_snapshot(
        PoolSnapshot(
            pool="m", collector="t", published_at=now,
            endpoints=[EndpointMetrics(address=a, scraped_at=now) for a in ("a:1", "b:1")],
        )
    )  # fmt: skip
    return s, FlowControl(s, config.flow_control)


async def test_max_in_flight_holds_requests_in_the_picker_and_picks_an_endpoint_with_room() -> None:
    s, fc = _two_endpoints(queue_depth_threshold=SaturationConfig().queue_depth_threshold)
    # No engine queue shows yet (the snapshot says idle), but four in flight fill both batches.
    first = [fc.try_pick(_pick(f"h{i}", "heavy")) for i in range(4)]
    assert all(not isinstance(r, Waiter) and r.status is PickStatus.OK for r in first)
    by_endpoint = [r.endpoints[0] for r in first if not isinstance(r, Waiter)]
    assert sorted(by_endpoint) == ["a:1", "a:1", "b:1", "b:1"]
    assert s.saturated("m") is True
    held = fc.try_pick(_pick("h9", "heavy"))
    light = fc.try_pick(_pick("l1", "light"))
    assert isinstance(held, Waiter) and isinstance(light, Waiter)
    # One completes on b:1: the slot goes to the next request by VTC order, and to b:1.
    done = next(r for r in first if not isinstance(r, Waiter) and r.endpoints[0] == "b:1")
    rid = next(f"h{i}" for i, r in enumerate(first) if r is done)
    event = CompletionEvent(request_id=rid, model="m", endpoint="b:1", status_code=200,
                            stream=True, prompt_tokens=100, completion_tokens=10)  # fmt: skip
    s.on_completion(event)  # the handler's order: the scheduler, then flow control
    fc.on_completion(event)
    served = [w for w in (held, light) if w.future.done()]
    assert len(served) == 1 and served[0].future.result().endpoints[0] == "b:1"
    assert fc.queued("m") == 1


def _slo_flow() -> tuple[Scheduler, FlowControl]:
    config = PickerConfig.model_validate(
        {"replica_id": "t", "profile": "slo", "latency": {"forgetting": 0.9},
         "flow_control": {"slo_hold": True}}
    )  # fmt: skip
    s = Scheduler(config, Telemetry(), clock=time.time)
    s.on_snapshot(_snapshot(0))
    return s, FlowControl(s, config.flow_control)


def _teach(s: Scheduler, ttft_ms: float, n: int) -> None:
    assert s.latency is not None
    x = features(prompt_tokens=100, cached_tokens=0, queue=0, running=0, kv_usage=0.0)
    for _ in range(n):
        s.latency.learn(LatencySample("m", "10.0.0.1:8000", x, ttft_ms, 10.0))


def _slo_pick(rid: str, slo_ms: float, *, wait_ms: float = 10_000) -> PickRequest:
    return PickRequest(
        request_id=rid, model="m", prompt="x" * 400, max_wait_ms=wait_ms,
        headers={"x-pointsman-tenant": "a", "x-pointsman-slo-ttft-ms": f"{slo_ms:g}"},
    )  # fmt: skip


async def test_slo_hold_waits_for_an_endpoint_predicted_to_meet_the_objective() -> None:
    s, fc = _slo_flow()
    _teach(s, 900.0, 50)
    # an objective the endpoint meets: served at once
    got = fc.try_pick(_slo_pick("ok", 2000))
    assert not isinstance(got, Waiter) and got.status is PickStatus.OK
    # one it would miss: held (not sent to be late), then served once the endpoint is faster
    held = fc.try_pick(_slo_pick("held", 600))
    assert isinstance(held, Waiter) and fc.queued("m") == 1
    fc.dispatch_all()
    assert not held.future.done()
    _teach(s, 100.0, 200)
    fc.dispatch_all()
    assert held.future.done() and held.future.result().status is PickStatus.OK


async def test_slo_hold_refuses_with_the_reason_once_the_objective_has_passed() -> None:
    s, fc = _slo_flow()
    _teach(s, 900.0, 50)
    fc.try_pick(_pick("busy", "a"))  # the endpoint has one in flight: no longer idle
    late = fc.try_pick(_slo_pick("late", 50))
    assert isinstance(late, Waiter) and late.ttl_s == pytest.approx(0.05)
    reply = await fc.wait(late)
    assert reply.status is PickStatus.SHED and reply.reason == "slo_unattainable"
    assert fc.queued("m") == 0
    # without slo_hold the same request is served at once (late)
    s2, fc2 = _flow()
    s2.on_snapshot(_snapshot(0))
    got = fc2.try_pick(_slo_pick("late", 50))
    assert not isinstance(got, Waiter) and got.status is PickStatus.OK


async def test_max_in_flight_filters_picks_by_that_bound_alone() -> None:
    # The queue and KV thresholds decide saturation, not which endpoint a pick may go to.
    config = PickerConfig.model_validate({"replica_id": "t", "saturation": {"max_in_flight": 1}})
    s = Scheduler(config, Telemetry(), clock=time.time)
    now = time.time()
    s.on_snapshot(
        PoolSnapshot(
            pool="m", collector="t", published_at=now,
            endpoints=[EndpointMetrics(address="a:1", scraped_at=now, kv_usage=0.85),
                       EndpointMetrics(address="b:1", scraped_at=now, kv_usage=0.0)],
        )
    )  # fmt: skip
    assert s.pick(_pick("r0", "t")).endpoints[0] == "b:1"  # the emptier KV cache
    # b:1 is full (one in flight); a:1, over the KV threshold, is still not full: it gets it
    assert s.pick(_pick("r1", "t")).endpoints[0] == "a:1"


async def test_slo_hold_also_bounds_a_wait_for_a_saturated_pool() -> None:
    s, fc = _slo_flow()
    _teach(s, 100.0, 50)
    s.on_snapshot(_snapshot(9))  # saturated: it waits whatever the prediction
    waiter = fc.try_pick(_slo_pick("w", 40))
    assert (
        isinstance(waiter, Waiter) and waiter.slo_ms == 40 and waiter.ttl_s == pytest.approx(0.04)
    )
    reply = await fc.wait(waiter)
    assert reply.status is PickStatus.SHED and reply.reason == "slo_unattainable"


async def test_slo_hold_serves_an_idle_endpoint_whatever_the_prediction() -> None:
    # A predictor that learnt a slow spell would hold (and refuse) every request for ever, and
    # learn nothing new: while an endpoint has nothing in flight, the request goes there.
    s, fc = _slo_flow()
    _teach(s, 900.0, 50)
    probe = fc.try_pick(_slo_pick("probe", 600))
    assert not isinstance(probe, Waiter) and probe.status is PickStatus.OK
    held = fc.try_pick(_slo_pick("held", 600))  # the endpoint now has one in flight
    assert isinstance(held, Waiter)


async def test_the_tick_sleeps_until_a_request_waits_then_dispatches_it() -> None:
    """Nothing queued: the tick waits for a request to join a queue (no wake-up every
    interval); one that joins is dispatched by the tick once the pool has room, without a
    snapshot or completion of ours (here: another replica's assignment released)."""
    s, fc = _flow()
    s.on_snapshot(_snapshot(0))
    ticks = 0
    real_dispatch_all = fc.dispatch_all

    def counted() -> int:
        nonlocal ticks
        ticks += 1
        return real_dispatch_all()

    fc.dispatch_all = counted  # type: ignore[method-assign]
    task = asyncio.create_task(tick(fc, 0.001))
    try:
        await asyncio.sleep(0.05)  # fifty intervals
        assert ticks == 0  # nobody waits: the tick has not run
        for i in range(5):  # fill the endpoint (other replicas' assignments, shared state)
            s.in_flight.add(f"other{i}", "m", "10.0.0.1:8000", time.time())
        waiter = fc.try_pick(_pick("w", "t"))
        assert isinstance(waiter, Waiter) and not waiter.future.done()
        s.in_flight.release("other0")
        async with asyncio.timeout(5):
            reply = await waiter.future
        assert reply.status is PickStatus.OK and ticks >= 1
        assert fc.queued("m") == 0
    finally:
        await cancel_and_wait([task])


async def test_reserved_slot_is_left_for_the_tenant_under_its_share() -> None:
    """Batches of 2, one slot each held back: the heavy tenant (over its share once the light
    one was served) fills one slot per endpoint and then waits; the light tenant's request
    arriving behind the heavy backlog is served at once, in a held-back slot. Without the
    reserve the same light request waits for a completion."""
    for slots, light_waits in ((1, False), (0, True)):
        s, fc = _two_endpoints(reserve={"slots": slots})
        first = fc.try_pick(_pick("l0", "light"))  # light active, little service
        assert not isinstance(first, Waiter)
        s.on_completion(CompletionEvent(request_id="l0", model="m", endpoint=first.endpoints[0],
                                        status_code=200, stream=True))  # fmt: skip
        heavy = [fc.try_pick(_pick(f"h{i}", "heavy", size=4000)) for i in range(6)]
        sent = [r for r in heavy if not isinstance(r, Waiter)]
        assert len(sent) == (2 if slots else 4), slots
        if slots:
            assert sorted(r.endpoints[0] for r in sent) == ["a:1", "b:1"]
            assert s.saturated("m") is False  # room, but not for the heavy tenant
        light = fc.try_pick(_pick("l1", "light"))
        # it joins the queue behind the heavy backlog and is dispatched at once, or waits
        assert isinstance(light, Waiter)
        assert light.future.done() is not light_waits, slots


async def test_reserve_is_not_held_back_from_a_tenant_alone() -> None:
    _, fc = _two_endpoints(reserve={"slots": 1, "backlog_ktokens": 0.0})
    got = [fc.try_pick(_pick(f"h{i}", "heavy")) for i in range(5)]
    assert sum(1 for r in got if not isinstance(r, Waiter)) == 4  # every slot: nobody else
    assert fc.queued("m") == 1


async def test_dispatch_skips_a_tenant_over_its_share_for_the_held_back_slot() -> None:
    """Both tenants wait; a slot frees where the heavy tenant may not go (held back): the light
    request behind it in VTC order takes it rather than the dispatch stopping."""
    s, fc = _two_endpoints(reserve={"slots": 1})
    fc.try_pick(_pick("l0", "light"))
    heavy = [fc.try_pick(_pick(f"h{i}", "heavy", size=4000)) for i in range(3)]
    lights = [fc.try_pick(_pick(f"l{i}", "light")) for i in range(1, 4)]

    def pending(got: list[PickReply | Waiter]) -> list[Waiter]:
        return [w for w in got if isinstance(w, Waiter) and not w.future.done()]

    # l0, one heavy request per endpoint and light ones fill the 4 slots; the rest wait
    waiting_heavy, waiting_light = pending(heavy), pending(lights)
    assert waiting_heavy and waiting_light
    served = [w.future.result() for w in lights if isinstance(w, Waiter) and w.future.done()]
    assert served
    # the light tenant's counter above the heavy one's: VTC alone would pick heavy first
    fc.counters.add("m", "light", 1e6)
    rid = next(w.pick.request_id for w in lights if isinstance(w, Waiter) and w.future.done())
    event = CompletionEvent(request_id=rid, model="m", endpoint=served[0].endpoints[0],
                            status_code=200, stream=True)  # fmt: skip
    s.on_completion(event)
    fc.on_completion(event)
    assert any(w.future.done() for w in waiting_light)
    assert not any(w.future.done() for w in waiting_heavy)

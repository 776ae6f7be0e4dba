"""Scheduler rules step by step: admission, chunked prefill, prefix hits, preemption, LoRA."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pointsman.sim.config import SimConfig
from pointsman.sim.scheduler import FINISHED, RUNNING, WAITING, Scheduler, Seq, Step

BASE = SimConfig(block_size=4, num_gpu_blocks=64, max_num_seqs=8, max_num_batched_tokens=64)
_ids = iter(range(10**9))


def seq(prompt: int, out: int = 3, group: object = None, lora: str | None = None) -> Seq:
    """A request whose full prompt blocks hash as group ``group`` (same group = same prefix)."""
    group = group if group is not None else f"unique-{next(_ids)}"
    hashes = [hash((group, i)) for i in range(prompt // 4)]
    return Seq(f"r{next(_ids)}", prompt, out, hashes, lora=lora)


def run(s: Scheduler) -> tuple[Step, list[Seq], list[Seq]]:
    step = s.schedule()
    progressed, finished = s.complete(step)
    s.kv.check()
    return step, progressed, finished


def test_prefill_then_one_token_per_step() -> None:
    s = Scheduler(BASE)
    r = seq(10, out=3)
    s.add(r)
    step, progressed, _ = run(s)
    assert step.items == [(r, 10)] and step.prefill_tokens == 10
    assert r.out == 1 and progressed == [r]  # the step that completes the prefill samples a token
    step, _, _ = run(s)
    assert step.items == [(r, 1)] and step.decode_seqs == 1
    _, _, finished = run(s)
    assert finished == [r] and r.status == FINISHED and r.out == 3
    assert not s.has_work() and s.kv.in_use == 0


def test_chunked_prefill_over_the_token_budget() -> None:
    s = Scheduler(replace(BASE, max_num_batched_tokens=16))
    r = seq(40, out=1)
    s.add(r)
    chunks = []
    while r.status != FINISHED:
        step, _, _ = run(s)
        chunks.append(step.items[0][1])
    assert chunks == [16, 16, 8]


def test_decodes_come_before_new_prefills_in_the_budget() -> None:
    s = Scheduler(replace(BASE, max_num_batched_tokens=16))
    a = seq(8, out=5)
    s.add(a)
    run(s)
    b = seq(40, out=1)
    s.add(b)
    step, _, _ = run(s)
    assert step.items == [(a, 1), (b, 15)]


@pytest.mark.parametrize(("max_num_seqs", "admitted"), [(1, 1), (2, 2), (8, 5)])
def test_batch_is_capped_by_max_num_seqs(max_num_seqs: int, admitted: int) -> None:
    s = Scheduler(replace(BASE, max_num_seqs=max_num_seqs))
    for _ in range(5):
        s.add(seq(4, out=10))
    run(s)
    assert len(s.running) == admitted and len(s.waiting) == 5 - admitted


def test_waiting_when_kv_is_full() -> None:
    s = Scheduler(replace(BASE, num_gpu_blocks=6))
    a, b = seq(16, out=2), seq(16, out=2)  # 4 blocks each
    s.add(a)
    s.add(b)
    run(s)
    assert a.status == RUNNING and b.status == WAITING
    while a.status != FINISHED:
        run(s)
    run(s)
    assert b.status == RUNNING


def test_prefix_hit_skips_cached_blocks_but_computes_the_last_token() -> None:
    s = Scheduler(BASE)
    first = seq(32, out=1, group="doc")
    s.add(first)
    run(s)
    assert first.status == FINISHED and first.cached_tokens == 0
    second = seq(32, out=1, group="doc")
    s.add(second)
    step, _, _ = run(s)
    # 8 blocks cached, but the last token must be computed: 7 blocks hit, 4 tokens computed
    assert second.cached_tokens == 28 and step.items == [(second, 4)]
    assert s.prefix_hits == 28 and s.prefix_queries == 64
    third = seq(34, out=1, group="doc")  # same 8 blocks + 2 tokens
    s.add(third)
    step, _, _ = run(s)
    assert third.cached_tokens == 32 and step.items == [(third, 2)]


def test_prefix_cache_off() -> None:
    s = Scheduler(replace(BASE, enable_prefix_caching=False))
    for _ in range(2):
        r = seq(32, out=1, group="doc")
        s.add(r)
        run(s)
        assert r.cached_tokens == 0


def test_cached_prefix_is_evicted_under_pressure() -> None:
    s = Scheduler(replace(BASE, num_gpu_blocks=10))
    s.add(seq(32, out=1, group="doc"))  # 8 blocks, cached after
    run(s)
    s.add(seq(36, out=1))  # 9 blocks: must evict most of "doc"
    run(s)
    again = seq(32, out=1, group="doc")
    s.add(again)
    run(s)
    assert again.cached_tokens < 28


def test_decode_growth_preempts_the_newest_request() -> None:
    s = Scheduler(replace(BASE, num_gpu_blocks=4))
    old, new = seq(7, out=10), seq(7, out=10)  # 2 blocks each; growing past 8 tokens needs a 3rd
    s.add(old)
    s.add(new)
    run(s)
    assert len(s.running) == 2
    preempted = 0
    for _ in range(3):
        step, _, _ = run(s)
        preempted += step.preempted
    assert preempted == 1 and new.status == WAITING and new.preemptions == 1
    assert new.target == 7 + new.out  # it recomputes its prompt and what it generated
    while s.has_work():
        run(s)
    assert old.out == 10 and new.out == 10 and s.preemptions == 1


def test_lora_slots_block_a_third_adapter_until_one_is_idle() -> None:
    cfg = replace(BASE, lora_adapters=["a", "b", "c"], max_loras=2, lora_load_s=0.5)
    s = Scheduler(cfg)
    ra, rb, rc, base = seq(4, 3, lora="a"), seq(4, 3, lora="b"), seq(4, 1, lora="c"), seq(4, 1)
    for r in (ra, rb, rc, base):
        s.add(r)
    step, _, _ = run(s)
    assert step.lora_loads == 2
    assert s.step_duration(step) > 2 * 0.5
    assert rc.status == WAITING and base.status == FINISHED  # skipped, not blocking the queue
    assert s.lora_names() == ("a,b", "c")
    while rc.status != FINISHED:
        run(s)
    assert list(s.loras) in (["b", "c"], ["a", "c"])
    assert s.lora_loads == 3


def test_resident_adapter_loads_once() -> None:
    s = Scheduler(replace(BASE, lora_adapters=["a"], max_loras=1))
    for _ in range(3):
        s.add(seq(4, 1, lora="a"))
        run(s)
    assert s.lora_loads == 1


def test_step_duration_grows_with_batch_and_prefill() -> None:
    cfg = SimConfig()
    s = Scheduler(cfg)

    def decode_step(n: int, kv_tokens: int) -> float:
        items = [(seq(4), 1) for _ in range(n)]
        return s.step_duration(Step(items=items, decode_seqs=n, decode_kv_tokens=kv_tokens))

    one, many = decode_step(1, 1000), decode_step(256, 256_000)
    assert 0.006 < one < 0.009
    assert 0.020 < many < 0.035
    prefill = Step(items=[(seq(4), 1000)], prefill_tokens=1000)
    assert s.step_duration(prefill) == pytest.approx(cfg.step_base_s + 4e-5 + 1000 / 16000)
    assert s.step_duration(Step()) == 0.0


def test_abort_frees_blocks_wherever_the_request_is() -> None:
    s = Scheduler(replace(BASE, max_num_seqs=1))
    a, b = seq(8, out=5), seq(8, out=5)
    s.add(a)
    s.add(b)
    run(s)
    s.abort(b)
    s.abort(a)
    assert not s.has_work() and s.kv.in_use == 0


def test_fits() -> None:
    s = Scheduler(replace(BASE, num_gpu_blocks=4))
    assert s.fits(10, 6) and not s.fits(10, 7)


workloads = st.lists(
    st.tuples(
        st.integers(1, 60),  # prompt tokens
        st.integers(1, 12),  # output tokens
        st.sampled_from([None, "g1", "g2"]),  # prefix group
        st.integers(0, 3),  # arrival step
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(workloads, st.integers(20, 80), st.integers(1, 6), st.integers(8, 64))
def test_every_request_finishes_within_capacity(
    work: list[tuple[int, int, str | None, int]], blocks: int, max_seqs: int, budget: int
) -> None:
    cfg = replace(BASE, num_gpu_blocks=blocks, max_num_seqs=max_seqs, max_num_batched_tokens=budget)
    s = Scheduler(cfg)
    reqs = [(seq(p, o, g), at) for p, o, g, at in work if s.fits(p, o)]
    for step_no in range(5000):
        for r, at in reqs:
            if at == step_no:
                s.add(r)
        if step_no > 3 and not s.has_work():
            break
        step, _, _ = run(s)
        assert len(s.running) <= max_seqs
        assert sum(n for _, n in step.items) <= budget
        assert s.kv.in_use <= blocks
    assert not s.has_work(), "requests stuck"
    for r, _ in reqs:
        assert r.status == FINISHED and r.out == r.max_out
        assert 0 <= r.cached_tokens < r.prompt_len
    assert s.kv.in_use == 0
    assert s.prefix_hits <= s.prefix_queries
    assert s.generation_tokens == sum(r.max_out for r, _ in reqs)

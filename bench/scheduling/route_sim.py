"""Where TTFT comes from, per routing policy, in virtual time: the picker's own scheduling core
(:class:`pointsman_picker.scheduler.Scheduler`, a profile as configured) routes a workload of
:mod:`bench.scheduling.workloads` over engines that run the simulator's own scheduler
(:class:`pointsman.sim.scheduler.Scheduler`, the code every simulated replica runs). No
processes, no sockets, no machine noise: a policy's figures differ from another's only by its
decisions, so small differences can be seen and a run is repeatable.

What the picker sees is what it sees in the stack: a snapshot of every engine (waiting,
running, KV use) every ``--scrape-ms``, and a completion event (TTFT, TPOT, token counts) when
an answer ends. What it does not model: the shim's, Envoy's and NATS's delays, several picker
replicas, flow control (its queue is asynchronous; the ``pointsman-flow`` rows of
``python -m bench.scheduling`` measure it).

Per policy: TTFT p50/p90/p99, output tok/s, and the p90's make-up. For each request, at its
pick: the prefill work (thousand tokens) truly ahead of it on the endpoint chosen
(``ahead``: uncached prompt tokens not computed yet, the engine's waiting and running
requests), the least ahead on any endpoint (``least``), and their difference (``regret``: work
a perfect least-work router would have spared it); then the mean of each over the requests
at or above the p90::

    python -m bench.scheduling.route_sim --workload mooncake --rate 8 --seconds 120

Policies: ``round-robin``, ``least-work`` (an oracle: the true work ahead plus the request's
own uncached prompt, known exactly) and Pointsman profiles (``default``, ``slo``, ``prefill``,
or any built-in profile name).
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common.stats import percentile
from bench.scheduling import workloads
from bench.scheduling.virtual import start_step
from bench.scheduling.workloads import MODEL, Req
from pointsman.sim.config import SimConfig
from pointsman.sim.scheduler import Scheduler as Engine
from pointsman.sim.scheduler import Seq
from pointsman.sim.tokens import block_hashes, count_tokens, render_chat
from pointsman.v1 import (
    CompletionEvent,
    EndpointMetrics,
    PickReply,
    PickRequest,
    PickStatus,
    PoolSnapshot,
)
from pointsman_picker.config import PickerConfig
from pointsman_picker.flow import FlowControl, next_sleep
from pointsman_picker.scheduler import Scheduler
from pointsman_picker.telemetry import Telemetry


@dataclass
class _Engine:
    address: str
    sched: Engine
    step: Any = None


@dataclass
class _Job:
    req_id: str
    arrival: float
    engine: int
    prompt_tokens: int
    ahead: float
    least: float
    seq: Seq
    sent_at: float = 0.0
    first_at: float | None = None
    done_at: float | None = None
    sent_out: int = 0


@dataclass
class _Prepared:
    at: float
    prompt: str
    rendered_len: int
    hashes: list[int]
    max_out: int


@dataclass
class Result:
    policy: str
    ttft_ms: list[float] = field(default_factory=list)
    rows: dict[str, float] = field(default_factory=dict)


def prepare(reqs: list[Req]) -> list[_Prepared]:
    """Each request as the picker (the shim's joined prompt) and the engine (rendered prompt,
    token count, block hashes) see it."""
    out = []
    for r in reqs:
        body = json.loads(r.body)
        msgs = body["messages"]
        joined = "".join(f"<|{m['role']}|>{m['content']}\n" for m in msgs)
        text = render_chat(msgs)
        out.append(
            _Prepared(r.at, joined, count_tokens(text), block_hashes(text, extra=MODEL),
                      int(body["max_tokens"]))
        )  # fmt: skip
    return out


def _work_ahead(eng: Engine) -> float:
    """Prompt tokens (thousands) the engine has still to compute: the work ahead of a new
    request (first come, first served)."""
    total = 0
    for s in (*eng.running, *eng.waiting):
        if s.computed < s.target:
            total += s.target - s.computed
    return total / 1000.0


def _own_work(eng: Engine, hashes: list[int], prompt_len: int) -> float:
    hit = eng.kv.longest_prefix(hashes, (prompt_len - 1) // eng.bs)
    return (prompt_len - hit * eng.bs) / 1000.0


def run(
    policy: str, reqs: list[_Prepared], *, replicas: int, scrape_ms: float, seed: int,
    sim: SimConfig,
) -> Result:  # fmt: skip
    clock = [0.0]
    engines = [_Engine(f"10.0.0.{i + 1}:8000", Engine(sim)) for i in range(replicas)]
    picker: Scheduler | None = None
    flow: FlowControl | None = None
    if policy not in ("round-robin", "least-work") and not policy.startswith("hold-"):
        config, with_flow = _config(policy)
        picker = Scheduler(config, Telemetry(), clock=lambda: clock[0], rng=random.Random(seed))
        if with_flow:
            flow = FlowControl(picker, config.flow_control, clock=lambda: clock[0])
    waiters: dict[int, Any] = {}  # arrival index -> flow control's Waiter
    jobs: dict[str, _Job] = {}
    order: list[_Job] = []
    # (time, kind, n): kind 0 = a step ends on engine n, 1 = arrival n, 2 = scrape
    events: list[tuple[float, int, int]] = [(r.at, 1, n) for n, r in enumerate(reqs)]
    horizon = (reqs[-1].at if reqs else 0.0) + 300.0
    events += [(k * scrape_ms / 1000, 2, 0) for k in range(int(horizon * 1000 / scrape_ms))]
    heapq.heapify(events)

    def scrape(now: float) -> None:
        assert picker is not None
        eps = [
            EndpointMetrics(
                address=e.address,
                scraped_at=now - SNAPSHOT_DELAY_S,
                waiting=len(e.sched.waiting),
                running=len(e.sched.running),
                kv_usage=e.sched.kv.usage,
                block_size=sim.block_size,
                num_blocks=sim.num_gpu_blocks,
            )
            for e in engines
        ]
        picker.on_snapshot(
            PoolSnapshot(pool=MODEL, collector="sim", published_at=now, endpoints=eps)
        )
        if flow is not None:
            flow.on_snapshot(MODEL)
            settle(now)

    def settle(now: float) -> None:
        """Send the requests flow control dispatched since the last look."""
        for n, w in list(waiters.items()):
            if w.future.done():
                del waiters[n]
                reply = w.future.result()
                assert reply.status is PickStatus.OK, reply
                send(n, _index(reply.endpoints[0]), now)

    tick_id = [0]

    def arm_tick(now: float) -> None:
        """The next wake-up of flow control's tick: its interval, or sooner when an endpoint is
        predicted to get room (``flow.next_sleep``); one armed at a time, the latest wins."""
        assert flow is not None
        tick_id[0] += 1
        delay = next_sleep(flow.config.sync_interval_ms / 1000, now, flow.wake_at())
        heapq.heappush(events, (now + delay, 3, tick_id[0]))

    def _index(address: str) -> int:
        return next(k for k, e in enumerate(engines) if e.address == address)

    if picker is not None:
        scrape(0.0)
    rr = 0
    done = 0
    held: list[int] = []  # ``hold-*`` oracles: requests waiting in the router, in order

    def send(n: int, i: int, now: float) -> None:
        r = reqs[n]
        rid = f"r{n}"
        ahead = [_work_ahead(e.sched) for e in engines]
        own = [_own_work(e.sched, r.hashes, r.rendered_len) for e in engines]
        seq = Seq(rid, r.rendered_len, r.max_out, r.hashes, stream=True)
        job = _Job(rid, r.at, i, r.rendered_len, ahead[i] + own[i],
                   min(a + o for a, o in zip(ahead, own, strict=True)), seq, sent_at=now)  # fmt: skip
        jobs[rid] = job
        order.append(job)
        engines[i].sched.add(seq)
        start_step(engines[i], i, now, events)

    def release(now: float) -> None:
        """``hold-*``: send held requests to engines whose prompt work is all in the step
        running now (the request then gets a step of its own next)."""
        while held:
            free = [
                k for k, e in enumerate(engines)
                if _work_ahead(e.sched) <= (e.step.prefill_tokens / 1000 if e.step else 0) + 1e-9
                and not e.sched.waiting
            ]  # fmt: skip
            if not free:
                return
            # shortest prompt first, or first come, first served
            sjf = policy == "hold-sjf"
            n = min(held, key=lambda m: reqs[m].rendered_len) if sjf else held[0]
            held.remove(n)
            r = reqs[n]
            i = min(
                free,
                key=lambda k: (
                    _work_ahead(engines[k].sched)
                    + _own_work(engines[k].sched, r.hashes, r.rendered_len)
                ),
            )
            send(n, i, now)

    idle = [0.0, 0.0]  # engine-seconds without prompt work while requests wait in the router; at
    while events and done < len(reqs):
        now, kind, n = heapq.heappop(events)
        if held or waiters:
            free = sum(1 for e in engines if _work_ahead(e.sched) == 0)
            idle[0] += free * (now - idle[1])
        idle[1] = now
        clock[0] = now
        if kind == 2:
            if picker is not None:
                scrape(now)
            continue
        if kind == 3:  # flow control's dispatch tick (as flow.tick sleeps)
            assert flow is not None
            if n != tick_id[0]:
                continue  # superseded by a sooner one
            flow.dispatch_all()
            settle(now)
            if waiters:
                arm_tick(now)
            continue
        if kind == 1 and flow is not None:
            r = reqs[n]
            got = flow.try_pick(
                PickRequest(request_id=f"r{n}", model=MODEL, prompt=r.prompt, max_wait_ms=30_000)
            )  # fmt: skip
            if isinstance(got, PickReply):
                assert got.status is PickStatus.OK, got
                send(n, _index(got.endpoints[0]), now)
            else:
                waiters[n] = got
                settle(now)
                if waiters:
                    arm_tick(now)
            continue
        if kind == 1 and policy.startswith("hold-"):
            held.append(n)
            release(now)
            continue
        if kind == 1:
            r = reqs[n]
            rid = f"r{n}"
            ahead = [_work_ahead(e.sched) for e in engines]
            own = [_own_work(e.sched, r.hashes, r.rendered_len) for e in engines]
            if policy == "round-robin":
                i, rr = rr % replicas, rr + 1
            elif policy == "least-work":
                i = min(range(replicas), key=lambda k: ahead[k] + own[k])
            else:
                assert picker is not None
                reply = picker.pick(PickRequest(request_id=rid, model=MODEL, prompt=r.prompt))
                assert reply.status is PickStatus.OK, reply
                i = next(k for k, e in enumerate(engines) if e.address == reply.endpoints[0])
            seq = Seq(rid, r.rendered_len, r.max_out, r.hashes, stream=True)
            job = _Job(rid, now, i, r.rendered_len, ahead[i] + own[i],
                       min(a + o for a, o in zip(ahead, own, strict=True)), seq, sent_at=now)  # fmt: skip
            jobs[rid] = job
            order.append(job)
            engines[i].sched.add(seq)
            start_step(engines[i], i, now, events)
            continue
        eng = engines[n]
        step, eng.step = eng.step, None
        progressed, finished = eng.sched.complete(step)
        for s in progressed:
            j = jobs[s.rid]
            if j.first_at is None:
                j.first_at = now
        for s in finished:
            j = jobs[s.rid]
            j.done_at = now
            done += 1
            if picker is not None and j.first_at is not None:
                first_ms = (j.first_at - j.arrival) * 1000
                tpot = (now - j.first_at) * 1000 / max(s.out - 1, 1)
                event = CompletionEvent(
                    request_id=s.rid, model=MODEL, endpoint=eng.address, status_code=200,
                    stream=True, prompt_tokens=s.prompt_len, completion_tokens=s.out,
                    ttft_ms=first_ms, tpot_ms=tpot, cached_tokens=max(s.cached_tokens, 0),
                )  # fmt: skip
                picker.on_completion(event)
                if flow is not None:
                    flow.on_completion(event)
                    settle(now)
        start_step(eng, n, now, events)
        if held:
            release(now)
    served = [j for j in order if j.first_at is not None and j.done_at is not None]
    ttft = sorted((j.first_at - j.arrival) * 1000 for j in served)  # type: ignore[operator]
    res = Result(policy, ttft)
    if not served:
        return res
    p90 = percentile(ttft, 90)
    tail = [j for j in served if (j.first_at - j.arrival) * 1000 >= p90]  # type: ignore[operator]
    span = max(j.done_at for j in served)  # type: ignore[type-var]
    res.rows = {
        "requests": len(served),
        "ttft_p50_ms": percentile(ttft, 50), "ttft_p90_ms": p90, "ttft_p99_ms": percentile(ttft, 99),
        "tok_s": sum(j.seq.out for j in served) / span if span else 0.0,
        "regret_mean_kt": sum(j.ahead - j.least for j in served) / len(served),
        "tail_ahead_kt": sum(j.ahead for j in tail) / len(tail),
        "tail_least_kt": sum(j.least for j in tail) / len(tail),
        "tail_regret_kt": sum(j.ahead - j.least for j in tail) / len(tail),
        "tail_prompt_kt": sum(j.prompt_tokens for j in tail) / len(tail) / 1000,
        "tail_held_ms": sum(j.sent_at - j.arrival for j in tail) / len(tail) * 1000,
        "held_ms": sum(j.sent_at - j.arrival for j in served) / len(served) * 1000,
        "idle_held_s": idle[0],
    }  # fmt: skip
    return res


#: How much older than the picker's clock a snapshot is when it arrives (the collector's scrape,
#: publish and NATS hop): also keeps a pick made in the same instant as a scrape "after" it, as
#: it always is in the stack (the picker counts assignments after ``scraped_at`` as pending).
SNAPSHOT_DELAY_S = 0.002
#: ``pointsman-flow``'s saturation (bench/scheduling/routers.py): the queue held in the picker.
FLOW_SATURATION = {"queue_depth_threshold": 1, "max_in_flight": 256}


def _config(policy: str) -> tuple[PickerConfig, bool]:
    """(the picker's config, flow control on) of a policy: a built-in profile by name, or an
    ad-hoc one written ``plugin:weight+plugin:weight``; ``@flow`` after it: with
    ``pointsman-flow``'s saturation, requests waiting in flow control; ``@flow;KEY=VALUE``:
    a saturation key more (``@flow;max_prefill_ms=50``)."""
    name, _, mode = policy.partition("@")
    raw: dict[str, Any] = {}
    if ":" in name:
        entries: list[Any] = []
        for part in name.split("+"):
            plugin, _, weight = part.partition(":")
            entries.append({"plugin": plugin, "weight": float(weight)} if weight else plugin)
        raw = {"profile": "adhoc", "profiles": {"adhoc": entries}}
    else:
        raw = {"profile": name}
    flow = mode.startswith("flow")
    if flow:
        sat: dict[str, Any] = dict(FLOW_SATURATION)
        for kv in mode.split(";")[1:]:
            k, _, v = kv.partition("=")
            sat[k] = float(v) if "." in v else int(v)
        raw["saturation"] = sat
    return PickerConfig.model_validate(raw), flow


async def _in_loop(
    policy: str, reqs: list[_Prepared], args: argparse.Namespace, seed: int, sim: SimConfig
) -> Result:
    """:func:`run` inside an event loop: flow control's waiters are its futures (nothing is
    awaited; virtual time moves on events only)."""
    return run(policy, reqs, replicas=args.replicas, scrape_ms=args.scrape_ms, seed=seed, sim=sim)


def build(args: argparse.Namespace, seed: int) -> list[Req]:
    wl, rate, secs, cap = args.workload, args.rate, args.seconds, args.max_tokens
    if wl == "mooncake":
        return workloads.mooncake(rate, secs, max_tokens_cap=cap, seed=seed)
    if wl == "azure":
        return workloads.azure(rate, secs, max_tokens_cap=cap, seed=seed)
    if wl == "shared-prefix":
        return workloads.shared_prefix(
            rate, secs, groups=args.groups, prefix_tokens=args.prefix_tokens,
            question_tokens=60, max_tokens=cap, seed=seed,
        )  # fmt: skip
    raise SystemExit(f"unknown workload '{wl}' (mooncake, azure, shared-prefix)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scheduling.route_sim")
    p.add_argument("--workload", default="mooncake")
    p.add_argument("--rate", type=float, default=8.0)
    p.add_argument("--seconds", type=float, default=120.0, help="seconds of arrivals")
    p.add_argument("--policies", default="round-robin,least-work,default,slo,prefill")
    p.add_argument("--replicas", type=int, default=4)
    p.add_argument("--scrape-ms", type=float, default=50.0)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--groups", type=int, default=16)
    p.add_argument("--prefix-tokens", type=int, default=6000)
    p.add_argument("--prefill-tokens-per-s", type=float, default=8000.0)
    p.add_argument("--seeds", default="42", help="comma list: one run per seed")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    sim = SimConfig(prefill_tokens_per_s=args.prefill_tokens_per_s)
    out: list[dict[str, Any]] = []
    cols = ["ttft_p50_ms", "ttft_p90_ms", "ttft_p99_ms", "tok_s", "regret_mean_kt",
            "tail_ahead_kt", "tail_least_kt", "tail_regret_kt", "tail_prompt_kt", "tail_held_ms",
            "held_ms", "idle_held_s"]  # fmt: skip
    print(f"{'seed':>4} {'policy':14} {'n':>5} " + " ".join(f"{c[:14]:>14}" for c in cols))
    for seed in [int(s) for s in args.seeds.split(",")]:
        reqs = prepare(build(args, seed))
        for policy in [x.strip() for x in args.policies.split(",") if x.strip()]:
            res = asyncio.run(_in_loop(policy, reqs, args, seed, sim))
            row = {"seed": seed, "policy": policy, **res.rows}
            out.append(row)
            print(f"{seed:>4} {policy:14} {int(res.rows.get('requests', 0)):>5} "
                  + " ".join(f"{res.rows.get(c, float('nan')):>14.2f}" for c in cols))  # fmt: skip
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": out}, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

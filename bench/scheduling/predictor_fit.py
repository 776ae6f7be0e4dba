"""How well the latency predictor predicts TTFT, with and without a feature, on the simulator's
own engine model in virtual time: no processes, no sockets, no machine noise.

The simulator's scheduler (:class:`pointsman.sim.scheduler.Scheduler`, the same code the
simulated replicas run) serves the Azure trace's mixed lengths (``workloads.azure``'s
interleaving of the conversation and code traces) on ``--replicas`` engines, Poisson arrivals,
routed round robin (so that the features vary independently of the predictions). Each request's
features are taken as a picker would see them at its arrival: the engine's queue and running
requests and KV use as of its last scrape (every ``--scrape-ms``) plus the requests sent since,
the prompt's tokens, and the prefill backlog of :class:`pointsman_picker.core.latency.Backlog`.
Its TTFT is the end of the engine step that computed its last prompt token, less its arrival.
Completed requests teach a :class:`LatencyModel` (as the shim's completion events do), and each
request's TTFT is predicted at its arrival by the model of that moment.

Reports, per feature set, predicted / measured TTFT over the second half of the requests
(p10, p50, p90), the share within 25 %, and the mean absolute error in ms::

    python -m bench.scheduling.predictor_fit --rate 22 --seconds 300

Writes ``bench/results/scheduling_predictor_fit.json``.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common.stats import percentile
from bench.scheduling.virtual import start_step
from bench.scheduling.workloads import MAX_PROMPT_TOKENS, azure_lengths
from pointsman.sim.config import SimConfig
from pointsman.sim.scheduler import Scheduler, Seq
from pointsman_picker.core.latency import (
    DEFAULT_RATE,
    Backlog,
    LatencyModel,
    LatencySample,
    features,
)


@dataclass
class _Engine:
    sched: Scheduler
    busy_until: float = 0.0
    #: (waiting, running, kv use) at the last scrape, and when
    scraped: tuple[int, int, float] = (0, 0, 0.0)
    sent_since_scrape: int = 0
    step: Any = None


@dataclass
class _Req:
    arrival: float
    engine: int
    x: dict[str, tuple[float, ...]]
    predicted: dict[str, float | None]
    ttft: float | None = None
    seq: Seq | None = None


def run(
    rate: float, seconds: float, replicas: int, scrape_ms: float, seed: int, max_tokens: int
) -> dict[str, Any]:
    cfg = SimConfig(prefill_tokens_per_s=8000.0)
    engines = [_Engine(Scheduler(cfg)) for _ in range(replicas)]
    conv, code = azure_lengths("conv"), azure_lengths("code")
    rng = random.Random(seed)
    arrivals: list[tuple[float, int, int]] = []
    t, i = 0.0, 0
    while t < seconds:
        t += rng.expovariate(rate)
        prompt, out = code[i // 3 % len(code)] if i % 3 == 2 else conv[i % len(conv)]
        arrivals.append((t, max(8, min(prompt, MAX_PROMPT_TOKENS)), max(1, min(out, max_tokens))))
        i += 1
    variants = {"with backlog": True, "without backlog": False}
    models = {name: LatencyModel() for name in variants}
    backlogs = {name: Backlog() for name in variants}
    reqs: list[_Req] = []
    by_seq: dict[str, _Req] = {}
    # events: (time, kind, index): kind 0 = a step ends on engine index, 1 = arrival index,
    # 2 = a scrape
    events: list[tuple[float, int, int]] = [(a[0], 1, n) for n, a in enumerate(arrivals)]
    events += [(k * scrape_ms / 1000, 2, 0) for k in range(int(seconds * 1000 / scrape_ms) + 1)]
    heapq.heapify(events)
    horizon = seconds + 120.0

    while events:
        now, kind, n = heapq.heappop(events)
        if now > horizon:
            break
        if kind == 2:
            for eng in engines:
                s = eng.sched
                eng.scraped = (len(s.waiting), len(s.running), s.kv.usage)
                eng.sent_since_scrape = 0
            continue
        if kind == 1:
            _, prompt, out = arrivals[n]
            e = n % replicas
            eng = engines[e]
            waiting, running, kv = eng.scraped
            xs: dict[str, tuple[float, ...]] = {}
            preds: dict[str, float | None] = {}
            for name, use in variants.items():
                model = models[name]
                prate = model.prefill_rate("p") or DEFAULT_RATE
                backlog = backlogs[name].at("p", str(e), now, prate) if use else 0.0
                x = features(
                    prompt_tokens=prompt, cached_tokens=0,
                    queue=waiting + eng.sent_since_scrape, running=running + eng.sent_since_scrape,
                    kv_usage=kv, backlog_ktokens=backlog,
                )  # fmt: skip
                xs[name] = x
                preds[name] = model.predict("p", str(e), x).ttft_ms
                backlogs[name].add("p", str(e), x[1], now, prate)
            eng.sent_since_scrape += 1
            seq = Seq(f"r{n}", prompt, out, [rng.getrandbits(60) for _ in range(prompt // 16)])
            req = _Req(now, e, xs, preds, seq=seq)
            reqs.append(req)
            by_seq[seq.rid] = req
            eng.sched.add(seq)
            start_step(eng, e, now, events)
            continue
        eng = engines[n]
        step, eng.step = eng.step, None
        progressed, finished = eng.sched.complete(step)
        for seq in progressed:
            r = by_seq[seq.rid]
            if r.ttft is None:
                r.ttft = (now - r.arrival) * 1000
        for seq in finished:
            r = by_seq[seq.rid]
            for name in variants:
                models[name].learn(LatencySample("p", str(r.engine), r.x[name], r.ttft, None))
        start_step(eng, n, now, events)
    rows = []
    late = [r for r in reqs[len(reqs) // 2 :] if r.ttft]
    for name in variants:
        pairs = [(r.predicted[name], r.ttft) for r in late if r.predicted[name] is not None]
        ratios = [p / t for p, t in pairs if p is not None and t]
        errors = [abs(p - t) for p, t in pairs if p is not None and t is not None]
        rows.append({
            "features": name,
            "requests": len(ratios),
            "ratio_p10": percentile(ratios, 10), "ratio_p50": percentile(ratios, 50),
            "ratio_p90": percentile(ratios, 90),
            "within_25pct": sum(1 for v in ratios if 0.8 <= v <= 1.25) / max(len(ratios), 1),
            "mae_ms": sum(errors) / max(len(errors), 1),
            "ttft_p50_ms": percentile([t for _, t in pairs if t is not None], 50),
        })  # fmt: skip
    return {"rate": rate, "seconds": seconds, "replicas": replicas, "scrape_ms": scrape_ms,
            "seed": seed, "rows": rows}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scheduling.predictor_fit")
    p.add_argument("--rate", type=float, default=22.0, help="requests per second")
    p.add_argument("--seconds", type=float, default=300.0, help="seconds of arrivals")
    p.add_argument("--replicas", type=int, default=4)
    p.add_argument("--scrape-ms", type=float, default=100.0, help="metrics scrape period")
    p.add_argument("--max-tokens", type=int, default=48, help="output tokens cap")
    p.add_argument("--seeds", default="1,2,3", help="comma list: one run per seed")
    p.add_argument("--out", default="bench/results/scheduling_predictor_fit.json")
    args = p.parse_args(argv)
    runs = [
        run(args.rate, args.seconds, args.replicas, args.scrape_ms, int(s), args.max_tokens)
        for s in args.seeds.split(",")
    ]
    print(f"{'seed':>4} {'features':16} {'n':>6} {'pred/meas p10':>13} {'p50':>6} {'p90':>6} "
          f"{'within 25%':>10} {'MAE ms':>7} {'TTFT p50':>8}")  # fmt: skip
    for r in runs:
        for row in r["rows"]:
            print(
                f"{r['seed']:>4} {row['features']:16} {row['requests']:>6} "
                f"{row['ratio_p10']:>13.2f} {row['ratio_p50']:>6.2f} {row['ratio_p90']:>6.2f} "
                f"{100 * row['within_25pct']:>9.0f}% {row['mae_ms']:>7.0f} "
                f"{row['ttft_p50_ms']:>8.0f}"
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "runs": runs}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The CPU one pick costs per profile, in process: the scheduler alone, no bus, no waiting.

``bench.scheduling.decision`` measures the decision time through a real nats-server, which on a
shared machine is mostly how long the picker waited for a core. This measures the thread's own
CPU time (``time.thread_time``) of each pick and of learning from each completion, with the same
shape of load: 8 endpoints whose snapshot changes every 25 picks, 6 KB prompts sharing 32
documents, an SLO header on every pick, and a completion with TTFT and TPOT about 500 picks
later (the in-flight depth of 500 req/s with one-second answers).

    python -m bench.scheduling.pick_cpu [--picks 6000] [--profiles default,slo,slo-strict]

Writes ``bench/results/scheduling_pick_cpu.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

from bench.common.stats import percentile
from bench.scheduling.decision import ENDPOINTS, POOL, random_snapshot
from pointsman.v1 import CompletionEvent, PickRequest
from pointsman_picker.config import PickerConfig
from pointsman_picker.scheduler import Scheduler
from pointsman_picker.telemetry import Telemetry


def run(profile: str, picks: int, seed: int = 7) -> dict[str, Any]:
    config = PickerConfig.model_validate({"replica_id": "bench", "profile": profile})
    s = Scheduler(config, Telemetry(), clock=time.time)
    rng = random.Random(seed)
    docs = [
        f"doc {g}: " + " ".join(f"w{rng.randrange(10**6)}" for _ in range(700)) for g in range(32)
    ]

    def snapshot() -> None:
        s.on_snapshot(random_snapshot(rng, collector="b"))

    snapshot()
    pick_ms: list[float] = []
    learn_ms: list[float] = []
    pending: list[tuple[str, str]] = []
    warmup = picks // 6
    for i in range(picks):
        if i % 25 == 0:
            snapshot()
        req = PickRequest(
            request_id=str(i),
            model=POOL,
            prompt=f"{rng.choice(docs)}\nuser {i}: question {i}?",
            headers={"x-pointsman-slo-ttft-ms": "400"},
        )
        t = time.thread_time()
        reply = s.pick(req)
        if i >= warmup:
            pick_ms.append((time.thread_time() - t) * 1000)
        pending.append((str(i), reply.endpoints[0] if reply.endpoints else ""))
        if len(pending) > 500:
            rid, endpoint = pending.pop(0)
            slow = 1 + ENDPOINTS.index(endpoint) / 4 if endpoint in ENDPOINTS else 1.0
            event = CompletionEvent(
                request_id=rid, model=POOL, endpoint=endpoint, status_code=200, stream=True,
                ttft_ms=90 * slow * rng.uniform(0.8, 1.2), tpot_ms=8 * slow * rng.uniform(0.8, 1.2),
            )  # fmt: skip
            t = time.thread_time()
            s.on_completion(event)
            learn_ms.append((time.thread_time() - t) * 1000)
    return {
        "profile": profile,
        "picks_measured": len(pick_ms),
        "pick_cpu_p50_ms": percentile(pick_ms, 50),
        "pick_cpu_p99_ms": percentile(pick_ms, 99),
        "pick_cpu_max_ms": max(pick_ms),
        "completion_cpu_p50_ms": percentile(learn_ms, 50),
        "completion_cpu_p99_ms": percentile(learn_ms, 99),
        "latency_samples_learnt": s.latency.samples if s.latency is not None else 0,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scheduling.pick_cpu", description=__doc__)
    p.add_argument("--picks", type=int, default=6000)
    p.add_argument("--profiles", default="default,slo,slo-strict")
    p.add_argument("--out", default="bench/results/scheduling_pick_cpu.json")
    args = p.parse_args(argv)
    rows = [run(name.strip(), args.picks) for name in args.profiles.split(",") if name.strip()]
    print(f"{'profile':>10} {'pick CPU p50 / p99 / max ms':>28} {'completion p50 / p99 ms':>24}")
    for r in rows:
        print(
            f"{r['profile']:>10} {r['pick_cpu_p50_ms']:>8.3f} / {r['pick_cpu_p99_ms']:.3f} / "
            f"{r['pick_cpu_max_ms']:.3f} {r['completion_cpu_p50_ms']:>11.3f} / "
            f"{r['completion_cpu_p99_ms']:.3f}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

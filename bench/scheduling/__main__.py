"""bench/scheduling: TTFT, SLO attainment, fairness and throughput per router, through a real
Envoy, on fleets of simulated vLLM replicas; every router of a workload in the same run.

Workloads (:mod:`bench.scheduling.workloads`): ``shared-prefix``, ``mooncake``, ``azure``
(mixed prompt lengths from the Azure conversation and code traces), ``tenants`` (two tenants at
10:1 offered load), ``auto`` (``model: auto`` over two models of different speed).

Routers (:mod:`bench.scheduling.routers`): Envoy round robin and least-request; vllm-router
``cache_aware`` with its defaults and with the settings its documentation recommends for the
workload (``routers.TUNED``, with the reasons), and ``power_of_two``; Pointsman's default
profile (with flow control); Pointsman's ``slo`` profile (skipped, saying so, where the picker
has none). The replicas run with ``--enable-scale-out``: they answer ``/tokenize`` and the
render paths as vLLM 0.32 does, which vllm-router's ``cache_aware`` calls to build its key, so
the rival is not silently degraded to load balancing. Each row reports the prefix-cache hit
rate the replicas themselves counted (``vllm:prefix_cache_hits_total`` over
``..._queries_total``), so a degraded rival shows.

Reported (:mod:`bench.scheduling.report`): TTFT p50/p90/p99, SLO attainment (share of all
requests sent that were answered with TTFT within ``--slo-ttft-ms``; a refusal is a miss),
output tok/s, prefix hit rate, Jain's index of the tenants' token-weighted service (each over
its max-min fair share of what was served within the arrival window), each tenant's TTFT p90,
the model mix and, for ``auto``, the quality cost (share moved off the best model x the score
difference), then issue 17's targets marked met / MISSED.

    python -m bench.scheduling                                  # every workload, short runs
    python -m bench.scheduling --workloads shared-prefix --rates 20 --duration 20
    python -m bench.scheduling --workloads tenants --routers pointsman,round-robin

Writes ``bench/results/<out>.json`` and ``<out>_ttft.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.scheduling import report, workloads
from bench.scheduling.decision import hist_quantile, merged
from bench.scheduling.routers import ROUTERS, Skipped, prefix_counters, start_router
from bench.scheduling.workloads import MODEL, Req
from pointsman.runtime import cancel_and_wait

RESULTS = Path("bench/results")
#: The picker's histogram of predicted / measured TTFT (the latency predictor's accuracy).
PREDICTION_RATIO = "pointsman_picker_latency_ttft_prediction_ratio"
DEFAULT_ROUTERS = [
    "round-robin",
    "vllm-router-cache-aware",
    "vllm-router-cache-aware-tuned",
    "vllm-router-power-of-two",
    "pointsman",
    "pointsman-slo",
]
#: ``auto``: the classifier ranks the slow, better model first for every prompt.
BEST, SECOND = "big-best", "fast-small"
RANKED = [{"model": BEST, "score": 0.9}, {"model": SECOND, "score": 0.75}]


# --- the load generator ------------------------------------------------------------------------


@dataclass
class Result:
    tenant: str
    sent_at: float
    status: str
    ttft_ms: float | None = None
    e2e_ms: float | None = None
    done_at: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str = ""


@dataclass
class Outcome:
    results: list[Result] = field(default_factory=list)
    first_sent: float = 0.0


async def _one(
    session: aiohttp.ClientSession, url: str, req: Req, out: Outcome, extra: dict[str, str]
) -> None:
    start = time.perf_counter()
    res = Result(req.tenant, start - out.first_sent, "")
    out.results.append(res)
    headers = {"content-type": "application/json", **req.headers, **extra}
    try:
        async with session.post(url, data=req.body, headers=headers) as resp:
            res.status = str(resp.status)
            if resp.status != 200:
                await resp.read()
                return
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:") or line == b"data: [DONE]":
                    continue
                chunk = json.loads(line[5:])
                res.model = chunk.get("model") or res.model
                choices = chunk.get("choices") or []
                if (
                    res.ttft_ms is None
                    and choices
                    and (choices[0].get("delta") or {}).get("content")
                ):
                    res.ttft_ms = (time.perf_counter() - start) * 1000
                usage = chunk.get("usage")
                if usage:
                    res.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                    res.completion_tokens = int(usage.get("completion_tokens") or 0)
    except Exception as exc:
        res.status = type(exc).__name__
        return
    done = time.perf_counter()
    res.e2e_ms = (done - start) * 1000
    res.done_at = done - out.first_sent


async def replay(
    url: str, reqs: list[Req], extra: dict[str, str], drain_s: float = 120.0
) -> Outcome:
    out = Outcome()
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=drain_s + 60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = []
        out.first_sent = time.perf_counter()
        for req in reqs:
            delay = out.first_sent + req.at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_one(session, url, req, out, extra)))
        _, pending = await asyncio.wait(tasks, timeout=drain_s)
        await cancel_and_wait(pending)
    for res in out.results:
        if not res.status:
            res.status = "unfinished"
    return out


# --- one measurement ---------------------------------------------------------------------------


def _warm_up(url: str, model: str) -> None:
    urllib.request.urlopen(
        urllib.request.Request(
            f"{url}/v1/chat/completions",
            data=workloads.body("warm-up", "hello", 1, model),
            headers={"content-type": "application/json"},
        ),
        timeout=60,
    ).read()


def _service(r: Result) -> float:
    return r.prompt_tokens + report.OUTPUT_WEIGHT * r.completion_tokens


def summarise(
    out: Outcome, reqs: list[Req], *, duration: float, slo_ttft_ms: float
) -> dict[str, Any]:
    ok = [r for r in out.results if r.status == "200" and r.ttft_ms is not None]
    ttft = [r.ttft_ms for r in ok if r.ttft_ms is not None]
    statuses: dict[str, int] = {}
    for r in out.results:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    span = max((r.done_at for r in ok), default=0.0) or 1e-9
    row: dict[str, Any] = {
        "requests": len(reqs),
        "ok": len(ok),
        "errors": len(out.results) - len(ok),
        "statuses": statuses,
        "ttft_p50_ms": report.pct(ttft, 50),
        "ttft_p90_ms": report.pct(ttft, 90),
        "ttft_p99_ms": report.pct(ttft, 99),
        "e2e_p50_ms": report.pct([r.e2e_ms for r in ok if r.e2e_ms is not None], 50),
        "output_tokens_per_s": sum(r.completion_tokens for r in ok) / span,
        "slo_ttft_ms": slo_ttft_ms,
        "slo_attainment": sum(1 for t in ttft if t <= slo_ttft_ms) / max(len(reqs), 1),
    }
    mix: dict[str, int] = {}
    for r in ok:
        mix[r.model or "?"] = mix.get(r.model or "?", 0) + 1
    row["model_mix"] = mix
    names = sorted({r.tenant for r in reqs if r.tenant})
    if names:
        per: dict[str, dict[str, Any]] = {}
        service: dict[str, float] = {}
        demand: dict[str, float] = {}
        for t in names:
            mine = [r for r in ok if r.tenant == t]
            per[t] = {
                "requests": sum(1 for r in reqs if r.tenant == t),
                "ok": len(mine),
                "ttft_p90_ms": report.pct([r.ttft_ms for r in mine if r.ttft_ms], 90),
            }
            # served within the arrival window, against what was asked within it
            service[t] = sum(_service(r) for r in mine if r.done_at <= duration)
            demand[t] = sum(
                q.prompt_tokens + report.OUTPUT_WEIGHT * q.max_tokens
                for q in reqs if q.tenant == t and q.at < duration
            )  # fmt: skip
            per[t]["service_tokens"] = service[t]
            per[t]["demand_tokens"] = demand[t]
        row["tenants"] = per
        row["jain"] = report.fairness(service, demand) if len(names) > 1 else float("nan")
    return row


def measure(
    router: str, workload: str, rate: float, reqs: list[Req], work: Path, args: argparse.Namespace,
    *, label: str | None = None, extra_headers: dict[str, str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    models = [MODEL]
    extra: dict[str, Any] = {}
    sim_args = list(args.sim_arg)
    replicas = args.replicas
    if workload in ("tenants", "auto"):
        # small, slow engines: queues form at a load this machine can offer
        sim_args += ["--max-num-seqs", str(args.small_max_num_seqs),
                     f"--prefill-tokens-per-s={args.small_prefill_tokens_per_s:g}"]  # fmt: skip
        replicas = args.small_replicas
    if workload == "auto":
        models = [BEST, SECOND]
        extra = {
            "classifier": {
                "default_model": SECOND,
                "category": {"threshold": 0.0, "fallback": "other"},
                "jailbreak": {"enabled": False},
                "categories": {c: {"models": RANKED} for c in _labels()},
            },
            "shim": {"classifier": {"enabled": True, "timeout_ms": 2000}},
        }
    model_args = {BEST: ["--step-base-ms", str(args.slow_step_ms)]} if workload == "auto" else {}
    with start_router(
        router, work, replicas, sim_args, workload=workload, models=models, extra=extra,
        model_sim_args=model_args,
    ) as running:  # fmt: skip
        _warm_up(running.url, "auto" if workload == "auto" else MODEL)
        q0, h0 = prefix_counters(running.endpoints)
        before = merged(running.picker_metrics, "pointsman_picker_decision_seconds") if (
            running.picker_metrics) else {}  # fmt: skip
        ratio0 = merged(running.picker_metrics, PREDICTION_RATIO) if (
            running.picker_metrics) else {}  # fmt: skip
        out = asyncio.run(replay(f"{running.url}/v1/chat/completions", reqs, extra_headers or {}))
        after = merged(running.picker_metrics, "pointsman_picker_decision_seconds") if (
            running.picker_metrics) else {}  # fmt: skip
        ratio1 = merged(running.picker_metrics, PREDICTION_RATIO) if (
            running.picker_metrics) else {}  # fmt: skip
        q1, h1 = prefix_counters(running.endpoints)
    row = {
        "workload": workload,
        "router": label or router,
        "rate": rate,
        "settings": running.settings,
        **summarise(out, reqs, duration=args.duration, slo_ttft_ms=args.slo_ttft_ms),
        "prefix_hit_rate": (h1 - h0) / (q1 - q0) if q1 > q0 else float("nan"),
    }
    if before or after:
        row["decision_p50_ms"] = hist_quantile(before, after, 0.5) * 1000
        row["decision_p99_ms"] = hist_quantile(before, after, 0.99) * 1000
    if ratio1:
        # the latency predictor's accuracy: predicted / measured TTFT of the run's requests
        for q in (10, 50, 90):
            row[f"ttft_pred_ratio_p{q}"] = hist_quantile(ratio0, ratio1, q / 100)
    if workload == "auto":
        ok = sum(row["model_mix"].values()) or 1
        moved = row["model_mix"].get(SECOND, 0) / ok
        row["quality_cost"] = moved * (RANKED[0]["score"] - RANKED[1]["score"])  # type: ignore[operator]
    return row


def _labels() -> list[str]:
    return [
        "biology", "business", "chemistry", "computer science", "economics", "engineering",
        "health", "history", "law", "math", "other", "philosophy", "physics", "psychology",
    ]  # fmt: skip


# --- the plan ------------------------------------------------------------------------------------


def plan(
    args: argparse.Namespace,
) -> list[tuple[str, str, float, list[Req], str | None, dict[str, str]]]:
    """(workload, router, rate, requests, row label, extra headers) of every run, in order."""
    routers = [r.strip() for r in args.routers.split(",") if r.strip()]
    runs: list[tuple[str, str, float, list[Req], str | None, dict[str, str]]] = []
    slo = {"x-pointsman-slo-ttft-ms": f"{args.slo_ttft_ms:g}"}
    for wl in [w.strip() for w in args.workloads.split(",") if w.strip()]:
        rates = [float(r) for r in (args.rate_for.get(wl) or args.rates).split(",")]
        for rate in rates:
            cap = args.max_tokens
            if wl == "shared-prefix":
                reqs = workloads.shared_prefix(
                    rate, args.duration, groups=args.groups, prefix_tokens=args.prefix_tokens,
                    question_tokens=args.question_tokens, max_tokens=cap, seed=args.seed,
                )  # fmt: skip
            elif wl == "mooncake":
                reqs = workloads.mooncake(rate, args.duration, max_tokens_cap=cap, seed=args.seed)
            elif wl == "azure":
                reqs = workloads.azure(rate, args.duration, max_tokens_cap=cap, seed=args.seed)
            elif wl == "tenants":
                reqs = workloads.tenants(rate, args.duration, max_tokens_cap=cap, seed=args.seed)
                light = workloads.tenants(
                    rate, args.duration, max_tokens_cap=cap, seed=args.seed, only="light"
                )
                runs.append((wl, "pointsman", rate, light, "pointsman (light alone)", {}))
            elif wl == "auto":
                reqs = workloads.auto(rate, args.duration, max_tokens_cap=cap, seed=args.seed)
                calm = workloads.auto(
                    args.auto_unloaded_rate, args.duration, max_tokens_cap=cap, seed=args.seed
                )
                runs.append((wl, "pointsman-slo", args.auto_unloaded_rate, calm,
                             "pointsman-slo (unloaded)", slo))  # fmt: skip
            else:
                raise SystemExit(f"unknown workload '{wl}' ({', '.join(workloads.WORKLOADS)})")
            chosen = args.routers_for.get(f"{wl}@{rate:g}") or args.routers_for.get(wl)
            for router in [r.strip() for r in chosen.split(",")] if chosen else routers:
                if wl == "auto" and not router.startswith("pointsman"):
                    continue  # only Pointsman resolves model: auto
                runs.append(
                    (
                        wl,
                        router,
                        rate,
                        reqs,
                        None,
                        slo if router.startswith("pointsman-slo") else {},
                    )
                )
    return runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.scheduling",
        description="Routers compared through a real Envoy on simulated vLLM (see docstring).",
    )
    p.add_argument("--workloads", default="shared-prefix,mooncake,azure,tenants,auto")
    p.add_argument("--routers", default=",".join(DEFAULT_ROUTERS),
                   help=f"comma list of: {', '.join(ROUTERS)}")  # fmt: skip
    p.add_argument("--rates", default="16", help="comma list of request rates (req/s)")
    p.add_argument(
        "--rate-for", action="append", default=[], metavar="WORKLOAD=RATES",
        help="rates of one workload, e.g. azure=24 or tenants=6,8 (repeatable)",
    )  # fmt: skip
    p.add_argument(
        "--routers-for", action="append", default=[], metavar="WORKLOAD[@RATE]=ROUTERS",
        help="routers of one workload (or of one of its rates), e.g. azure@26=pointsman,"
        "pointsman-slo (repeatable; default: --routers)",
    )  # fmt: skip
    p.add_argument("--duration", type=float, default=20.0, help="seconds of arrivals per run")
    p.add_argument("--replicas", type=int, default=4, help="simulated vLLM replicas per model")
    p.add_argument("--groups", type=int, default=16, help="shared-prefix: prompt groups")
    p.add_argument("--prefix-tokens", type=int, default=6000, help="shared-prefix: shared tokens")
    p.add_argument("--question-tokens", type=int, default=60, help="shared-prefix: own tokens")
    p.add_argument("--max-tokens", type=int, default=48, help="output tokens per request (cap)")
    p.add_argument("--slo-ttft-ms", type=float, default=1000.0, help="the TTFT objective")
    p.add_argument("--small-replicas", type=int, default=2, help="tenants, auto: replicas")
    p.add_argument("--small-max-num-seqs", type=int, default=4,
                   help="tenants, auto: engine batch size (queues form at this machine's rates)")  # fmt: skip
    p.add_argument("--small-prefill-tokens-per-s", type=float, default=2000.0,
                   help="tenants, auto: simulated prefill speed")  # fmt: skip
    p.add_argument("--slow-step-ms", type=float, default=28.0,
                   help=f"auto: decode step of '{BEST}' (fast-small: the simulator's 7 ms)")  # fmt: skip
    p.add_argument("--auto-unloaded-rate", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--sim-arg", action="append", default=None, metavar="ARG",
        help="simulator argument, repeatable (default: --prefill-tokens-per-s=8000, a larger "
        "model's prefill speed, so that this machine can offer a saturating load)",
    )  # fmt: skip
    p.add_argument("--out", default="scheduling", help="name of the JSON/PNG under bench/results")
    args = p.parse_args(argv)
    if args.sim_arg is None:
        args.sim_arg = ["--prefill-tokens-per-s=8000"]
    args.rate_for = dict(item.split("=", 1) for item in args.rate_for)
    args.routers_for = dict(item.split("=", 1) for item in args.routers_for)
    RESULTS.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pointsman-bench-scheduling-"))
    rows: list[dict[str, Any]] = []
    started = time.time()

    def save() -> None:
        (RESULTS / f"{args.out}.json").write_text(
            json.dumps(
                {"args": vars(args), "started": started, "rows": rows,
                 "targets": report.targets(rows)},
                indent=2, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v,
            )
        )  # fmt: skip

    try:
        for wl, router, rate, reqs, label, headers in plan(args):
            t = time.monotonic()
            row: dict[str, Any] | None = None
            for attempt in (1, 2):  # a busy machine can lose a port race: try once more
                try:
                    row = measure(router, wl, rate, reqs, work, args, label=label,
                                  extra_headers=headers)  # fmt: skip
                    break
                except Skipped as exc:
                    row = {"workload": wl, "router": label or router, "rate": rate,
                           "skipped": str(exc)}  # fmt: skip
                    break
                except Exception as exc:
                    print(f"{wl} {router} at {rate:g} req/s, try {attempt}: {exc}",
                          file=sys.stderr)  # fmt: skip
            if row is None:
                continue
            row["wall_s"] = round(time.monotonic() - t, 1)
            rows.append(row)
            report.print_table([row])
            sys.stdout.flush()
            save()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    report.print_table(rows)
    items = report.targets(rows)
    report.print_targets(items)
    save()
    png = RESULTS / f"{args.out}_ttft.png"
    report.plot(rows, png, "TTFT p90 per router (log scale)")
    print(f"\nwrote {RESULTS / (args.out + '.json')} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

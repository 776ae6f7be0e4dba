"""The picker's own decision time under load, over a real nats-server, prefix scoring on.

Starts nats-server and N picker processes (default profile: queue 2, KV 2, prefix 3), publishes
snapshots of 8 endpoints every 50 ms as a collector would, and sends pick requests open loop at a
fixed rate with shared-prefix prompts (groups of requests share a long document), publishing a
completion event for each about a second later. Reports the picker-side decision time
(``pointsman_picker_decision_seconds``: message received -> reply sent) and the client-side NATS
round trip, p50/p99.

One row per ``--profiles`` entry, in the same run (default: ``default``, ``slo`` and
``slo-strict``, which adds the headroom filter and the admission step). With an ``slo`` profile
the completion events carry a TTFT and a TPOT (synthetic, a function of the
endpoint's load) so the latency predictor learns while it is measured, and every pick request
carries an ``x-pointsman-slo-ttft-ms`` objective, so the headroom filter and the admission step
do their whole work on each pick.

    python -m bench.scheduling.decision --rate 500 --seconds 10 [--pickers 2] [--redis]
        [--profiles default,slo,slo-strict]

Writes ``bench/results/scheduling_decision.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import nats
import yaml

from bench.common.stats import percentile
from pointsman.stack.procs import (
    Child,
    binary,
    free_port,
    http_status,
    port_free,
    spawn,
    wait_ready,
)
from pointsman.v1 import (
    CompletionEvent,
    EndpointMetrics,
    PickReply,
    PickRequest,
    PickStatus,
    PoolSnapshot,
    decode,
    encode,
    subjects,
)

POOL = "bench-model"
ENDPOINTS = [f"10.1.0.{i}:8000" for i in range(1, 9)]


def histogram(url: str, name: str) -> dict[float, float]:
    """Cumulative bucket counts of one histogram from a /metrics page."""
    with urllib.request.urlopen(url, timeout=2) as resp:
        text = resp.read().decode()
    out: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return out


def counter(url: str, name: str) -> float:
    """One unlabelled counter's value from a /metrics page (0 when absent)."""
    with urllib.request.urlopen(url, timeout=2) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def hist_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """Prometheus-style histogram_quantile over the increase between two scrapes."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return float("nan")
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if bound == float("inf"):
                return prev_bound
            span = count - prev_count
            return prev_bound + (bound - prev_bound) * ((rank - prev_count) / span if span else 0)
        prev_bound, prev_count = bound, count
    return prev_bound


def merged(urls: list[str], name: str) -> dict[float, float]:
    """One histogram summed over several replicas' /metrics."""
    out: dict[float, float] = {}
    for url in urls:
        for k, v in histogram(url, name).items():
            out[k] = out.get(k, 0.0) + v
    return out


def random_snapshot(rng: random.Random, collector: str = "bench") -> PoolSnapshot:
    """A snapshot of the bench pool with random load, scraped now (also ``pick_cpu``'s)."""
    now = time.time()
    eps = [
        EndpointMetrics(
            address=a,
            scraped_at=now,
            waiting=rng.randrange(0, 4),
            running=rng.randrange(5, 40),
            kv_usage=rng.uniform(0.1, 0.7),
        )
        for a in ENDPOINTS
    ]
    return PoolSnapshot(pool=POOL, collector=collector, published_at=now, endpoints=eps)


async def feed_snapshots(nc: Any, stop: asyncio.Event) -> None:
    """Publish a snapshot of the bench pool every 50 ms, as a collector would, until ``stop``."""
    rng = random.Random(3)
    while not stop.is_set():
        await nc.publish(subjects.metrics(POOL), encode(random_snapshot(rng)))
        await asyncio.sleep(0.05)


async def _load(nats_url: str, rate: float, seconds: float, slo: bool = False) -> dict[str, Any]:
    nc = await nats.connect(nats_url)
    stop = asyncio.Event()
    snapper = asyncio.create_task(feed_snapshots(nc, stop))
    rng = random.Random(7)
    docs = [
        f"doc {g}: " + " ".join(f"w{rng.randrange(10**6)}" for _ in range(700)) for g in range(32)
    ]
    rtts: list[float] = []
    statuses: dict[str, int] = {}
    # wait until a picker knows the pool
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        probe = PickRequest(request_id="probe", model=POOL)
        r = decode((await nc.request(subjects.PICK, encode(probe), timeout=2)).data, PickReply)
        if r.status is PickStatus.OK:
            break
        await asyncio.sleep(0.05)

    async def one(i: int) -> None:
        rid = uuid.uuid4().hex
        prompt = f"{rng.choice(docs)}\nuser {i}: question {i}?"
        headers = {"x-pointsman-slo-ttft-ms": "400"} if slo else {}
        req = PickRequest(request_id=rid, model=POOL, prompt=prompt, headers=headers)
        t = time.perf_counter()
        try:
            msg = await nc.request(subjects.PICK, encode(req), timeout=2)
        except Exception:
            statuses["error"] = statuses.get("error", 0) + 1
            return
        rtts.append((time.perf_counter() - t) * 1000)
        reply = decode(msg.data, PickReply)
        statuses[reply.status.value] = statuses.get(reply.status.value, 0) + 1
        if reply.endpoints:
            await asyncio.sleep(rng.uniform(0.5, 1.5))
            # Synthetic latencies: slower endpoints (higher index) and longer prompts cost more.
            slow = 1 + ENDPOINTS.index(reply.endpoints[0]) / 4
            event = CompletionEvent(
                request_id=rid,
                model=POOL,
                endpoint=reply.endpoints[0],
                status_code=200,
                stream=slo,
                ttft_ms=(40 + len(prompt) / 100) * slow * rng.uniform(0.8, 1.2) if slo else None,
                tpot_ms=8 * slow * rng.uniform(0.8, 1.2) if slo else None,
            )
            await nc.publish(subjects.COMPLETIONS, encode(event))

    tasks = []
    start = time.perf_counter()
    n = int(rate * seconds)
    for i in range(n):
        target = start + i / rate
        delay = target - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    elapsed = time.perf_counter() - start  # the sending period: the offered rate
    await asyncio.gather(*tasks)
    stop.set()
    await snapper
    await nc.close()
    return {"rtt_ms": rtts, "statuses": statuses, "sent": n, "elapsed_s": elapsed}


def run(
    rate: float, seconds: float, pickers: int, redis: bool, profile: str = "default"
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="pointsman-bench-decision-"))
    children: list[Child] = []
    try:
        nport = free_port()
        nats_child = spawn(
            "nats-server",
            [binary("nats-server"), "-a", "127.0.0.1", "-p", str(nport), "-js", "-sd", str(work)],
            work,
        )
        children.append(nats_child)
        wait_ready(nats_child, lambda: not port_free(nport), 15, "nats-server")
        nats_url = f"nats://127.0.0.1:{nport}"
        picker: dict[str, Any] = {"http_host": "127.0.0.1", "warmup_ms": 0, "profile": profile}
        if redis:
            rport = free_port()
            redis_bin = shutil.which("redis-server") or binary("redis-server")
            rchild = spawn(
                "redis-server",
                [redis_bin, "--bind", "127.0.0.1", "--port", str(rport), "--save", "",
                 "--appendonly", "no"],
                work,
            )  # fmt: skip
            children.append(rchild)
            wait_ready(rchild, lambda: not port_free(rport), 15, "redis-server")
            picker["shared_state"] = {"redis_url": f"redis://127.0.0.1:{rport}/0"}
        metrics_urls = []
        for i in range(pickers):
            port = free_port()
            cfg = work / f"picker-{i}.yaml"
            section = {**picker, "http_port": port, "replica_id": f"bench-{i}"}
            cfg.write_text(yaml.safe_dump({"nats": {"url": nats_url}, "picker": section}))
            child = spawn(
                f"picker-{i}",
                [sys.executable, "-m", "pointsman_picker", "--config", str(cfg)],
                work,
            )
            children.append(child)
            url = f"http://127.0.0.1:{port}"
            wait_ready(child, lambda u=url: http_status(f"{u}/readyz") == 200, 30, "picker")  # type: ignore[misc]
            metrics_urls.append(f"{url}/metrics")
        names = ["pointsman_picker_decision_seconds", "pointsman_picker_pick_seconds"]
        before = {n: merged(metrics_urls, n) for n in names}
        try:
            import uvloop

            load = uvloop.run(_load(nats_url, rate, seconds, profile.startswith("slo")))
        except ImportError:
            load = asyncio.run(_load(nats_url, rate, seconds, profile.startswith("slo")))
        after = {n: merged(metrics_urls, n) for n in names}
        learnt = sum(counter(u, "pointsman_picker_latency_samples_total") for u in metrics_urls)
        dec, cpu = names
        return {
            "profile": profile,
            "rate": rate,
            "seconds": seconds,
            "pickers": pickers,
            "redis": redis,
            "sent": load["sent"],
            "offered_rps": load["sent"] / load["elapsed_s"],
            "statuses": load["statuses"],
            "latency_samples_learnt": learnt,
            "decision_p50_ms": hist_quantile(before[dec], after[dec], 0.5) * 1000,
            "decision_p99_ms": hist_quantile(before[dec], after[dec], 0.99) * 1000,
            "pick_cpu_p50_ms": hist_quantile(before[cpu], after[cpu], 0.5) * 1000,
            "pick_cpu_p99_ms": hist_quantile(before[cpu], after[cpu], 0.99) * 1000,
            "nats_rtt_p50_ms": percentile(load["rtt_ms"], 50),
            "nats_rtt_p99_ms": percentile(load["rtt_ms"], 99),
        }
    finally:
        for child in reversed(children):
            child.stop()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scheduling.decision", description=__doc__)
    p.add_argument("--rate", type=float, default=500.0, help="pick requests per second")
    p.add_argument("--seconds", type=float, default=10.0, help="duration of the load")
    p.add_argument("--pickers", type=int, default=1, help="picker replicas")
    p.add_argument("--redis", action="store_true", help="share state through a redis-server")
    p.add_argument(
        "--profiles",
        default="default,slo,slo-strict",
        help="comma-separated picker profiles, one row each",
    )
    p.add_argument("--out", default="bench/results/scheduling_decision.json", help="JSON path")
    args = p.parse_args(argv)
    rows = [
        run(args.rate, args.seconds, args.pickers, args.redis, profile.strip())
        for profile in args.profiles.split(",")
        if profile.strip()
    ]
    print(
        f"{'profile':>8} {'pickers':>7} {'redis':>5} {'rate':>6} {'offered':>8} "
        f"{'decision p50/p99 ms':>20} {'pick CPU p50/p99 ms':>20} {'nats rtt p50/p99 ms':>20}"
        f" {'learnt':>7}  statuses"
    )
    for r in rows:
        print(
            f"{r['profile']:>8} {r['pickers']:>7} {r['redis']!s:>5} {r['rate']:>6.0f} "
            f"{r['offered_rps']:>8.1f} "
            f"{r['decision_p50_ms']:>9.3f} / {r['decision_p99_ms']:<8.3f} "
            f"{r['pick_cpu_p50_ms']:>9.3f} / {r['pick_cpu_p99_ms']:<8.3f} "
            f"{r['nats_rtt_p50_ms']:>9.3f} / {r['nats_rtt_p99_ms']:<8.3f} "
            f"{r['latency_samples_learnt']:>7.0f}  {r['statuses']}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, **rows[0]} if rows else {}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

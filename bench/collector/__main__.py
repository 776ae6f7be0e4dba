"""Collector benchmark: parsing cost, then scrape rate, CPU and metrics age for a matrix of
endpoint counts and collector replicas, and the unscraped gap when a replica is killed.

``python -m bench.collector`` (``--quick`` for a short run). Prints a table and writes JSON to
``bench/results/collector-<time>.json``. Every figure of one run is measured on the same machine
in the same run; the parsing baseline (a general parser: prometheus_client's) is measured beside
the fast extractor. The aiohttp client that the raw client replaced (3x the CPU per scrape,
measured 2026-11-23; see services/metrics-collector/README.md) is no longer in the code base.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import nats
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bench.common.proc import cpu_seconds
from bench.common.stats import percentile
from pointsman.stack.procs import Child, spawn
from pointsman.v1 import PoolSnapshot, subjects
from pointsman_collector.core import engines, prom

ROOT = Path(__file__).resolve().parents[2]
#: A /metrics page captured from a real vLLM 0.32 while it served requests (50 KB).
PAGE = ROOT / "tests" / "unit" / "collector" / "fixtures" / "vllm_0.32_real.txt"
RESULTS = ROOT / "bench" / "results"
BIN = Path(sys.executable).parent
POOL_SIZE = 100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ----- parsing cost -------------------------------------------------------------------------


def bench_parsing(repeat: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("vllm_0.32_real.txt", "vllm_v1.txt", "vllm_dp2.txt", "sglang.txt"):
        data = (PAGE.parent / name).read_bytes()
        spec = engines.SGLANG if name.startswith("sglang") else engines.VLLM

        def timed(fn: Any) -> float:
            best = []
            for _ in range(5):
                t0 = time.perf_counter()
                for _ in range(repeat):
                    fn()
                best.append((time.perf_counter() - t0) / repeat * 1e6)
            return min(best)

        out[name] = {
            "bytes": len(data),
            "full_parse_us": timed(lambda d=data: list(text_string_to_metric_families(d.decode()))),
            "fast_extract_us": timed(lambda d=data, s=spec: prom.extract(d, s.wanted())),
            "read_page_fast_us": timed(lambda d=data: engines.read_page(d, engines.BUILTIN, None)),
        }
    return out


# ----- fleet runs ---------------------------------------------------------------------------


class View:
    """What a picker sees: per collector, every new (address, scraped_at) and its age on arrival."""

    def __init__(self) -> None:
        self.latest: dict[str, PoolSnapshot] = {}
        self.pools: dict[tuple[str, str], PoolSnapshot] = {}
        self.last: dict[str, float] = {}
        self.history: dict[str, list[tuple[float, str]]] = {}
        self.ages: list[float] = []
        self.new_scrapes: dict[str, int] = {}
        self.recording = False
        self._decoder = msgspec.json.Decoder(PoolSnapshot)

    async def cb(self, msg: Any) -> None:
        now = time.time()
        snap = self._decoder.decode(msg.data)
        self.latest[snap.collector] = snap
        self.pools[(snap.pool, snap.collector)] = snap
        for e in snap.endpoints:
            if not e.healthy:
                continue
            if self.last.get(e.address) != e.scraped_at:
                self.last[e.address] = e.scraped_at
                self.history.setdefault(e.address, []).append((e.scraped_at, snap.collector))
                if self.recording:
                    self.ages.append((now - e.scraped_at) * 1000)
                    self.new_scrapes[snap.collector] = self.new_scrapes.get(snap.collector, 0) + 1

    def healthy(self, live: set[str]) -> set[str]:
        return {
            e.address
            for (_, c), s in self.pools.items()
            if c in live
            for e in s.endpoints
            if e.healthy
        }


async def wait_for(cond: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        await asyncio.sleep(0.05)
    return False


async def run_case(
    nats_url: str,
    addresses: list[str],
    replicas: int,
    args: argparse.Namespace,
    work: Path,
) -> dict[str, Any]:
    n = len(addresses)
    tag = f"n{n}-r{replicas}-{int(time.time() * 1000) % 100000}"
    pools = {
        f"bench-{tag}-{i // POOL_SIZE}": addresses[i : i + POOL_SIZE]
        for i in range(0, n, POOL_SIZE)
    }
    nc = await nats.connect(nats_url)
    view = View()
    for pool in pools:
        await nc.subscribe(subjects.metrics(pool), cb=view.cb)
    procs: dict[str, Child] = {}
    for r in range(replicas):
        name = f"{tag}-c{r}"
        cfg = work / f"{name}.yaml"
        cfg.write_text(
            yaml.safe_dump(
                {
                    "pools": pools,
                    "collector": {
                        "id": name,
                        "http_port": free_port(),
                        "interval_ms": args.interval_ms,
                        "timeout_ms": args.timeout_ms,
                        "sharding": {"subject": f"bench.{tag}.hb"},
                        "latest": {"bucket": f"bench-{tag}"},
                    },
                }
            )
        )
        procs[name] = spawn(
            name,
            [
                sys.executable,
                "-m",
                "pointsman_collector",
                "--config",
                str(cfg),
                "--log-level",
                "WARNING",
            ],
            work,
            env={"NATS_URL": nats_url},
        )
    live = set(procs)
    result: dict[str, Any] = {"endpoints": n, "replicas": replicas}
    try:
        ok = await wait_for(
            lambda: (
                view.healthy(live) == set(addresses)
                and all(
                    view.latest.get(c) and len(view.latest[c].members) == replicas for c in live
                )
            ),
            args.settle_s,
        )
        result["settled"] = ok
        await asyncio.sleep(1.0)
        cpu0 = {c: cpu_seconds(p.popen.pid) for c, p in procs.items()}
        view.recording = True
        t0 = time.monotonic()
        await asyncio.sleep(args.seconds)
        view.recording = False
        elapsed = time.monotonic() - t0
        cpu = {c: (cpu_seconds(p.popen.pid) - cpu0[c]) / elapsed for c, p in procs.items()}
        rate_total = sum(view.new_scrapes.values()) / elapsed
        cores = sum(cpu.values())
        cpu_us = cores / rate_total * 1e6 if rate_total else float("nan")
        result.update(
            cpu_us_per_scrape=cpu_us,
            # What one fully used core would carry at this interval, from the measured CPU cost.
            endpoints_per_core_projected=1e6 / (cpu_us * 1000 / args.interval_ms),
            scrapes_per_s_total=rate_total,
            scrapes_per_s_per_replica=rate_total / replicas,
            target_scrapes_per_s=n * 1000 / args.interval_ms,
            cpu_cores_total=cores,
            cpu_cores_per_100_endpoints=cores / (n / 100),
            cpu_per_replica=sorted(cpu.values()),
            age_p50_ms=percentile(view.ages, 50),
            age_p99_ms=percentile(view.ages, 99),
            age_samples=len(view.ages),
        )
        if replicas > 1 and args.failover:
            victim = sorted(procs)[0]
            procs[victim].popen.send_signal(signal.SIGKILL)
            procs[victim].popen.wait()
            killed = time.time()
            live.discard(victim)
            await asyncio.sleep(args.failover_s)
            # Longest time any endpoint went without a new scrape around the kill, from the
            # scrape times themselves (not from when this process got to read them: it shares
            # the CPU and may lag). Endpoints never scraped after the kill are counted apart.
            gaps = []
            for address in addresses:
                times = [at for at, _ in view.history.get(address, []) if at >= killed - 1.0]
                gaps += [b - a for a, b in itertools.pairwise(times)]
            result["failover_max_unscraped_ms"] = max(gaps) * 1000 if gaps else float("nan")
            result["failover_gap_p99_ms"] = percentile(gaps, 99) * 1000
            result["failover_not_scraped_after_kill"] = sum(
                1
                for address in addresses
                if not any(at > killed for at, _ in view.history.get(address, []))
            )
            result["failover_endpoints_over_1s"] = sum(
                1
                for address in addresses
                if any(
                    b - a > 1.0
                    for a, b in itertools.pairwise(
                        [at for at, _ in view.history.get(address, []) if at >= killed - 1.0]
                    )
                )
            )
    finally:
        for p in procs.values():
            p.stop()
        await nc.close()
    return result


async def fleet_runs(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    port = free_port()
    store = work / "js"
    nats_proc = spawn(
        "nats",
        [str(BIN / "nats-server"), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)],
        work,
    )
    nats_url = f"nats://127.0.0.1:{port}"
    results = []
    try:
        await wait_for(lambda: _port_open(port), 10)
        for n in args.endpoints:
            ports_file = work / f"ports-{n}"
            server = spawn(
                f"server-{n}",
                [
                    sys.executable,
                    "-m",
                    "bench.collector.server",
                    "--count",
                    str(n),
                    "--page",
                    str(PAGE),
                    "--ports-file",
                    str(ports_file),
                ],
                work,
            )
            try:
                await wait_for(ports_file.exists, 30)
                addresses = [f"127.0.0.1:{p}" for p in ports_file.read_text().split()]
                for r in args.replicas:
                    slow = _slow_consumers(work)
                    res = await run_case(nats_url, addresses, r, args, work)
                    res["nats_slow_consumer_events"] = _slow_consumers(work) - slow
                    if not server.alive:
                        res["fleet_server_died"] = True
                        log = (work / f"server-{n}.log").read_text(errors="replace")[-2000:]
                        print(f"fake fleet server exited ({server.popen.returncode}):\n{log}")
                    print(_row(res), flush=True)
                    results.append(res)
            finally:
                server.stop()
    finally:
        nats_proc.stop()
    return results


def _slow_consumers(work: Path) -> int:
    """nats-server's slow-consumer warnings so far: a case with any measured a lagging
    subscriber (this process), not the collectors."""
    try:
        return (work / "nats.log").read_text(errors="replace").lower().count("slow consumer")
    except OSError:
        return 0


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


HEADER = (
    f"{'endpoints':>9} {'replicas':>8} {'scrapes/s':>10} {'target/s':>9} {'per replica':>11} "
    f"{'CPU cores':>9} {'CPU/100 ep':>10} {'us/scrape':>9} {'ep/core':>7} "
    f"{'age p50':>8} {'age p99':>8} {'failover gap':>12}"
)


def _row(r: dict[str, Any]) -> str:
    gap = r.get("failover_max_unscraped_ms")
    return (
        f"{r['endpoints']:>9} {r['replicas']:>8} {r.get('scrapes_per_s_total', 0):>10.0f} "
        f"{r.get('target_scrapes_per_s', 0):>9.0f} {r.get('scrapes_per_s_per_replica', 0):>11.0f} "
        f"{r.get('cpu_cores_total', 0):>9.2f} {r.get('cpu_cores_per_100_endpoints', 0):>10.3f} "
        f"{r.get('cpu_us_per_scrape', 0):>9.0f} {r.get('endpoints_per_core_projected', 0):>7.0f} "
        f"{r.get('age_p50_ms', 0):>6.1f}ms {r.get('age_p99_ms', 0):>6.1f}ms "
        f"{(f'{gap:.0f}ms' if gap is not None else '-'):>12}"
        + ("" if r.get("settled", True) else "  (not all endpoints healthy at start)")
        + (
            f"  (NATS dropped messages to the subscriber {r['nats_slow_consumer_events']}x)"
            if r.get("nats_slow_consumer_events")
            else ""
        )
        + (
            f"  ({r['failover_not_scraped_after_kill']} not rescraped after the kill)"
            if r.get("failover_not_scraped_after_kill")
            else ""
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.collector", description=__doc__)
    ap.add_argument("--endpoints", default="100,500,2000")
    ap.add_argument("--replicas", default="1,2,4")
    ap.add_argument("--seconds", type=float, default=5.0, help="measurement window per case")
    ap.add_argument("--interval-ms", type=int, default=50)
    ap.add_argument("--timeout-ms", type=int, default=250)
    ap.add_argument("--settle-s", type=float, default=30.0)
    ap.add_argument("--failover-s", type=float, default=3.0)
    ap.add_argument("--no-failover", dest="failover", action="store_false")
    ap.add_argument("--parse-repeat", type=int, default=300)
    ap.add_argument("--quick", action="store_true", help="100,500 endpoints x 1,2 replicas, 2 s")
    args = ap.parse_args()
    if args.quick:
        args.endpoints, args.replicas, args.seconds = "100,500", "1,2", 2.0
    args.endpoints = [int(x) for x in args.endpoints.split(",")]
    args.replicas = [int(x) for x in args.replicas.split(",")]

    print(f"machine: {os.cpu_count()} cores; interval {args.interval_ms} ms")
    parsing = bench_parsing(args.parse_repeat)
    print(
        f"\n{'page':<18} {'bytes':>7} {'general parse':>14} {'fast extract':>13} "
        f"{'read (fast)':>12}"
    )
    for name, p in parsing.items():
        print(
            f"{name:<18} {p['bytes']:>7} {p['full_parse_us']:>12.1f}us "
            f"{p['fast_extract_us']:>11.1f}us {p['read_page_fast_us']:>10.1f}us"
        )
    print("\n" + HEADER)
    work = Path(tempfile.mkdtemp(prefix="pointsman-bench-collector-"))
    try:
        fleet = asyncio.run(fleet_runs(args, work))
    finally:
        if os.environ.get("BENCH_KEEP"):
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"collector-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(
        json.dumps(
            {
                "args": {k: v for k, v in vars(args).items()},
                "cpu_count": os.cpu_count(),
                "parsing": parsing,
                "fleet": fleet,
            },
            indent=2,
            default=str,
        )
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()

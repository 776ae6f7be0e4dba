"""Soak: N minutes of steady, mixed (plain and streamed) load through the whole local stack,
with errors, latency and every process's memory per minute (``python -m bench.soak``).

Per sample (``--sample-s``, default 60 s) it records the requests started in that interval,
the failed ones, p50/p99 latency, each process's RSS (``/proc/PID/status`` VmRSS) and the
slowest answer of each service's ops endpoint (``/healthz``) polled during the interval.
A process's memory is flagged as growing when, over the second half of the run, its RSS rose at
80 % of the samples or more and by more than ``--growth-pct`` (default 1 %) in all; the first
half is warm-up. Prints a table, writes JSON (default
``bench/results/soak-<time>.json``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench.chaos.scenario import SteadyLoad
from bench.common.proc import rss_kib
from pointsman.stack import Stack, StackOptions
from pointsman.stack.procs import http_status


def growing(series: list[int], growth_pct: float) -> bool:
    """Memory still growing at the end of the run: over the second half of the samples it rose
    at 80 % of the steps or more and by more than ``growth_pct`` in all (the first half is
    warm-up: caches, pools and the allocator's arenas fill)."""
    if len(series) < 4:
        return False
    half = series[len(series) // 2 - 1 :] if len(series) % 2 == 0 else series[len(series) // 2 :]
    steps = list(itertools.pairwise(half))
    rising = sum(1 for a, b in steps if b > a) >= 0.8 * len(steps)
    return rising and half[-1] > half[0] * (1 + growth_pct / 100)


def shim_streams(metrics_url: str) -> dict[str, float]:
    """The shim's ext_proc streams open now and those Envoy reset, from its ``/metrics``."""
    out = {"active": 0.0, "reset_decision": 0.0, "reset_observer": 0.0}
    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return out
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "pointsman_shim_active_streams":
                out["active"] = sample.value
            elif sample.name == "pointsman_shim_streams_reset_total":
                out[f"reset_{sample.labels.get('stream', '')}"] = sample.value
    return out


class OpsProbe:
    """Polls every service's ``/healthz`` every 0.5 s and keeps the slowest answer since the
    last :meth:`take` (an answer that never came counts as its 5 s timeout)."""

    def __init__(self, urls: dict[str, str]) -> None:
        self.urls = urls
        self.slowest: dict[str, float] = dict.fromkeys(urls, 0.0)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def take(self) -> dict[str, float]:
        with self._lock:
            out = {k: round(v * 1000, 1) for k, v in self.slowest.items()}
            self.slowest = dict.fromkeys(self.urls, 0.0)
        return out

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            for name, url in self.urls.items():
                began = time.monotonic()
                ok = http_status(url, timeout=5.0) == 200
                took = time.monotonic() - began if ok else 5.0
                with self._lock:
                    self.slowest[name] = max(self.slowest[name], took)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="length of the run (default 10)")
    p.add_argument("--rate", type=float, default=20.0, help="requests/s (default 20)")
    p.add_argument(
        "--stream-every", type=int, default=3, help="every Nth request streams (default 3)"
    )
    p.add_argument(
        "--disconnect-every",
        type=int,
        default=0,
        help="every Nth request the client hangs up early: a stream after its first chunk, a "
        "plain request 5 ms after it was sent (default 0: never)",
    )
    p.add_argument("--sample-s", type=float, default=60.0, help="sample interval (default 60 s)")
    p.add_argument(
        "--growth-pct",
        type=float,
        default=1.0,
        help="growth flag: RSS rise over the second half (default 1 %%)",
    )
    p.add_argument("--classifier", action="store_true", help="start the classifier too")
    p.add_argument("--out", type=Path, default=None, help="JSON results path")
    args = p.parse_args(argv)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    options = StackOptions(
        models=["alpha", "beta"],
        replicas=2,
        gateway_port=0,
        sim_args=["--time-scale", "0.02", "--max-num-seqs", "8"],
        classifier=args.classifier,
        ready_timeout=120.0,
        overrides={"shim": {"pick_timeout_ms": 300}},
    )
    samples: list[dict[str, Any]] = []
    with Stack(options) as stack:
        ops = OpsProbe(
            {
                name: f"http://127.0.0.1:{stack.ports[f'{name}_http']}/healthz"
                for name in ("collector", "picker", "classifier", "shim")
                if name in stack.children
            }
        )
        models = [*stack.pools, *(["auto"] if args.classifier else [])]
        load = SteadyLoad(
            stack.gateway_url,
            models,
            rate=args.rate,
            stream_every=args.stream_every,
            disconnect_every=args.disconnect_every,
        )
        load.start()
        ops.start()
        began = time.monotonic()
        t0 = began
        try:
            while t0 - began < args.minutes * 60 - 1e-6:
                time.sleep(max(0.0, t0 + args.sample_s - time.monotonic()))
                t1 = time.monotonic()
                calls = load.calls_between(t0, t1)
                lat = sorted(
                    (c.end - c.start) * 1000 for c in calls if not (c.failed or c.disconnected)
                )
                rss = {n: rss_kib(c.pid) for n, c in stack.children.items()}
                sample: dict[str, Any] = {
                    "t_s": round(t1 - began),
                    "sent": len(calls),
                    "failed": sum(1 for c in calls if c.failed),
                    "disconnected": sum(1 for c in calls if c.disconnected),
                    "p50_ms": round(statistics.median(lat), 1) if lat else None,
                    "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 1)
                    if lat
                    else None,
                    "rss_kib": rss,
                    "errors": sorted({f"{c.status} {c.error[:100]}" for c in calls if c.failed})[
                        :5
                    ],
                    "ops_slowest_ms": ops.take(),
                    "shim_streams": shim_streams(
                        f"http://127.0.0.1:{stack.ports['shim_http']}/metrics"
                    ),
                }
                samples.append(sample)
                print(
                    f"{sample['t_s']:>5}s sent {sample['sent']:>5} failed {sample['failed']:>3} "
                    f"p50 {sample['p50_ms']} ms p99 {sample['p99_ms']} ms "
                    f"shim RSS {rss.get('shim', 0) / 1024:.1f} MiB "
                    f"disconnected {sample['disconnected']} "
                    f"streams reset {sample['shim_streams']['reset_decision']:.0f}"
                    f"+{sample['shim_streams']['reset_observer']:.0f}",
                    flush=True,
                )
                t0 = t1
        finally:
            ops.stop()
            load.stop()
    names = list(samples[0]["rss_kib"]) if samples else []
    flagged = {
        n: growing([s["rss_kib"][n] for s in samples], args.growth_pct)
        for n in names
        if all(s["rss_kib"][n] for s in samples)
    }
    print("\nRSS per process, MiB, per sample (GROWING: still rising over the second half)")
    for n in names:
        series = " ".join(f"{s['rss_kib'][n] / 1024:6.1f}" for s in samples)
        print(f"  {n:<22} {series}  {'GROWING' if flagged.get(n) else 'flat'}")
    errors = sum(s["failed"] for s in samples)
    print(f"\nrequests {sum(s['sent'] for s in samples)}, failed {errors}")
    out = args.out or Path("bench/results") / f"soak-{started.replace(':', '')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "run": {
                    "minutes": args.minutes,
                    "rate": args.rate,
                    "stream_every": args.stream_every,
                    "disconnect_every": args.disconnect_every,
                    "sample_s": args.sample_s,
                    "classifier": args.classifier,
                    "cpus": os.cpu_count(),
                    "time": started,
                },
                "samples": samples,
                "growing": flagged,
            },
            indent=2,
        )
    )
    print(f"written to {out}")
    return 1 if errors or any(flagged.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())

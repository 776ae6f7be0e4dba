"""``python -m bench.overhead.idle``: each service's CPU with no traffic, this tree against a
baseline commit in the same run.

``bench.overhead``'s stack (two models, one simulated replica each, the collector publishing
both pools' snapshots every 50 ms) is started and left without requests; the services' CPU time
(``/proc``, user + system) over ``--seconds`` is their idle work: the snapshots they take, their
timers. The baseline's ``src`` and ``services`` come from ``git archive <ref>`` and run first on
``PYTHONPATH`` (the stack's services inherit it); the two trees alternate, ``--rounds`` each.
``/proc`` counts in clock ticks (10 ms), so a round of 20 s resolves about 0.5 ms/s.

    python -m bench.overhead.idle [--baseline REF] [--rounds 2] [--seconds 20]

Writes ``bench/results/overhead_idle.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.overhead.hot_path import add_baseline, baseline_of, export, run_worker

SERVICES = ("picker", "shim", "collector", "nats-server")
TREES = ("src", "services")


def _measure(seconds: float) -> dict[str, float]:
    """In the child: the stack's idle CPU per service in ms/s."""
    from bench.common.proc import cpu_seconds
    from bench.overhead.__main__ import bench_stack

    # One model, no API settings: the stack every baseline can start (bench.overhead --no-apis).
    args = argparse.Namespace(body_mode="BUFFERED", response_path="observer", no_apis=True)
    with bench_stack(args) as stack:
        time.sleep(3)  # start-up work done
        pids = {n: c.popen.pid for n, c in stack.children.items() if n in SERVICES}
        before = {n: cpu_seconds(pid) for n, pid in pids.items()}
        time.sleep(seconds)
        return {n: (cpu_seconds(pid) - before[n]) / seconds * 1000 for n, pid in pids.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.overhead.idle", description=__doc__.split("\n\n")[0]
    )
    add_baseline(p)
    p.add_argument("--rounds", type=int, default=2, help="stacks per tree, alternating")
    p.add_argument("--seconds", type=float, default=20.0, help="idle time measured per stack")
    p.add_argument("--out", default="bench/results/overhead_idle.json")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(_measure(args.seconds)))
        return 0

    baseline = baseline_of(args)
    with tempfile.TemporaryDirectory(prefix="idle-") as tmp:
        name = f"baseline {export(baseline, Path(tmp, 'base'), TREES)}"
        trees: dict[str, Path | None] = {name: Path(tmp, "base"), "this tree": None}
        rounds: dict[str, list[dict[str, float]]] = {n: [] for n in trees}
        for r in range(args.rounds):
            for n in list(trees) if r % 2 == 0 else list(reversed(trees)):
                rounds[n].append(
                    run_worker("bench.overhead.idle", trees[n], "--seconds", str(args.seconds))
                )
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    summary = {
        n: {s: statistics.median(run.get(s, 0.0) for run in runs) for s in SERVICES}
        for n, runs in rounds.items()
    }
    print(f"idle CPU, ms per second (median of {args.rounds} rounds of {args.seconds:g} s)")
    print(f"{'service':<12} {name:>18} {'this tree':>10} {'change':>8}")
    for s in SERVICES:
        b, t = summary[name][s], summary["this tree"][s]
        print(f"{s:<12} {b:18.1f} {t:10.1f} {t - b:+8.1f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "baseline": baseline,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "cpus": os.cpu_count(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "summary": summary,
        "runs": rounds,
    }
    out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

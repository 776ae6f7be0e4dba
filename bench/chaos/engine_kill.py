"""SIGKILL one of the classifier's engine processes under load through ``auto``, with and
without the spare engine, and count what the clients saw (``python -m bench.chaos.engine_kill``).

The stack is ``pointsman up``'s (the classifier with its safety checks on, so a prompt the
classifier cannot answer in time gets 503 ``safety_unavailable``). Every request asks for
``auto``; every ``--long-every``-th carries a long document (about 7,000 characters, read in
windows on the classifier's long lane). After ``--warm`` seconds the engine of ``--lane`` is
killed, and the load runs ``--after`` seconds more. One round per setting of
``classifier.engine_spare`` (off first: the baseline), each on a fresh stack, repeated
``--rounds`` times, alternating.

Prints a table (setting, requests, failed, failed within 10 s of the kill, failed before it,
their errors, the classifier's engine RSS) and writes it as JSON (default
``bench/results/engine-kill-<time>.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from bench.chaos.scenario import SteadyLoad
from bench.common.metrics import sample
from bench.common.proc import rss_kib, spawned_children
from pointsman.stack import Stack, StackOptions
from pointsman.stack.procs import wait_ready

DOCUMENT = (
    Path(__file__).parents[2] / "tests" / "integration" / "e2e" / "data" / "quarterly_report.txt"
)


def _metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return sample(resp.read().decode(), name)


def one_round(spare: bool, args: argparse.Namespace) -> dict[str, Any]:
    document = "Summarise this report:\n" + DOCUMENT.read_text() * 2
    options = StackOptions(
        classifier=True,
        gateway_port=0,
        ready_timeout=180.0,
        overrides={"classifier": {"engine_spare": spare}},
    )
    with Stack(options) as stack:
        pid = stack.children["classifier"].pid
        metrics = f"http://127.0.0.1:{stack.ports['classifier_http']}/metrics"
        engines = 3 if spare else 2

        def settled() -> bool:
            return (
                _metric(metrics, "pointsman_classifier_lanes") == 2.0
                and _metric(metrics, "pointsman_classifier_spare_engines") == float(spare)
                and len(spawned_children(pid)) == engines
            )

        wait_ready(None, settled, 300, "the classifier's engines")
        rss = [rss_kib(p) for p in spawned_children(pid)]
        every = args.long_every
        load = SteadyLoad(
            stack.gateway_url,
            ["auto"],
            rate=args.rate,
            stream_every=1_000_000,
            prompt=lambda n: document if every and n % every == every - 1 else f"Hi! {n}",
        )
        start = time.monotonic()
        load.start()
        try:
            time.sleep(args.warm)
            children = spawned_children(pid)
            victim = children[0] if args.lane == "main" else children[1]
            killed_at = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            time.sleep(args.after)
        finally:
            load.stop()
        calls = load.calls_between(start, time.monotonic())
    failed = [c for c in calls if c.failed]
    near = [c for c in failed if killed_at <= c.end and c.start < killed_at + 10]
    errors = Counter(
        m.group(1) if (m := re.search(r"\(the classifier ([^)]+)\)", c.error)) else c.error[:60]
        for c in failed
    )
    return {
        "engine_spare": spare,
        "lane_killed": args.lane,
        "sent": len(calls),
        "failed": len(failed),
        "failed_near_kill": len(near),
        "failed_before_kill": sum(1 for c in failed if c.end < killed_at),
        "errors": dict(errors),
        # when each failed request started, in seconds after the kill
        "failed_at_s": [round(c.start - killed_at, 2) for c in failed],
        "engine_rss_mib": [round(r / 1024) for r in rss],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.chaos.engine_kill", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--rate", type=float, default=10.0, help="requests/s (default 10)")
    p.add_argument("--long-every", type=int, default=5, help="every Nth is a long document")
    p.add_argument("--lane", choices=["main", "long"], default="main", help="engine to kill")
    p.add_argument("--warm", type=float, default=10.0, help="seconds of load before the kill")
    p.add_argument("--after", type=float, default=30.0, help="seconds of load after it")
    p.add_argument("--rounds", type=int, default=1, help="rounds of (spare off, spare on)")
    p.add_argument("--out", type=Path, default=None, help="JSON results path")
    args = p.parse_args(argv)
    started = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())
    rows = []
    for _ in range(args.rounds):
        for spare in (False, True):
            row = one_round(spare, args)
            rows.append(row)
            print(row, flush=True)
    header = "| engine_spare | lane killed | sent | failed | within 10 s of the kill | before it | errors | engine RSS MiB |"
    print("\n" + header + "\n|" + "---|" * 8)
    for r in rows:
        print(
            f"| {'on' if r['engine_spare'] else 'off'} | {r['lane_killed']} | {r['sent']} | "
            f"{r['failed']} | {r['failed_near_kill']} | {r['failed_before_kill']} | "
            f"{r['errors'] or '-'} | {r['engine_rss_mib']} |"
        )
    out = args.out or Path("bench/results") / f"engine-kill-{started}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"started": started, "args": vars(args) | {"out": str(out)}, "rows": rows}, indent=2
        )
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

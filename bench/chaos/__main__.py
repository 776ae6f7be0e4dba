"""Chaos table: SIGKILL each part of a supervised local stack in turn, under a steady load
through Envoy, and report what the clients saw (``python -m bench.chaos``).

Prints the table (fault, requests sent, failed, served failing open, longest error window,
recovery time) and writes it as JSON (default ``bench/results/chaos-<time>.json``). The same
scenario is the ``tests/chaos`` suite, which asserts the promises of docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from bench.chaos.scenario import (
    SteadyLoad,
    all_services_ready,
    chaos_options,
    faults,
    run_fault,
    sigterm_exit_times,
    table,
)
from pointsman.stack import Stack
from pointsman.stack.procs import wait_ready
from pointsman.stack.supervisor import RestartPolicy


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=10.0, help="requests/s (default 10)")
    p.add_argument(
        "--no-classifier", action="store_true", help="leave the classifier out (faster start)"
    )
    p.add_argument("--out", type=Path, default=None, help="JSON results path")
    args = p.parse_args(argv)
    rows = []
    exits: dict[str, dict[str, float]] = {}
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with Stack(chaos_options(not args.no_classifier)) as stack:
        stack.supervise(policy=RestartPolicy(initial_s=0.2, max_s=5.0))
        models = [*stack.pools, *([] if args.no_classifier else ["auto"])]
        load = SteadyLoad(stack.gateway_url, models, rate=args.rate)
        load.start()
        try:
            for fault in faults(stack):
                row = run_fault(stack, load, fault)
                rows.append(row)
                print(table([row]).splitlines()[-1], flush=True)
            exits = {"with NATS": sigterm_exit_times(stack, nats_gone=False)}
            wait_ready(None, lambda: all_services_ready(stack), 180, "services back")
            exits["NATS gone"] = sigterm_exit_times(stack, nats_gone=True)
        finally:
            load.stop()
    print("\n" + table(rows))
    for case, times in exits.items():
        print(f"seconds from SIGTERM to exit, {case}: {times}")
    out = args.out or Path("bench/results") / f"chaos-{started.replace(':', '')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "run": {
                    "rate": args.rate,
                    "classifier": not args.no_classifier,
                    "cpus": os.cpu_count(),
                    "time": started,
                },
                "rows": [r.as_dict() for r in rows],
                "sigterm_exit_s": exits,
            },
            indent=2,
        )
    )
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

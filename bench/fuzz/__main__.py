"""Fuzz the whole local stack (``pointsman up``: Envoy, shim, picker, collector, simulators; the
classifier with ``--classifier``) with bad inputs and count the answers by status.

    .venv/bin/python -m bench.fuzz [--random 800] [--seed 12] [--workers 4] [--classifier]

Every error must be a 4xx/5xx with a JSON body in the API's error format, nothing that must be
refused may get a 2xx, every request gets an answer, and the shim never hits an unexpected
exception (``pointsman_shim_internal_errors_total``). Prints the table by family and status and
every problem; writes bench/results/fuzz.json; exits 1 on any problem.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.fuzz.corpus import cases
from bench.fuzz.run import run

RESULTS = Path(__file__).resolve().parents[1] / "results"
MODEL = "alpha"


def internal_errors(metrics: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("pointsman_shim_internal_errors_total{")
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__)
    parser.add_argument("--random", type=int, default=800, help="random cases (plus ~180 fixed)")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--classifier", action="store_true", help="also start the classifier")
    args = parser.parse_args(argv)

    from pointsman.stack import Stack, StackOptions

    options = StackOptions(
        models=[MODEL],
        replicas=2,
        gateway_port=0,
        classifier=args.classifier,
        sim_args=["--time-scale", "0.02"],
        overrides={"classifier": {"default_model": MODEL, "device": "cpu"}}
        if args.classifier
        else {},
    )
    started = time.monotonic()
    with Stack(options) as stack:
        max_body = int(stack.config.get("shim", {}).get("max_body_bytes", 4 * 1024 * 1024))
        corpus = cases(MODEL, max_body, seed=args.seed, random_count=args.random)
        report = run(stack.gateway_url, corpus, workers=args.workers)
        url = f"http://127.0.0.1:{stack.ports['shim_http']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            crashes = internal_errors(r.read().decode())
    took = time.monotonic() - started

    print(f"\n{report.sent} requests through Envoy + shim ({MODEL}, max_body {max_body} bytes)\n")
    print(report.table())
    print(f"\nshim internal errors: {crashes:g}")
    for case, _answer, found in report.problems:
        print(f"PROBLEM {case.family}/{case.name}: {'; '.join(found)}")
    for case, answer, _ in report.notable():
        print(f"note: {case.family}/{case.name}: {answer.status} {answer.body[:160]!r}")

    results: dict[str, Any] = {
        "params": {
            "random": args.random,
            "seed": args.seed,
            "workers": args.workers,
            "classifier": args.classifier,
            "max_body_bytes": max_body,
            "cpus": os.cpu_count(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(took, 1),
        },
        "sent": report.sent,
        "by_family_status": {
            fam: {str(s): report.by_status[(fam, s)] for s in report.statuses()}
            for fam in report.families()
        },
        "problems": [
            {"family": c.family, "case": c.name, "status": a.status, "problems": p}
            for c, a, p in report.problems
        ],
        "shim_internal_errors": crashes,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "fuzz.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 1 if report.problems or crashes else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

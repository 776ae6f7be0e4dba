"""``python -m bench.overhead.paired``: the change in end-to-end p50 from a baseline commit to
this tree, with every variant's stack up at the same time and their requests interleaved.

    python -m bench.overhead.paired --baseline 00ed12e [--restarts 3] [--rates 50,100] [--seconds 60]

Why not only ``bench.overhead.versus``: it runs whole stacks one after another, so the slow drift
of a shared machine (other tenants, clock speed, a neighbour in the cache) lands on one
variant's run and not on the other's. On the 2-core development VM two runs of the same code
differed by 0.39 ms at p50 there (stop 25), more than issue 10's 0.1 ms question. Here each
variant's stack runs through the whole measurement and the client sends to all of them in turn
(``bench.common.load.interleaved_open_loop``: each gets ``rate`` requests/s, evenly spaced, the
order rotating), so drift lands on every variant alike. The cost: the stacks share the machine,
``n x rate`` requests/s in all, so a rate here loads the machine as ``n`` times that rate of
one stack.

The stacks are ``versus``'s: this checkout's ``bench.overhead`` stack with ``--no-apis`` (one
model, one simulated replica answering at once) on each tree's code (the baseline's ``src`` and
``services`` from ``git archive``, given this tree's shim-cluster limits when it lacks them), and
a third variant, this tree on an open bus, when the baseline predates bus authentication. Each
runs in a child process of its own (``--serve``), started fresh for every restart (in the
opposite order every other restart), so one unlucky start does not decide the result. Latency
is end to end through Envoy; there is no Envoy-only floor, since the same Envoy and floor would
cancel out of the change. ``--this REF`` measures a commit instead of the working tree (one
change of a series against its parent).

Reported per rate: each variant's p50 per restart, the change against the baseline per restart,
their mean and its standard error over restarts (what the verdict reads), and the change of the
pooled p50s. JSON: ``bench/results/overhead_paired.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common.load import Result, interleaved_open_loop, warm
from bench.common.proc import cpu_seconds
from bench.common.stats import percentile
from bench.overhead.__main__ import PAYLOAD, bench_stack
from bench.overhead.hot_path import ROOT, add_baseline, baseline_of, tree_env
from bench.overhead.versus import export_like_for_like, has_bus_auth

THIS = "this tree"


#: The picker's issue-17 mechanisms, which the baseline predates: ``--lean`` turns them off.
LEAN = {"picker": {"flow_control": {"enabled": False}, "latency": {"enabled": False}}}


def serve(open_bus: bool, lean: bool) -> int:
    """Child: start the bench stack on this process's tree, print its chat URL and its parts'
    pids as one JSON line, keep it up until stdin closes. ``lean``: without :data:`LEAN`'s
    mechanisms."""
    ns = argparse.Namespace(
        no_apis=True, open_bus=open_bus, body_mode="BUFFERED", response_path="observer"
    )
    stack = bench_stack(ns)
    if lean:
        stack.options.overrides = {**stack.options.overrides, **LEAN}
    with stack:
        pids = {name: child.popen.pid for name, child in stack.children.items()}
        url = f"{stack.gateway_url}/v1/chat/completions"
        print(json.dumps({"url": url, "pids": pids}), flush=True)
        sys.stdin.read()
    return 0


def start(
    tree: Path | None, extra: tuple[str, ...], log: Path
) -> tuple[subprocess.Popen[str], str, dict[str, int]]:
    """A ``--serve`` child on ``tree`` (``None``: this tree), its URL and the pids of its stack's
    parts, once its stack is up."""
    for attempt in (1, 2):
        with log.open("a") as err:
            child = subprocess.Popen(
                [sys.executable, "-m", "bench.overhead.paired", "--serve", *extra],
                cwd=ROOT, env=tree_env(tree), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=err, text=True,
            )  # fmt: skip
        assert child.stdout is not None
        line = child.stdout.readline()
        if line:
            up = json.loads(line)
            return child, str(up["url"]), {n: int(pid) for n, pid in up["pids"].items()}
        child.wait()
        # once more when the stack did not start (a port chosen free taken before it bound)
        if attempt == 1:
            print(f"a stack did not start, once more (log: {log})", file=sys.stderr)
    raise SystemExit(f"the stack on {tree or THIS} did not start:\n{log.read_text()[-3000:]}")


def stop(child: subprocess.Popen[str]) -> None:
    assert child.stdin is not None
    child.stdin.close()
    try:
        child.wait(60)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


async def measure(
    urls: list[str], pids: list[dict[str, int]], rates: list[float], seconds: float
) -> list[tuple[list[Result], list[dict[str, float]]]]:
    """Warm every stack, then each rate in turn, interleaved over all of them: per rate, each
    stack's result and the CPU seconds each of its parts used meanwhile."""
    for url in urls:
        await warm(url, PAYLOAD, 100)
    out = []
    for rate in rates:
        before = [{n: cpu_seconds(pid) for n, pid in p.items()} for p in pids]
        results = await interleaved_open_loop(urls, PAYLOAD, rate, seconds)
        used = [
            {n: cpu_seconds(pid) - b[n] for n, pid in p.items()}
            for p, b in zip(pids, before, strict=True)
        ]
        out.append((results, used))
    return out


def summarise(
    p50s: dict[str, list[float]], pooled: dict[str, float], baseline: str
) -> dict[str, Any]:
    """One rate's figures from each variant's p50 per restart and pooled p50 (ms): the change
    against ``baseline`` per restart, its mean and standard error over restarts, and the change
    of the pooled p50s."""
    out: dict[str, Any] = {}
    for name, values in p50s.items():
        if name == baseline:
            continue
        changes = [v - b for v, b in zip(values, p50s[baseline], strict=True)]
        se = statistics.stdev(changes) / math.sqrt(len(changes)) if len(changes) > 1 else math.nan
        out[name] = {
            "changes_ms": changes,
            "change_mean_ms": statistics.mean(changes),
            "change_se_ms": se,
            "pooled_change_ms": pooled[name] - pooled[baseline],
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.overhead.paired", description=__doc__.split("\n\n")[0]
    )
    add_baseline(p)
    p.add_argument("--restarts", type=int, default=3, help="fresh stacks, measured in turn")
    p.add_argument("--rates", default="50,100", help="requests/s to each stack (default 50,100)")
    p.add_argument("--seconds", type=float, default=60.0, help="per rate and restart")
    p.add_argument("--out", type=Path, default=Path("bench/results/overhead_paired.json"))
    p.add_argument(
        "--this",
        metavar="REF",
        help="measure this commit (git archive) instead of the working tree: one change of a "
        "series against its parent (--baseline REF^)",
    )
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--open-bus", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--lean",
        action="store_true",
        help="a further variant, this tree on an open bus with the picker's flow control and "
        "latency predictor off (issue 17's mechanisms, which a baseline may predate): the cost "
        "of the code that the baseline also had",
    )
    args = p.parse_args(argv)
    if args.serve:
        return serve(args.open_bus, args.lean)

    baseline = baseline_of(args)
    rates = [float(x) for x in args.rates.split(",") if x.strip()]
    latencies: dict[str, dict[str, list[list[float]]]] = {}
    errors: dict[str, dict[str, int]] = {}
    #: CPU per served request of each part of each variant's stack (us), mean over restarts
    cpu_us: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="overhead-paired-") as tmp:
        base_tree = Path(tmp, "base")
        commit, patched = export_like_for_like(baseline, base_tree)
        name = f"baseline {commit}"
        this_tree: Path | None = None
        this_name = THIS
        if args.this:
            this_tree = Path(tmp, "this")
            commit, this_patched = export_like_for_like(args.this, this_tree)
            this_name = f"this {commit}"
            patched = patched or this_patched
        trees: dict[str, tuple[Path | None, tuple[str, ...]]] = {
            name: (base_tree, ()),
            this_name: (this_tree, ()),
        }
        if not has_bus_auth(base_tree) and has_bus_auth(this_tree or ROOT):
            trees[f"{this_name}, open bus"] = (this_tree, ("--open-bus",))
        if args.lean:
            trees[f"{this_name}, open bus, lean"] = (this_tree, ("--open-bus", "--lean"))
        for r in range(args.restarts):
            children = {}
            try:
                # the start order alternates: a stack started first or last gets no lasting
                # advantage (where its processes land, what the machine was doing meanwhile)
                names = list(trees) if r % 2 == 0 else list(reversed(trees))
                for n in names:
                    tree, extra = trees[n]
                    children[n] = start(tree, extra, Path(tmp, f"{n.replace(' ', '_')}-{r}.log"))
                urls = [children[n][1] for n in trees]
                pids = [children[n][2] for n in trees]
                per_rate = asyncio.run(measure(urls, pids, rates, args.seconds))
            finally:
                for child, _, _ in children.values():
                    stop(child)
            for rate, (results, used) in zip(rates, per_rate, strict=True):
                key = f"{rate:g}"
                for n, res, cpu in zip(trees, results, used, strict=True):
                    latencies.setdefault(key, {}).setdefault(n, []).append(res.latencies_ms)
                    errors.setdefault(key, {}).setdefault(n, 0)
                    errors[key][n] += res.errors
                    seen = cpu_us.setdefault(key, {}).setdefault(n, {})
                    for part, seconds in cpu.items():
                        seen[part] = (
                            seen.get(part, 0.0) + 1e6 * seconds / max(1, res.ok) / args.restarts
                        )
            print(f"restart {r + 1}/{args.restarts} done", file=sys.stderr)

    print(
        f"\nbench.overhead.paired: {name} against {' and '.join(n for n in trees if n != name)}, "
        f"stacks up together, requests interleaved, {args.restarts} restarts x {args.seconds:g} s "
        "per rate; end-to-end p50 (ms) per restart, change = variant less baseline"
        + ("; a tree without shim-cluster limits got this checkout's" if patched else "")
    )
    print(
        f"{'rate':>6}  {'variant':<22}{'p50 per restart':<30}{'change per restart':<30}{'mean +- se':>16}{'pooled':>9}"
    )
    figures: dict[str, Any] = {}
    for key, by_variant in latencies.items():
        p50s = {n: [percentile(run, 50) for run in runs] for n, runs in by_variant.items()}
        pooled = {
            n: percentile([x for run in runs for x in run], 50) for n, runs in by_variant.items()
        }
        figures[key] = {"p50_ms": p50s, "pooled_p50_ms": pooled, **summarise(p50s, pooled, name)}
        print(f"{key:>6}  {name:<22}{', '.join(f'{v:.3f}' for v in p50s[name]):<30}")
        for n in by_variant:
            if n == name:
                continue
            f = figures[key][n]
            print(
                f"{'':>6}  {n:<22}{', '.join(f'{v:.3f}' for v in p50s[n]):<30}"
                f"{', '.join(f'{c:+.3f}' for c in f['changes_ms']):<30}"
                f"{f['change_mean_ms']:>+8.3f} +- {f['change_se_ms']:.3f}{f['pooled_change_ms']:>+9.3f}"
            )
    for rate_key, variants_cpu in cpu_us.items():
        for n, parts in variants_cpu.items():
            line = ", ".join(f"{part} {v:.0f}" for part, v in sorted(parts.items()))
            print(f"CPU us per request at {rate_key}/s, {n}: {line}")
    print(f"failed requests per rate and variant: {errors}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "baseline": baseline,
                "baseline_given_shim_limits": patched,
                "restarts": args.restarts,
                "rates": [f"{r:g}" for r in rates],
                "seconds": args.seconds,
                "variants": list(trees),
                "cpus": os.cpu_count(),
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "figures": figures,
                "errors": errors,
                "cpu_us_per_request": cpu_us,
                "latencies_ms": latencies,
            }
        )
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

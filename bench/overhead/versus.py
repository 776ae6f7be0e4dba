"""bench.overhead against a baseline commit, in one run: what a change added on the request path.

    python -m bench.overhead.versus --baseline 00ed12e [--rounds 2] [--rates 50,100,200] [--seconds 6]

Each round runs this checkout's ``python -m bench.overhead --no-apis`` twice, in child processes,
in alternating order: once on the baseline's ``src`` and ``services`` (``git archive``, first on
``PYTHONPATH``, as ``bench.overhead.hot_path`` does) and once on this tree. So the harness, the
load and the do-nothing floor are the same; only Pointsman's code differs. Both stacks have one
model (``--no-apis``: older trees have no per-API rows to measure).

Like for like at the gateway too: a baseline whose Envoy template leaves the shim cluster at
Envoy's default limits (trees before the fix that raised them) gets this tree's limits, because
past 1,024 concurrent ext_proc streams its requests would skip the shim (fail open) and flatter
it (``bench/common/envoy_stats.py``). The ext_proc streams that failed open are printed per run.

Like for like on the bus: a baseline from before NATS authentication (its stack has no
``nats_auth`` switch: trees before issue 11) runs on an open bus, so this tree runs a third
variant on the open bus too (``bench.overhead --open-bus``), alternating with the other two.
"this tree" (authenticated, as shipped) against "this tree, open bus" is then the cost of
authentication in the same run; "this tree, open bus" against the baseline is the cost of the
code.

The table: each rate's p50 added over Envoy alone, per run, and the change (mean of each variant's
runs less the baseline's); the closed-loop throughput the same way. The results JSON holds every
run's whole ``bench.overhead`` result.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.overhead.hot_path import ROOT, add_baseline, baseline_of, export, tree_env

TEMPLATE = Path("src/pointsman/stack/envoy.template.yaml")
SHIM_CLUSTER = "    - name: pointsman_shim\n"


def shim_limits(template: str) -> str:
    """The ``circuit_breakers`` block of the shim cluster in ``template`` ("" when none)."""
    start = template.find(SHIM_CLUSTER)
    if start < 0:
        return ""
    end = template.find("\n    - name: ", start + len(SHIM_CLUSTER))
    cluster = template[start : end if end >= 0 else len(template)]
    lines = cluster.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.strip() == "circuit_breakers:":
            indent = len(line) - len(line.lstrip())
            block = [line]
            for following in lines[i + 1 :]:
                if following.strip() and len(following) - len(following.lstrip()) <= indent:
                    break
                block.append(following)
            return "".join(block)
    return ""


def with_shim_limits(template: str, limits: str) -> str:
    """``template`` with ``limits`` (a ``circuit_breakers`` block) in its shim cluster, right
    after the cluster's name, unless it sets limits of its own."""
    if not limits or shim_limits(template) or SHIM_CLUSTER not in template:
        return template
    return template.replace(SHIM_CLUSTER, SHIM_CLUSTER + limits, 1)


def export_like_for_like(ref: str, into: Path) -> tuple[str, bool]:
    """``ref``'s ``src`` and ``services`` under ``into`` (:func:`bench.overhead.hot_path.export`),
    its Envoy template given this checkout's shim-cluster limits when it sets none: its short
    commit id, and whether the template had to be given them."""
    commit = export(ref, into, ("src", "services"))
    template = into / TEMPLATE
    if not template.exists():
        return commit, False
    text = template.read_text()
    template.write_text(with_shim_limits(text, shim_limits((ROOT / TEMPLATE).read_text())))
    return commit, template.read_text() != text


STACK = Path("src/pointsman/stack/__init__.py")
OPEN_BUS = "this tree, open bus"


def has_bus_auth(tree: Path) -> bool:
    """Whether ``tree``'s stack authenticates its bus (has the ``nats_auth`` switch)."""
    stack = tree / STACK
    return stack.exists() and "nats_auth" in stack.read_text()


def run_once(
    tree: Path | None, out: Path, args: argparse.Namespace, extra: tuple[str, ...] = ()
) -> dict[str, Any]:
    """One ``bench.overhead --no-apis`` run (plus ``extra`` flags) on ``tree`` (``None``: this
    tree); its results."""
    argv = [
        sys.executable, "-m", "bench.overhead", "--no-apis", "--rates", args.rates,
        "--seconds", str(args.seconds), "--rounds", "1", "--out", str(out), *extra,
    ]  # fmt: skip
    for attempt in (1, 2):
        done = subprocess.run(argv, cwd=ROOT, env=tree_env(tree), capture_output=True, text=True)
        if done.returncode == 0:
            break
        # Once more when a stack did not start: with instances side by side, a port chosen
        # free can be taken before its server binds it (seen on the device machine).
        if attempt == 1 and "while starting" in done.stderr:
            print(f"a stack did not start, run again:\n{done.stderr[-600:]}", file=sys.stderr)
            continue
        raise SystemExit(f"bench.overhead failed on {tree or 'this tree'}:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def added_p50(run: dict[str, Any], rate: str) -> float:
    return float(run["added_ms"][rate]["p50"])


def closed_loop(run: dict[str, Any]) -> float:
    return float(run["max_throughput"]["pointsman"]["throughput_rps"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.overhead.versus", description=__doc__.split("\n\n")[0]
    )
    add_baseline(p)
    p.add_argument("--rounds", type=int, default=2, help="runs per tree, alternating")
    p.add_argument("--rates", default="50,100,200", help="open-loop rates (default 50,100,200)")
    p.add_argument("--seconds", type=float, default=6.0, help="length of one phase (default 6 s)")
    p.add_argument("--out", type=Path, default=Path("bench/results/overhead_versus.json"))
    args = p.parse_args(argv)

    baseline = baseline_of(args)
    with tempfile.TemporaryDirectory(prefix="overhead-versus-") as tmp:
        base_tree = Path(tmp, "base")
        commit, patched = export_like_for_like(baseline, base_tree)
        name = f"baseline {commit}"
        trees: dict[str, tuple[Path | None, tuple[str, ...]]] = {
            name: (base_tree, ()),
            "this tree": (None, ()),
        }
        if not has_bus_auth(base_tree):
            trees[OPEN_BUS] = (None, ("--open-bus",))
        runs: dict[str, list[dict[str, Any]]] = {n: [] for n in trees}
        for r in range(args.rounds):
            for n in list(trees) if r % 2 == 0 else list(reversed(trees)):
                tree, extra = trees[n]
                out = Path(tmp, f"run-{n.replace(' ', '_')}-{len(runs[n])}.json")
                runs[n].append(run_once(tree, out, args, extra))
                # each run's figures as it ends: a run cut short (a device call's time limit)
                # still leaves the finished runs in the log
                added = ", ".join(
                    f"{rate}: {v['p50']:.3f}" for rate, v in runs[n][-1]["added_ms"].items()
                )
                print(
                    f"round {r + 1}/{args.rounds}: {n} done; added p50 ms {{{added}}}, closed "
                    f"loop {closed_loop(runs[n][-1]):.0f} req/s",
                    file=sys.stderr,
                )

    rates = [f"{float(x):g}" for x in args.rates.split(",") if x.strip()]
    variants = [n for n in runs if n != name]
    print(
        f"\nbench.overhead.versus: {name} against {' and '.join(variants)}, {args.rounds} runs "
        f"each, alternating; p50 added over Envoy alone (ms), change = mean less the baseline's"
        + ("; the baseline got this tree's shim-cluster limits" if patched else "")
        + (
            "; the baseline predates bus authentication, so this tree also ran on an open bus"
            if OPEN_BUS in runs
            else ""
        )
    )
    print(f"{'rate':>8}  {'variant':<24}{'runs':<28}{'change':>8}")
    change: dict[str, dict[str, float]] = {v: {} for v in variants}
    for rate in rates:
        b = [added_p50(run, rate) for run in runs[name]]
        print(f"{rate:>8}  {name:<24}{', '.join(f'{v:.2f}' for v in b):<28}")
        for v in variants:
            t = [added_p50(run, rate) for run in runs[v]]
            change[v][rate] = statistics.mean(t) - statistics.mean(b)
            print(f"{'':>8}  {v:<24}{', '.join(f'{x:.2f}' for x in t):<28}{change[v][rate]:>+8.2f}")
    b_cap = [closed_loop(run) for run in runs[name]]
    print(f"{'closed':>8}  {name:<24}{', '.join(f'{v:.0f}' for v in b_cap):<28}req/s, x16 clients")
    ratio: dict[str, float] = {}
    for v in variants:
        t_cap = [closed_loop(run) for run in runs[v]]
        base_cap = statistics.mean(b_cap)
        ratio[v] = statistics.mean(t_cap) / base_cap if base_cap else 0.0
        print(f"{'':>8}  {v:<24}{', '.join(f'{x:.0f}' for x in t_cap):<28}{ratio[v]:>7.2f}x")
    skipped = {
        n: [run.get("failed_open", {}).get("pointsman") for run in rs] for n, rs in runs.items()
    }
    print(f"ext_proc streams failed open on the Pointsman path, per run: {skipped}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "baseline": baseline,
                "baseline_given_shim_limits": patched,
                "rounds": args.rounds,
                "rates": rates,
                "seconds": args.seconds,
                "cpus": os.cpu_count(),
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "variants": variants,
                "p50_added_change_ms": change["this tree"],
                "closed_loop_ratio": ratio["this tree"],
                "p50_added_change_ms_by_variant": change,
                "closed_loop_ratio_by_variant": ratio,
                "runs": runs,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m bench.overhead --security MODE``: what a security layer adds on the request path.

Two whole stacks (Envoy, shim, NATS, picker, collector, one fast simulator each) run side by
side, the same except for MODE; the same open-loop load goes alternately through each gateway
(without, with, without, ...), so drift on a busy machine hits both. MODE:

* ``auth``: NATS with the generated NKeys and permissions, against an open bus;
* ``nats-tls``: NATS over TLS (and NKeys), against NKeys alone;
* ``extproc-tls``: ext_proc between Envoy and the shim over mutual TLS, against plaintext gRPC.

Reports p50/p90/p99 of each and the ratio with/without.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from bench.common.load import Result, open_loop, warm
from bench.overhead.__main__ import PAYLOAD, bench_stack, run_params

MODES: dict[str, tuple[dict[str, bool], dict[str, bool]]] = {
    "auth": ({"nats_auth": False}, {"nats_auth": True}),
    "nats-tls": ({"nats_auth": True}, {"nats_auth": True, "nats_tls": True}),
    "extproc-tls": ({"extproc_tls": False}, {"extproc_tls": True}),
}


async def _phases(urls: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    for url in urls.values():
        await warm(url, PAYLOAD, 100)
    out: dict[str, Any] = {}
    for rate in args.rate_list:
        merged = {name: Result() for name in urls}
        for _ in range(args.rounds):
            for name, url in urls.items():
                merged[name].add(await open_loop(url, PAYLOAD, rate, args.seconds))
        out[f"{rate:g}"] = {name: res.summary() for name, res in merged.items()}
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    without, with_ = MODES[args.security]
    with bench_stack(args, **without) as plain, bench_stack(args, **with_) as secured:
        urls = {
            "without": f"{plain.gateway_url}/v1/chat/completions",
            "with": f"{secured.gateway_url}/v1/chat/completions",
        }
        results = asyncio.run(_phases(urls, args))
    return {
        "mode": args.security,
        "open_loop": results,
        "params": run_params(args, rates=args.rate_list),
    }


def report(results: dict[str, Any], out: Path) -> None:
    print(
        f"\nbench/overhead --security {results['mode']}: open loop, "
        f"{results['params']['rounds']}x{results['params']['seconds']:.0f} s per side and rate"
    )
    print(f"{'rate':>6} {'side':<9}{'ok':>7}{'err':>5}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}")
    results["ratio"] = {}
    for rate, rows in results["open_loop"].items():
        for name, row in rows.items():
            print(
                f"{rate:>6} {name:<9}{row['requests_ok']:>7}{row['errors']:>5}"
                f"{row['p50_ms']:>9.2f}{row['p90_ms']:>9.2f}{row['p99_ms']:>9.2f}"
            )
        ratio = {
            f"p{q}": rows["with"][f"p{q}_ms"] / rows["without"][f"p{q}_ms"]
            if rows["without"][f"p{q}_ms"]
            else float("nan")
            for q in (50, 90, 99)
        }
        results["ratio"][rate] = ratio
        print(
            f"{rate:>6} {'ratio':<9}{'':>12}{ratio['p50']:>9.3f}{ratio['p90']:>9.3f}"
            f"{ratio['p99']:>9.3f}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")

"""bench/overhead: what Pointsman adds on the request path.

The same load, in one run, through three gateways in front of the same simulator:

* **baseline**: Envoy straight to the simulator (a static cluster, no ext_proc);
* **floor**: Pointsman's Envoy config with a do-nothing Python ext_proc server
  (``bench/overhead/floor.py``) that routes every request to the simulator: what any Python
  ext_proc costs behind these filters, before any work of ours;
* **pointsman**: Envoy + ext_proc -> extproc-shim -> NATS -> picker (collector feeding it).

Phases alternate (baseline, pointsman, baseline, ...) so drift on a noisy machine hits both. The
simulator answers almost at once (time scale 0.0001) with one token, so the difference is routing overhead.

Then one row per API, through the same Pointsman stack, alternating in the same run: the added
latency of the Anthropic Messages and OpenAI Responses APIs over plain chat completions
passthrough, for a pool that gets them translated to chat completions (``bench-model``: the
request rewritten, the answer translated back on the decision stream) and for one that serves
them natively (``bench-native``: the request passes, made stateless; Redis keeps the Responses
state), as JSON and as an event stream.

    python -m bench.overhead [--rates 50,100,200] [--seconds 10] [--rounds 2] [--apis-only | --no-apis]
                             [--open-bus]

``--open-bus`` runs the Pointsman stack on NATS without authentication, the bus of trees from
before it (issue 11), so a comparison with them measures code, not the authenticated bus (whose
own cost ``--security auth`` measures).

``--request-side`` measures only the shim's bus call instead, FastStream's request API against
raw nats-py in one run (``bench/overhead/request_side.py``). ``--security auth|nats-tls|extproc-tls``
compares two whole stacks that differ only in that layer, alternating (``bench/overhead/security.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bench.common.envoy_stats import failed_open
from bench.common.load import Result, closed_loop, open_loop, warm
from bench.common.proc import cpu_seconds
from pointsman.stack import Stack, StackOptions
from pointsman.stack.envoy import EnvoyOptions, render_yaml
from pointsman.stack.procs import binary, free_port, http_status, port_free, spawn, wait_ready

PAYLOAD = {
    "model": "bench-model",
    "messages": [{"role": "user", "content": "Say hi."}],
    "max_tokens": 1,
}
TRANSLATED, NATIVE = "bench-model", "bench-native"


def api_rows(gateway: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """name -> (URL, body): chat passthrough first, the baseline of the others."""
    chat = f"{gateway}/v1/chat/completions"
    messages, responses = f"{gateway}/v1/messages", f"{gateway}/v1/responses"
    rows: dict[str, tuple[str, dict[str, Any]]] = {"chat passthrough": (chat, PAYLOAD)}
    for stream in (False, True):
        tag = " stream" if stream else ""
        extra: dict[str, Any] = {"stream": True} if stream else {}
        chat_stream = {**extra, "stream_options": {"include_usage": True}} if stream else {}
        if stream:
            rows["chat passthrough stream"] = (chat, {**PAYLOAD, **chat_stream})
        for pool, how in ((TRANSLATED, "translated"), (NATIVE, "native")):
            rows[f"messages {how}{tag}"] = (
                messages,
                {"model": pool, "max_tokens": 1, "messages": PAYLOAD["messages"], **extra},
            )
            rows[f"responses {how}{tag}"] = (
                responses,
                {"model": pool, "input": "Say hi.", "max_output_tokens": 1, **extra},
            )
    return rows


def baseline_envoy_config(listen: int, admin: int, upstream: str) -> dict[str, Any]:
    host, _, port = upstream.rpartition(":")
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "direct",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                                        "stat_prefix": "direct",
                                        "route_config": {
                                            "virtual_hosts": [
                                                {
                                                    "name": "all",
                                                    "domains": ["*"],
                                                    "routes": [
                                                        {
                                                            "match": {"prefix": "/"},
                                                            "route": {
                                                                "cluster": "sim",
                                                                "timeout": "0s",
                                                            },
                                                        }
                                                    ],
                                                }
                                            ]
                                        },
                                        "http_filters": [
                                            {
                                                "name": "envoy.filters.http.router",
                                                "typed_config": {
                                                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                                                },
                                            }
                                        ],
                                    },
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "sim",
                    "type": "STATIC",
                    "connect_timeout": "2s",
                    "load_assignment": {
                        "cluster_name": "sim",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": host,
                                                    "port_value": int(port),
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ],
        },
    }


def bench_stack(args: argparse.Namespace, **flags: bool) -> Stack:
    """The measured stack: two models (one gets the Responses and Messages APIs translated, one
    serves them natively), one simulated replica each that answers at once; ``flags`` are
    :class:`StackOptions` switches (``nats_auth``, ``nats_tls``, ``extproc_tls``). With
    ``--no-apis``: one model, no API settings and no simulator flags beyond the time scale, the
    stack that older trees can start too (``bench.overhead.versus`` runs them on it)."""
    if getattr(args, "no_apis", False):
        models, sim_args, overrides = [TRANSLATED], ["--time-scale", "0.0001"], {}
    else:
        models = [TRANSLATED, NATIVE]
        sim_args = ["--time-scale", "0.0001", "--anthropic"]
        pools = {
            TRANSLATED: {"responses": "chat", "messages": "chat"},
            NATIVE: {"responses": "native", "messages": "native"},
        }
        overrides = {"shim": {"apis": {"pools": pools}}}
    if getattr(args, "open_bus", False):
        flags = {"nats_auth": False, **flags}
    return Stack(
        StackOptions(
            models=models,
            replicas=1,
            gateway_port=0,
            sim_args=sim_args,
            body_mode=args.body_mode,
            response_path=args.response_path,
            overrides=overrides,
            **flags,  # type: ignore[arg-type]
        )
    )


def run_params(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """What a results file records of its run: the load, the layout, the machine, the time."""
    return {
        **extra,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "body_mode": args.body_mode,
        "response_path": args.response_path,
        "no_apis": getattr(args, "no_apis", False),
        "open_bus": getattr(args, "open_bus", False),
        "cpus": os.cpu_count(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def ready_check(url: str) -> Callable[[], bool]:
    return lambda: http_status(url) == 200


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.overhead", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--rates",
        default="50,100,200",
        help="open-loop request rates, comma-separated (default 50,100,200)",
    )
    p.add_argument("--seconds", type=float, default=10.0, help="length of one phase (default 10 s)")
    p.add_argument(
        "--rounds", type=int, default=2, help="baseline/pointsman phase pairs per rate (default 2)"
    )
    p.add_argument(
        "--concurrency", type=int, default=16, help="clients in the max-throughput phase"
    )
    p.add_argument("--body-mode", choices=["BUFFERED", "FULL_DUPLEX_STREAMED"], default="BUFFERED")
    p.add_argument(
        "--response-path",
        choices=["observer", "inline"],
        default="observer",
        help="Envoy's response path to the shim (see pointsman up --help; default observer)",
    )
    p.add_argument(
        "--api-rate",
        type=float,
        default=50.0,
        help="open-loop rate of the per-API rows (default 50 req/s)",
    )
    p.add_argument(
        "--apis-only",
        action="store_true",
        help="only the per-API rows (skip the baseline, floor and capacity phases)",
    )
    p.add_argument(
        "--no-apis",
        action="store_true",
        help="skip the per-API rows and the second model they need: one model, one simulator, "
        "the stack of trees before those rows (compare with them like for like)",
    )
    p.add_argument(
        "--open-bus",
        action="store_true",
        help="NATS without authentication (the bus of trees before it), to compare code with "
        "them like for like; --security auth measures the authentication itself",
    )
    p.add_argument("--out", type=Path, default=None, help="JSON results path")
    p.add_argument(
        "--request-side",
        action="store_true",
        help="measure only the shim's pick request: FastStream's request API vs raw nats-py, "
        "alternating in one run (uses --seconds, --rounds, --rate)",
    )
    p.add_argument(
        "--rate", type=float, default=500.0, help="requests/s of --request-side (default 500)"
    )
    p.add_argument(
        "--security",
        choices=["auth", "nats-tls", "extproc-tls"],
        default=None,
        help="compare two stacks that differ only in NATS authentication, NATS TLS or ext_proc "
        "TLS, alternating in one run (uses --rates, --seconds, --rounds)",
    )
    args = p.parse_args(argv)
    if args.security:
        from bench.overhead import security

        args.rate_list = [float(r) for r in args.rates.split(",") if r.strip()]
        result = security.run(args)
        name = f"overhead_security_{args.security.replace('-', '_')}.json"
        security.report(result, args.out or Path("bench/results") / name)
        return 0
    if args.request_side:
        from bench.overhead import request_side

        result = request_side.run(args)
        request_side.report(result, args.out or Path("bench/results/overhead_request_side.json"))
        return 0
    args.out = args.out or Path("bench/results/overhead.json")
    args.rate_list = [float(r) for r in args.rates.split(",") if r.strip()]

    with bench_stack(args) as stack:
        if args.apis_only:
            apis = asyncio.run(run_api_phases(api_rows(stack.gateway_url), args))
            report_apis({"apis": apis}, args, write=True)
            return 0
        upstream = stack.pools["bench-model"][0]
        listen, admin = free_port(), free_port()
        cfg = stack.workdir / "envoy-baseline.yaml"
        cfg.write_text(yaml.safe_dump(baseline_envoy_config(listen, admin, upstream)))
        argv_envoy = [
            binary("envoy"),
            "-c",
            str(cfg),
            "--disable-hot-restart",
            "--log-level",
            "warning",
            "--concurrency",
            "2",
        ]
        envoy = spawn("envoy-baseline", argv_envoy, stack.log_dir)
        floor_port, floor_listen, floor_admin = free_port(), free_port(), free_port()
        floor = spawn(
            "floor-ext-proc",
            [
                sys.executable,
                "-m",
                "bench.overhead.floor",
                "--port",
                str(floor_port),
                "--endpoint",
                upstream,
                "--response-path",
                args.response_path,
            ],
            stack.log_dir,
        )
        floor_cfg = stack.workdir / "envoy-floor.yaml"
        floor_cfg.write_text(
            render_yaml(
                EnvoyOptions(
                    listen_port=floor_listen,
                    admin_port=floor_admin,
                    shim_host="127.0.0.1",
                    shim_port=floor_port,
                    pools={"bench-model": [upstream]},
                    body_mode=args.body_mode,
                    response_path=args.response_path,
                )
            )
        )
        floor_envoy = spawn(
            "envoy-floor", [*argv_envoy[:2], str(floor_cfg), *argv_envoy[3:]], stack.log_dir
        )
        try:
            for name, proc, port in (
                ("baseline", envoy, admin),
                ("floor", floor_envoy, floor_admin),
            ):
                wait_ready(proc, ready_check(f"http://127.0.0.1:{port}/ready"), 30, f"{name} envoy")
            # Listening (port taken), or the warm-up's requests would fail open past it.
            wait_ready(floor, lambda: not port_free(floor_port), 30, "floor ext_proc")
            urls = {
                "baseline": f"http://127.0.0.1:{listen}/v1/chat/completions",
                "floor": f"http://127.0.0.1:{floor_listen}/v1/chat/completions",
                "pointsman": f"{stack.gateway_url}/v1/chat/completions",
            }
            pids = {name: child.popen.pid for name, child in stack.children.items()}
            admins = {
                "floor": f"http://127.0.0.1:{floor_admin}",
                "pointsman": f"http://127.0.0.1:{stack.ports['envoy_admin']}",
            }
            before = {name: failed_open(url) for name, url in admins.items()}
            results = asyncio.run(run_phases(urls, pids, args))
            results["failed_open"] = {
                name: failed_open(url) - before[name] for name, url in admins.items()
            }
            results["apis"] = (
                {}
                if args.no_apis
                else asyncio.run(run_api_phases(api_rows(stack.gateway_url), args))
            )
        finally:
            floor_envoy.stop()
            floor.stop()
            envoy.stop()

    report(results, args)
    return 0


async def run_api_phases(
    rows: dict[str, tuple[str, dict[str, Any]]], args: argparse.Namespace
) -> dict[str, Any]:
    """Each row at ``--api-rate`` for ``--seconds``, all rows in turn, ``--rounds`` times."""
    for url, body in rows.values():
        await warm(url, body, 50)
    merged = {name: Result() for name in rows}
    for _ in range(args.rounds):
        for name, (url, body) in rows.items():
            merged[name].add(await open_loop(url, body, args.api_rate, args.seconds))
    return {name: res.summary() for name, res in merged.items()}


def report_apis(results: dict[str, Any], args: argparse.Namespace, *, write: bool) -> None:
    apis = results["apis"]
    print(
        f"\nper API, through Pointsman: open loop {args.api_rate:g} req/s, "
        f"{args.rounds}x{args.seconds:.0f} s per row, rows alternating"
    )
    print(
        f"{'row':<28}{'ok':>7}{'err':>5}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'+p50':>8}{'+p90':>8}{'+p99':>8}"
    )
    added: dict[str, dict[str, float]] = {}
    for name, row in apis.items():
        base = apis["chat passthrough stream" if name.endswith("stream") else "chat passthrough"]
        plus = {q: row[f"p{q}_ms"] - base[f"p{q}_ms"] for q in (50, 90, 99)}
        added[name] = {f"p{q}": v for q, v in plus.items()}
        print(
            f"{name:<28}{row['requests_ok']:>7}{row['errors']:>5}{row['p50_ms']:>9.2f}"
            f"{row['p90_ms']:>9.2f}{row['p99_ms']:>9.2f}{plus[50]:>8.2f}{plus[90]:>8.2f}{plus[99]:>8.2f}"
        )
    print(
        "(+: added over chat completions passthrough through Pointsman, same run; streams vs the chat stream)"
    )
    results["apis_added_ms"] = added
    if write:
        results["params"] = run_params(args, api_rate=args.api_rate)
        out = args.out.with_name(args.out.stem + "-apis.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
        print(f"wrote {out}")


async def run_phases(
    urls: dict[str, str], pids: dict[str, int], args: argparse.Namespace
) -> dict[str, Any]:
    for url in urls.values():
        await warm(url, PAYLOAD, 100)
    by_rate: dict[str, Any] = {}
    cpu_total = dict.fromkeys(pids, 0.0)
    requests_total = 0
    for rate in args.rate_list:
        merged: dict[str, Result] = {name: Result() for name in urls}
        for _ in range(args.rounds):
            for name, url in urls.items():
                before = {n: cpu_seconds(pid) for n, pid in pids.items()}
                r = await open_loop(url, PAYLOAD, rate, args.seconds)
                if name == "pointsman":
                    for n, pid in pids.items():
                        cpu_total[n] += cpu_seconds(pid) - before[n]
                    requests_total += r.ok
                merged[name].add(r)
        by_rate[f"{rate:g}"] = {name: res.summary() for name, res in merged.items()}
    capacity = {}
    for name, url in urls.items():
        capacity[name] = (await closed_loop(url, PAYLOAD, args.concurrency, args.seconds)).summary()
    cpu_us = {n: 1e6 * t / max(1, requests_total) for n, t in cpu_total.items()}
    return {"open_loop": by_rate, "max_throughput": capacity, "cpu_us_per_request": cpu_us}


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    cap_b = results["max_throughput"]["baseline"]["throughput_rps"]
    cap_f = results["max_throughput"]["floor"]["throughput_rps"]
    cap_p = results["max_throughput"]["pointsman"]["throughput_rps"]
    results["throughput_ratio"] = cap_p / cap_b if cap_b else float("nan")
    results["floor_throughput_ratio"] = cap_f / cap_b if cap_b else float("nan")
    results["added_ms"] = {}
    results["floor_added_ms"] = {}
    results["params"] = {
        "rates": args.rate_list,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "concurrency": args.concurrency,
        "body_mode": args.body_mode,
        "response_path": args.response_path,
        "cpus": os.cpu_count(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(
        f"\nbench/overhead: open loop, {args.rounds}x{args.seconds:.0f} s per path and rate, body mode {args.body_mode}, response path {args.response_path}"
    )
    print(f"{'rate':>6} {'path':<10}{'ok':>7}{'err':>5}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}")
    for rate, rows in results["open_loop"].items():
        for name, row in rows.items():
            print(
                f"{rate:>6} {name:<10}{row['requests_ok']:>7}{row['errors']:>5}{row['p50_ms']:>9.2f}{row['p90_ms']:>9.2f}{row['p99_ms']:>9.2f}"
            )
        for path, key in (("floor", "floor_added_ms"), ("pointsman", "added_ms")):
            added = {q: rows[path][f"p{q}_ms"] - rows["baseline"][f"p{q}_ms"] for q in (50, 90, 99)}
            results[key][rate] = {f"p{q}": v for q, v in added.items()}
            label = f"+{path}"
            print(
                f"{rate:>6} {label:<10}{'':>12}{added[50]:>9.2f}{added[90]:>9.2f}{added[99]:>9.2f}"
            )
    print("(+path: added over baseline; the floor is a do-nothing Python ext_proc, same filters)")
    print(
        f"max throughput (closed loop x{args.concurrency}): baseline {cap_b:.0f} req/s, floor {cap_f:.0f} req/s, pointsman {cap_p:.0f} req/s, ratio {results['throughput_ratio']:.2f}"
    )
    skipped = results.get("failed_open", {})
    print(
        "ext_proc streams failed open (requests sent on without the server): "
        + ", ".join(f"{n} {v}" for n, v in skipped.items())
        + ("" if not any(skipped.values()) else "  <- those rows are NOT all that path's work")
    )
    print(
        "CPU per request on the Pointsman path (us): "
        + ", ".join(f"{n} {v:.0f}" for n, v in results["cpu_us_per_request"].items())
    )
    if results["apis"]:
        report_apis(results, args, write=False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())

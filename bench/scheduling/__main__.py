"""bench/scheduling: time to first token under load, per router, through a real Envoy.

The same workload (same seed: same requests at the same instants) at the same rates, against
the same fleet of simulated vLLM replicas (fresh, cold caches for every run, prefix caching on),
routed by:

* ``round-robin``: Envoy round robin (what a Kubernetes Service gives);
* ``least-request``: Envoy least-request;
* ``vllm-router-cache-aware`` / ``vllm-router-power-of-two``: the vllm-router package (Rust),
  behind the same Envoy;
* ``pointsman`` / ``pointsman-2``: Envoy + ext_proc -> extproc-shim -> NATS -> picker (default
  profile: queue 2, KV 2, prefix 3), one picker replica or two sharing state through Redis.

Workloads:

* ``shared-prefix``: many users, a few long system prompts/documents shared by groups of
  requests (as in llm-d's prefix-cache benchmark); Poisson arrivals;
* ``mooncake``: the Mooncake conversation trace from ``../shared/data/traces/mooncake`` (arrival
  times, input/output lengths, prefix block hashes mapped to fixed filler text so the cache-hit
  pattern is exact), time-compressed to the requested rate.

Prints a table and writes ``bench/results/scheduling.json`` and ``scheduling_ttft.png``.

    python -m bench.scheduling                       # defaults: 8 replicas, rates 8,14,20 req/s
    python -m bench.scheduling --rates 10 --duration 30 --routers round-robin,pointsman
    python -m bench.scheduling --rates 16 --out more --merge bench/results/scheduling.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import shutil
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench.scheduling.decision import hist_quantile, merged
from pointsman.stack import Stack, StackOptions
from pointsman.stack.procs import (
    binary,
    free_port,
    free_port_block,
    http_status,
    port_free,
    spawn,
    wait_ready,
)

MODEL = "bench-model"
ROUTERS = [
    "round-robin",
    "least-request",
    "vllm-router-cache-aware",
    "vllm-router-power-of-two",
    "pointsman",
    "pointsman-2",
]
MOONCAKE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "traces" / "mooncake"
RESULTS = Path("bench/results")


# --- workloads ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Req:
    at: float
    body: bytes
    group: int


def _words(rng: random.Random, chars: int) -> str:
    out: list[str] = []
    n = 0
    while n < chars:
        w = f"w{rng.randrange(36**4):x}"
        out.append(w)
        n += len(w) + 1
    return " ".join(out)[:chars]


SYSTEM = "You are a helpful assistant. Answer from the document."


def _body(document: str, question: str, max_tokens: int) -> bytes:
    """One chat turn: a short fixed system prompt, then the (shared) document and the question
    in the user message, as in retrieval-augmented chat. Some routers look only at the last
    user message; the shared prefix is there, so every router can see it."""
    return json.dumps(
        {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"{document}\n\n{question}"},
            ],
            "max_tokens": max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()


def shared_prefix(
    rate: float, duration: float, *, groups: int, prefix_tokens: int, question_tokens: int,
    max_tokens: int, seed: int,
) -> list[Req]:  # fmt: skip
    rng = random.Random(seed)
    docs = [f"[group {g}] " + _words(rng, prefix_tokens * 4) for g in range(groups)]
    reqs: list[Req] = []
    t = 0.0
    arrivals = random.Random(seed + 1)
    i = 0
    while True:
        t += arrivals.expovariate(rate)
        if t >= duration:
            return reqs
        g = rng.randrange(groups)
        user = f"user {i}: " + _words(rng, question_tokens * 4)
        reqs.append(Req(t, _body(docs[g], user, max_tokens), g))
        i += 1


def mooncake(rate: float, duration: float, *, max_tokens_cap: int, seed: int) -> list[Req]:
    """The Mooncake conversation trace, time-compressed to ``rate``, lengths capped to fit."""
    path = next((p for p in sorted(MOONCAKE.glob("*conversation*")) if p.is_file()), None)
    if path is None:
        raise SystemExit(f"no Mooncake conversation trace under {MOONCAKE}")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows.sort(key=lambda r: r["timestamp"])
    span_s = (rows[-1]["timestamp"] - rows[0]["timestamp"]) / 1000 or 1.0
    native = len(rows) / span_s
    scale = native / rate  # trace seconds per replay second
    blocks: dict[int, str] = {}
    rng = random.Random(seed)
    reqs: list[Req] = []
    t0 = rows[0]["timestamp"]
    for row in rows:
        at = (row["timestamp"] - t0) / 1000 * scale
        if at >= duration:
            break
        # 512-token blocks of 2048 chars; cap prompts to what the simulator accepts (8192).
        ids = row["hash_ids"][:7]
        text = "".join(blocks.setdefault(h, _words(random.Random(h), 2048)) for h in ids)
        rest = min(row["input_length"], 7 * 512) - 512 * len(ids)
        if rest > 0:
            text += _words(rng, rest * 4)
        out = max(1, min(row["output_length"], max_tokens_cap))
        reqs.append(Req(at, _body(text, "Continue the conversation.", out), ids[0] if ids else -1))
    return reqs


# --- the load generator ------------------------------------------------------------------------


@dataclass
class Outcome:
    ttft_ms: list[float] = field(default_factory=list)
    e2e_ms: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    errors: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    first_sent: float = 0.0
    last_done: float = 0.0


async def _one(session: aiohttp.ClientSession, url: str, req: Req, out: Outcome) -> None:
    start = time.perf_counter()
    ttft: float | None = None
    tokens = 0
    try:
        async with session.post(
            url, data=req.body, headers={"content-type": "application/json"}
        ) as resp:
            out.statuses[str(resp.status)] = out.statuses.get(str(resp.status), 0) + 1
            if resp.status != 200:
                await resp.read()
                out.errors += 1
                return
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:") or line == b"data: [DONE]":
                    continue
                chunk = json.loads(line[5:])
                choices = chunk.get("choices") or []
                if ttft is None and choices and (choices[0].get("delta") or {}).get("content"):
                    ttft = time.perf_counter() - start
                usage = chunk.get("usage")
                if usage:
                    tokens = int(usage.get("completion_tokens") or 0)
    except Exception as exc:
        key = type(exc).__name__
        out.statuses[key] = out.statuses.get(key, 0) + 1
        out.errors += 1
        return
    done = time.perf_counter()
    if ttft is not None:
        out.ttft_ms.append(ttft * 1000)
    out.e2e_ms.append((done - start) * 1000)
    out.completion_tokens += tokens
    out.last_done = max(out.last_done, done)


async def replay(url: str, reqs: list[Req], drain_s: float = 120.0) -> Outcome:
    out = Outcome()
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=drain_s + 60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = []
        start = time.perf_counter()
        out.first_sent = start
        for req in reqs:
            delay = start + req.at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_one(session, url, req, out)))
        _, pending = await asyncio.wait(tasks, timeout=drain_s)
        for task in pending:
            task.cancel()
        out.errors += len(pending)
        if pending:
            out.statuses["unfinished"] = len(pending)
    return out


def pct(data: list[float], q: float) -> float:
    if not data:
        return float("nan")
    s = sorted(data)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


# --- routers -----------------------------------------------------------------------------------


def _envoy_config(listen: int, admin: int, endpoints: list[str], lb_policy: str) -> dict[str, Any]:
    lb_endpoints = []
    for ep in endpoints:
        host, _, port = ep.rpartition(":")
        lb_endpoints.append(
            {
                "endpoint": {
                    "address": {"socket_address": {"address": host, "port_value": int(port)}}
                }
            }
        )
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "bench",
        "stream_idle_timeout": "600s",
        "request_timeout": "0s",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {"match": {"prefix": "/"}, "route": {"cluster": "fleet", "timeout": "0s"}}
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
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "gateway",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "fleet",
                    "type": "STATIC",
                    "connect_timeout": "2s",
                    "lb_policy": lb_policy,
                    "circuit_breakers": {
                        "thresholds": [
                            {
                                "max_connections": 100000,
                                "max_pending_requests": 100000,
                                "max_requests": 100000,
                            }
                        ]
                    },
                    "load_assignment": {
                        "cluster_name": "fleet",
                        "endpoints": [{"lb_endpoints": lb_endpoints}],
                    },
                }
            ],
        },
    }


@dataclass
class Running:
    url: str
    picker_metrics: list[str] = field(default_factory=list)


@contextlib.contextmanager
def _simulators(work: Path, replicas: int, sim_args: list[str]) -> Iterator[list[str]]:
    base = free_port_block(replicas)
    argv = [
        sys.executable, "-m", "pointsman.sim", "--host", "127.0.0.1", "--port", str(base),
        "--count", str(replicas), "--model", MODEL, "--log-level", "WARNING", *sim_args,
    ]  # fmt: skip
    child = spawn("sim", argv, work)
    try:
        eps = [f"127.0.0.1:{base + i}" for i in range(replicas)]
        for ep in eps:
            wait_ready(child, lambda e=ep: http_status(f"http://{e}/health") == 200, 60, "sim")  # type: ignore[misc]
        yield eps
    finally:
        child.stop()


@contextlib.contextmanager
def _envoy(work: Path, upstreams: list[str], lb_policy: str) -> Iterator[str]:
    listen, admin = free_port(), free_port()
    path = work / f"envoy-{listen}.yaml"
    path.write_text(yaml.safe_dump(_envoy_config(listen, admin, upstreams, lb_policy)))
    argv = [
        binary("envoy"), "-c", str(path), "--disable-hot-restart", "--log-level", "warning",
        "--concurrency", "2", "--base-id", str(listen),
    ]  # fmt: skip
    child = spawn("envoy", argv, work)
    try:
        wait_ready(
            child, lambda: http_status(f"http://127.0.0.1:{admin}/ready") == 200, 30, "envoy"
        )
        yield f"http://127.0.0.1:{listen}"
    finally:
        child.stop()


@contextlib.contextmanager
def _redis(work: Path) -> Iterator[str]:
    port = free_port()
    exe = shutil.which("redis-server") or binary("redis-server")
    argv = [exe, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    child = spawn("redis", argv, work)
    try:
        wait_ready(child, lambda: not port_free(port), 15, "redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        child.stop()


@contextlib.contextmanager
def start_router(name: str, work: Path, replicas: int, sim_args: list[str]) -> Iterator[Running]:
    if name in ("round-robin", "least-request"):
        policy = "ROUND_ROBIN" if name == "round-robin" else "LEAST_REQUEST"
        with _simulators(work, replicas, sim_args) as eps, _envoy(work, eps, policy) as url:
            yield Running(url)
        return
    if name.startswith("vllm-router-"):
        exe = shutil.which("vllm-router") or str(Path(sys.executable).parent / "vllm-router")
        if not Path(exe).exists():
            raise RuntimeError("vllm-router is not installed: pip install vllm-router")
        policy = name.removeprefix("vllm-router-").replace("-", "_")
        with _simulators(work, replicas, sim_args) as eps:
            port = free_port()
            argv = [
                exe, "--host", "127.0.0.1", "--port", str(port), "--policy", policy,
                "--worker-urls", *[f"http://{e}" for e in eps], "--log-level", "warning",
                "--prometheus-port", str(free_port()), "--disable-retries",
            ]  # fmt: skip
            child = spawn("vllm-router", argv, work)
            try:
                wait_ready(
                    child, lambda: http_status(f"http://127.0.0.1:{port}/health") == 200, 60,
                    "vllm-router",
                )  # fmt: skip
                with _envoy(work, [f"127.0.0.1:{port}"], "ROUND_ROBIN") as url:
                    yield Running(url)
            finally:
                child.stop()
        return
    if name in ("pointsman", "pointsman-2"):
        pickers = 2 if name == "pointsman-2" else 1
        with contextlib.ExitStack() as stack:
            overrides: dict[str, Any] = {"shim": {"pick_timeout_ms": 200}}
            if pickers > 1:
                url = stack.enter_context(_redis(work))
                overrides["picker"] = {"shared_state": {"redis_url": url}}
            options = StackOptions(
                models=[MODEL], replicas=replicas, gateway_port=0, sim_args=[
                    "--log-level", "WARNING", *sim_args,
                ], picker_replicas=pickers, classifier=False, overrides=overrides,
                workdir=Path(tempfile.mkdtemp(prefix="stack-", dir=work)),
            )  # fmt: skip
            s = stack.enter_context(Stack(options))
            metrics = [f"http://127.0.0.1:{s.ports['picker_http']}/metrics"]
            if pickers > 1:
                metrics += [
                    f"http://127.0.0.1:{s.ports[f'picker-{i}_http']}/metrics"
                    for i in range(1, pickers)
                ]
            yield Running(s.gateway_url, metrics)
        return
    raise SystemExit(f"unknown router '{name}' (routers: {', '.join(ROUTERS)})")


# --- one measurement ---------------------------------------------------------------------------


def _decision_hist(urls: list[str]) -> dict[float, float]:
    return merged(urls, "pointsman_picker_decision_seconds")


def measure(
    router: str, rate: float, reqs: list[Req], work: Path, replicas: int, sim_args: list[str]
) -> dict[str, Any]:
    with start_router(router, work, replicas, sim_args) as running:
        # one request to open connections and check the path works
        urllib.request.urlopen(
            urllib.request.Request(
                f"{running.url}/v1/chat/completions",
                data=_body("warm-up", "hello", 1),
                headers={"content-type": "application/json"},
            ),
            timeout=30,
        ).read()
        before = _decision_hist(running.picker_metrics) if running.picker_metrics else {}
        out = asyncio.run(replay(f"{running.url}/v1/chat/completions", reqs))
        after = _decision_hist(running.picker_metrics) if running.picker_metrics else {}
    span = max(out.last_done - out.first_sent, 1e-9)
    row: dict[str, Any] = {
        "router": router,
        "rate": rate,
        "requests": len(reqs),
        "ok": len(out.e2e_ms),
        "errors": out.errors,
        "statuses": out.statuses,
        "ttft_p50_ms": pct(out.ttft_ms, 50),
        "ttft_p90_ms": pct(out.ttft_ms, 90),
        "ttft_p99_ms": pct(out.ttft_ms, 99),
        "e2e_p50_ms": pct(out.e2e_ms, 50),
        "e2e_p90_ms": pct(out.e2e_ms, 90),
        "output_tokens_per_s": out.completion_tokens / span,
    }
    if before or after:
        row["decision_p50_ms"] = hist_quantile(before, after, 0.5) * 1000
        row["decision_p99_ms"] = hist_quantile(before, after, 0.99) * 1000
    return row


def _fmt(v: Any, width: int) -> str:
    if isinstance(v, float):
        return f"{v:>{width}.0f}" if not math.isnan(v) else f"{'-':>{width}}"
    return f"{v!s:>{width}}"


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (
        f"{'router':26} {'rate':>5} {'ok':>5} {'err':>4} {'TTFT p50':>9} {'p90':>7} {'p99':>7} "
        f"{'e2e p50':>8} {'p90':>7} {'tok/s':>7} {'pick p50/p99 ms':>16}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        dec = (
            f"{r['decision_p50_ms']:.2f} / {r['decision_p99_ms']:.2f}"
            if "decision_p50_ms" in r
            else "-"
        )
        print(
            f"{r['router']:26} {r['rate']:>5.0f} {r['ok']:>5} {r['errors']:>4} "
            f"{_fmt(r['ttft_p50_ms'], 9)} {_fmt(r['ttft_p90_ms'], 7)} {_fmt(r['ttft_p99_ms'], 7)} "
            f"{_fmt(r['e2e_p50_ms'], 8)} {_fmt(r['e2e_p90_ms'], 7)} "
            f"{_fmt(r['output_tokens_per_s'], 7)} {dec:>16}"
        )


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(8, 5))
    for router in dict.fromkeys(r["router"] for r in rows):
        pts = sorted((r["rate"], r["ttft_p90_ms"] / 1000) for r in rows if r["router"] == router)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=router)
    ax.set_xlabel("request rate (req/s)")
    ax.set_ylabel("TTFT p90 (s)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.scheduling",
        description="TTFT under load per router through a real Envoy (see module docstring).",
    )
    p.add_argument("--routers", default=",".join(ROUTERS), help="comma list of routers to run")
    p.add_argument("--rates", default="8,14,20", help="comma list of request rates (req/s)")
    p.add_argument("--duration", type=float, default=40.0, help="seconds of arrivals per run")
    p.add_argument("--workload", choices=["shared-prefix", "mooncake"], default="shared-prefix")
    p.add_argument("--replicas", type=int, default=8, help="simulated vLLM replicas")
    p.add_argument("--groups", type=int, default=32, help="shared-prefix: prompt groups")
    p.add_argument("--prefix-tokens", type=int, default=7000, help="shared-prefix: shared tokens")
    p.add_argument("--question-tokens", type=int, default=60, help="shared-prefix: own tokens")
    p.add_argument("--max-tokens", type=int, default=48, help="output tokens per request (cap)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--sim-arg", action="append", default=None, metavar="ARG",
        help="simulator argument, repeatable (default: --prefill-tokens-per-s=8000, a larger "
        "model's prefill speed, so that this machine can offer a saturating load)",
    )  # fmt: skip
    p.add_argument("--out", default="scheduling", help="name of the JSON/PNG under bench/results")
    p.add_argument(
        "--merge", action="append", default=[], metavar="JSON",
        help="also table and plot the rows of an earlier run's JSON (same workload settings)",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.sim_arg is None:
        args.sim_arg = ["--prefill-tokens-per-s=8000"]
    routers = [r.strip() for r in args.routers.split(",") if r.strip()]
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    RESULTS.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pointsman-bench-scheduling-"))
    rows: list[dict[str, Any]] = []
    try:
        for rate in rates:
            if args.workload == "shared-prefix":
                reqs = shared_prefix(
                    rate, args.duration, groups=args.groups, prefix_tokens=args.prefix_tokens,
                    question_tokens=args.question_tokens, max_tokens=args.max_tokens,
                    seed=args.seed,
                )  # fmt: skip
            else:
                reqs = mooncake(rate, args.duration, max_tokens_cap=args.max_tokens, seed=args.seed)
            for router in routers:
                t = time.monotonic()
                row = None
                for attempt in (1, 2):  # a busy machine can lose a port race: try once more
                    try:
                        row = measure(router, rate, reqs, work, args.replicas, args.sim_arg)
                        break
                    except Exception as exc:
                        print(f"{router} at {rate:g} req/s, try {attempt}: {exc}", file=sys.stderr)
                if row is None:
                    continue
                row["wall_s"] = round(time.monotonic() - t, 1)
                rows.append(row)
                print_table([row])
                sys.stdout.flush()
                (RESULTS / f"{args.out}.json").write_text(
                    json.dumps({"args": vars(args), "rows": rows}, indent=2)
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for path in args.merge:
        earlier = json.loads(Path(path).read_text())["rows"]
        rows = [r for r in earlier if (r["router"], r["rate"]) not in
                {(x["router"], x["rate"]) for x in rows}] + rows  # fmt: skip
    rows.sort(
        key=lambda r: (r["rate"], ROUTERS.index(r["router"]) if r["router"] in ROUTERS else 99)
    )
    if args.merge:
        (RESULTS / f"{args.out}.json").write_text(
            json.dumps({"args": vars(args), "rows": rows}, indent=2)
        )
    print()
    print_table(rows)
    plot(rows, RESULTS / f"{args.out}_ttft.png", f"{args.workload}: TTFT p90 vs load")
    print(f"\nwrote {RESULTS / (args.out + '.json')} and {RESULTS / (args.out + '_ttft.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

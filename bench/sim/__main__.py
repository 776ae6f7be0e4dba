"""How much load one simulator process sustains: ``python -m bench.sim``.

Starts ``python -m pointsman.sim --count N`` (N replicas in one process), sends open-loop
streaming chat requests round robin over the replicas at each rate, and reports the rate
achieved, client-side TTFT and end-to-end latency, and the simulator process' CPU use (share of
one core, from /proc). The load generator runs on the same machine, so on two cores the client
is usually the limit before the simulator is.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.common.proc import cpu_seconds
from bench.common.stats import percentile
from pointsman.stack.procs import http_status, spawn, wait_ready

RESULTS = Path(__file__).resolve().parent.parent / "results"
MODEL = "sim-bench"


def _ports(count: int) -> int:
    """A base port with ``count`` consecutive free ports."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        if base + count > 65535:
            continue
        ok = True
        for p in range(base, base + count):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port block")


async def _load(
    addresses: list[str], rate: float, duration: float, max_tokens: int, prompt_chars: int
) -> dict[str, Any]:
    ttft: list[float] = []
    e2e: list[float] = []
    errors = 0
    filler = "lorem ipsum " * (prompt_chars // 12 + 1)

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        nonlocal errors
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": f"{i} {filler}"[:prompt_chars]}],
            "max_tokens": max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        url = f"http://{addresses[i % len(addresses)]}/v1/chat/completions"
        start = time.perf_counter()
        first = 0.0
        try:
            async with session.post(url, json=body) as resp:
                async for _line in resp.content:
                    first = first or time.perf_counter() - start
                if resp.status != 200:
                    errors += 1
                    return
        except (TimeoutError, aiohttp.ClientError):
            errors += 1
            return
        ttft.append(first * 1000)
        e2e.append((time.perf_counter() - start) * 1000)

    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = []
        start = time.perf_counter()
        for i in range(int(rate * duration)):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(session, i)))
        sent_s = time.perf_counter() - start
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    return {
        "rate": rate,
        "sent_rps": len(tasks) / sent_s,
        "done_rps": len(e2e) / elapsed,
        "errors": errors,
        "ttft_p50_ms": percentile(ttft, 50),
        "ttft_p99_ms": percentile(ttft, 99),
        "e2e_p50_ms": percentile(e2e, 50),
        "e2e_p99_ms": percentile(e2e, 99),
        "elapsed_s": elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sim", description=__doc__)
    p.add_argument("--replicas", type=int, default=8)
    p.add_argument("--rates", default="100,200,400", help="comma list of requests/s")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of arrivals per rate")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--prompt-chars", type=int, default=400)
    p.add_argument("--time-scale", type=float, default=0.1)
    p.add_argument("--out", default="sim")
    args = p.parse_args(argv)
    base = _ports(args.replicas)
    addresses = [f"127.0.0.1:{base + i}" for i in range(args.replicas)]
    proc = spawn(
        "bench-sim",
        [sys.executable, "-m", "pointsman.sim", "--host", "127.0.0.1", "--port", str(base),
         "--count", str(args.replicas), "--model", MODEL, "--time-scale", str(args.time_scale),
         "--log-level", "WARNING"],
    )  # fmt: skip
    rows: list[dict[str, Any]] = []
    try:
        for address in addresses:
            url = f"http://{address}/health"
            wait_ready(proc, lambda u=url: http_status(u) == 200, 30, "simulator")  # type: ignore[misc]
        for rate in (float(r) for r in args.rates.split(",") if r.strip()):
            cpu0 = cpu_seconds(proc.popen.pid)
            row = asyncio.run(
                _load(addresses, rate, args.duration, args.max_tokens, args.prompt_chars)
            )
            row["sim_cpu_core_share"] = (cpu_seconds(proc.popen.pid) - cpu0) / row["elapsed_s"]
            rows.append(row)
    finally:
        proc.stop()
    head = ["rate", "sent_rps", "done_rps", "errors", "ttft_p50_ms", "ttft_p99_ms",
            "e2e_p50_ms", "e2e_p99_ms", "sim_cpu_core_share"]  # fmt: skip
    print(
        f"{args.replicas} replicas in one process, time-scale {args.time_scale}, "
        f"max_tokens {args.max_tokens}, prompt {args.prompt_chars} chars, streaming"
    )
    print("  ".join(f"{h:>12}" for h in head))
    for row in rows:
        print("  ".join(f"{row[h]:>12.2f}" if isinstance(row[h], float) else f"{row[h]:>12}"
                        for h in head))  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{args.out}.json"
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

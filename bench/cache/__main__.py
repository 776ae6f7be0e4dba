"""Semantic cache figures: index lookup latency at 10k/100k entries, and a hit vs a miss end to end.

    .venv/bin/python -m bench.cache [--sizes 10000 100000] [--queries 2000] [--e2e-requests 40]

1. **Lookup**: one partition holding N entries (the worst case: partitions are per tenant, model
   and parameters) of 384-d normalised vectors, like MiniLM's. Both index backends (``exact``:
   numpy brute force; ``hnsw``: hnswlib) answer the same queries (perturbed stored vectors, as a
   paraphrase is); recall@1 of hnsw is measured against exact. Then the full
   ``SemanticCache.lookup`` hit path (index + one Redis read; the shim renders the hit) with N
   entries in a real redis-server.
2. **End to end**: the whole stack (Envoy, shim, classifier on this CPU with the cache, Redis,
   a simulator at time scale 1): latency of a hit versus a miss that goes to the simulator
   (a miss per request is forced by a fresh tenant, so each is a real lookup and a real store).

Prints a table and writes JSON to bench/results/cache.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from pointsman.stack.procs import free_port, port_free, spawn, wait_ready
from pointsman.v1.classify import ClassifyReply, ClassifyRequest, Message
from pointsman_classifier.cache.config import CacheConfig
from pointsman_classifier.cache.core import StoredAnswer, plan
from pointsman_classifier.cache.index import VectorIndex, hnsw_available
from pointsman_classifier.cache.service import SemanticCache

RESULTS = Path(__file__).resolve().parents[1] / "results"
DIM = 384


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def unit(rng: np.random.Generator, n: int) -> npt.NDArray[np.float32]:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    out: npt.NDArray[np.float32] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def queries_near(rng: np.random.Generator, vecs: npt.NDArray[np.float32], n: int) -> Any:
    picks = rng.integers(0, len(vecs), n)
    q = vecs[picks] + 0.012 * rng.standard_normal((n, DIM)).astype(np.float32)
    return picks, q / np.linalg.norm(q, axis=1, keepdims=True)


def bench_index(sizes: list[int], queries: int, efs: list[int]) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    backends = [("exact", 0), *([("hnsw", ef) for ef in efs] if hnsw_available() else [])]
    for n in sizes:
        vecs = unit(rng, n)
        picks, qs = queries_near(rng, vecs, queries)
        truth: list[str] = []
        keys = [f"e{i}" for i in range(n)]
        for backend, ef in backends:
            idx = VectorIndex(backend=backend, ef=ef or 128)
            t0 = time.perf_counter()  # the bulk build a replica does when it rebuilds from Redis
            idx.install("p", idx.build(keys, vecs), keys, vecs, [1e12] * n)
            build_s = time.perf_counter() - t0
            lat: list[float] = []
            found: list[str] = []
            for q in qs:
                t = time.perf_counter()
                r = idx.search("p", q, now=0.0)
                lat.append((time.perf_counter() - t) * 1e3)
                found.append(r[0] if r else "")
            if backend == "exact":
                truth = found
            recall = sum(a == b for a, b in zip(found, truth, strict=True)) / len(found)
            hit_self = sum(f == f"e{p}" for f, p in zip(found, picks, strict=True)) / len(found)
            rows.append(
                {
                    "entries": n,
                    "backend": backend,
                    "ef": ef or None,
                    "p50_ms": pct(lat, 0.5),
                    "p99_ms": pct(lat, 0.99),
                    "mean_ms": statistics.fmean(lat),
                    "recall_at_1_vs_exact": recall,
                    "finds_source_entry": hit_self,
                    "build_s": build_s,
                }
            )
            print(
                f"  index {backend:5s} ef={ef:<4d} {n:>7d} entries: p50 {rows[-1]['p50_ms']:.3f} ms  "
                f"p99 {rows[-1]['p99_ms']:.3f} ms  recall@1 {recall:.3f}",
                flush=True,
            )
    return rows


class RedisServer:
    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server not found (apt-get install redis-server)")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="bench-cache-redis-")
        argv = [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", ""]
        argv += ["--appendonly", "no", "--dir", self.dir]
        self.proc = spawn("redis-server", argv, Path(self.dir))
        wait_ready(self.proc, lambda: not port_free(self.port), 15, "redis-server")
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


async def bench_full_lookup(url: str, n: int, queries: int) -> dict[str, Any]:
    """SemanticCache.lookup on its hit path with ``n`` entries in Redis and in the index."""
    import msgspec
    import redis.asyncio as aioredis

    cfg = CacheConfig(enabled=True, redis_url=url, threshold=0.9, redis_timeout_ms=200)
    cache = SemanticCache(cfg, name="bench")
    keys = [f"b{i}" for i in range(n)]
    req = ClassifyRequest(
        request_id="b",
        model="alpha",
        messages=[Message(role="user", content="q")],
        params={"temperature": 0},
    )
    p = plan(req, ClassifyReply(model="alpha"), cfg)
    rng = np.random.default_rng(1)
    vecs = unit(rng, n)
    r = aioredis.Redis.from_url(url)
    answer = StoredAnswer(content="A stored answer of moderate length. " * 8, partition=p.partition)
    raw = msgspec.json.encode(answer)
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        key = f"{cfg.key_prefix}:e:b{i}"
        pipe.hset(key, mapping={"a": raw, "p": p.partition, "x": "1e12"})
        if len(pipe) >= 5000:
            await pipe.execute()
    await pipe.execute()
    part = cache.index.build(keys, vecs)
    cache.index.install(p.partition, part, keys, vecs, [1e12] * n)
    _, qs = queries_near(rng, vecs, queries)
    lat: list[float] = []
    hits = 0
    for q in qs:
        reply = ClassifyReply(model="alpha")
        t = time.perf_counter()
        out = await cache.lookup(req, reply, q)
        lat.append((time.perf_counter() - t) * 1e3)
        hits += out.cached is not None
    await r.flushdb()
    await r.aclose()
    await cache.close()
    row = {
        "entries": n,
        "backend": cache.index.backend,
        "p50_ms": pct(lat, 0.5),
        "p99_ms": pct(lat, 0.99),
        "hit_fraction": hits / len(qs),
    }
    print(
        f"  lookup() hit path {n:>7d} entries: p50 {row['p50_ms']:.3f} ms  "
        f"p99 {row['p99_ms']:.3f} ms  hits {row['hit_fraction']:.3f}",
        flush=True,
    )
    return row


def bench_e2e(url: str, requests: int) -> dict[str, Any]:
    import httpx

    from pointsman.stack import Stack, StackOptions

    options = StackOptions(
        models=["alpha"],
        replicas=1,
        gateway_port=0,
        classifier=True,
        overrides={
            "shim": {"classifier": {"timeout_ms": 5000}},
            "classifier": {
                "default_model": "alpha",
                "device": "cpu",
                "cache": {"enabled": True, "redis_url": url},
            },
        },
    )
    body = {
        "model": "alpha",
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "temperature": 0,
    }
    out: dict[str, Any] = {}
    with Stack(options) as stack, httpx.Client(base_url=stack.gateway_url, timeout=60) as client:
        chat = "/v1/chat/completions"
        # warm-up and the entry the hits will find
        client.post(chat, json=body, headers={"x-tenant-id": "bench"}).raise_for_status()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            r = client.post(chat, json=body, headers={"x-tenant-id": "bench"})
            if r.headers.get("x-pointsman-cache") == "hit":
                break
            time.sleep(0.1)
        else:
            raise SystemExit("no cache hit after 15 s: is the store path working?")
        for kind in ("miss", "hit", "miss", "hit"):
            lat: list[float] = []
            for _ in range(requests // 2):
                tenant = "bench" if kind == "hit" else uuid.uuid4().hex
                t = time.perf_counter()
                r = client.post(chat, json=body, headers={"x-tenant-id": tenant})
                lat.append((time.perf_counter() - t) * 1e3)
                r.raise_for_status()
                got = r.headers.get("x-pointsman-cache")
                if got != kind:
                    raise SystemExit(f"expected a cache {kind}, got {got}")
            out.setdefault(kind, []).extend(lat)
    rows = {
        k: {"requests": len(v), "p50_ms": pct(v, 0.5), "p99_ms": pct(v, 0.99)}
        for k, v in out.items()
    }
    for k, v in rows.items():
        print(
            f"  end to end {k:4s}: p50 {v['p50_ms']:.2f} ms  p99 {v['p99_ms']:.2f} ms", flush=True
        )
    return rows


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    # SIGTERM (timeout, kill) unwinds like Ctrl-C, so the redis-server and the stack are stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    p = argparse.ArgumentParser(prog="python -m bench.cache", description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--e2e-requests", type=int, default=40)
    p.add_argument("--ef", type=int, nargs="+", default=[64, 128], help="HNSW ef values")
    p.add_argument("--skip-e2e", action="store_true")
    args = p.parse_args(argv)

    results: dict[str, Any] = {"dim": DIM, "queries": args.queries}
    print("index search, one partition:", flush=True)
    results["index"] = bench_index(args.sizes, args.queries, args.ef)
    redis_server = RedisServer()
    try:
        print("SemanticCache.lookup (index + Redis read):", flush=True)
        results["lookup"] = [
            asyncio.run(bench_full_lookup(redis_server.url, n, args.queries)) for n in args.sizes
        ]
        if not args.skip_e2e:
            print("end to end through Envoy (classifier on CPU):", flush=True)
            results["e2e"] = bench_e2e(redis_server.url, args.e2e_requests)
    finally:
        redis_server.stop()

    print()
    print(f"{'what':38s} {'entries':>8s} {'p50 ms':>9s} {'p99 ms':>9s} {'recall@1':>9s}")
    for row in results["index"]:
        name = f"index search ({row['backend']}" + (f", ef={row['ef']})" if row["ef"] else ")")
        print(
            f"{name:38s} {row['entries']:>8d} {row['p50_ms']:>9.3f} {row['p99_ms']:>9.3f} "
            f"{row['recall_at_1_vs_exact']:>9.3f}"
        )
    for row in results["lookup"]:
        name = f"lookup() hit path ({row['backend']}, Redis)"
        print(f"{name:38s} {row['entries']:>8d} {row['p50_ms']:>9.3f} {row['p99_ms']:>9.3f}")
    for kind, row in results.get("e2e", {}).items():
        name = f"end to end via Envoy: {kind}"
        print(f"{name:38s} {'':>8s} {row['p50_ms']:>9.2f} {row['p99_ms']:>9.2f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "cache.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

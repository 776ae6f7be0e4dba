"""Redis or NATS JetStream KV for the pickers' shared state? Measure the two things that matter.

1. Propagation: how long until a decision made on one replica is visible to another
   (Redis: pipeline of PUBLISH + ZADD, seen by a subscriber; JetStream KV: ``put`` of the
   endpoint's block set, seen by a ``watch``).
2. Write cost: time one replica's write-behind flush takes (one decision's prefix blocks).

Run: ``python -m bench.scheduling.state_backends`` (starts its own nats-server and
redis-server on free ports). Prints a table and writes ``bench/results/state_backends.json``.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import nats
import redis.asyncio as aioredis

from bench.common.stats import percentile
from pointsman.stack.procs import binary, free_port, port_free, spawn, wait_ready

N = 400
BLOCKS = 64  # prefix blocks per decision (a 4 KB prompt at 64 bytes a block)


async def bench_redis(url: str) -> dict[str, Any]:
    pub = aioredis.from_url(url)
    sub = aioredis.from_url(url)
    ps = sub.pubsub(ignore_subscribe_messages=True)
    await ps.subscribe("bench:sync")
    seen: dict[int, float] = {}

    async def reader() -> None:
        while len(seen) < N:
            msg = await ps.get_message(timeout=1.0)
            if msg and msg["type"] == "message":
                i = msgspec.msgpack.decode(msg["data"])["i"]
                seen[i] = time.perf_counter()

    task = asyncio.create_task(reader())
    sent: dict[int, float] = {}
    writes = []
    for i in range(N):
        hashes = [random.getrandbits(63) for _ in range(BLOCKS)]
        payload = msgspec.msgpack.encode({"i": i, "hashes": hashes})
        t = time.perf_counter()
        sent[i] = t
        pipe = pub.pipeline(transaction=False)
        pipe.publish("bench:sync", payload)
        pipe.zadd("bench:prefix:pool|ep", {format(h, "x"): time.time() for h in hashes})
        pipe.zremrangebyrank("bench:prefix:pool|ep", 0, -31251)
        await pipe.execute()
        writes.append((time.perf_counter() - t) * 1000)
        await asyncio.sleep(0.002)
    async with asyncio.timeout(10):
        await task
    prop = [(seen[i] - sent[i]) * 1000 for i in range(N)]
    await ps.aclose()  # type: ignore[no-untyped-call]
    await pub.aclose()
    await sub.aclose()
    return {"propagation_ms": prop, "write_ms": writes}


async def bench_jetstream_kv(url: str, per_block: bool = False) -> dict[str, Any]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    bucket = "bench_blocks" if per_block else "bench_prefix"
    kv = await js.create_key_value(bucket=bucket, history=1)
    nc2 = await nats.connect(url)
    kv2 = await nc2.jetstream().key_value(bucket)
    watcher = await kv2.watchall()
    seen: dict[int, float] = {}
    sent: dict[int, float] = {}
    writes = []

    async def reader() -> None:
        async for entry in watcher:
            if entry is None or entry.value is None:
                continue
            i = msgspec.msgpack.decode(entry.value)["i"]
            seen.setdefault(i, time.perf_counter())
            if len(seen) >= N:
                return

    task = asyncio.create_task(reader())
    for i in range(N):
        hashes = [random.getrandbits(63) for _ in range(BLOCKS)]
        payload = msgspec.msgpack.encode({"i": i, "hashes": hashes})
        t = time.perf_counter()
        sent[i] = t
        # KV has no sorted set: one key per (pool, endpoint, decision) holds the decision's
        # blocks; an LRU over them needs a read-modify-write the store cannot do atomically.
        if per_block:
            # The sorted-set equivalent: one key per block (owner set), every block a put.
            await asyncio.gather(
                *(kv.put(f"b.{h:x}", msgspec.msgpack.encode({"i": i})) for h in hashes)
            )
        else:
            await kv.put(f"prefix.pool.ep.{i % 50}", payload)
        writes.append((time.perf_counter() - t) * 1000)
        await asyncio.sleep(0.002)
    async with asyncio.timeout(10):
        await task
    prop = [(seen[i] - sent[i]) * 1000 for i in range(N) if i in seen]
    await watcher.stop()  # type: ignore[no-untyped-call]
    await nc.close()
    await nc2.close()
    return {"propagation_ms": prop, "write_ms": writes}


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="pointsman-bench-state-"))
    nport, rport = free_port(), free_port()
    nats_proc = spawn(
        "nats-server",
        [binary("nats-server"), "-a", "127.0.0.1", "-p", str(nport), "-js", "-sd", str(work)],
        work,
    )
    redis_bin = shutil.which("redis-server") or binary("redis-server")
    redis_proc = spawn(
        "redis-server",
        [
            redis_bin,
            "--bind",
            "127.0.0.1",
            "--port",
            str(rport),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        work,
    )
    try:
        wait_ready(nats_proc, lambda: not port_free(nport), 15, "nats-server")
        wait_ready(redis_proc, lambda: not port_free(rport), 15, "redis-server")
        results = {
            "redis": asyncio.run(bench_redis(f"redis://127.0.0.1:{rport}/0")),
            "jetstream_kv": asyncio.run(bench_jetstream_kv(f"nats://127.0.0.1:{nport}")),
            "jetstream_kv_per_block": asyncio.run(
                bench_jetstream_kv(f"nats://127.0.0.1:{nport}", per_block=True)
            ),
        }
    finally:
        nats_proc.stop()
        redis_proc.stop()
        shutil.rmtree(work, ignore_errors=True)
    table: dict[str, dict[str, float]] = {}
    print(f"{'backend':24} {'propagation p50/p99 ms':>24} {'write p50/p99 ms':>20}")
    for name, r in results.items():
        row = {
            "propagation_p50_ms": statistics.median(r["propagation_ms"]),
            "propagation_p99_ms": percentile(r["propagation_ms"], 99),
            "write_p50_ms": statistics.median(r["write_ms"]),
            "write_p99_ms": percentile(r["write_ms"], 99),
            "n": len(r["propagation_ms"]),
        }
        table[name] = row
        print(
            f"{name:24} {row['propagation_p50_ms']:11.3f} / {row['propagation_p99_ms']:<10.3f}"
            f" {row['write_p50_ms']:9.3f} / {row['write_p99_ms']:<8.3f}"
        )
    out = Path("bench/results")
    out.mkdir(parents=True, exist_ok=True)
    (out / "state_backends.json").write_text(
        json.dumps({"decisions": N, "blocks_per_decision": BLOCKS, "results": table}, indent=2)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

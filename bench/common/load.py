"""Open-loop and closed-loop HTTP load for benchmarks, with per-request latency.

Open loop (fixed arrival rate) is what latency targets are about: requests arrive whether or not
earlier ones finished, so a slow system shows queueing instead of hiding it.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.common.stats import percentile


@dataclass
class Result:
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> int:
        return len(self.latencies_ms)

    def add(self, other: Result) -> None:
        """Fold another phase's result into this one (phases of one path, alternated)."""
        self.latencies_ms += other.latencies_ms
        self.errors += other.errors
        self.elapsed_s += other.elapsed_s
        for k, v in other.statuses.items():
            self.statuses[k] = self.statuses.get(k, 0) + v

    def pct(self, q: float) -> float:
        return percentile(self.latencies_ms, q)

    def summary(self) -> dict[str, Any]:
        return {
            "requests_ok": self.ok,
            "errors": self.errors,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "throughput_rps": self.ok / self.elapsed_s if self.elapsed_s else 0.0,
            "p50_ms": self.pct(50),
            "p90_ms": self.pct(90),
            "p99_ms": self.pct(99),
            "mean_ms": statistics.fmean(self.latencies_ms) if self.latencies_ms else float("nan"),
        }


async def _one(session: aiohttp.ClientSession, url: str, body: bytes, result: Result) -> None:
    started = time.perf_counter()
    try:
        async with session.post(url, data=body, headers={"content-type": "application/json"}) as r:
            await r.read()
            result.statuses[r.status] = result.statuses.get(r.status, 0) + 1
            if r.status == 200:
                result.latencies_ms.append((time.perf_counter() - started) * 1000)
            else:
                result.errors += 1
    except Exception:
        result.errors += 1


async def open_loop(url: str, payload: dict[str, Any], rate: float, duration: float) -> Result:
    """``rate`` requests/s for ``duration`` seconds, evenly spaced."""
    return (await interleaved_open_loop([url], payload, rate, duration))[0]


def interleaved_schedule(rate: float, duration: float, variants: int) -> list[tuple[float, int]]:
    """When to send what in :func:`interleaved_open_loop`: ``(seconds from the start, variant)``
    for ``rate`` requests/s to each of ``variants`` targets over ``duration`` seconds. Tick ``i``
    (every ``1 / rate`` s) sends one request to each, evenly spaced within the tick, the order
    rotating by one each tick, so no target is always first after a quiet gap."""
    out = []
    for i in range(int(rate * duration)):
        for slot in range(variants):
            out.append(((i + slot / variants) / rate, (i + slot) % variants))
    return out


async def interleaved_open_loop(
    urls: list[str], payload: dict[str, Any], rate: float, duration: float
) -> list[Result]:
    """Open loop at ``rate`` requests/s to each of ``urls`` at once, their requests interleaved
    (:func:`interleaved_schedule`): one :class:`Result` per URL. Whatever slows the machine
    during the run slows every target alike."""
    body = json.dumps(payload).encode()
    results = [Result() for _ in urls]
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = []
        start = time.perf_counter()
        for offset, k in interleaved_schedule(rate, duration, len(urls)):
            delay = start + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_one(session, urls[k], body, results[k])))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    for r in results:
        r.elapsed_s = elapsed
    return results


async def closed_loop(
    url: str, payload: dict[str, Any], concurrency: int, duration: float
) -> Result:
    """``concurrency`` clients sending back to back for ``duration`` seconds (max throughput)."""
    body = json.dumps(payload).encode()
    result = Result()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=60)
    ) as session:
        end = time.perf_counter() + duration

        async def worker() -> None:
            while time.perf_counter() < end:
                await _one(session, url, body, result)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.elapsed_s = time.perf_counter() - start
    return result


async def warm(url: str, payload: dict[str, Any], count: int = 50) -> None:
    body = json.dumps(payload).encode()
    result = Result()
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            await _one(session, url, body, result)

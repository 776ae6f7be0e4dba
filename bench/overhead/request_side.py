"""``python -m bench.overhead --request-side``: the shim's request side, FastStream vs nats-py.

One real nats-server and one real picker process (fed a snapshot of 8 endpoints every 50 ms);
in this process, the same pick requests go, open loop at a fixed rate, alternately through

* **faststream**: FastStream's request API (``NatsBroker.request``) on the shim's own
  :class:`pointsman.bus.ServiceBus` connection, and
* **nats-py**: a raw ``nats.aio.client.Client.request`` with the same payload and reply decode
  (what :class:`pointsman_shim.bus.Bus` does),

in rounds (nats-py, faststream, nats-py, ...), so drift on a busy machine hits both. Reports the
round trip p50/p90/p99 of each and the difference, and the CPU per request of this process
(the client) and of the picker. The shim would use FastStream's request API only if it cost at
most 0.1 ms more at p50 (issue 10); it uses nats-py, which costs less CPU on both sides.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import yaml

from bench.common.proc import cpu_seconds
from bench.common.stats import percentile
from bench.scheduling.decision import POOL, feed_snapshots
from pointsman.bus import NatsConfig
from pointsman.stack.procs import (
    Child,
    binary,
    free_port,
    http_status,
    port_free,
    spawn,
    wait_ready,
)
from pointsman.v1 import PickRequest, PickStatus, routes
from pointsman_shim.bus import Bus


async def _phase(
    call: Callable[[PickRequest], Awaitable[PickStatus]], rate: float, seconds: float
) -> tuple[list[float], int]:
    """Open loop: one request every 1/rate s; returns the round trips (ms) and the errors."""
    rtts: list[float] = []
    errors = 0
    prompt = "doc: " + " ".join(f"w{i}" for i in range(300))

    async def one(i: int) -> None:
        nonlocal errors
        req = PickRequest(request_id=uuid.uuid4().hex, model=POOL, prompt=f"{prompt} q{i}")
        t = time.perf_counter()
        try:
            status = await call(req)
        except Exception:
            errors += 1
            return
        rtts.append((time.perf_counter() - t) * 1000)
        if status is not PickStatus.OK:
            errors += 1

    tasks = []
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    return rtts, errors


async def _measure(nats_url: str, args: argparse.Namespace) -> dict[str, Any]:
    feeder = await nats.connect(nats_url)
    stop = asyncio.Event()
    snapper = asyncio.create_task(feed_snapshots(feeder, stop))
    raw = await nats.connect(nats_url)
    shim = Bus(NatsConfig(url=nats_url))
    await shim.start()

    async def via_nats_py(req: PickRequest) -> PickStatus:
        msg = await raw.request(routes.PICK.subject, routes.PICK.encode(req), timeout=2)
        return routes.PICK.decode_reply(msg.data).status

    async def via_faststream(req: PickRequest) -> PickStatus:
        payload = routes.PICK.encode(req)
        msg: Any = await shim.service.broker.request(payload, routes.PICK.subject, timeout=2)
        return routes.PICK.decode_reply(msg.body).status

    clients = {"nats-py": via_nats_py, "faststream": via_faststream}
    try:
        deadline = time.monotonic() + 20  # the picker has the pool
        while await via_nats_py(PickRequest(request_id="probe", model=POOL)) != PickStatus.OK:
            if time.monotonic() > deadline:
                raise RuntimeError("the picker never learnt the pool")
            await asyncio.sleep(0.05)
        for call in clients.values():  # warm both paths
            await _phase(call, args.rate, 1.0)
        results: dict[str, dict[str, Any]] = {
            n: {"rtt_ms": [], "errors": 0, "client_cpu_s": 0.0, "picker_cpu_s": 0.0}
            for n in clients
        }
        for _ in range(args.rounds):
            for name, call in clients.items():
                cpu, picker_cpu = time.process_time(), cpu_seconds(args.picker_pid)
                rtts, errors = await _phase(call, args.rate, args.seconds)
                results[name]["client_cpu_s"] += time.process_time() - cpu
                results[name]["picker_cpu_s"] += cpu_seconds(args.picker_pid) - picker_cpu
                results[name]["rtt_ms"] += rtts
                results[name]["errors"] += errors
    finally:
        stop.set()
        await snapper
        await shim.close()
        await raw.close()
        await feeder.close()
    out: dict[str, Any] = {}
    for name, r in results.items():
        data = r["rtt_ms"]
        out[name] = {
            "requests": len(data),
            "errors": r["errors"],
            **{f"p{q}_ms": percentile(data, q) for q in (50, 90, 99)},
            "client_cpu_us": 1e6 * r["client_cpu_s"] / max(1, len(data)),
            "picker_cpu_us": 1e6 * r["picker_cpu_s"] / max(1, len(data)),
        }
    out["faststream_minus_nats_py_ms"] = {
        f"p{q}": out["faststream"][f"p{q}_ms"] - out["nats-py"][f"p{q}_ms"] for q in (50, 90, 99)
    }
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="pointsman-bench-request-side-"))
    children: list[Child] = []
    try:
        nport = free_port()
        server = spawn(
            "nats-server", [binary("nats-server"), "-a", "127.0.0.1", "-p", str(nport)], work
        )
        children.append(server)
        wait_ready(server, lambda: not port_free(nport), 15, "nats-server")
        url = f"nats://127.0.0.1:{nport}"
        hport = free_port()
        cfg = work / "picker.yaml"
        section = {"http_host": "127.0.0.1", "http_port": hport, "warmup_ms": 0}
        cfg.write_text(yaml.safe_dump({"nats": {"url": url}, "picker": section}))
        picker = spawn(
            "picker", [sys.executable, "-m", "pointsman_picker", "--config", str(cfg)], work
        )
        children.append(picker)
        ready = f"http://127.0.0.1:{hport}/readyz"
        wait_ready(picker, lambda: http_status(ready) == 200, 30, "picker")
        args.picker_pid = picker.popen.pid
        try:
            import uvloop

            result = uvloop.run(_measure(url, args))
        except ImportError:
            result = asyncio.run(_measure(url, args))
    finally:
        for child in reversed(children):
            child.stop()
    result["params"] = {
        "rate": args.rate,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return result


def report(result: dict[str, Any], out: Path) -> None:
    p = result["params"]
    print(
        f"\nbench/overhead --request-side: pick round trip through a real picker, open loop "
        f"{p['rate']:g}/s, {p['rounds']} alternating rounds of {p['seconds']:g} s per client"
    )
    print(
        f"{'client':<12}{'ok':>8}{'err':>5}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}"
        f"{'client us':>11}{'picker us':>11}"
    )
    for name in ("nats-py", "faststream"):
        r = result[name]
        print(
            f"{name:<12}{r['requests']:>8}{r['errors']:>5}"
            f"{r['p50_ms']:>9.3f}{r['p90_ms']:>9.3f}{r['p99_ms']:>9.3f}"
            f"{r['client_cpu_us']:>11.0f}{r['picker_cpu_us']:>11.0f}"
        )
    d = result["faststream_minus_nats_py_ms"]
    print(f"{'difference':<12}{'':>13}{d['p50']:>9.3f}{d['p90']:>9.3f}{d['p99']:>9.3f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")

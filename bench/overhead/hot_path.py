"""``python -m bench.overhead.hot_path``: CPU per request of the picker's and the shim's hot
paths, in process, this tree against a baseline commit in the same run.

No bus, no Envoy: each service's own work for one request of ``bench.overhead``'s load (a short
chat completion to ``bench-model``, 100 req/s, one simulated replica per pool that answers at
once), measured with the thread's CPU clock (``time.thread_time``), so a core shared with other
work does not count:

* **picker**: what the picker does per request: the pick handler (flow control's ``try_pick``,
  the schedule, the reply) on the decoded request, the reply's encoding, the completion event's
  handler, and its share of the collector's snapshots (two pools, one every 5 picks each);
* **shim decision**: the decision stream: Envoy's request headers, then the body (parse,
  session, rewrite, pick request, the bus's encoding of it and decoding of the picker's reply,
  the body response with its metadata);
* **shim observer**: the observer stream: the decision's metadata, response headers and body,
  the completion event.

The baseline's ``services/picker``, ``services/extproc-shim`` and ``src`` come from ``git archive
<ref>`` into a temporary directory (``--this REF`` measures a commit the same way instead of the
working tree, for one change of a series); each round runs one child process per tree, in
alternating order, with that tree first on ``PYTHONPATH`` (the workloads, this module, are the
working tree's). Reports the mean and the p50 per request of each tree (the median over rounds
of each round's figure) and the change.

    python -m bench.overhead.hot_path [--baseline REF] [--this REF] [--rounds 8] [--requests 4000]

Writes ``bench/results/overhead_hot_path.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TREES = ("src", "services/picker", "services/extproc-shim")
POOLS = ("bench-model", "bench-native")
ENDPOINT = {"bench-model": "127.0.0.1:18001", "bench-native": "127.0.0.1:18002"}
BODY = b'{"model": "bench-model", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 1}'
WORKLOADS = ("picker", "shim decision", "shim observer")


def _stats(samples: list[float], total_s: float) -> dict[str, float]:
    return {
        "mean_us": total_s / len(samples) * 1e6,
        "p50_us": statistics.median(samples) * 1e6,
        "n": len(samples),
    }


# --- the workloads (run in a child process, on its PYTHONPATH's tree) ---------------------------


async def _picker(requests: int) -> dict[str, float]:
    from pointsman.bus import Received
    from pointsman.v1 import (
        CompletionEvent,
        EndpointMetrics,
        PickRequest,
        PoolSnapshot,
        routes,
    )
    from pointsman_picker.config import PickerConfig
    from pointsman_picker.flow import FlowControl
    from pointsman_picker.handlers import Handlers
    from pointsman_picker.scheduler import Scheduler
    from pointsman_picker.telemetry import Telemetry

    config = PickerConfig.model_validate({"replica_id": "bench"})
    scheduler = Scheduler(config, Telemetry(), clock=time.time)
    flow = FlowControl(scheduler, config.flow_control)
    handlers = Handlers(scheduler, flow=flow)

    def snapshot(pool: str) -> bytes:
        metrics = EndpointMetrics(
            address=ENDPOINT[pool], healthy=True, scraped_at=time.time(), waiting=0, running=1,
            kv_usage=0.01,
        )  # fmt: skip
        return routes.SNAPSHOTS.encode(
            PoolSnapshot(pool=pool, collector="c", published_at=time.time(), endpoints=[metrics])
        )

    def received(route: Any, data: bytes) -> Any:
        return Received(route.decode(data), None, {}, route.subject)

    # what the shim sends for BODY
    pick = PickRequest(
        request_id="", model="bench-model", prompt="<|user|>Say hi.\n", max_endpoints=2,
        session="c:d1581e7503fd390b33ec5d4b445390b0", max_wait_ms=700.0,
    )  # fmt: skip
    samples: list[float] = []
    total = 0.0
    warmup = requests // 5
    for i in range(requests + warmup):
        t = time.thread_time()
        if i % 5 == 0:
            for pool in POOLS:
                await handlers.snapshot(received(routes.SNAPSHOTS, snapshot(pool)))
        pick.request_id = f"r{i}"
        reply = await handlers.pick(received(routes.PICK, routes.PICK.encode(pick)))
        assert reply is not None and reply.endpoints, reply
        routes.PICK.encode(reply)
        event = CompletionEvent(
            request_id=f"r{i}", model="bench-model", endpoint=reply.endpoints[0],
            status_code=200, stream=False, prompt_tokens=10, completion_tokens=1,
        )  # fmt: skip
        await handlers.completion(received(routes.COMPLETIONS, routes.COMPLETIONS.encode(event)))
        spent = time.thread_time() - t
        if i >= warmup:
            samples.append(spent)
            total += spent
    return _stats(samples, total)


class _Bus:
    """The shim's bus interface with the real encoding of the pick and decoding of its reply."""

    def __init__(self) -> None:
        from pointsman.v1 import PickReply, PickStatus, routes

        self._routes = routes
        self._reply = routes.PICK.encode(
            PickReply(status=PickStatus.OK, endpoints=[ENDPOINT["bench-model"]], picker="bench")
        )

    async def pick(self, request: Any, timeout: float) -> Any:
        self._routes.PICK.encode(request)
        return self._routes.PICK.decode_reply(self._reply)

    async def publish_completion(self, event: Any) -> None:
        self._routes.COMPLETIONS.encode(event)

    async def publish_cache_store(self, message: Any) -> None:
        self._routes.CACHE_STORE.encode(message)


class _Feed:
    """Envoy's messages of one stream, as an iterator (an async generator left unfinished
    would be finalised through the loop's self-pipe: a system call per stream that is not the
    shim's)."""

    def __init__(self, messages: list[Any]) -> None:
        self._messages = iter(messages)

    def __aiter__(self) -> _Feed:
        return self

    async def __anext__(self) -> Any:
        try:
            return next(self._messages)
        except StopIteration:
            raise StopAsyncIteration from None


async def _shim(requests: int) -> dict[str, dict[str, float]]:
    from envoy.config.core.v3 import base_pb2
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

    from pointsman_shim.config import ShimConfig
    from pointsman_shim.handlers import Processor

    config = ShimConfig.model_validate(
        {
            "default_model": "bench-model",
            "classifier": {"enabled": False},
            "apis": {
                "pools": {
                    "bench-model": {"responses": "chat", "messages": "chat"},
                    "bench-native": {"responses": "native", "messages": "native"},
                }
            },
        }
    )
    known = {pool: frozenset([address]) for pool, address in ENDPOINT.items()}
    processor = Processor(config, _Bus(), known=lambda: known)  # type: ignore[arg-type]

    def header_map(pairs: dict[str, str]) -> Any:
        return base_pb2.HeaderMap(
            headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs.items()]
        )

    def decision(i: int) -> list[Any]:
        headers = pb.ProcessingRequest(
            request_headers=pb.HttpHeaders(
                headers=header_map(
                    {
                        ":path": "/v1/chat/completions", ":method": "POST",
                        ":authority": "127.0.0.1", ":scheme": "http",
                        "content-type": "application/json", "x-request-id": f"req-{i}",
                        "user-agent": "bench", "content-length": str(len(BODY)),
                    }
                )
            )
        )  # fmt: skip
        headers.protocol_config.request_body_mode = 1  # BUFFERED
        headers.protocol_config.response_body_mode = 0  # NONE: the observer layout
        body = pb.ProcessingRequest(request_body=pb.HttpBody(body=BODY, end_of_stream=True))
        return [headers, body]

    def observer(metadata: Any) -> list[Any]:
        response = pb.ProcessingRequest(
            response_headers=pb.HttpHeaders(
                headers=header_map({":status": "200", "content-type": "application/json"})
            ),
            observability_mode=True,
        )
        response.metadata_context.filter_metadata["pointsman"].CopyFrom(metadata)
        response.attributes["envoy.filters.http.ext_proc"].update(
            {"upstream.address": ENDPOINT["bench-model"]}
        )
        answer = (
            b'{"id":"c1","object":"chat.completion","model":"bench-model","choices":[{"index":0,'
            b'"message":{"role":"assistant","content":"hi"},"finish_reason":"length"}],'
            b'"usage":{"prompt_tokens":10,"completion_tokens":1,"total_tokens":11}}'
        )
        body = pb.ProcessingRequest(
            response_body=pb.HttpBody(body=answer, end_of_stream=True), observability_mode=True
        )
        return [response, body]

    async def stream(messages: list[Any]) -> list[Any]:
        return [r async for r in processor.process(_Feed(messages))]

    def timed(samples: list[float]) -> Callable[[float, bool], float]:
        def done(t: float, keep: bool) -> float:
            spent = time.thread_time() - t
            if keep:
                samples.append(spent)
            return spent if keep else 0.0

        return done

    decisions: list[float] = []
    observers: list[float] = []
    totals = [0.0, 0.0]
    warmup = requests // 5
    for i in range(requests + warmup):
        messages = decision(i)
        t = time.thread_time()
        out = await stream(messages)
        totals[0] += timed(decisions)(t, i >= warmup)
        metadata = out[-1].dynamic_metadata.fields["pointsman"].struct_value
        assert metadata.fields["endpoints"], out
        messages = observer(metadata)
        t = time.thread_time()
        await stream(messages)
        totals[1] += timed(observers)(t, i >= warmup)
    return {
        "shim decision": _stats(decisions, totals[0]),
        "shim observer": _stats(observers, totals[1]),
    }


def _worker(requests: int, profile: str | None) -> None:
    import logging

    logging.disable(logging.WARNING)

    async def both() -> dict[str, Any]:
        return {"picker": await _picker(requests), **(await _shim(requests))}

    if profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        asyncio.run(both())
        prof.disable()
        pstats.Stats(prof, stream=sys.stderr).sort_stats(profile).print_stats(40)
        return
    print(json.dumps(asyncio.run(both())))


# --- the driver ------------------------------------------------------------------------------


def git(*argv: str) -> str:
    """``git argv...``'s output in this repository."""
    out = subprocess.run(["git", *argv], cwd=ROOT, check=True, capture_output=True, text=True)
    return out.stdout.strip()


def add_baseline(p: argparse.ArgumentParser) -> None:
    """``--baseline REF``, the commit a benchmark compares this tree with (see :func:`baseline_of`)."""
    p.add_argument(
        "--baseline",
        help="git ref to compare with (default: where this branch left main, git merge-base)",
    )


def baseline_of(args: argparse.Namespace) -> str:
    """``--baseline``, or where this branch left main."""
    return str(args.baseline or git("merge-base", "HEAD", "main"))


def export(ref: str, into: Path, paths: tuple[str, ...] = TREES) -> str:
    """``ref``'s ``paths`` under ``into``; its short commit id."""
    commit = git("rev-parse", "--short", ref)
    into.mkdir(parents=True)
    archive = into / "tree.tar"
    with archive.open("wb") as f:
        subprocess.run(["git", "archive", commit, *paths], cwd=ROOT, check=True, stdout=f)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return commit


def tree_env(tree: Path | None) -> dict[str, str]:
    """The environment of a child that runs this checkout's benchmark code on ``tree``'s
    sources (its ``src`` and each service it has first on ``PYTHONPATH``, before what was
    there; ``None``: the installed ones, this tree)."""
    env = dict(os.environ)
    if tree is not None:
        services = [str(d) for d in sorted((tree / "services").iterdir()) if d.is_dir()]
        before = [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []
        env["PYTHONPATH"] = os.pathsep.join([str(tree / "src"), *services, str(ROOT), *before])
    return env


def run_worker(module: str, tree: Path | None, *argv: str) -> Any:
    """``python -m module --worker argv...`` on ``tree``'s sources (see :func:`tree_env`):
    what its last line prints, as JSON."""
    out = subprocess.run(
        [sys.executable, "-m", module, "--worker", *argv],
        cwd=ROOT, env=tree_env(tree), check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.overhead.hot_path", description=__doc__.split("\n\n")[0]
    )
    add_baseline(p)
    p.add_argument(
        "--this",
        help="git ref to measure instead of the working tree (e.g. one commit of a series)",
    )
    p.add_argument("--rounds", type=int, default=8, help="child runs per tree, alternating")
    p.add_argument("--requests", type=int, default=4000, help="measured requests per child")
    p.add_argument("--out", default="bench/results/overhead_hot_path.json")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--profile",
        metavar="SORT",
        help="run the workloads once on this tree under cProfile, print the top 40 by SORT "
        "(e.g. tottime, cumtime) to stderr, measure nothing",
    )
    args = p.parse_args(argv)
    if args.worker or args.profile:
        _worker(args.requests, args.profile)
        return 0

    args.baseline = baseline_of(args)
    with tempfile.TemporaryDirectory(prefix="hot-path-") as tmp:
        trees = {f"baseline {export(args.baseline, Path(tmp, 'base'))}": Path(tmp, "base")}
        if args.this is None:
            trees["this tree"] = ROOT
        else:
            trees[export(args.this, Path(tmp, "this"))] = Path(tmp, "this")
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
        for r in range(args.rounds):
            order = list(trees) if r % 2 == 0 else list(reversed(trees))
            for name in order:
                rounds[name].append(
                    run_worker(
                        "bench.overhead.hot_path", trees[name], "--requests", str(args.requests)
                    )
                )
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

    summary: dict[str, dict[str, dict[str, float]]] = {}
    for name, runs in rounds.items():
        summary[name] = {
            w: {k: statistics.median(run[w][k] for run in runs) for k in ("mean_us", "p50_us")}
            for w in WORKLOADS
        }
    base_name, this = list(trees)
    print(f"CPU us per request, mean / p50 (median of {args.rounds} rounds)")
    print(f"{'workload':<15} {base_name:>20} {this:>20} {'change':>22}")
    for w in WORKLOADS:
        b, t = summary[base_name][w], summary[this][w]
        dm, dp = t["mean_us"] - b["mean_us"], t["p50_us"] - b["p50_us"]
        print(
            f"{w:<15} {b['mean_us']:11.1f} / {b['p50_us']:5.1f} {t['mean_us']:11.1f} / "
            f"{t['p50_us']:5.1f} {dm:+8.1f} / {dp:+5.1f} ({dm / b['mean_us']:+.0%})"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "baseline": args.baseline,
                "this": args.this or "working tree",
                "rounds": args.rounds,
                "requests": args.requests,
                "cpus": os.cpu_count(),
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "summary": summary,
                "runs": rounds,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

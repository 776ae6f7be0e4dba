"""The routers bench/scheduling compares, each in front of a fresh fleet of simulated vLLM
replicas (cold caches, prefix caching on, ``--enable-scale-out`` so ``/tokenize`` and the
render paths answer as vLLM 0.32's do: vllm-router's ``cache_aware`` needs them).

* ``round-robin`` / ``least-request``: Envoy's own balancing (what a Kubernetes Service gives);
* ``vllm-router-cache-aware``: vllm-router 0.1.17 ``cache_aware`` with its defaults
  (``cache_threshold`` 0.3, ``balance_abs_threshold`` 64, ``balance_rel_threshold`` 1.5,
  ``eviction_interval_secs`` 120, ``max_tree_size`` 2^25 characters);
* ``vllm-router-cache-aware-tuned``: ``cache_aware`` with the settings the SGLang/SMG router
  documentation (the router vllm-router forks) recommends for the workload, :data:`TUNED`;
* ``vllm-router-power-of-two``: vllm-router's load-only policy;
* ``pointsman``: Envoy + ext_proc -> shim -> NATS -> picker, today's default profile (queue 2,
  KV 2, prefix 3) with flow control; ``pointsman-2``: two pickers sharing state in Redis;
* ``pointsman-flow``: the default profile with the queue held in the picker rather than in the
  engines (``saturation.queue_depth_threshold: 1`` and ``max_in_flight`` = the engines'
  ``--max-num-seqs``: an endpoint whose batch is full gets nothing more): flow control's
  fairness then decides who gets each engine slot as it frees;
* ``pointsman-fair``: ``pointsman-flow`` plus capacity held back for a tenant under its share
  (``flow_control.reserve``: one batch slot per endpoint, and one prefill at a time per endpoint,
  that a tenant over its share of the recent service may not take; a tenant under its share goes
  where its prefill starts soonest). With one tenant it is ``pointsman-flow``;
* ``pointsman-prefill``: ``pointsman-flow`` with ``picker.profile: prefill`` (``prefill-scorer``:
  the endpoint where the request's prefill would end soonest, by the prompt work ahead of it
  and its own uncached tokens) and ``saturation.max_prefill_ms`` (:data:`PREFILL_MS`): an
  endpoint is full while more than that much prompt work it was sent is not computed yet, so
  a request waits in the picker and then gets an engine step of its own instead of sharing
  one with the prompts sent before it; skipped, saying so, where the picker has neither;
* ``pointsman-slo``: ``picker.profile: slo`` (the latency predictor's profile) with
  ``flow_control.slo_hold``: a request no endpoint is predicted to serve within its TTFT
  objective waits in the picker for one that will (429 ``slo_unattainable`` once the objective
  has passed); ``pointsman-slo-strict``: the same with ``slo-strict`` (adds the headroom filter
  and the admission step); skipped, saying so, when this checkout's picker has no such profile.

Every vllm-router row and the Envoy rows sit behind the same kind of Envoy listener as
Pointsman, so each path has one proxy hop more than the fleet.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.scheduling.workloads import MODEL
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

ROUTERS = [
    "round-robin",
    "least-request",
    "vllm-router-cache-aware",
    "vllm-router-cache-aware-tuned",
    "vllm-router-power-of-two",
    "pointsman",
    "pointsman-2",
    "pointsman-flow",
    "pointsman-fair",
    "pointsman-prefill",
    "pointsman-slo",
    "pointsman-slo-strict",
]

#: ``pointsman-fair``'s ``flow_control.reserve``: one slot of each engine's batch, and any
#: prefill backlog (one prefill at a time), held back from a tenant over its share.
FAIR_RESERVE: dict[str, Any] = {"slots": 1, "backlog_ktokens": 0.0}

#: vllm-router ``cache_aware`` settings per workload, from the SGLang/SMG router's tuning guide
#: ("Cache-Aware Routing", Tuning Guidelines): ``cache_threshold`` low (0.1-0.2) for
#: conversational and shared-prefix (RAG) traffic, more cache hits; high (0.5-0.8) for diverse,
#: unique prompts, better balance. Balance thresholds: higher for homogeneous replicas and
#: steady traffic (favour the cache), lower for bursty traffic (prevent queueing). The default
#: ``balance_abs_threshold`` of 64 requests is never reached by a replica of this fleet, so the
#: "lower" setting is 8 (about two engine batches of the simulator here).
TUNED: dict[str, dict[str, float]] = {
    # shared documents, Poisson (steady), identical replicas: favour the cache
    "shared-prefix": {"cache_threshold": 0.2, "balance_abs_threshold": 64,
                      "balance_rel_threshold": 1.5},
    # multi-turn conversations (shared history blocks), bursty trace arrivals
    "mooncake": {"cache_threshold": 0.2, "balance_abs_threshold": 8,
                 "balance_rel_threshold": 1.5},
    # unique prompts of mixed length: diverse, bursty
    "azure": {"cache_threshold": 0.5, "balance_abs_threshold": 8, "balance_rel_threshold": 1.5},
    "tenants": {"cache_threshold": 0.5, "balance_abs_threshold": 8,
                "balance_rel_threshold": 1.5},
    "auto": {"cache_threshold": 0.5, "balance_abs_threshold": 8, "balance_rel_threshold": 1.5},
}  # fmt: skip


#: ``pointsman-prefill``'s ``saturation.max_prefill_ms``: 0, one prompt in progress per endpoint
#: and none queued behind it (no constant of the workload or the engine's speed).
PREFILL_MS = 0.0


class Skipped(Exception):
    """The router cannot run in this checkout (the message says why)."""


@dataclass
class Running:
    url: str
    #: the simulated replicas (``host:port``), for their prefix-cache counters
    endpoints: list[str] = field(default_factory=list)
    picker_metrics: list[str] = field(default_factory=list)
    #: what the row ran with (shown in the JSON)
    settings: dict[str, Any] = field(default_factory=dict)


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


def slo_profile_exists(profile: str = "slo") -> str | None:
    """``None`` when the picker builds ``profile``, else why not."""
    try:
        from pointsman_picker.config import PickerConfig
        from pointsman_picker.plan import build_plans

        build_plans(PickerConfig(profile=profile))
    except Exception as exc:  # unknown profile, or the picker package missing
        return f"no '{profile}' picker profile in this checkout ({str(exc).splitlines()[0]})"
    return None


def fair_reserve_exists() -> str | None:
    """``None`` when the picker has ``flow_control.reserve``, else why not."""
    try:
        from pointsman_picker.config import FlowControlConfig

        FlowControlConfig.model_validate({"reserve": FAIR_RESERVE})
    except Exception as exc:
        return f"no flow_control.reserve in this checkout ({str(exc).splitlines()[0]})"
    return None


def prefill_bound_exists() -> str | None:
    """``None`` when the picker has ``saturation.max_prefill_ms``, else why not."""
    try:
        from pointsman_picker.config import SaturationConfig

        SaturationConfig.model_validate({"max_prefill_ms": PREFILL_MS})
    except Exception as exc:
        return f"no saturation.max_prefill_ms in this checkout ({str(exc).splitlines()[0]})"
    return None


def engine_batch(sim_args: list[str]) -> int:
    """The simulated engines' ``--max-num-seqs`` (the simulator's default 256 when not set)."""
    for i, arg in enumerate(sim_args):
        if arg == "--max-num-seqs" and i + 1 < len(sim_args):
            return int(sim_args[i + 1])
        if arg.startswith("--max-num-seqs="):
            return int(arg.split("=", 1)[1])
    return 256


def _pointsman(
    work: Path, replicas: int, sim_args: list[str], *, pickers: int, profile: str | None,
    models: list[str], extra: dict[str, Any], model_sim_args: dict[str, list[str]],
) -> Iterator[Running]:  # fmt: skip
    with contextlib.ExitStack() as stack:
        # Flow control: a saturated pool's requests wait in the picker up to 30 s.
        overrides: dict[str, Any] = {
            "shim": {"pick_timeout_ms": 200, "queue_wait_ms": 30_000},
            "picker": {"flow_control": {"ttl_ms": 30_000}},
        }
        if profile:
            overrides["picker"]["profile"] = profile
        if pickers > 1:
            url = stack.enter_context(_redis(work))
            overrides["picker"]["shared_state"] = {"redis_url": url}
        for section, values in extra.items():
            overrides[section] = {**overrides.get(section, {}), **values}
        options = StackOptions(
            models=models, replicas=replicas, gateway_port=0,
            sim_args=["--log-level", "WARNING", *sim_args], model_sim_args=model_sim_args,
            picker_replicas=pickers,
            classifier=bool(extra.get("classifier")), overrides=overrides,
            workdir=Path(tempfile.mkdtemp(prefix="stack-", dir=work)),
        )  # fmt: skip
        s = stack.enter_context(Stack(options))
        metrics = [f"http://127.0.0.1:{s.ports['picker_http']}/metrics"]
        metrics += [
            f"http://127.0.0.1:{s.ports[f'picker-{i}_http']}/metrics" for i in range(1, pickers)
        ]
        endpoints = [ep for model in models for ep in s.pools[model]]
        settings = {"profile": profile or "default", "pickers": pickers, "overrides": overrides}
        yield Running(s.gateway_url, endpoints, metrics, settings)


@contextlib.contextmanager
def start_router(
    name: str, work: Path, replicas: int, sim_args: list[str], *, workload: str = "shared-prefix",
    models: list[str] | None = None, extra: dict[str, Any] | None = None,
    model_sim_args: dict[str, list[str]] | None = None,
) -> Iterator[Running]:  # fmt: skip
    """Start ``name`` with its fleet; ``extra``: config sections merged into Pointsman's."""
    models = models or [MODEL]
    sim_args = ["--enable-scale-out", *sim_args]
    if name in ("round-robin", "least-request"):
        policy = "ROUND_ROBIN" if name == "round-robin" else "LEAST_REQUEST"
        with _simulators(work, replicas, sim_args) as eps, _envoy(work, eps, policy) as url:
            yield Running(url, eps, settings={"lb_policy": policy})
        return
    if name.startswith("vllm-router-"):
        exe = shutil.which("vllm-router") or str(Path(sys.executable).parent / "vllm-router")
        if not Path(exe).exists():
            raise Skipped("vllm-router is not installed: pip install -e '.[bench]'")
        tuned = name.endswith("-tuned")
        policy = name.removeprefix("vllm-router-").removesuffix("-tuned").replace("-", "_")
        settings: dict[str, Any] = {"policy": policy}
        if tuned:
            settings.update(TUNED.get(workload, {}))
        flags = [f"--{k.replace('_', '-')}={v:g}" for k, v in settings.items() if k != "policy"]
        with _simulators(work, replicas, sim_args) as eps:
            port = free_port()
            argv = [
                exe, "--host", "127.0.0.1", "--port", str(port), "--policy", policy, *flags,
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
                    yield Running(url, eps, settings=settings)
            finally:
                child.stop()
        return
    if name in ("pointsman", "pointsman-2", "pointsman-flow", "pointsman-fair", "pointsman-prefill",
                "pointsman-slo", "pointsman-slo-strict"):  # fmt: skip
        profile = None
        if name in ("pointsman-flow", "pointsman-fair", "pointsman-prefill"):
            extra = {**(extra or {})}
            extra["picker"] = {
                **extra.get("picker", {}),
                "saturation": {
                    "queue_depth_threshold": 1, "max_in_flight": engine_batch(sim_args),
                },
            }  # fmt: skip
        if name == "pointsman-prefill":
            profile = "prefill"
            why = slo_profile_exists(profile) or prefill_bound_exists()
            if why is not None:
                raise Skipped(why)
            extra = {**(extra or {})}
            picker = extra.get("picker", {})
            extra["picker"] = {
                **picker,
                "saturation": {**picker.get("saturation", {}), "max_prefill_ms": PREFILL_MS},
            }
        if name == "pointsman-fair":
            why = fair_reserve_exists()
            if why is not None:
                raise Skipped(why)
            extra = {**(extra or {})}
            extra["picker"] = {
                **extra.get("picker", {}),
                "flow_control": {"ttl_ms": 30_000, "reserve": FAIR_RESERVE},
            }
        if name.startswith("pointsman-slo"):
            profile = name.removeprefix("pointsman-")
            why = slo_profile_exists(profile)
            if why is not None:
                raise Skipped(why)
            # a request no endpoint is predicted to serve in time waits for one that will
            extra = {**(extra or {})}
            extra["picker"] = {
                **extra.get("picker", {}),
                "flow_control": {"ttl_ms": 30_000, "slo_hold": True},
            }
        with contextlib.contextmanager(_pointsman)(
            work, replicas, sim_args, pickers=2 if name == "pointsman-2" else 1,
            profile=profile, models=models, extra=extra or {},
            model_sim_args=model_sim_args or {},
        ) as running:  # fmt: skip
            yield running
        return
    raise SystemExit(f"unknown router '{name}' (routers: {', '.join(ROUTERS)})")


def prefix_counters(endpoints: list[str]) -> tuple[float, float]:
    """(queries, hits) of prefix-cache tokens summed over the replicas' own /metrics."""
    queries = hits = 0.0
    for ep in endpoints:
        try:
            text = urllib.request.urlopen(f"http://{ep}/metrics", timeout=10).read().decode()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("vllm:prefix_cache_queries_total"):
                queries += float(line.rsplit(" ", 1)[1])
            elif line.startswith("vllm:prefix_cache_hits_total"):
                hits += float(line.rsplit(" ", 1)[1])
    return queries, hits

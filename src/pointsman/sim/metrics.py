"""``/metrics`` in Prometheus text with vLLM's own metric names, label sets and buckets.

Hand-written rather than through prometheus-client's registry: a collector scrapes every
50-100 ms and one process may serve many replicas, so a scrape must cost little. Label values
that never change are escaped once. Histogram values are in *simulated* seconds (wall seconds
divided by ``--time-scale``) so the buckets keep their meaning at any time scale.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import OrderedDict

from pointsman.sim.config import SimConfig
from pointsman.sim.scheduler import Scheduler

# vLLM v1's buckets (vllm/v1/metrics/loggers.py)
# fmt: off
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
               60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
               7.5, 10.0, 20.0, 40.0, 80.0)
# fmt: on
FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")
#: distinct lora_requests_info series kept (vLLM keeps every one it ever set; we cap them)
LORA_INFO_SERIES = 32


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def fmt(value: float) -> str:
    """A float as Prometheus' Python client writes it (``1.0``, ``0.25``, ``+Inf``)."""
    if value == float("inf"):
        return "+Inf"
    return repr(float(value))


class Histogram:
    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def render(self, name: str, labels: str, out: list[str]) -> None:
        """``labels`` is the inner label text (``engine="0",model_name="m"``)."""
        acc = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            acc += n
            out.append(f'{name}_bucket{{{labels},le="{fmt(bound)}"}} {fmt(acc)}\n')
        out.append(f'{name}_bucket{{{labels},le="+Inf"}} {fmt(self.count)}\n')
        out.append(f"{name}_count{{{labels}}} {fmt(self.count)}\n")
        out.append(f"{name}_sum{{{labels}}} {fmt(self.sum)}\n")


class Metrics:
    """Per-request observations of one replica, and the text of its ``/metrics``."""

    def __init__(self, config: SimConfig) -> None:
        self.cfg = config
        self.created = time.time()
        self.ttft = Histogram(TTFT_BUCKETS)
        self.e2e = Histogram(E2E_BUCKETS)
        self.itl = Histogram(ITL_BUCKETS)
        self.queue_time = Histogram(E2E_BUCKETS)
        self.success = dict.fromkeys(FINISH_REASONS, 0)
        self._labels = f'engine="0",model_name="{escape(config.model)}"'
        self._lora_info: OrderedDict[tuple[str, str], float] = OrderedDict()
        tokens = config.num_gpu_blocks * config.block_size
        # the label set of vLLM 0.32 (a subset: the ones that mean something here)
        cc = {
            "block_size": str(config.block_size),
            "cache_dtype": "auto",
            "enable_prefix_caching": str(config.enable_prefix_caching),
            "engine": "0",
            "gpu_memory_utilization": "0.9",
            "is_attention_free": "False",
            "kv_cache_max_concurrency": str(round(tokens / config.max_model_len, 2)),
            "kv_cache_size_tokens": str(tokens),
            "num_cpu_blocks": "None",
            "num_gpu_blocks": str(config.num_gpu_blocks),
            "num_gpu_blocks_override": "None",
            "prefix_caching_hash_algo": "builtin",
            "sliding_window": "None",
            "user_specified_block_size": "False",
        }
        self._cache_config = ",".join(f'{k}="{escape(v)}"' for k, v in cc.items())

    def finished(self, reason: str, e2e_s: float) -> None:
        self.success[reason] = self.success.get(reason, 0) + 1
        self.e2e.observe(e2e_s)

    def render(self, sched: Scheduler, now: float | None = None) -> str:
        now = time.time() if now is None else now
        lb = self._labels
        waiting = len(sched.waiting)
        out: list[str] = []
        a = out.append

        def gauge(name: str, help_: str, value: float) -> None:
            a(f"# HELP {name} {help_}\n# TYPE {name} gauge\n{name}{{{lb}}} {fmt(value)}\n")

        def counter(name: str, help_: str, value: float) -> None:
            a(
                f"# HELP {name}_total {help_}\n# TYPE {name}_total counter\n"
                f"{name}_total{{{lb}}} {fmt(value)}\n"
            )
            a(
                f"# HELP {name}_created {help_}\n# TYPE {name}_created gauge\n"
                f"{name}_created{{{lb}}} {fmt(self.created)}\n"
            )

        gauge(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            len(sched.running),
        )
        gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", waiting)
        a(
            "# HELP vllm:num_requests_waiting_by_reason Number of requests waiting, by reason.\n"
            "# TYPE vllm:num_requests_waiting_by_reason gauge\n"
            f'vllm:num_requests_waiting_by_reason{{{lb},reason="capacity"}} {fmt(waiting)}\n'
            f'vllm:num_requests_waiting_by_reason{{{lb},reason="deferred"}} 0.0\n'
        )
        usage = sched.kv.usage
        gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", usage)
        gauge(
            "vllm:gpu_cache_usage_perc",
            "GPU KV-cache usage. 1 means 100 percent usage (older name).",
            usage,
        )
        counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            sched.prefix_queries,
        )
        counter(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            sched.prefix_hits,
        )
        counter(
            "vllm:num_preemptions",
            "Cumulative number of preemption from the engine.",
            sched.preemptions,
        )
        counter("vllm:prompt_tokens", "Number of prefill tokens processed.", sched.prompt_tokens)
        cached = sched.prompt_tokens_cached
        counter(
            "vllm:prompt_tokens_cached",
            "Number of cached prompt tokens (local + external).",
            cached,
        )
        a(
            "# HELP vllm:prompt_tokens_by_source_total Number of prompt tokens by source.\n"
            "# TYPE vllm:prompt_tokens_by_source_total counter\n"
        )
        for source, n in (
            ("local_compute", sched.prompt_tokens - cached),
            ("local_cache_hit", cached),
            ("external_kv_transfer", 0),
        ):
            a(f'vllm:prompt_tokens_by_source_total{{{lb},source="{source}"}} {fmt(n)}\n')
        counter(
            "vllm:generation_tokens",
            "Number of generation tokens processed.",
            sched.generation_tokens,
        )
        a(
            "# HELP vllm:request_success_total Count of successfully processed requests.\n"
            "# TYPE vllm:request_success_total counter\n"
        )
        for reason, n in self.success.items():
            a(f'vllm:request_success_total{{{lb},finished_reason="{reason}"}} {fmt(n)}\n')
        for name, help_, hist in (
            (
                "vllm:time_to_first_token_seconds",
                "Histogram of time to first token in seconds.",
                self.ttft,
            ),
            (
                "vllm:e2e_request_latency_seconds",
                "Histogram of e2e request latency in seconds.",
                self.e2e,
            ),
            (
                "vllm:inter_token_latency_seconds",
                "Histogram of inter-token latency in seconds.",
                self.itl,
            ),
            (
                "vllm:request_queue_time_seconds",
                "Histogram of time spent in WAITING phase for request.",
                self.queue_time,
            ),
        ):
            a(f"# HELP {name} {help_}\n# TYPE {name} histogram\n")
            hist.render(name, lb, out)
        if self.cfg.lora_adapters:
            running, waiting_l = sched.lora_names()
            key = (running, waiting_l)
            self._lora_info[key] = now
            self._lora_info.move_to_end(key)
            while len(self._lora_info) > LORA_INFO_SERIES:
                self._lora_info.popitem(last=False)
            a(
                "# HELP vllm:lora_requests_info Running stats on lora requests.\n"
                "# TYPE vllm:lora_requests_info gauge\n"
            )
            for (run, wait), ts in self._lora_info.items():
                a(
                    f'vllm:lora_requests_info{{max_lora="{self.cfg.max_loras}",'
                    f'running_lora_adapters="{escape(run)}",'
                    f'waiting_lora_adapters="{escape(wait)}"}} {fmt(ts)}\n'
                )
        a(
            "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig\n"
            "# TYPE vllm:cache_config_info gauge\n"
            f"vllm:cache_config_info{{{self._cache_config}}} 1.0\n"
        )
        return "".join(out)

"""What each inference engine calls the numbers the picker needs, and reading them.

An :class:`EngineSpec` maps the picker's fields (queue, running, KV-cache use, LoRA, cache
geometry) to an engine's metric names. vLLM and SGLang are built in; any other engine is one
mapping in the config (``collector.engines``). Readings aggregate over label sets: a vLLM server
with data parallelism exposes one series per ``engine="N"``, and the endpoint's queue is the sum.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pointsman_collector.core import prom
from pointsman_collector.core.prom import Sample


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """Metric names of one engine; for each field the first name present on the page wins."""

    name: str
    detect: str
    waiting: tuple[str, ...] = ()
    running: tuple[str, ...] = ()
    kv_usage: tuple[str, ...] = ()
    #: Multiplies the KV metric to get a fraction in 0..1 (0.01 for an engine that reports %).
    kv_usage_scale: float = 1.0
    #: An info gauge with ``running_lora_adapters``/``waiting_lora_adapters``/``max_lora`` labels.
    lora_info: str | None = None
    #: An info gauge with ``block_size`` and ``num_gpu_blocks`` labels (vLLM's cache config).
    cache_config_info: str | None = None
    #: Gauges giving the KV capacity in blocks, for engines without a cache-config info gauge.
    num_blocks: tuple[str, ...] = ()
    block_size: int = 0

    def wanted(self) -> tuple[str, ...]:
        """Every sample name this spec may read (what the fast extractor looks for)."""
        return _wanted(self)


@functools.cache
def _wanted(spec: EngineSpec) -> tuple[str, ...]:
    names = [*spec.waiting, *spec.running, *spec.kv_usage, *spec.num_blocks]
    names += [n for n in (spec.lora_info, spec.cache_config_info) if n]
    return tuple(dict.fromkeys(names))


VLLM = EngineSpec(
    name="vllm",
    detect="vllm:",
    waiting=("vllm:num_requests_waiting",),
    running=("vllm:num_requests_running",),
    # v1 name first; vLLM before 0.10 (and the v0 engine) called it gpu_cache_usage_perc.
    kv_usage=("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    lora_info="vllm:lora_requests_info",
    cache_config_info="vllm:cache_config_info",
)

SGLANG = EngineSpec(
    name="sglang",
    detect="sglang:",
    waiting=("sglang:num_queue_reqs",),
    running=("sglang:num_running_reqs",),
    kv_usage=("sglang:token_usage",),
    # SGLang's KV pool is counted in tokens (page size 1 by default).
    num_blocks=("sglang:max_total_num_tokens",),
    block_size=1,
)

BUILTIN: dict[str, EngineSpec] = {VLLM.name: VLLM, SGLANG.name: SGLANG}


@dataclass(slots=True)
class Reading:
    """The numbers one scrape of one endpoint gave."""

    engine: str
    waiting: int = 0
    running: int = 0
    kv_usage: float = 0.0
    lora_running: list[str] = field(default_factory=list)
    lora_waiting: list[str] = field(default_factory=list)
    max_lora: int = 0
    block_size: int = 0
    num_blocks: int = 0


class NoEngineMetrics(ValueError):
    """The page has none of the engine's queue, running or KV metrics."""


def detect(data: bytes, specs: Sequence[EngineSpec]) -> EngineSpec | None:
    """The first spec whose metric prefix appears on the page (``vllm:``, ``sglang:``)."""
    for spec in specs:
        if spec.detect and spec.detect.encode() in data:
            return spec
    return None


def _first(samples: Mapping[str, Sequence[Sample]], names: Sequence[str]) -> list[float] | None:
    for name in names:
        found = samples.get(name)
        if found:
            return [s.value for s in found if not math.isnan(s.value)]
    return None


def _int_label(labels: Mapping[str, str], name: str) -> int:
    try:
        return int(float(labels.get(name, "0")))
    except ValueError:  # "None" when vLLM has not sized the cache
        return 0


def _adapters(value: str) -> list[str]:
    return [a.strip() for a in value.split(",") if a.strip()]


def read(samples: Mapping[str, Sequence[Sample]], spec: EngineSpec) -> Reading:
    """Turn one page's samples into a :class:`Reading`; raises :class:`NoEngineMetrics`."""
    waiting = _first(samples, spec.waiting)
    running = _first(samples, spec.running)
    kv = _first(samples, spec.kv_usage)
    if waiting is None and running is None and kv is None:
        raise NoEngineMetrics(f"no {spec.name} queue, running or KV metrics on the page")
    reading = Reading(engine=spec.name)
    reading.waiting = max(0, round(sum(waiting))) if waiting else 0
    reading.running = max(0, round(sum(running))) if running else 0
    if kv:
        usage = sum(kv) / len(kv) * spec.kv_usage_scale
        reading.kv_usage = min(1.0, max(0.0, usage))
    if spec.lora_info and (lora := samples.get(spec.lora_info)):
        # One series per distinct adapter set; the value is the time it was set: newest wins.
        latest = max(lora, key=lambda s: s.value if not math.isnan(s.value) else -math.inf)
        reading.lora_running = _adapters(latest.labels.get("running_lora_adapters", ""))
        reading.lora_waiting = _adapters(latest.labels.get("waiting_lora_adapters", ""))
        reading.max_lora = _int_label(latest.labels, "max_lora")
    if spec.cache_config_info and (info := samples.get(spec.cache_config_info)):
        reading.block_size = _int_label(info[0].labels, "block_size")
        reading.num_blocks = sum(_int_label(s.labels, "num_gpu_blocks") for s in info)
    elif spec.num_blocks and (blocks := _first(samples, spec.num_blocks)):
        reading.num_blocks = max(0, round(sum(blocks)))
        reading.block_size = spec.block_size
    return reading


def read_page(data: bytes, specs: Mapping[str, EngineSpec], engine: str | None) -> Reading:
    """Detect (or look up) the engine of one ``/metrics`` page and read the needed families."""
    if engine and engine != "auto":
        spec = specs.get(engine)
        if spec is None:
            raise NoEngineMetrics(f"unknown engine {engine!r}")
    else:
        found = detect(data, list(specs.values()))
        if found is None:
            raise NoEngineMetrics(f"no known engine metrics on the page (known: {sorted(specs)})")
        spec = found
    return read(_extract_needed(data, spec), spec)


def _extract_needed(data: bytes, spec: EngineSpec) -> dict[str, list[Sample]]:
    """Per field, look for its names in order and stop at the first present (an older name
    such as ``vllm:gpu_cache_usage_perc`` costs a search only when the newer one is missing)."""
    out: dict[str, list[Sample]] = {}
    for group in _groups(spec):
        for name in group:
            found = prom.extract_one(data, name)
            if found:
                out[name] = found
                break
    return out


@functools.cache
def _groups(spec: EngineSpec) -> tuple[tuple[str, ...], ...]:
    singles = tuple((n,) for n in (spec.lora_info, spec.cache_config_info) if n)
    fields = (spec.waiting, spec.running, spec.kv_usage, spec.num_blocks)
    return tuple(g for g in fields if g) + singles

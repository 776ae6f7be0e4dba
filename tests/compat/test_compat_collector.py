"""The collector's vLLM parsing on real vLLM 0.32 ``/metrics`` pages, against a general parser.

The expected numbers come from ``prometheus_client``'s own text parser, so these tests prove the
collector (both its general parser and its fast extractor) agrees with a reference parser on real
output, including the ``vllm:num_requests_waiting_by_reason`` family whose name starts with
``vllm:num_requests_waiting``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pointsman_collector.core import engines
from tests.compat.fixtures import headers, raw

PAGES = ["metrics_idle", "metrics_busy"]


@dataclass
class Expected:
    waiting: float
    running: float
    kv_usage: float
    block_size: int
    num_blocks: int


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


def expected(page: str) -> Expected:
    text = raw(f"{page}.txt").decode()
    waiting = samples(text, "vllm:num_requests_waiting")
    running = samples(text, "vllm:num_requests_running")
    kv = samples(text, "vllm:kv_cache_usage_perc")
    # One engine, one model: one series each, labelled the way ENVIRONMENT.md says.
    for series in (waiting, running, kv):
        assert len(series) == 1
        assert set(series[0][0]) == {"engine", "model_name"}
        assert series[0][0]["model_name"] == "tiny-llama"
    info = samples(text, "vllm:cache_config_info")
    assert len(info) == 1
    return Expected(
        waiting=waiting[0][1],
        running=running[0][1],
        kv_usage=kv[0][1],
        block_size=int(info[0][0]["block_size"]),
        num_blocks=int(info[0][0]["num_gpu_blocks"]),
    )


def test_pages_were_served_as_prometheus_text() -> None:
    for page in PAGES:
        status, hdrs = headers(page)
        assert status == 200
        assert hdrs["content-type"].startswith("text/plain")


def test_busy_page_shows_queueing_and_kv_use() -> None:
    idle, busy = expected("metrics_idle"), expected("metrics_busy")
    assert idle.waiting == idle.running == 0 and idle.kv_usage == 0
    assert busy.waiting > 0 and busy.running > 0 and 0 < busy.kv_usage < 1


@pytest.mark.parametrize("engine", [None, "vllm"], ids=["auto", "named"])
@pytest.mark.parametrize("page", PAGES)
def test_collector_reads_what_the_reference_parser_reads(page: str, engine: str | None) -> None:
    want = expected(page)
    got = engines.read_page(raw(f"{page}.txt"), engines.BUILTIN, engine)
    assert got.engine == "vllm"
    assert got.waiting == want.waiting
    assert got.running == want.running
    assert got.kv_usage == pytest.approx(want.kv_usage, rel=1e-12, abs=0)
    assert got.block_size == want.block_size
    assert got.num_blocks == want.num_blocks


def test_waiting_by_reason_is_not_counted_as_waiting() -> None:
    """``vllm:num_requests_waiting_by_reason`` shares the prefix; the queue must not double."""
    text = raw("metrics_busy.txt").decode()
    by_reason = samples(text, "vllm:num_requests_waiting_by_reason")
    assert by_reason, "vLLM 0.32 exposes the by-reason family"
    got = engines.read_page(raw("metrics_busy.txt"), engines.BUILTIN, None)
    assert got.waiting == expected("metrics_busy").waiting

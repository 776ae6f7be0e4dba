"""Reading vLLM, SGLang and mapped engines' pages into the picker's numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from pointsman_collector.config import CollectorConfig, EngineMapping
from pointsman_collector.core import engines
from tests.helpers import promtext

FIXTURES = Path(__file__).parent / "fixtures"
SPECS = engines.BUILTIN


def page(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "vllm_v1.txt",
            dict(
                engine="vllm",
                waiting=2,
                running=3,
                kv_usage=0.4123,
                block_size=16,
                num_blocks=27487,
                max_lora=4,
                lora_running=["sql-lora", "tool-lora"],
                lora_waiting=["chat-lora"],
            ),
        ),
        (
            "vllm_v0.txt",
            dict(engine="vllm", waiting=2, running=3, kv_usage=0.4123, block_size=16),
        ),
        (
            # Two data-parallel engines: queues add up, KV use is the mean, blocks add up.
            "vllm_dp2.txt",
            dict(
                engine="vllm",
                waiting=5,
                running=7,
                kv_usage=pytest.approx(0.4623),
                num_blocks=2 * 27487,
            ),
        ),
        (
            # Captured from a real vLLM 0.32 (CPU build, tiny Llama, --max-num-seqs 4) while
            # 8 requests ran: 4 running, 4 queued; block_size 128 in its cache_config_info.
            "vllm_0.32_real.txt",
            dict(
                engine="vllm",
                waiting=4,
                running=4,
                kv_usage=pytest.approx(0.09917355),
                block_size=128,
                num_blocks=122,
                lora_running=[],
                max_lora=0,
            ),
        ),
        (
            "sglang.txt",
            dict(
                engine="sglang",
                waiting=7,
                running=28,
                kv_usage=0.28,
                num_blocks=161721,
                block_size=1,
                lora_running=[],
            ),
        ),
    ],
)
def test_read_real_pages(name: str, expected: dict[str, object], full: bool) -> None:
    data = page(name)
    if full:  # the reference: the whole page parsed, then read
        spec = engines.detect(data, list(SPECS.values()))
        assert spec is not None
        reading = engines.read(promtext.parse(data.decode()).samples, spec)
    else:
        reading = engines.read_page(data, SPECS, None)
    for field, value in expected.items():
        assert getattr(reading, field) == value, field


def test_configured_engine_wins_over_detection() -> None:
    with pytest.raises(engines.NoEngineMetrics):
        engines.read_page(page("vllm_v1.txt"), SPECS, "sglang")


def test_unknown_page_is_an_error() -> None:
    with pytest.raises(engines.NoEngineMetrics, match="no known engine"):
        engines.read_page(b"# TYPE up gauge\nup 1\n", SPECS, None)


def test_mapped_engine_from_config() -> None:
    cfg = CollectorConfig(
        engines={
            "tgi": EngineMapping(
                detect="tgi_",
                waiting=["tgi_queue_size"],
                running=["tgi_batch_current_size"],
                kv_usage=["tgi_kv_percent"],
                kv_usage_scale=0.01,
            )
        }
    )
    data = b"tgi_queue_size 4\ntgi_batch_current_size 9\ntgi_kv_percent 55\n"
    reading = engines.read_page(data, cfg.specs(), None)
    assert (reading.engine, reading.waiting, reading.running) == ("tgi", 4, 9)
    assert reading.kv_usage == pytest.approx(0.55)


@pytest.mark.parametrize(
    ("lines", "kv"),
    [
        (["vllm:kv_cache_usage_perc 1.7"], 1.0),  # clamped
        (["vllm:kv_cache_usage_perc -0.2"], 0.0),
        (["vllm:kv_cache_usage_perc NaN", "vllm:num_requests_waiting 1"], 0.0),
    ],
)
def test_kv_usage_stays_in_range(lines: list[str], kv: float) -> None:
    samples = promtext.parse("\n".join(lines)).samples
    assert engines.read(samples, engines.VLLM).kv_usage == kv


def test_cache_config_none_blocks_is_zero() -> None:
    text = (
        "vllm:num_requests_waiting 0\n"
        'vllm:cache_config_info{block_size="16",num_gpu_blocks="None"} 1.0\n'
    )
    reading = engines.read(promtext.parse(text).samples, engines.VLLM)
    assert (reading.block_size, reading.num_blocks) == (16, 0)


def test_wanted_names_are_few() -> None:
    assert set(engines.VLLM.wanted()) == {
        "vllm:num_requests_waiting",
        "vllm:num_requests_running",
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc",
        "vllm:lora_requests_info",
        "vllm:cache_config_info",
    }

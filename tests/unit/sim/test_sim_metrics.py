"""/metrics text: parses with prometheus_client, vLLM names and labels, cumulative buckets."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from pointsman.sim.config import SimConfig
from pointsman.sim.metrics import TTFT_BUCKETS, Histogram, Metrics, fmt
from pointsman.sim.scheduler import Scheduler, Seq

CFG = SimConfig(model='org/model "quoted"', lora_adapters=["sql-lora", "chat-lora"], max_loras=2)


def families(text: str) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    return {
        f.name: [(s.name, s.labels, s.value) for s in f.samples]
        for f in text_string_to_metric_families(text)
    }


def test_render_parses_with_vllm_names_and_labels() -> None:
    sched = Scheduler(CFG)
    m = Metrics(CFG)
    sched.add(Seq("a", 40, 2, [], lora="sql-lora"))
    sched.add(Seq("b", 40, 2, []))
    sched.complete(sched.schedule())
    sched.add(Seq("c", 40, 2, [], lora="chat-lora"))
    m.ttft.observe(0.03)
    m.finished("length", 1.2)
    fams = families(m.render(sched, now=1000.0))
    labels = {"engine": "0", "model_name": 'org/model "quoted"'}
    assert fams["vllm:num_requests_running"] == [("vllm:num_requests_running", labels, 2.0)]
    assert fams["vllm:num_requests_waiting"][0][2] == 1.0
    usage = fams["vllm:kv_cache_usage_perc"][0][2]
    assert 0 < usage <= 1 and fams["vllm:gpu_cache_usage_perc"][0][2] == usage
    assert fams["vllm:prefix_cache_queries"][0][:2] == ("vllm:prefix_cache_queries_total", labels)
    assert fams["vllm:prompt_tokens"][0][2] == 80
    assert fams["vllm:generation_tokens"][0][2] == 2
    success = {s[1]["finished_reason"]: s[2] for s in fams["vllm:request_success"]}
    assert success == {"stop": 0, "length": 1, "abort": 0, "error": 0, "repetition": 0}
    by_source = {s[1]["source"]: s[2] for s in fams["vllm:prompt_tokens_by_source"]}
    assert by_source == {"local_compute": 80, "local_cache_hit": 0, "external_kv_transfer": 0}
    reasons = {s[1]["reason"]: s[2] for s in fams["vllm:num_requests_waiting_by_reason"]}
    assert reasons == {"capacity": 1, "deferred": 0}
    (lora,) = fams["vllm:lora_requests_info"]
    assert lora[1] == {
        "max_lora": "2",
        "running_lora_adapters": "sql-lora",
        "waiting_lora_adapters": "chat-lora",
    }
    assert lora[2] == 1000.0
    (cache,) = fams["vllm:cache_config_info"]
    assert cache[1]["block_size"] == "16" and cache[1]["num_gpu_blocks"] == "3072"
    assert cache[1]["enable_prefix_caching"] == "True"
    ttft = {s[1].get("le"): s[2] for s in fams["vllm:time_to_first_token_seconds"]}
    assert ttft["0.02"] == 0 and ttft["0.04"] == 1 and ttft["+Inf"] == 1 and ttft[None] in (1, 0.03)


def test_lora_series_accumulate_like_vllm_and_are_capped() -> None:
    sched = Scheduler(CFG)
    m = Metrics(CFG)
    m.render(sched, now=1.0)
    sched.add(Seq("a", 4, 2, [], lora="sql-lora"))
    text = m.render(sched, now=2.0)
    series = families(text)["vllm:lora_requests_info"]
    assert len(series) == 2  # the old state keeps its old timestamp; consumers take the newest
    newest = max(series, key=lambda s: s[2])
    assert newest[1]["waiting_lora_adapters"] == "sql-lora"


def test_no_lora_metric_without_adapters() -> None:
    cfg = replace(CFG, lora_adapters=[])
    assert "lora_requests_info" not in Metrics(cfg).render(Scheduler(cfg))


@given(st.lists(st.floats(min_value=0, max_value=5000, allow_nan=False), max_size=50))
def test_histogram_buckets_are_cumulative(values: list[float]) -> None:
    h = Histogram(TTFT_BUCKETS)
    for v in values:
        h.observe(v)
    out: list[str] = []
    h.render("x", 'engine="0"', out)
    counts = [float(line.rsplit(" ", 1)[1]) for line in out if "_bucket" in line]
    assert counts == sorted(counts)
    assert counts[-1] == len(values)
    for bound, count in zip(TTFT_BUCKETS, counts, strict=False):
        assert count == sum(1 for v in values if v <= bound)


def test_fmt() -> None:
    assert fmt(1) == "1.0" and fmt(0.25) == "0.25" and fmt(float("inf")) == "+Inf"

"""bench/scheduling's figures: Jain's index over max-min fair shares, percentiles, workloads."""

from __future__ import annotations

import json
import math

import pytest

from bench.scheduling import report, workloads


def test_jain_bounds() -> None:
    assert report.jain([5.0, 5.0]) == 1.0
    assert report.jain([1.0, 0.0]) == 0.5
    assert math.isnan(report.jain([]))


def test_max_min_shares_give_the_light_tenant_all_it_asked() -> None:
    assert report.max_min_shares({"heavy": 1000.0, "light": 100.0}, 600.0) == {
        "heavy": 500.0, "light": 100.0,
    }  # fmt: skip
    assert report.max_min_shares({"a": 400.0, "b": 400.0}, 600.0) == {"a": 300.0, "b": 300.0}


def test_fairness_of_fifo_versus_fair_service() -> None:
    demand = {"heavy": 1000.0, "light": 100.0}
    # capacity 550: fair = light its 100, heavy 450; FIFO = shares by arrival, 10:1
    assert report.fairness({"heavy": 450.0, "light": 100.0}, demand) == pytest.approx(1.0)
    fifo = report.fairness({"heavy": 500.0, "light": 50.0}, demand)
    assert fifo < 0.95


def test_pct_is_nearest_rank() -> None:
    data = [float(i) for i in range(1, 101)]
    assert (report.pct(data, 50), report.pct(data, 90), report.pct(data, 99)) == (50, 90, 99)
    assert math.isnan(report.pct([], 50))


needs_traces = pytest.mark.skipif(
    not workloads.AZURE.is_dir(), reason=f"no Azure traces at {workloads.AZURE}"
)


@needs_traces
def test_tenants_offer_ten_to_one_and_the_light_run_is_a_subset() -> None:
    both = workloads.tenants(22.0, 60.0, max_tokens_cap=16, seed=1)
    heavy = sum(1 for r in both if r.tenant == "heavy")
    light = sum(1 for r in both if r.tenant == "light")
    assert 7 <= heavy / light <= 14
    alone = workloads.tenants(22.0, 60.0, max_tokens_cap=16, seed=1, only="light")
    assert [r.body for r in alone] == [r.body for r in both if r.tenant == "light"]
    assert all(r.headers == {"authorization": "Bearer light"} for r in alone)


@needs_traces
def test_azure_mixes_conversation_and_code_lengths() -> None:
    reqs = workloads.azure(50.0, 10.0, max_tokens_cap=64, seed=3)
    lengths = {r.prompt_tokens for r in reqs}
    assert max(lengths) > 2000 and min(lengths) < 1000  # code prompts are the long ones
    assert all(json.loads(r.body)["max_tokens"] <= 64 for r in reqs)


def _row(router: str, p90: float, hit: float) -> dict[str, object]:
    return {"workload": "shared-prefix", "router": router, "ttft_p90_ms": p90,
            "output_tokens_per_s": 100.0, "prefix_hit_rate": hit}  # fmt: skip


def test_no_verdict_against_a_rival_whose_cache_routing_degraded() -> None:
    def verdict(rival_hit: float) -> str:
        rows = [_row("vllm-router-cache-aware", 1000.0, rival_hit), _row("pointsman", 500.0, 0.92)]
        found = [
            t for t in report.targets(rows) if t["target"].startswith("shared-prefix: pointsman ")
        ]
        return str(found[0]["verdict"])

    assert verdict(0.91) == "met"  # 0.5x, a working rival
    assert verdict(0.50) == "n/a"  # a rival at 50 % hits was starved or broken: no comparison

"""The simulator against bytes captured from real vLLM 0.32 (``tests/fixtures/vllm-0.32``).

Sends the captured requests to a simulated replica and checks that every response has the
shape real vLLM gave: the same kinds of SSE chunks in the same order, no JSON keys that vLLM
does not send, and metric families with vLLM's names and label keys.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.compat.fixtures import headers, raw, sse_events, sse_json
from tests.integration.sim.conftest import StartSim

pytestmark = pytest.mark.integration

REQUESTS: dict[str, Any] = json.loads(raw("requests.json"))
MODEL = "tiny-llama"


def kind(chunk: dict[str, Any]) -> str:
    """role / content / finish / usage: what an SSE chunk is for."""
    if not chunk["choices"]:
        return "usage"
    choice = chunk["choices"][0]
    if choice["finish_reason"] is not None:
        return "finish"
    if choice.get("delta", {}).get("role"):
        return "role"
    return "content"


def squash(kinds: list[str]) -> list[str]:
    out: list[str] = []
    for k in kinds:
        if not out or out[-1] != k or k != "content":
            out.append(k)
    return out


async def send(
    http: aiohttp.ClientSession, address: str, name: str
) -> tuple[int, bytes, dict[str, Any]]:
    spec = REQUESTS[name]
    data = spec["raw"].encode() if "raw" in spec else json.dumps(spec["body"]).encode()
    async with http.post(
        f"http://{address}{spec['path']}", data=data, headers={"Content-Type": "application/json"}
    ) as resp:
        return resp.status, await resp.read(), spec


@pytest.mark.parametrize("name", ["chat_stream", "completions_stream"])
async def test_stream_shape_matches_vllm(
    start_sim: StartSim, http: aiohttp.ClientSession, name: str
) -> None:
    sim = await start_sim(model=MODEL)
    status, body, _ = await send(http, sim.addresses[0], name)
    assert status == 200
    real = sse_json(raw(f"{name}.sse"))
    ours = sse_json(body)
    assert sse_events(body)[-1] == b"[DONE]"
    assert squash([kind(c) for c in ours]) == squash([kind(c) for c in real])
    real_keys = set().union(*(c.keys() for c in real))
    real_choice_keys = set().union(*(ch.keys() for c in real for ch in c["choices"]))
    for chunk in ours:
        assert set(chunk) - {"usage"} <= real_keys
        for choice in chunk["choices"]:
            assert set(choice) <= real_choice_keys
    real_usage = next(c["usage"] for c in real if "usage" in c)
    our_usage = next(c["usage"] for c in ours if "usage" in c)
    assert set(real_usage) <= set(our_usage)


@pytest.mark.parametrize("name", ["chat", "completions"])
async def test_json_shape_matches_vllm(
    start_sim: StartSim, http: aiohttp.ClientSession, name: str
) -> None:
    sim = await start_sim(model=MODEL)
    status, body, spec = await send(http, sim.addresses[0], name)
    assert status == 200
    real = json.loads(raw(f"{name}.json"))
    ours = json.loads(body)
    assert set(ours) <= set(real)
    assert ours["object"] == real["object"]
    assert set(ours["choices"][0]) <= set(real["choices"][0])
    assert ours["choices"][0]["finish_reason"] == real["choices"][0]["finish_reason"]
    assert ours["usage"]["completion_tokens"] == spec["body"]["max_tokens"]
    assert {"prompt_tokens", "total_tokens", "completion_tokens"} <= set(ours["usage"])


@pytest.mark.parametrize("name", ["unknown_model", "malformed_json"])
async def test_error_shape_matches_vllm(
    start_sim: StartSim, http: aiohttp.ClientSession, name: str
) -> None:
    sim = await start_sim(model=MODEL)
    status, body, _ = await send(http, sim.addresses[0], name)
    real = json.loads(raw(f"{name}.json"))
    ours = json.loads(body)
    assert status == real["error"]["code"]
    assert set(ours["error"]) == set(real["error"])
    assert ours["error"]["type"] == real["error"]["type"]


async def test_metric_names_and_labels_match_vllm(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(model=MODEL, lora_adapters=["sql-lora"])
    await send(http, sim.addresses[0], "chat")
    async with http.get(f"http://{sim.addresses[0]}/metrics") as resp:
        assert resp.headers["Content-Type"] == headers("metrics_busy")[1]["content-type"]
        ours = {f.name: f for f in text_string_to_metric_families(await resp.text())}
    real = {f.name: f for f in text_string_to_metric_families(raw("metrics_busy.txt").decode())}
    # older or LoRA-only names that the capture (v0.32, no LoRA) cannot show
    not_in_capture = {"vllm:gpu_cache_usage_perc", "vllm:lora_requests_info"}
    for name, family in ours.items():
        if name in not_in_capture:
            continue
        assert name in real, f"{name} is not a vLLM 0.32 metric"
        assert family.type == real[name].type, name
        ours_labels = {k for s in family.samples for k in s.labels}
        real_labels = {k for s in real[name].samples for k in s.labels}
        assert ours_labels <= real_labels, name

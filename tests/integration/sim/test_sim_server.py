"""The simulator over real HTTP: OpenAI JSON and SSE shapes, errors, /metrics, prefix caching."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.sim.conftest import StartSim

pytestmark = pytest.mark.integration

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


async def read_sse(resp: aiohttp.ClientResponse) -> list[str]:
    """The ``data:`` payloads of an SSE stream, checking the framing on the way."""
    raw = (await resp.read()).decode()
    assert raw.endswith("\n\n")
    events = raw[:-2].split("\n\n")
    payloads = []
    for event in events:
        assert event.startswith("data: "), event
        payloads.append(event[len("data: ") :])
    return payloads


def samples(text: str) -> dict[str, float]:
    """name{sorted labels without engine/model_name} -> value, parsed by prometheus_client."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = {k: v for k, v in s.labels.items() if k not in {"engine", "model_name"}}
            key = s.name + (json.dumps(labels, sort_keys=True) if labels else "")
            out[key] = s.value
    return out


async def metrics(http: aiohttp.ClientSession, address: str) -> dict[str, float]:
    async with http.get(f"http://{address}/metrics") as resp:
        assert resp.status == 200
        return samples(await resp.text())


async def test_chat_json_has_usage_and_endpoint_header(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(count=2)
    for address in sim.addresses:
        url = f"http://{address}/v1/chat/completions"
        async with http.post(url, json=chat("hello there", max_tokens=7)) as resp:
            assert resp.status == 200
            assert resp.headers["x-sim-endpoint"] == address
            body = await resp.json()
        assert body["object"] == "chat.completion"
        assert body["model"] == MODEL
        choice = body["choices"][0]
        assert choice["message"]["role"] == "assistant"
        assert choice["finish_reason"] == "length"
        assert body["usage"]["completion_tokens"] == 7
        assert body["usage"]["prompt_tokens"] > 0
        assert (
            body["usage"]["total_tokens"]
            == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
        )


async def test_completions_json_and_default_length(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(default_max_tokens=5)
    url = f"http://{sim.addresses[0]}/v1/completions"
    async with http.post(url, json={"model": MODEL, "prompt": "once upon a time"}) as resp:
        body = await resp.json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 5
    assert isinstance(body["choices"][0]["text"], str)


async def test_chat_stream_chunks_usage_and_done(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim()
    url = f"http://{sim.addresses[0]}/v1/chat/completions"
    req = chat("stream me", max_tokens=6, stream=True, stream_options={"include_usage": True})
    async with http.post(url, json=req) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        payloads = await read_sse(resp)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == MODEL for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 6
    last = chunks[-2]["choices"][0]
    assert last["finish_reason"] == "length" and last["delta"]["content"]
    content = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
    assert all(content) and len("".join(content).split()) == 6
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[1:-2])


async def test_completion_stream_without_usage(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim()
    url = f"http://{sim.addresses[0]}/v1/completions"
    async with http.post(
        url, json={"model": MODEL, "prompt": "x", "max_tokens": 3, "stream": True}
    ) as resp:
        payloads = await read_sse(resp)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all(c["choices"] for c in chunks)  # no usage chunk unless asked for
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["object"] == "text_completion" for c in chunks)


@pytest.mark.parametrize(
    ("body", "status", "error_type"),
    [
        (b"{not json", 400, "Bad Request"),
        (b"[1, 2]", 400, "Bad Request"),
        (json.dumps(chat("hi") | {"model": "nope"}).encode(), 404, "NotFoundError"),
        (json.dumps({"model": MODEL, "messages": []}).encode(), 400, "BadRequestError"),
        (json.dumps(chat("hi", max_tokens=0)).encode(), 400, "BadRequestError"),
        (json.dumps(chat("hi", max_tokens=10**6)).encode(), 400, "BadRequestError"),
    ],
)
async def test_errors_are_openai_json(
    start_sim: StartSim, http: aiohttp.ClientSession, body: bytes, status: int, error_type: str
) -> None:
    sim = await start_sim()
    url = f"http://{sim.addresses[0]}/v1/chat/completions"
    async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == status
        err = (await resp.json())["error"]
    assert err["type"] == error_type and err["code"] == status and err["message"]


async def test_models_health_and_metrics_names(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(lora_adapters=["sql-lora", "chat-lora"], max_loras=2)
    base = f"http://{sim.addresses[0]}"
    async with http.get(f"{base}/health") as resp:
        assert resp.status == 200
    async with http.get(f"{base}/v1/models") as resp:
        models = await resp.json()
    assert [m["id"] for m in models["data"]] == [MODEL, "sql-lora", "chat-lora"]
    async with http.get(f"{base}/metrics") as resp:
        text = await resp.text()
    names = {f.name for f in text_string_to_metric_families(text)}
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc",
        "vllm:prefix_cache_queries",
        "vllm:prefix_cache_hits",
        "vllm:time_to_first_token_seconds",
        "vllm:e2e_request_latency_seconds",
        "vllm:request_success",
        "vllm:prompt_tokens",
        "vllm:generation_tokens",
        "vllm:lora_requests_info",
        "vllm:cache_config_info",
    ):
        assert name in names, name
    for family in text_string_to_metric_families(text):
        if family.name == "vllm:num_requests_running":
            assert family.samples[0].labels == {"engine": "0", "model_name": MODEL}
        if family.name == "vllm:cache_config_info":
            assert family.samples[0].labels["block_size"] == "16"
            assert family.samples[0].labels["num_gpu_blocks"] == "3072"


async def test_queueing_shows_in_metrics(start_sim: StartSim, http: aiohttp.ClientSession) -> None:
    sim = await start_sim(max_num_seqs=2, time_scale=0.2)
    address = sim.addresses[0]
    url = f"http://{address}/v1/chat/completions"

    async def one() -> None:
        async with http.post(url, json=chat("queue", max_tokens=40)) as resp:
            assert resp.status == 200
            await resp.read()

    tasks = [asyncio.create_task(one()) for _ in range(8)]
    deadline = time.monotonic() + 60
    seen: dict[str, float] = {}
    while time.monotonic() < deadline:
        m = await metrics(http, address)
        if m["vllm:num_requests_waiting"] >= 4:
            seen = m
            break
        await asyncio.sleep(0.01)
    await asyncio.gather(*tasks)
    assert seen, "no queue was ever visible"
    assert seen["vllm:num_requests_running"] == 2
    assert seen["vllm:kv_cache_usage_perc"] > 0
    assert seen["vllm:kv_cache_usage_perc"] == seen["vllm:gpu_cache_usage_perc"]
    after = await metrics(http, address)
    assert after["vllm:num_requests_waiting"] == 0 and after["vllm:num_requests_running"] == 0
    assert after['vllm:request_success_total{"finished_reason": "length"}'] == 8
    assert after["vllm:generation_tokens_total"] == 8 * 40
    assert after["vllm:time_to_first_token_seconds_count"] == 8


async def test_repeated_prefix_hits_cache_and_cuts_ttft(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    # 4000 tokens of shared document: ~250 ms of prefill at 16k tokens/s when not cached
    sim = await start_sim(time_scale=0.2)
    address = sim.addresses[0]
    url = f"http://{address}/v1/chat/completions"
    document = "shared document text " * 800

    async def ttft(question: str) -> tuple[float, int]:
        req = chat(
            document + question, max_tokens=2, stream=True, stream_options={"include_usage": True}
        )
        start = time.perf_counter()
        first = 0.0
        cached = -1
        async with http.post(url, json=req) as resp:
            async for line in resp.content:
                if (
                    line.startswith(b"data: ")
                    and b'"content":"' in line
                    and b'"content":""' not in line
                ):
                    first = first or time.perf_counter() - start
                if b'"usage"' in line and b'"choices":[]' in line:
                    cached = json.loads(line[6:])["usage"]["prompt_tokens_details"]["cached_tokens"]
        return first, cached

    cold, cold_cached = await ttft("first question?")
    warm, warm_cached = await ttft("second question?")
    assert cold_cached == 0
    assert warm_cached >= 3900
    assert warm < cold
    m = await metrics(http, address)
    assert m["vllm:prefix_cache_hits_total"] == warm_cached
    assert m["vllm:prefix_cache_queries_total"] > m["vllm:prefix_cache_hits_total"]


async def test_replicas_are_independent_engines(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(count=3)
    a, b, _ = sim.addresses
    async with http.post(f"http://{a}/v1/chat/completions", json=chat("only a", max_tokens=2)) as r:
        await r.read()
    ma, mb = await metrics(http, a), await metrics(http, b)
    assert ma["vllm:generation_tokens_total"] == 2
    assert mb["vllm:generation_tokens_total"] == 0


async def test_several_models_in_one_process(http: aiohttp.ClientSession) -> None:
    from pointsman.sim import SimConfig, start_servers

    async with await start_servers(
        SimConfig(port=0, time_scale=0.05), count=2, models=["model-a", "model-b"]
    ) as sim:
        assert len(sim.addresses) == 4
        served = []
        for address in sim.addresses:
            async with http.get(f"http://{address}/v1/models") as resp:
                served.append([m["id"] for m in (await resp.json())["data"]])
        assert served == [["model-a"], ["model-a"], ["model-b"], ["model-b"]]
        url = f"http://{sim.addresses[0]}/v1/completions"
        async with http.post(url, json={"model": "model-b", "prompt": "x"}) as resp:
            assert resp.status == 404


async def test_first_stream_byte_waits_for_the_first_token(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(time_scale=0.5)
    url = f"http://{sim.addresses[0]}/v1/chat/completions"
    req = chat("x" * 8000, max_tokens=3, stream=True)  # 2000 tokens: ~65 ms of prefill here
    async with http.post(url, json=req) as resp:
        assert resp.status == 200  # headers come at once
        first = await resp.content.readline()
        assert b'"role":"assistant"' in first
        # the role chunk is sent with the first token, not before (as vLLM does)
        assert sim.replicas[0].engine.metrics.ttft.count == 1
        await resp.read()


async def test_wildcard_bind_names_the_address_the_client_used(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(host="0.0.0.0")
    port = sim.addresses[0].rsplit(":", 1)[1]
    async with http.get(f"http://127.0.0.1:{port}/health") as resp:
        assert resp.headers["x-sim-endpoint"] == f"127.0.0.1:{port}"

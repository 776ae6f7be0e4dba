"""The simulator's Responses, Messages, tokenize and render APIs over real HTTP: the official
``openai`` client reads them, generations go through the same engine (batching, KV, prefix
cache) as chat, tokenize and render never touch it, and each flag does what it says."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import openai
import pytest

from tests.integration.sim.conftest import StartSim
from tests.integration.sim.test_sim_server import metrics

pytestmark = pytest.mark.integration

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
#: long enough to fill several 16-token KV blocks
LONG = "the router keeps every conversation on the replica that holds its prefix " * 8


async def post(
    http: aiohttp.ClientSession, address: str, path: str, body: dict[str, Any]
) -> tuple[int, Any]:
    async with http.post(f"http://{address}{path}", json=body) as resp:
        raw = await resp.read()
        kind = resp.headers.get("content-type", "")
        return resp.status, json.loads(raw) if kind.startswith("application/json") else raw


async def test_openai_client_reads_responses(start_sim: StartSim) -> None:
    sim = await start_sim()
    client = openai.AsyncOpenAI(base_url=f"http://{sim.addresses[0]}/v1", api_key="x")
    try:
        r = await client.responses.create(model=MODEL, input="hello", max_output_tokens=5)
        assert r.status == "incomplete" and r.usage is not None
        assert r.usage.output_tokens == 5 and r.output_text
        events = []
        stream = await client.responses.create(
            model=MODEL, input="hello", instructions="be brief", stream=True
        )
        async for event in stream:
            events.append(event)
        assert events[0].type == "response.created"
        assert events[-1].type == "response.completed"
        final = events[-1].response
        assert final.status == "completed"  # no limit: the answer ended by itself
        deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        assert final.output_text == deltas
    finally:
        await client.close()


async def test_responses_turns_share_the_prefix_cache(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(responses_store=True)
    (address,) = sim.addresses
    status, first = await post(
        http, address, "/v1/responses", {"model": MODEL, "input": LONG, "max_output_tokens": 4}
    )
    assert status == 200 and first["usage"]["input_tokens_details"]["cached_tokens"] == 0
    status, second = await post(
        http,
        address,
        "/v1/responses",
        {"model": MODEL, "input": "and then?", "previous_response_id": first["id"]},
    )
    assert status == 200
    usage = second["usage"]
    assert usage["input_tokens"] > first["usage"]["input_tokens"] + 4
    # the earlier turn's prompt is a prefix of this one's: its full blocks are cached
    assert usage["input_tokens_details"]["cached_tokens"] >= 16
    m = await metrics(http, address)
    assert m["vllm:prefix_cache_hits_total"] >= 16
    assert m['vllm:request_success_total{"finished_reason": "length"}'] == 1
    assert m['vllm:request_success_total{"finished_reason": "stop"}'] == 1


async def test_store_flag_and_store_field(start_sim: StartSim, http: aiohttp.ClientSession) -> None:
    off, on = (await start_sim()).addresses[0], (await start_sim(responses_store=True)).addresses[0]
    body = {"model": MODEL, "input": "hi", "max_output_tokens": 2}
    for address, kept in ((off, False), (on, True)):
        _, r = await post(http, address, "/v1/responses", body)
        async with http.get(f"http://{address}/v1/responses/{r['id']}") as resp:
            assert resp.status == (200 if kept else 404)
        status, err = await post(
            http, address, "/v1/responses", {**body, "previous_response_id": r["id"]}
        )
        assert status == (200 if kept else 404)
        if not kept:
            assert err["error"]["param"] == "response_id"
    _, r = await post(http, on, "/v1/responses", {**body, "store": False})
    async with http.get(f"http://{on}/v1/responses/{r['id']}") as resp:
        assert resp.status == 404
    status, err = await post(http, on, f"/v1/responses/{r['id']}/cancel", {})
    assert status == 404


async def test_store_forgets_the_oldest(start_sim: StartSim, http: aiohttp.ClientSession) -> None:
    (address,) = (await start_sim(responses_store=True, responses_store_size=2)).addresses
    ids = []
    for _ in range(3):
        _, r = await post(
            http, address, "/v1/responses", {"model": MODEL, "input": "x", "max_output_tokens": 1}
        )
        ids.append(r["id"])
    found = []
    for rid in ids:
        async with http.get(f"http://{address}/v1/responses/{rid}") as resp:
            found.append(resp.status)
    assert found == [404, 200, 200]


async def test_messages_only_with_the_flag(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    body = {
        "model": MODEL,
        "max_tokens": 3,
        "system": "you are brief",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    }
    (plain,) = (await start_sim()).addresses
    assert (await post(http, plain, "/v1/messages", body))[0] == 404
    (address,) = (await start_sim(anthropic=True)).addresses
    status, msg = await post(http, address, "/v1/messages", body)
    assert status == 200 and msg["type"] == "message"
    assert msg["stop_reason"] == "max_tokens" and msg["usage"]["output_tokens"] == 3
    _, count = await post(http, address, "/v1/messages/count_tokens", body)
    assert count["input_tokens"] == msg["usage"]["input_tokens"]
    status, err = await post(http, address, "/v1/messages", {**body, "model": "nope"})
    assert status == 404 and err["type"] == "error" and err["error"]["type"] == "NotFoundError"
    # a high max_tokens: the answer ends by itself after --default-max-tokens
    status, msg = await post(http, address, "/v1/messages", {**body, "max_tokens": 4096})
    assert msg["stop_reason"] == "end_turn" and msg["usage"]["output_tokens"] == 128


async def test_messages_and_chat_share_the_prefix_cache(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    (address,) = (await start_sim(anthropic=True)).addresses
    chat = {"model": MODEL, "messages": [{"role": "system", "content": LONG},
            {"role": "user", "content": "a"}], "max_tokens": 2}  # fmt: skip
    await post(http, address, "/v1/chat/completions", chat)
    before = (await metrics(http, address))["vllm:prefix_cache_hits_total"]
    msg = {"model": MODEL, "system": LONG, "messages": [{"role": "user", "content": "b"}],
           "max_tokens": 2}  # fmt: skip
    assert (await post(http, address, "/v1/messages", msg))[0] == 200
    after = (await metrics(http, address))["vllm:prefix_cache_hits_total"]
    assert after - before >= 16


async def test_tokenize_ids_are_stable_and_prefixes_share_them(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(count=2)
    messages = [{"role": "system", "content": LONG}, {"role": "user", "content": "hi"}]
    answers = [
        (await post(http, a, "/tokenize", {"model": MODEL, "messages": messages}))[1]
        for a in sim.addresses
    ]
    assert answers[0] == answers[1]  # the same ids on every replica
    _, chat = await post(
        http,
        sim.addresses[0],
        "/v1/chat/completions",
        {"model": MODEL, "messages": messages, "max_tokens": 1},
    )
    assert answers[0]["count"] == chat["usage"]["prompt_tokens"]
    _, longer = await post(
        http,
        sim.addresses[1],
        "/tokenize",
        {"model": MODEL, "messages": [*messages, {"role": "user", "content": "more"}]},
    )
    _, head = await post(
        http,
        sim.addresses[0],
        "/tokenize",
        {"model": MODEL, "messages": messages, "add_generation_prompt": False},
    )
    assert answers[0]["tokens"][: head["count"] - 1] == head["tokens"][:-1]
    # every full token of the earlier conversation starts the longer one (the last may be cut)
    assert longer["tokens"][: head["count"] - 1] == head["tokens"][:-1]
    assert head["count"] > 100
    _, back = await post(
        http, sim.addresses[1], "/detokenize", {"model": MODEL, "tokens": longer["tokens"]}
    )
    assert back["prompt"].startswith("<|begin_of_text|>") and LONG[:100] in back["prompt"]


async def test_tokenize_and_render_never_reach_the_engine(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(enable_scale_out=True)
    (address,) = sim.addresses
    engine = sim.replicas[0].engine
    messages = [{"role": "user", "content": LONG}]
    for path, body in (
        ("/tokenize", {"model": MODEL, "messages": messages}),
        ("/tokenize", {"model": MODEL, "prompt": LONG}),
        ("/v1/chat/completions/render", {"model": MODEL, "messages": messages}),
        ("/v1/completions/render", {"model": MODEL, "prompt": [LONG, "x"]}),
        ("/v1/responses/render", {"model": MODEL, "input": LONG}),
    ):
        status, _ = await post(http, address, path, body)
        assert status == 200, path
    assert engine.steps == 0 and not engine.sched.has_work()
    m = await metrics(http, address)
    assert m["vllm:prefix_cache_queries_total"] == 0


async def test_render_paths_answer_403_without_scale_out(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    (address,) = (await start_sim()).addresses
    for path in ("/v1/chat/completions/render", "/v1/completions/render", "/v1/responses/render"):
        status, err = await post(http, address, path, {"model": MODEL})
        assert status == 403 and err["error"]["type"] == "PermissionDeniedError"
    # /tokenize is always there (vllm-router posts to it when a render path is missing)
    assert (await post(http, address, "/tokenize", {"prompt": "x"}))[0] == 200


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/responses", {"model": MODEL}, 400),
        ("/v1/responses", {"model": MODEL, "input": [{"type": "nonsense"}]}, 400),
        ("/v1/responses", {"model": MODEL, "input": "x", "max_output_tokens": 0}, 400),
        ("/v1/responses", {"model": MODEL, "input": "x" * 40000}, 400),
        ("/v1/responses", {"model": "nope", "input": "x"}, 404),
        ("/v1/messages", {"model": MODEL, "messages": []}, 400),
        ("/v1/messages", {"model": MODEL, "max_tokens": 1, "messages": [{"role": "x"}]}, 400),
        ("/tokenize", {"model": MODEL, "messages": "hi"}, 400),
        ("/tokenize", {"model": MODEL, "prompt": 5}, 400),
        ("/detokenize", {"model": MODEL, "tokens": [1, True]}, 400),
        ("/v1/chat/completions/render", {"model": MODEL, "messages": []}, 400),
    ],
)
async def test_bad_input_gets_a_json_error(
    start_sim: StartSim, http: aiohttp.ClientSession, path: str, body: dict[str, Any], status: int
) -> None:
    (address,) = (await start_sim(anthropic=True, enable_scale_out=True)).addresses
    got, err = await post(http, address, path, body)
    assert got == status
    assert err["error"]["message"] and (err["error"].get("code", status) == status)

"""Semantic cache end to end: client -> Envoy -> shim -> classifier (+ Redis) -> simulator.

Each test uses its own tenant, so the tests share one stack without seeing each other's entries.
The Redis outage test stops the stack's redis-server, so it runs last.
"""

from __future__ import annotations

import time
from typing import Any

import anthropic
import httpx
import openai
import pytest
import redis

from tests.helpers import procs
from tests.integration.cache.conftest import TTL_S, CacheStack

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"
HIT = "x-pointsman-cache"


def ask(cs: CacheStack, text: str, tenant: str, **extra: Any) -> httpx.Response:
    headers = {"x-tenant-id": tenant, **extra.pop("headers", {})}
    body = {"model": "alpha", "messages": [{"role": "user", "content": text}], "temperature": 0}
    return httpx.post(
        f"{cs.stack.gateway_url}{CHAT}", json={**body, **extra}, headers=headers, timeout=30
    )


def content(resp: httpx.Response) -> str:
    assert resp.status_code == 200, resp.text
    text = resp.json()["choices"][0]["message"]["content"]
    assert isinstance(text, str)
    return text


def stored_after(cs: CacheStack, before: float, timeout: float = 60) -> None:
    procs.wait_until(
        lambda: cs.metric("pointsman_classifier_cache_stores_total", result="stored") > before,
        timeout,
        "cache store",
    )


def stores(cs: CacheStack) -> float:
    return cs.metric("pointsman_classifier_cache_stores_total", result="stored")


def test_paraphrase_hits_and_other_question_misses(cache_stack: CacheStack) -> None:
    cs = cache_stack
    before = stores(cs)
    first = ask(cs, "What is the capital of France?", "t-para")
    assert first.headers[HIT] == "miss"
    answer = content(first)
    stored_after(cs, before)

    hit = ask(cs, "Which city is the capital of France?", "t-para")
    assert hit.headers[HIT] == "hit"
    assert float(hit.headers["x-pointsman-cache-similarity"]) >= 0.92
    assert content(hit) == answer
    assert hit.json()["model"] == "alpha"

    other = ask(cs, "How do I bake sourdough bread at home?", "t-para")
    assert other.headers[HIT] == "miss"
    assert cs.metric("pointsman_classifier_cache_lookups_total", result="hit") >= 1


def test_streaming_answer_is_stored_and_a_hit_streams_to_the_openai_client(
    cache_stack: CacheStack,
) -> None:
    cs = cache_stack
    client = openai.OpenAI(base_url=f"{cs.stack.gateway_url}/v1", api_key="unused", max_retries=0)
    tenant = {"x-tenant-id": "t-stream"}
    messages: Any = [{"role": "user", "content": "Explain how photosynthesis works."}]
    before = stores(cs)
    # A streamed miss: the shim reassembles the simulator's SSE chunks into the entry.
    raw = client.chat.completions.with_raw_response.create(
        model="alpha", messages=messages, temperature=0, stream=True, extra_headers=tenant
    )
    assert raw.headers[HIT] == "miss"
    streamed = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    stored_after(cs, before)

    # The same question without streaming is a hit with the reassembled text.
    plain = client.chat.completions.with_raw_response.create(
        model="alpha", messages=messages, temperature=0, extra_headers=tenant
    )
    assert plain.headers[HIT] == "hit"
    assert plain.parse().choices[0].message.content == streamed

    # A streaming client gets a well-formed stream from the hit, usage chunk included.
    raw = client.chat.completions.with_raw_response.create(
        model="alpha",
        messages=messages,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=tenant,
    )
    assert raw.headers[HIT] == "hit"
    assert raw.headers["content-type"].startswith("text/event-stream")
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == streamed
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None


def test_the_responses_and_messages_apis_fill_and_hit_in_their_formats(
    cache_stack: CacheStack,
) -> None:
    """A translated Messages answer fills the cache (read off the engine's chat bytes); the same
    question by the Responses API (a native pool here) is answered from it as a response object,
    which is kept for GET and later turns; a streamed Messages hit reaches the anthropic client."""
    cs = cache_stack
    tenant = {"x-tenant-id": "t-apis"}
    question = "What is the tallest mountain on Earth?"
    before = stores(cs)
    claude = anthropic.Anthropic(
        base_url=cs.stack.gateway_url, api_key="k", max_retries=0, default_headers=tenant
    )
    greedy: Any = {"temperature": 0}  # (this client release has no temperature argument)
    miss = claude.messages.with_raw_response.create(
        model="alpha",
        max_tokens=16,
        messages=[{"role": "user", "content": question}],
        extra_body=greedy,
    )
    assert miss.headers[HIT] == "miss"
    answer = miss.parse().content[0].text  # type: ignore[union-attr]
    stored_after(cs, before)

    client = openai.OpenAI(
        base_url=f"{cs.stack.gateway_url}/v1", api_key="k", max_retries=0, default_headers=tenant
    )
    hit = client.responses.with_raw_response.create(
        model="alpha", input="Which mountain on Earth is the tallest?", max_output_tokens=16,
        temperature=0,
    )  # fmt: skip
    assert hit.headers[HIT] == "hit"
    response = hit.parse()
    assert response.output_text == answer
    assert client.responses.retrieve(response.id).output_text == answer

    with claude.messages.stream(
        model="alpha",
        max_tokens=16,
        messages=[{"role": "user", "content": question}],
        extra_body=greedy,
    ) as streamed:
        assert streamed.response.headers[HIT] == "hit"
        assert "".join(streamed.text_stream) == answer


def test_tenants_are_isolated(cache_stack: CacheStack) -> None:
    cs = cache_stack
    q = "What is the boiling point of water at sea level?"
    before = stores(cs)
    assert ask(cs, q, "t-a").headers[HIT] == "miss"
    stored_after(cs, before)
    assert ask(cs, q, "t-b").headers[HIT] == "miss"  # same prompt, other tenant
    assert ask(cs, q, "t-a").headers[HIT] == "hit"


def test_opt_out_by_request_header(cache_stack: CacheStack) -> None:
    cs = cache_stack
    q = "Who wrote the novel Pride and Prejudice?"
    before = stores(cs)
    ask(cs, q, "t-opt")
    stored_after(cs, before)
    assert ask(cs, q, "t-opt", headers={"cache-control": "no-cache"}).headers[HIT] == "bypass"
    assert HIT not in ask(cs, q, "t-opt", headers={"cache-control": "no-store"}).headers
    assert ask(cs, q, "t-opt", temperature=1.5).headers.get(HIT) is None  # above the bound
    assert ask(cs, q, "t-opt").headers[HIT] == "hit"


def test_entries_expire(cache_stack: CacheStack) -> None:
    cs = cache_stack
    q = "What is the tallest mountain on Earth?"
    r = redis.Redis.from_url(cs.redis_url)
    before = stores(cs)
    ask(cs, q, "t-ttl")
    stored_after(cs, before)
    assert ask(cs, q, "t-ttl").headers[HIT] == "hit"
    keys = list(r.scan_iter(match="pointsman:cache:e:*"))
    assert keys and all(0 < int(r.pttl(k)) <= TTL_S * 1000 for k in keys)
    started = time.monotonic()
    procs.wait_until(lambda: time.monotonic() - started > TTL_S + 0.5, TTL_S + 5, "entry expiry")
    assert ask(cs, q, "t-ttl").headers[HIT] == "miss"


def test_redis_outage_degrades_to_no_cache(cache_stack: CacheStack) -> None:
    cs = cache_stack
    q = "What is the largest ocean on Earth?"
    before = stores(cs)
    ask(cs, q, "t-down")
    stored_after(cs, before)
    assert ask(cs, q, "t-down").headers[HIT] == "hit"
    cs.redis.stop()
    for text in (q, "Which ocean is the largest on Earth?", "Name a prime number."):
        resp = ask(cs, text, "t-down")
        assert resp.status_code == 200, resp.text
        assert resp.headers.get(HIT) != "hit"
        content(resp)
    assert cs.metric("pointsman_classifier_cache_redis_errors_total") >= 1

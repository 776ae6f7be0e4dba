"""The simulator against real vLLM 0.32 on the Responses API, Anthropic Messages, /tokenize,
/detokenize and the render paths: same status codes, content types, JSON keys and value types,
error shapes and SSE event order (``tests/fixtures/vllm-0.32``, see its README).

The very requests sent to real vLLM are replayed to in-process simulators started like the two
captured servers: the default one (``--anthropic`` added, since vLLM serves Messages by
default), and one with the Responses store and the render paths on (vLLM:
``VLLM_ENABLE_RESPONSES_API_STORE=1 --enable-scale-out``). Values (ids, text, token ids) are
never compared with vLLM's; relations between answers (a stored turn grows the next prompt,
render and /tokenize agree) are, on both.
"""

from __future__ import annotations

import asyncio
import json
from itertools import groupby
from typing import Any

import aiohttp
import pytest

from pointsman.sim import SimConfig, start_servers
from tests.compat.fixtures import Captured, captured, replay, requests_spec, typed_events
from tests.compat.test_compat_sim import describe, key_paths

pytestmark = pytest.mark.integration

SPEC = requests_spec()
#: The chat and completions captures are test_compat_sim.py's.
OLDER = {
    "chat", "chat_stream", "chat_stream_no_usage", "completions", "completions_stream",
    "unknown_model", "malformed_json",
}  # fmt: skip
DEFAULT = [n for n, s in SPEC.items() if "server" not in s and n not in OLDER]
EXTRAS = [n for n, s in SPEC.items() if s.get("server") == "extras"]
NAMES = DEFAULT + EXTRAS

#: Where the simulator answers differently from vLLM 0.32 on purpose.
DIFFERENT = {
    "messages_tools": (
        "vLLM 0.32 without --enable-auto-tool-choice answers Messages with tools (tool_choice "
        "auto) 400; the simulator answers them with text, as its chat completions do"
    ),
}


def _config(**flags: Any) -> SimConfig:
    return SimConfig(
        port=0, model="tiny-llama", time_scale=0.01, max_num_seqs=4, max_model_len=512, **flags
    )


async def _collect() -> dict[str, Captured]:
    timeout = aiohttp.ClientTimeout(total=60)
    out: dict[str, Captured] = {}
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for names, config in (
            (DEFAULT, _config(anthropic=True)),
            (EXTRAS, _config(anthropic=True, responses_store=True, enable_scale_out=True)),
        ):
            servers = await start_servers(config)
            try:
                out.update(await replay(session, "http://" + servers.addresses[0], names))
            finally:
                await servers.close()
        servers = await start_servers(_config())  # the default flags: no Messages API
        try:
            base = "http://" + servers.addresses[0]
            for path in ("/v1/messages", "/v1/messages/count_tokens"):
                async with session.post(base + path, json={"model": "tiny-llama"}) as resp:
                    out["no_anthropic" + path] = Captured(resp.status, {}, await resp.read())
        finally:
            await servers.close()
    return out


@pytest.fixture(scope="module")
def sim() -> dict[str, Captured]:
    return asyncio.run(_collect())


def _known(name: str) -> Any:
    if name in DIFFERENT:
        return pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=DIFFERENT[name]))
    return name


# -- status, content type ----------------------------------------------------------------------


@pytest.mark.parametrize("name", [_known(n) for n in NAMES])
def test_status_and_content_type_match(sim: dict[str, Captured], name: str) -> None:
    theirs, ours = captured(name), sim[name]
    assert ours.status == theirs.status, ours.body[:300]
    assert ours.headers["content-type"] == theirs.headers["content-type"]


def test_delete_is_not_allowed_as_in_vllm(sim: dict[str, Captured]) -> None:
    """vLLM 0.32 has no DELETE /v1/responses/{id}: FastAPI answers 405 and allows GET."""
    for name in ("responses_delete", "store_delete"):
        assert sim[name].status == captured(name).status == 405
        assert json.loads(sim[name].body) == json.loads(captured(name).body)
        assert sim[name].headers["allow"] == captured(name).headers["allow"] == "GET"


def test_without_the_flag_messages_is_not_served(sim: dict[str, Captured]) -> None:
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        got = sim["no_anthropic" + path]
        assert got.status == 404
        assert json.loads(got.body) == {"detail": "Not Found"}  # FastAPI's, as vLLM's 405 above


# -- JSON bodies: keys, types, error shapes ----------------------------------------------------


def typed_paths(value: Any, prefix: str = "") -> set[str]:
    """Every key path with the JSON type of its value: ``usage.input_tokens:int``."""
    kind = {dict: "object", list: "array", str: "string", bool: "bool", int: "int"}
    out = {f"{prefix}:{kind.get(type(value), 'float' if isinstance(value, float) else 'null')}"}
    if isinstance(value, dict):
        for k, v in value.items():
            out |= typed_paths(v, f"{prefix}.{k}" if prefix else k)
    elif isinstance(value, list):
        for item in value:
            out |= typed_paths(item, f"{prefix}[]")
    return out


JSON_OK = [
    n
    for n in NAMES
    if captured(n).status == 200 and not captured(n).headers["content-type"].startswith("text/")
]
ERRORS = [n for n in NAMES if captured(n).status >= 400]


@pytest.mark.parametrize("name", JSON_OK)
def test_body_keys_and_types_equal_vllm(sim: dict[str, Captured], name: str) -> None:
    theirs = typed_paths(json.loads(captured(name).body))
    ours = typed_paths(json.loads(sim[name].body))
    assert ours == theirs, describe(theirs, ours)


@pytest.mark.parametrize("name", [_known(n) for n in ERRORS])
def test_error_shape_equals_vllm(sim: dict[str, Captured], name: str) -> None:
    theirs, ours = json.loads(captured(name).body), json.loads(sim[name].body)
    assert key_paths(ours) == key_paths(theirs), describe(key_paths(theirs), key_paths(ours))
    if "error" in theirs and isinstance(theirs["error"], dict):
        real, mine = theirs["error"], ours["error"]
        assert mine["type"] == real["type"]
        assert mine.get("code") == real.get("code")
        if "json_invalid" in real["message"]:
            # the param names the position (body.33) where each JSON parser gave up
            assert mine["param"].startswith("body.")
        else:
            assert mine.get("param") == real.get("param")
        if real["type"] == "Bad Request":  # pydantic's wording, error by error
            assert mine["message"].split(":")[0] == real["message"].split(":")[0]


# -- streams: event names, order, keys ---------------------------------------------------------

STREAMS = [n for n in NAMES if captured(n).headers["content-type"].startswith("text/event-stream")]


def shape(body: bytes) -> list[str]:
    """The stream's event names, a run of one event (the deltas) counted once."""
    return [name for name, _ in groupby(name for name, _ in typed_events(body))]


@pytest.mark.parametrize("name", STREAMS)
def test_stream_events_come_in_vllms_order(sim: dict[str, Captured], name: str) -> None:
    theirs, ours = captured(name).body, sim[name].body
    assert shape(ours) == shape(theirs)
    for body in (theirs, ours):
        events = typed_events(body)
        assert all(data["type"] == event for event, data in events)  # event: names the type
        assert body.endswith(b"\n\n") and b"[DONE]" not in body
        numbers = [data["sequence_number"] for _, data in events if "sequence_number" in data]
        assert numbers == list(range(len(numbers)))


@pytest.mark.parametrize("name", STREAMS)
def test_stream_event_keys_and_types_equal_vllm(sim: dict[str, Captured], name: str) -> None:
    def by_event(body: bytes) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for event, data in typed_events(body):
            out.setdefault(event, set()).update(typed_paths(data))
        return out

    theirs, ours = by_event(captured(name).body), by_event(sim[name].body)
    assert set(ours) == set(theirs)
    diffs = {k: describe(theirs[k], ours[k]) for k in theirs if theirs[k] != ours[k]}
    assert not diffs, diffs


def test_responses_stream_ends_with_the_full_response(sim: dict[str, Captured]) -> None:
    for body in (captured("responses_stream").body, sim["responses_stream"].body):
        events = typed_events(body)
        final = events[-1][1]["response"]
        text = "".join(d["delta"] for e, d in events if e == "response.output_text.delta")
        assert final["output"][0]["content"][0]["text"] == text
        assert final["usage"]["output_tokens"] == 8  # max_output_tokens, as requested
        assert final["status"] == "incomplete"
        assert final["incomplete_details"] == {"reason": "max_output_tokens"}


# -- relations between answers, on vLLM and on the simulator -------------------------------------


def _json(source: dict[str, Captured] | None, name: str) -> Any:
    return json.loads((captured(name) if source is None else source[name]).body)


@pytest.mark.parametrize("side", ["vllm", "sim"])
def test_a_stored_response_carries_into_the_next_turn(sim: dict[str, Captured], side: str) -> None:
    src = None if side == "vllm" else sim
    first, got = _json(src, "store_responses"), _json(src, "store_get")
    assert got == first  # GET returns the stored object as it was answered
    second = _json(src, "store_previous")
    assert second["previous_response_id"] == first["id"]
    # the earlier prompt and answer are part of the new prompt
    assert second["usage"]["input_tokens"] > (
        first["usage"]["input_tokens"] + first["usage"]["output_tokens"]
    )
    streamed = _json(src, "store_get_streamed")
    assert streamed["previous_response_id"] == second["id"]
    assert streamed["usage"]["input_tokens"] > second["usage"]["input_tokens"]


@pytest.mark.parametrize("side", ["vllm", "sim"])
def test_render_and_tokenize_agree(sim: dict[str, Captured], side: str) -> None:
    """vllm-router keys on either answer: both give the same ids for the same messages."""
    src = None if side == "vllm" else sim
    rendered = _json(src, "render_chat")["token_ids"]
    assert rendered == _json(src, "tokenize_router")["tokens"]
    assert rendered == _json(src, "render_chat_plain")["token_ids"]
    assert _json(src, "render_chat")["sampling_params"]["max_tokens"] == 3
    left = 512 - len(rendered)  # no max_tokens: what the context leaves
    assert _json(src, "render_chat_plain")["sampling_params"]["max_tokens"] == left
    assert _json(src, "tokenize_prompt")["tokens"] == _json(src, "tokenize_no_model")["tokens"]
    with_strs = _json(src, "tokenize_prompt_strs")
    assert len(with_strs["token_strs"]) == with_strs["count"] == len(with_strs["tokens"])
    assert _json(src, "tokenize_prompt")["token_strs"] is None


@pytest.mark.parametrize("side", ["vllm", "sim"])
def test_count_tokens_is_what_messages_reports(sim: dict[str, Captured], side: str) -> None:
    src = None if side == "vllm" else sim
    count = _json(src, "messages_count_tokens")
    assert count["input_tokens"] == _json(src, "messages")["usage"]["input_tokens"]
    assert count["context_management"] == {"original_input_tokens": count["input_tokens"]}

"""``/tokenize``, ``/detokenize`` and the render paths as vLLM 0.32 answers them.

Routers call these to build routing keys: vllm-router 0.1.17's ``cache_aware`` policy posts the
request to ``/v1/chat/completions/render`` (``/v1/completions/render`` for completions) of every
worker and keys its prefix tree on the token ids. Only when a render path is missing (404) does
it post the messages or prompt to ``/tokenize`` instead; a 403 counts as a refusal, and the
request is then routed without a prefix key. They are cheap CPU calls that never reach the
engine. The ids come from :func:`pointsman.sim.tokens.token_ids`: the same text gives the same
ids on every replica, a shared prefix shares its leading ids, and the count is the
``prompt_tokens`` a generation request with the same messages or prompt reports.

vLLM 0.32 serves the render paths only when started with ``--enable-scale-out``; without it,
every render path answers 403 ``PermissionDeniedError``, so ``cache_aware`` in front of a
default vLLM 0.32 builds no prefix key at all. The simulator does the same
(``--enable-scale-out``). Shapes, checked against ``tests/fixtures/vllm-0.32``:

- ``/tokenize`` takes ``prompt`` or ``messages`` (``model`` optional) and answers ``{"count",
  "max_model_len", "tokens", "token_strs"}`` (``token_strs`` null unless
  ``return_token_strs``); ``/detokenize`` takes ``tokens`` and answers ``{"prompt"}``.
- A render path answers the token-in request vLLM would hand its engine (``GenerateRequest``):
  ``request_id``, ``token_ids``, ``sampling_params`` (``max_tokens`` defaults to what is left of
  the context) and the rest; ``/v1/completions/render`` a list of them, one per prompt.
"""

from __future__ import annotations

from typing import Any

import msgspec

from pointsman.sim.config import SimConfig
from pointsman.sim.openai import (
    ApiError,
    Parsed,
    decode_object,
    invalid,
    missing,
    number,
    parse,
    served_model,
    wrong_type,
)
from pointsman.sim.tokens import Detokenizer, render_chat, token_ids, token_slices

_encode = msgspec.json.encode

#: The answer of every render path while they are off (vLLM without --enable-scale-out).
SCALE_OUT_DISABLED = ApiError(
    403,
    "Scale-out endpoints are disabled. Restart vllm serve with --enable-scale-out to enable them.",
    "PermissionDeniedError",
)


def tokenize_body(body: bytes, cfg: SimConfig, detok: Detokenizer) -> bytes:
    data = decode_object(body)
    if "messages" in data:
        messages = data["messages"]
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise invalid(wrong_type("messages", "list", messages))
        text = render_chat(messages, data.get("add_generation_prompt", True) is not False)
    elif "prompt" in data:
        text = data["prompt"]
        if not isinstance(text, str):
            raise invalid(wrong_type("prompt", "string", text))
    else:
        raise invalid(missing("prompt", data), missing("messages", data))
    served_model(data, cfg)
    ids = token_ids(text, cfg.chars_per_token)
    slices = token_slices(text, cfg.chars_per_token)
    detok.learn(ids, slices)
    return _encode(
        {
            "count": len(ids),
            "max_model_len": cfg.max_model_len,
            "tokens": ids,
            "token_strs": slices if data.get("return_token_strs") is True else None,
        }
    )


def detokenize_body(body: bytes, cfg: SimConfig, detok: Detokenizer) -> bytes:
    data = decode_object(body)
    if "tokens" not in data:
        raise invalid(missing("tokens", data))
    tokens = data["tokens"]
    if not isinstance(tokens, list):
        raise invalid(wrong_type("tokens", "list", tokens))
    for i, t in enumerate(tokens):
        if not isinstance(t, int) or isinstance(t, bool):
            raise invalid(
                {"type": "int_parsing", "loc": f"body.tokens.{i}",
                 "msg": "Input should be a valid integer, unable to parse string as an integer",
                 "input": str(t)}
            )  # fmt: skip
    served_model(data, cfg)
    return _encode({"prompt": detok.text(tokens)})


def generate_request(
    data: dict[str, Any],
    rid: str,
    model: str,
    ids: list[int],
    max_tokens: int,
    extra_args: bool = False,
) -> dict[str, Any]:
    """vLLM's ``GenerateRequest`` for a rendered prompt (keys in vLLM's order)."""
    stop = data.get("stop")
    sampling: dict[str, Any] = {
        "presence_penalty": number(data, "presence_penalty", 0.0),
        "frequency_penalty": number(data, "frequency_penalty", 0.0),
        "repetition_penalty": number(data, "repetition_penalty", 1.0),
        "temperature": number(data, "temperature", 1.0),
        "top_p": number(data, "top_p", 1.0),
        "min_p": number(data, "min_p", 0.0),
        "stop": [stop] if isinstance(stop, str) else list(stop or []),
        "stop_token_ids": list(data.get("stop_token_ids") or []),
        "max_tokens": max_tokens,
        "output_kind": 1 if data.get("stream") is True else 2,
        "skip_clone": True,
    }
    if extra_args:
        sampling["extra_args"] = {}
    sampling["bad_words"] = []
    sampling["skip_reading_prefix_cache"] = False
    return {
        "request_id": rid,
        "token_ids": ids,
        "token_offsets": None,
        "features": None,
        "content_parts": None,
        "sampling_params": sampling,
        "model": model,
        "reasoning_ended": None,
        "reasoning_parser_kwargs": None,
        "return_token_ids": None,
        "output_mode": "tokens",
        "stream": data.get("stream") is True,
        "stream_options": data.get("stream_options"),
        "cache_salt": data.get("cache_salt"),
        "priority": data.get("priority", 0),
        "kv_transfer_params": None,
        "ec_transfer_params": None,
    }


def render_chat_body(body: bytes, cfg: SimConfig, rid: str) -> bytes:
    """``POST /v1/chat/completions/render``: checked as the chat request itself would be."""
    p = parse(body, True, cfg)
    data = msgspec.json.decode(body)
    requested = data.get("max_completion_tokens") or data.get("max_tokens")
    ids = token_ids(p.text, cfg.chars_per_token)
    budget = requested if requested is not None else cfg.max_model_len - p.prompt_len
    return _encode(generate_request(data, rid, p.model, ids, budget))


def render_completions_body(body: bytes, cfg: SimConfig, rid: str) -> bytes:
    """``POST /v1/completions/render``: one request per prompt (a list of prompts is several)."""
    data = decode_object(body)
    prompt = data.get("prompt")
    batch = (
        prompt
        if isinstance(prompt, list) and prompt and all(isinstance(x, (str, list)) for x in prompt)
        else [prompt]
    )
    out = []
    for i, one in enumerate(batch):
        p = parse(_encode({**data, "prompt": one}), False, cfg)
        ids = p.ids if p.ids is not None else token_ids(p.text, cfg.chars_per_token)
        requested = data.get("max_tokens")
        budget = requested if requested is not None else cfg.max_model_len - p.prompt_len
        item_id = rid if len(batch) == 1 else f"{rid}-{i}"
        out.append(generate_request(data, item_id, p.model, ids, budget))
    return _encode(out)


def render_parsed_body(
    body: bytes, p: Parsed, budget_key: str, rid: str, cfg: SimConfig, extra_args: bool = False
) -> bytes:
    """The render of a prompt the Responses or Messages parser has built from ``body``;
    ``budget_key`` names the request's output limit (left out: what the context leaves)."""
    data = msgspec.json.decode(body)
    requested = data.get(budget_key)
    ids = token_ids(p.text, cfg.chars_per_token)
    budget = requested if isinstance(requested, int) else cfg.max_model_len - p.prompt_len
    return _encode(generate_request(data, rid, p.model, ids, budget, extra_args))

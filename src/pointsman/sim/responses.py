"""The OpenAI Responses API as vLLM 0.32 serves it: request checks, the response object, the
typed ``response.*`` SSE events, and the store behind ``previous_response_id``.

Pure functions and plain data (the store is a bounded dict), so the shapes are unit tested
without a server; ``tests/fixtures/vllm-0.32`` holds what real vLLM sends. What vLLM does, and
the simulator with it:

- ``input`` (a string or a list of items) becomes chat messages the way vLLM builds them:
  ``instructions`` as a system message first, then, with ``previous_response_id``, the earlier
  turns without their system messages and the earlier answer as an assistant message, then the
  new input. The prompt is counted, cached and scheduled exactly as a chat prompt.
- ``store`` is honoured only when the server keeps responses (vLLM:
  ``VLLM_ENABLE_RESPONSES_API_STORE=1``; here ``--enable-responses-store``). Otherwise it is
  silently ignored, and ``GET /v1/responses/{id}`` and ``previous_response_id`` answer 404.
- An answer cut by ``max_output_tokens`` has ``status: "incomplete"`` and
  ``incomplete_details: {"reason": "max_output_tokens"}``; one that ended by itself
  ``"completed"``.
- Streaming sends ``response.created`` and ``response.in_progress`` at once, then
  ``output_item.added`` and ``content_part.added`` with the first tokens, one
  ``output_text.delta`` per engine step, then ``output_text.done``, ``content_part.done``,
  ``output_item.done`` and ``response.completed`` (the full response, usage included). Every
  event is ``event: TYPE`` + ``data: JSON`` with a ``sequence_number``; there is no ``[DONE]``.
- The simulator never calls tools: with ``tools`` it answers text, as vLLM does without a tool
  parser. Background mode is not simulated (400).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
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
    output_budget,
    served_model,
    wrong_type,
)
from pointsman.sim.tokens import count_tokens, render_chat

_encode = msgspec.json.encode

_ROLES = {"user", "assistant", "system", "developer"}


@dataclass
class Stored:
    """A kept response: its object (for GET) and the messages its turn was built from."""

    response: dict[str, Any]
    messages: list[dict[str, Any]]


class ResponseStore:
    """Responses kept for ``GET`` and ``previous_response_id``, the oldest dropped past
    ``capacity`` (vLLM keeps them all, in memory, and says so in a FIXME)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, Stored] = OrderedDict()

    def get(self, rid: str) -> Stored | None:
        return self._items.get(rid)

    def put(self, rid: str, item: Stored) -> None:
        self._items[rid] = item
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


def not_found(rid: str) -> ApiError:
    return ApiError(
        404, f"Response with id '{rid}' not found.", "invalid_request_error", "response_id"
    )


def cannot_cancel() -> ApiError:
    """What vLLM answers a cancel of a finished (synchronous) response."""
    return ApiError(
        400, "Cannot cancel a synchronous response.", "invalid_request_error", "response_id"
    )


@dataclass
class ResponsesRequest:
    """A parsed ``POST /v1/responses``: what the engine needs, and what the answer echoes."""

    parsed: Parsed
    #: the chat messages the prompt was rendered from (kept for the next turn when stored)
    messages: list[dict[str, Any]]
    #: request fields the response object repeats, with vLLM's defaults filled in
    echo: dict[str, Any] = field(default_factory=dict)
    #: keep the answer (the request asked for it and the server keeps responses)
    store: bool = False


def _text_of(content: Any) -> str | None:
    """Text of a message's content (a string or a list of ``input_text`` parts), or None."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict):
                return None
            text = part.get("text")
            if isinstance(text, str):
                parts.append(text)
        return "".join(parts)
    return None


def _bad_item(i: int, msg: str, item: Any) -> ApiError:
    return invalid(
        {"type": "value_error", "loc": f"body.input.{i}", "msg": msg, "input": str(item)}
    )


def input_messages(value: Any) -> list[dict[str, Any]]:
    """Chat messages of a request's ``input``, built as vLLM builds them (tool calls as an
    assistant turn naming the call, tool outputs as ``tool`` turns)."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise invalid(wrong_type("input", "string", value), wrong_type("input", "list", value))
    out: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise _bad_item(i, "Input should be an object", item)
        kind = item.get("type", "message")
        if kind == "message":
            role, text = item.get("role"), _text_of(item.get("content"))
            if role not in _ROLES or text is None:
                raise _bad_item(i, "a message needs a role and text content", item)
            out.append({"role": role, "content": text})
        elif kind == "function_call":
            name, args = item.get("name"), item.get("arguments")
            if not isinstance(name, str) or not isinstance(args, str):
                raise _bad_item(i, "a function_call needs a name and arguments", item)
            out.append({"role": "assistant", "content": f"{name}({args})"})
        elif kind == "function_call_output":
            output = item.get("output")
            if not isinstance(output, str):
                raise _bad_item(i, "a function_call_output needs an output", item)
            out.append({"role": "tool", "content": output})
        elif kind != "reasoning":  # vLLM drops reasoning items from the prompt
            raise _bad_item(i, f"unsupported input item type {kind!r}", item)
    return out


def _tool(tool: Any) -> Any:
    """A function tool as vLLM echoes it (every optional field present)."""
    if not isinstance(tool, dict) or tool.get("type") != "function":
        return tool
    return {
        "name": tool.get("name"),
        "parameters": tool.get("parameters"),
        "strict": tool.get("strict"),
        "type": "function",
        "allowed_callers": tool.get("allowed_callers"),
        "async": tool.get("async"),
        "defer_loading": tool.get("defer_loading"),
        "description": tool.get("description"),
        "output_schema": tool.get("output_schema"),
    }


def parse_responses(body: bytes, cfg: SimConfig, store: ResponseStore | None) -> ResponsesRequest:
    """Check a ``POST /v1/responses`` body as vLLM does (schema, model, background, previous
    response) and build its prompt. ``store`` is None when the server keeps no responses."""
    data = decode_object(body)
    if "input" not in data:
        raise invalid(missing("input", data))
    new = input_messages(data["input"])
    tools = data.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise invalid(wrong_type("tools", "list", tools))
    model = served_model(data, cfg)
    wants_store = data.get("store") is not False
    if data.get("background") is True:
        if store is None and wants_store:
            raise ApiError(
                400,
                "This vLLM engine does not support `store=True` and therefore does not support "
                "the background mode. To enable these features, set the environment variable "
                "`VLLM_ENABLE_RESPONSES_API_STORE=1` when launching the vLLM server.",
                "invalid_request_error",
                "background",
            )
        raise ApiError(
            400, "the simulator does not run background responses", "invalid_request_error",
            "background",
        )  # fmt: skip
    messages: list[dict[str, Any]] = []
    instructions = data.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    previous = data.get("previous_response_id")
    if previous is not None:
        kept = store.get(str(previous)) if store is not None else None
        if kept is None:
            raise not_found(str(previous))
        messages += [m for m in kept.messages if m.get("role") != "system"]
        messages += [
            {"role": "assistant", "content": part["text"]}
            for item in kept.response["output"]
            if item.get("type") == "message"
            for part in item["content"]
        ]
    messages += new
    text = render_chat(messages)
    prompt_len = count_tokens(text, cfg.chars_per_token)
    max_out, reason = output_budget(
        prompt_len, data.get("max_output_tokens"), "max_output_tokens", cfg
    )
    stream = data.get("stream") is True
    parsed = Parsed(True, model, text, prompt_len, max_out, reason, stream, False)
    tool_list = [_tool(t) for t in tools or []]
    echo = {
        "instructions": instructions,
        "metadata": data.get("metadata"),
        "parallel_tool_calls": data.get("parallel_tool_calls", True),
        "temperature": number(data, "temperature", 1.0),
        "tool_choice": data.get("tool_choice") or ("auto" if tool_list else "none"),
        "tools": tool_list,
        "top_p": number(data, "top_p", 1.0),
        "background": False,
        "max_output_tokens": data.get("max_output_tokens"),
        "max_tool_calls": data.get("max_tool_calls"),
        "previous_response_id": previous,
        "prompt": data.get("prompt"),
        "reasoning": data.get("reasoning"),
        "service_tier": data.get("service_tier") or "auto",
        "text": data.get("text"),
        "top_logprobs": data.get("top_logprobs"),
        "truncation": data.get("truncation") or "disabled",
        "user": data.get("user"),
        "presence_penalty": number(data, "presence_penalty", 0.0),
        "frequency_penalty": number(data, "frequency_penalty", 0.0),
    }
    return ResponsesRequest(parsed, messages, echo, store is not None and wants_store)


def responses_usage(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": max(0, cached),
            "cache_write_tokens": 0,
            "input_tokens_per_turn": [],
            "cached_tokens_per_turn": [],
        },
        "output_tokens": completion,
        "output_tokens_details": {
            "reasoning_tokens": 0,
            "tool_output_tokens": 0,
            "output_tokens_per_turn": [],
            "tool_output_tokens_per_turn": [],
        },
        "total_tokens": prompt + completion,
    }


def _part(text: str, logprobs: list[Any] | None) -> dict[str, Any]:
    return {"annotations": [], "text": text, "type": "output_text", "logprobs": logprobs}


class ResponseWriter:
    """The answer to one ``POST /v1/responses``: the JSON object, or its event stream (the
    stream writer protocol of :mod:`pointsman.sim.server`). ``final`` holds the finished
    response object, for the store."""

    def __init__(self, req: ResponsesRequest, rid: str, created: int) -> None:
        self.req = req
        self.rid = rid
        self.msg_id = "msg_" + rid.removeprefix("resp_")
        self.created = created
        self.seq = 0
        self.text: list[str] = []
        self.final: dict[str, Any] | None = None

    # -- the response object ---------------------------------------------------------------
    def _message(self, text: str, status: str) -> dict[str, Any]:
        content = [_part(text, None)] if status == "completed" else []
        return {
            "id": self.msg_id,
            "content": content,
            "role": "assistant",
            "status": status,
            "type": "message",
            "phase": None,
        }

    def response(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None,
        incomplete: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        echo = self.req.echo
        return {
            "id": self.rid,
            "created_at": self.created,
            "incomplete_details": incomplete,
            "instructions": echo["instructions"],
            "metadata": echo["metadata"],
            "model": self.req.parsed.model,
            "object": "response",
            "output": output,
            **{k: echo[k] for k in _ECHO_MIDDLE},
            "status": status,
            **{k: echo[k] for k in _ECHO_TAIL},
            "usage": usage,
            "user": echo["user"],
            "presence_penalty": echo["presence_penalty"],
            "frequency_penalty": echo["frequency_penalty"],
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "input_messages": None,
            "output_messages": None,
        }

    def _finished(self, text: str, completion: int, cached: int, finish: str) -> dict[str, Any]:
        done = finish != "length"
        self.final = self.response(
            "completed" if done else "incomplete",
            [self._message(text, "completed")],
            responses_usage(self.req.parsed.prompt_len, completion, cached),
            None if done else {"reason": "max_output_tokens"},
        )
        return self.final

    def full(self, text: str, completion: int, cached: int, finish_reason: str) -> bytes:
        return _encode(self._finished(text, completion, cached, finish_reason))

    # -- the event stream ------------------------------------------------------------------
    def _event(self, kind: str, fields: dict[str, Any]) -> bytes:
        fields["sequence_number"] = self.seq
        fields["type"] = kind
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + _encode(fields) + b"\n\n"

    def opening(self) -> bytes:
        start = self.response("in_progress", [], None)
        return self._event("response.created", {"response": start}) + self._event(
            "response.in_progress", {"response": start}
        )

    def first(self) -> bytes:
        item = self._message("", "in_progress")
        added = {"item": item, "output_index": 0}
        part = {
            "content_index": 0,
            "item_id": self.msg_id,
            "output_index": 0,
            "part": _part("", []),
        }
        return self._event("response.output_item.added", added) + self._event(
            "response.content_part.added", part
        )

    def delta(self, text: str) -> bytes:
        if not text:
            return b""
        self.text.append(text)
        return self._event(
            "response.output_text.delta",
            {
                "content_index": 0,
                "delta": text,
                "item_id": self.msg_id,
                "logprobs": [],
                "output_index": 0,
            },
        )

    def closing(self, tail: str, completion: int, cached: int, finish_reason: str) -> bytes:
        out = [self.delta(tail)]
        text = "".join(self.text)
        ids = {"content_index": 0, "item_id": self.msg_id}
        out.append(
            self._event(
                "response.output_text.done",
                {**ids, "logprobs": [], "output_index": 0, "text": text},
            )
        )
        out.append(
            self._event(
                "response.content_part.done",
                {**ids, "output_index": 0, "part": _part(text, None)},
            )
        )
        out.append(
            self._event(
                "response.output_item.done",
                {"item": self._message(text, "completed"), "output_index": 0},
            )
        )
        final = self._finished(text, completion, cached, finish_reason)
        out.append(self._event("response.completed", {"response": final}))
        return b"".join(out)


_ECHO_MIDDLE = (
    "parallel_tool_calls",
    "temperature",
    "tool_choice",
    "tools",
    "top_p",
    "background",
    "max_output_tokens",
    "max_tool_calls",
    "previous_response_id",
    "prompt",
    "reasoning",
    "service_tier",
)
_ECHO_TAIL = ("text", "top_logprobs", "truncation")

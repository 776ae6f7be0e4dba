"""The OpenAI wire format as vLLM speaks it: request validation, JSON bodies, SSE chunks.

Pure functions of plain data, so the exact shapes are unit tested without a server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from pointsman.sim.config import SimConfig
from pointsman.sim.tokens import count_tokens, render_chat, render_completion_prompt

_encode = msgspec.json.encode
DONE = b"data: [DONE]\n\n"


class ApiError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}``.

    ``validation`` marks a request that does not fit the API's schema (vLLM's pydantic errors,
    answered before any handler runs, so in the OpenAI shape on every path, Anthropic's too)."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "BadRequestError",
        param: str | None = None,
        *,
        validation: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.validation = validation

    def body(self) -> bytes:
        return _encode(
            {
                "error": {
                    "message": self.message,
                    "type": self.type,
                    "param": self.param,
                    "code": self.status,
                }
            }
        )

    def anthropic_body(self) -> bytes:
        """Anthropic's error shape, which vLLM's /v1/messages uses for all but schema errors."""
        if self.validation:
            return self.body()
        return _encode({"type": "error", "error": {"type": self.type, "message": self.message}})


def invalid(*errors: dict[str, Any]) -> ApiError:
    """A schema error worded as vLLM 0.32 words pydantic's (``tests/fixtures/vllm-0.32``):
    ``"1 validation error:\n  {'type': 'missing', 'loc': 'body.input', ...}"``, type
    ``Bad Request``, param the first error's location. Each error holds ``type``, ``loc``,
    ``msg``, ``input`` (already a string) and optionally ``ctx``."""
    n = len(errors)
    lines = [f"{n} validation error{'s' if n > 1 else ''}:"]
    lines += [f"  {e!r}" for e in errors]
    return ApiError(400, "\n".join(lines), "Bad Request", str(errors[0]["loc"]), validation=True)


def missing(field: str, data: dict[str, Any]) -> dict[str, Any]:
    """One pydantic ``missing`` error for a required ``field`` of the body ``data``."""
    return {
        "type": "missing",
        "loc": f"body.{field}",
        "msg": "Field required",
        "input": f"<dict of {len(data)} items>",
    }


def wrong_type(field: str, kind: str, value: Any) -> dict[str, Any]:
    """One pydantic ``<kind>_type`` error (``kind``: list, string, ...) for ``body.<field>``."""
    return {
        "type": f"{kind}_type",
        "loc": f"body.{field}",
        "msg": f"Input should be a valid {kind}",
        "input": str(value),
    }


def number(data: dict[str, Any], key: str, default: float) -> float:
    """A numeric request field as a float (what vLLM echoes), ``default`` when absent."""
    value = data.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return default


def decode_object(body: bytes) -> dict[str, Any]:
    """The JSON object of a request body, or vLLM's 400 for a body that is not one."""
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        text = str(exc)
        at = text.rsplit("(byte ", 1)[-1].rstrip(")") if "(byte " in text else str(len(body))
        raise invalid(
            {
                "type": "json_invalid",
                "loc": f"body.{at}",
                "msg": "JSON decode error",
                "input": "<dict of 0 items>",
                "ctx": {"error": text},
            }
        ) from None
    if not isinstance(data, dict):
        raise invalid(
            {
                "type": "model_attributes_type",
                "loc": "body",
                "msg": "Input should be a valid dictionary or object to extract fields from",
                "input": repr(data),
            }
        )
    return data


def served_model(data: dict[str, Any], cfg: SimConfig) -> str:
    """The request's ``model`` (the base model when left out), or vLLM's 400/404."""
    model = data.get("model")
    if model is None:
        return cfg.model
    if not isinstance(model, str):
        raise ApiError(400, "'model' must be a string", param="model")
    if model not in cfg.served_models():
        raise ApiError(
            404,
            f"The model `{model}` does not exist. Valid aliases: {', '.join(cfg.served_models())}.",
            "NotFoundError",
            "model",
        )
    return model


@dataclass
class Parsed:
    """What the engine needs from a request body."""

    chat: bool
    model: str
    text: str
    prompt_len: int
    max_out: int
    #: "length" when the client capped the output, "stop" when the default (an EOS) ended it
    finish_reason: str
    stream: bool
    include_usage: bool
    #: the prompt as token ids, when a completions request sent ids
    ids: list[int] | None = None
    #: the tool the answer calls (chat with ``tool_choice`` ``required`` or a named function)
    tool: ForcedTool | None = None


@dataclass
class ForcedTool:
    """A tool call vLLM makes without a tool parser: ``tool_choice`` ``required`` (the first
    tool; finish reason ``tool_calls``) or a named function (finish reason ``stop``), its
    arguments constrained to the tool's parameter schema by guided decoding. The simulator
    fills each required parameter with a fixed value of its type."""

    name: str
    arguments: str
    finish_reason: str


_PLACEHOLDERS: dict[str, Any] = {
    "string": "sim",
    "number": 1.0,
    "integer": 1,
    "boolean": True,
    "array": [],
    "object": {},
}


def forced_tool(data: dict[str, Any]) -> ForcedTool | None:
    """The tool a chat request forces the answer to call, if any."""
    tools = data.get("tools")
    choice = data.get("tool_choice")
    if not isinstance(tools, list) or not tools:
        return None
    functions = [
        t["function"]
        for t in tools
        if isinstance(t, dict)
        and isinstance(t.get("function"), dict)
        and isinstance(t["function"].get("name"), str)
    ]
    if not functions:
        return None
    if choice == "required":
        function, finish = functions[0], "tool_calls"
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        function = next((f for f in functions if f["name"] == name), None)
        if function is None:
            raise ApiError(400, f"tool_choice names a tool that is not in tools: {name}")
        finish = "stop"
    else:
        return None
    schema: dict[str, Any] = function.get("parameters") or {}
    properties: dict[str, Any] = schema.get("properties") or {}
    args = {
        key: _PLACEHOLDERS.get(str((properties.get(key) or {}).get("type")), "sim")
        for key in schema.get("required") or []
        if isinstance(key, str)
    }
    return ForcedTool(function["name"], _encode(args).decode(), finish)


def parse(body: bytes, chat: bool, cfg: SimConfig) -> Parsed:
    data = decode_object(body)
    model = served_model(data, cfg)
    ids: list[int] | None = None
    if chat:
        messages = data.get("messages")
        if messages is None:
            raise invalid(missing("messages", data))
        if (
            not isinstance(messages, list)
            or not messages
            or not all(isinstance(m, dict) for m in messages)
        ):
            raise ApiError(400, "'messages' must be a non-empty list of objects", param="messages")
        text = render_chat(messages)
    else:
        prompt = data.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
        if prompt is None:
            raise invalid(missing("prompt", data))
        if not isinstance(prompt, (str, list)) or (isinstance(prompt, list) and not prompt):
            raise ApiError(400, "'prompt' must be a string or a list of token ids", param="prompt")
        text, ids = render_completion_prompt(prompt)
    prompt_len = max(1, len(ids)) if ids is not None else count_tokens(text, cfg.chars_per_token)
    requested = data.get("max_completion_tokens") if chat else None
    if requested is None:
        requested = data.get("max_tokens")
    max_out, reason = output_budget(prompt_len, requested, "max_tokens", cfg)
    stream = data.get("stream") is True
    opts = data.get("stream_options")
    include_usage = stream and isinstance(opts, dict) and opts.get("include_usage") is True
    tool = forced_tool(data) if chat else None
    return Parsed(chat, model, text, prompt_len, max_out, reason, stream, include_usage, ids, tool)


def output_budget(prompt_len: int, requested: Any, param: str, cfg: SimConfig) -> tuple[int, str]:
    """Output tokens and finish reason of a request asking for ``requested`` (None: up to the
    default, ending with "stop"), or a 400 when it is no positive integer or does not fit."""
    if requested is not None and (
        not isinstance(requested, int) or isinstance(requested, bool) or requested < 1
    ):
        raise ApiError(400, f"{param} must be an integer of at least 1", param=param)
    limit = cfg.max_model_len
    if prompt_len >= limit or (requested is not None and prompt_len + requested > limit):
        raise ApiError(
            400,
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{prompt_len + (requested or 0)} tokens ({prompt_len} in the messages, "
            f"{requested or 0} in the completion). Please reduce the length of the messages "
            "or completion.",
            param=param,
        )
    if requested is None:
        return min(cfg.default_max_tokens, limit - prompt_len), "stop"
    return requested, "length"


def usage(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
        "prompt_tokens_details": {"cached_tokens": max(0, cached)},
    }


def full_response(
    p: Parsed, rid: str, created: int, text: str, completion: int, cached: int, finish_reason: str
) -> bytes:
    if p.chat:
        message: dict[str, Any] = {"role": "assistant", "content": text, "tool_calls": []}
        if p.tool is not None:
            message = {"role": "assistant", "content": None, "tool_calls": [_call(p, rid)]}
            finish_reason = p.tool.finish_reason
        choice: dict[str, Any] = {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": finish_reason,
            "stop_reason": None,
        }
        obj = "chat.completion"
    else:
        choice = {
            "index": 0,
            "text": text,
            "logprobs": None,
            "finish_reason": finish_reason,
            "stop_reason": None,
        }
        obj = "text_completion"
    return _encode(
        {
            "id": rid,
            "object": obj,
            "created": created,
            "model": p.model,
            "choices": [choice],
            "usage": usage(p.prompt_len, completion, cached),
        }
    )


def _call(p: Parsed, rid: str, arguments: str | None = None) -> dict[str, Any]:
    assert p.tool is not None
    return {
        "id": "chatcmpl-tool-" + rid.rsplit("-", 1)[-1],
        "type": "function",
        "function": {
            "name": p.tool.name,
            "arguments": p.tool.arguments if arguments is None else arguments,
        },
    }


class ChunkWriter:
    """Builds the SSE events of one streamed response, in the chunk format of vLLM 0.32
    (captured in ``tests/fixtures/vllm-0.32``), which is OpenAI's.

    Chat: a role delta first (``{"role": "assistant", "content": ""}``), then content deltas;
    the chunk with the last tokens carries the finish reason; then, with
    ``stream_options.include_usage``, a usage chunk with empty ``choices``; then ``[DONE]``.
    Completions: text chunks (the last with the finish reason), the usage chunk, ``[DONE]``."""

    __slots__ = ("_head", "chat", "created", "p", "rid")

    def __init__(self, p: Parsed, rid: str, created: int) -> None:
        self.p = p
        self.chat = p.chat
        self.rid = rid
        self.created = created
        obj = "chat.completion.chunk" if p.chat else "text_completion"
        # everything before "choices", shared by every chunk of the response
        self._head = _encode({"id": rid, "object": obj, "created": created, "model": p.model})[:-1]

    def _event(self, choices: bytes, tail: bytes = b"") -> bytes:
        return b"data: " + self._head + b',"choices":' + choices + tail + b"}\n\n"

    def role(self) -> bytes:
        return self._event(
            b'[{"index":0,"delta":{"role":"assistant","content":""},'
            b'"logprobs":null,"finish_reason":null}]'
        )

    def content(self, text: str, finish_reason: str | None = None) -> bytes:
        """Tokens generated since the last chunk; ``finish_reason`` on the last one."""
        t = _encode(text)
        end = (
            b'"finish_reason":null}]'
            if finish_reason is None
            else b'"finish_reason":' + _encode(finish_reason) + b',"stop_reason":null}]'
        )
        if self.chat:
            return self._event(b'[{"index":0,"delta":{"content":' + t + b'},"logprobs":null,' + end)
        return self._event(b'[{"index":0,"text":' + t + b',"logprobs":null,' + end)

    def usage(self, completion: int, cached: int) -> bytes:
        return self._event(
            b"[]", b',"usage":' + _encode(usage(self.p.prompt_len, completion, cached))
        )

    # -- the stream writer protocol of pointsman.sim.server ----------------------------------
    def opening(self) -> bytes:
        return b""

    def first(self) -> bytes:
        if self.p.tool is not None:  # the call's id and name come first, then its arguments
            call = {"index": 0, **_call(self.p, self.rid, "")}
            chunk = _encode(
                [
                    {
                        "index": 0,
                        "delta": {"tool_calls": [call]},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ]
            )
            return self.role() + self._event(chunk)
        return self.role() if self.chat else b""

    def delta(self, text: str) -> bytes:
        return b"" if self.p.tool is not None else self.content(text)

    def full(self, text: str, completion: int, cached: int, finish_reason: str) -> bytes:
        return full_response(
            self.p, self.rid, self.created, text, completion, cached, finish_reason
        )

    def closing(self, tail: str, completion: int, cached: int, finish_reason: str) -> bytes:
        if self.p.tool is not None:
            args = {"index": 0, "function": {"arguments": self.p.tool.arguments}}
            end = _encode(self.p.tool.finish_reason)
            last = self._event(
                b'[{"index":0,"delta":{"tool_calls":[' + _encode(args) + b']},"logprobs":null,'
                b'"finish_reason":' + end + b',"stop_reason":null}]'
            )
        else:
            last = self.content(tail, finish_reason)
        if self.p.include_usage:
            last += self.usage(completion, cached)
        return last + DONE

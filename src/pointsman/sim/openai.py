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
    """An error answered as ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self, status: int, message: str, type_: str = "BadRequestError", param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param

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


def parse(body: bytes, chat: bool, cfg: SimConfig) -> Parsed:
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"JSON decode error: {exc}", "Bad Request", "body") from None
    if not isinstance(data, dict):
        raise ApiError(400, "Input should be a valid dictionary", "Bad Request", "body")
    model = data.get("model")
    if model is None:
        model = cfg.model
    if not isinstance(model, str):
        raise ApiError(400, "'model' must be a string", param="model")
    if model not in cfg.served_models():
        raise ApiError(404, f"The model `{model}` does not exist.", "NotFoundError", "model")
    ids: list[int] | None = None
    if chat:
        messages = data.get("messages")
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
        if not isinstance(prompt, (str, list)) or (isinstance(prompt, list) and not prompt):
            raise ApiError(400, "'prompt' must be a string or a list of token ids", param="prompt")
        text, ids = render_completion_prompt(prompt)
    prompt_len = max(1, len(ids)) if ids is not None else count_tokens(text, cfg.chars_per_token)
    limit = cfg.max_model_len
    requested = data.get("max_completion_tokens") if chat else None
    if requested is None:
        requested = data.get("max_tokens")
    if requested is not None and (
        not isinstance(requested, int) or isinstance(requested, bool) or requested < 1
    ):
        raise ApiError(400, "max_tokens must be an integer of at least 1", param="max_tokens")
    if prompt_len >= limit or (requested is not None and prompt_len + requested > limit):
        raise ApiError(
            400,
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{prompt_len + (requested or 0)} tokens ({prompt_len} in the messages, "
            f"{requested or 0} in the completion). Please reduce the length of the messages "
            "or completion.",
            param="max_tokens",
        )
    if requested is None:
        max_out, reason = min(cfg.default_max_tokens, limit - prompt_len), "stop"
    else:
        max_out, reason = requested, "length"
    stream = data.get("stream") is True
    opts = data.get("stream_options")
    include_usage = stream and isinstance(opts, dict) and opts.get("include_usage") is True
    return Parsed(chat, model, text, prompt_len, max_out, reason, stream, include_usage, ids)


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
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text, "tool_calls": []},
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


class ChunkWriter:
    """Builds the SSE events of one streamed response, in the chunk format of vLLM 0.32
    (captured in ``tests/fixtures/vllm-0.32``), which is OpenAI's.

    Chat: a role delta first (``{"role": "assistant", "content": ""}``), then content deltas;
    the chunk with the last tokens carries the finish reason; then, with
    ``stream_options.include_usage``, a usage chunk with empty ``choices``; then ``[DONE]``.
    Completions: text chunks (the last with the finish reason), the usage chunk, ``[DONE]``."""

    __slots__ = ("_head", "chat", "p")

    def __init__(self, p: Parsed, rid: str, created: int) -> None:
        self.p = p
        self.chat = p.chat
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

"""The Anthropic Messages API as vLLM 0.32 serves it (``/v1/messages``, ``count_tokens``).

Served only with ``--anthropic``: a pool of simulators without it answers 404 as a server
without the API would, so a gateway's translation to chat completions gets tested too. Pure
functions; ``tests/fixtures/vllm-0.32`` holds what real vLLM sends. What vLLM does, and the
simulator with it:

- The system prompt and the messages become chat messages (text blocks joined, a
  ``tool_use`` block as an assistant turn naming the call, a ``tool_result`` as its text) and
  are counted, cached and scheduled exactly as a chat prompt; ``count_tokens`` counts the same.
- ``max_tokens`` is required, and clients set it high: the answer is ``max_tokens`` long when
  that is at most ``--default-max-tokens`` (``stop_reason: max_tokens``), else it ends by
  itself after ``--default-max-tokens`` tokens (``end_turn``).
- The message id is the chat completion's (``chatcmpl-...``); ``stop_reason`` is
  ``max_tokens`` when ``max_tokens`` cut the answer, else ``end_turn``; ``usage`` has
  ``input_tokens`` and ``output_tokens`` only (vLLM adds cache fields only with
  ``--enable-prompt-tokens-details``).
- Streaming: ``message_start`` and ``content_block_start`` with the first tokens, one
  ``content_block_delta`` (``text_delta``) per engine step, then ``content_block_stop``,
  ``message_delta`` (stop reason and usage) and ``message_stop``.
- Errors a handler finds (unknown model) use Anthropic's shape
  ``{"type": "error", "error": {"type", "message"}}``; a body that does not fit the schema
  (bad JSON, no ``max_tokens``) gets vLLM's usual OpenAI-shaped 400, as vLLM answers it.
- Differs from vLLM on purpose: ``tools`` are accepted and answered with text, as the
  simulator's chat completions do; vLLM without ``--enable-auto-tool-choice`` answers 400.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from pointsman.sim.config import SimConfig
from pointsman.sim.openai import (
    Parsed,
    decode_object,
    invalid,
    missing,
    output_budget,
    served_model,
    wrong_type,
)
from pointsman.sim.tokens import count_tokens, render_chat

_encode = msgspec.json.encode


@dataclass
class MessagesRequest:
    parsed: Parsed
    messages: list[dict[str, Any]]


def _block_text(block: Any) -> str | None:
    if isinstance(block, str):
        return block
    if not isinstance(block, dict):
        return None
    kind = block.get("type")
    if kind == "text":
        text = block.get("text")
        return text if isinstance(text, str) else None
    if kind == "tool_use":
        return f"{block.get('name')}({_encode(block.get('input')).decode()})"
    if kind == "tool_result":
        content = block.get("content")
        if content is None:
            return ""
        return _content_text(content)
    if kind == "thinking":
        return str(block.get("thinking", ""))
    return ""  # images, documents: no text to count here


def _content_text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [_block_text(b) for b in content]
        if any(p is None for p in parts):
            return None
        return "".join(p for p in parts if p is not None)
    return None


def chat_messages(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The chat messages of a Messages (or count_tokens) body: the system prompt first."""
    messages = data["messages"]
    if not isinstance(messages, list):
        raise invalid(wrong_type("messages", "list", messages))
    out: list[dict[str, Any]] = []
    system = data.get("system")
    if system is not None:
        text = _content_text(system)
        if text is None:
            raise invalid(
                {"type": "value_error", "loc": "body.system",
                 "msg": "system must be a string or a list of text blocks", "input": str(system)}
            )  # fmt: skip
        if text:
            out.append({"role": "system", "content": text})
    for i, msg in enumerate(messages):
        role = msg.get("role") if isinstance(msg, dict) else None
        text = _content_text(msg.get("content")) if isinstance(msg, dict) else None
        if role not in ("user", "assistant") or text is None:
            raise invalid(
                {"type": "value_error", "loc": f"body.messages.{i}",
                 "msg": "a message needs role user or assistant and text or blocks",
                 "input": str(msg)}
            )  # fmt: skip
        out.append({"role": role, "content": text})
    return out


def _required(data: dict[str, Any], *fields: str) -> None:
    absent = [missing(f, data) for f in fields if f not in data]
    if absent:
        raise invalid(*absent)


def parse_messages(body: bytes, cfg: SimConfig) -> MessagesRequest:
    data = decode_object(body)
    _required(data, "model", "messages", "max_tokens")
    messages = chat_messages(data)
    model = served_model(data, cfg)
    text = render_chat(messages)
    prompt_len = count_tokens(text, cfg.chars_per_token)
    max_out, reason = output_budget(prompt_len, data["max_tokens"], "max_tokens", cfg)
    if max_out > cfg.default_max_tokens:
        # max_tokens is required here and clients set it high (4096 is common): an answer
        # ends by itself after --default-max-tokens unless the limit comes first
        max_out, reason = cfg.default_max_tokens, "stop"
    parsed = Parsed(
        True, model, text, prompt_len, max_out, reason, data.get("stream") is True, False
    )
    return MessagesRequest(parsed, messages)


def count_tokens_body(body: bytes, cfg: SimConfig) -> bytes:
    """The answer of ``POST /v1/messages/count_tokens``: the prompt's tokens, as counted for
    generation."""
    data = decode_object(body)
    _required(data, "model", "messages")
    messages = chat_messages(data)
    served_model(data, cfg)
    n = count_tokens(render_chat(messages), cfg.chars_per_token)
    return _encode({"input_tokens": n, "context_management": {"original_input_tokens": n}})


def _stop_reason(finish_reason: str) -> str:
    return "max_tokens" if finish_reason == "length" else "end_turn"


def _event(kind: str, data: bytes) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


class MessageWriter:
    """The answer to one ``POST /v1/messages``: the message, or its event stream (the stream
    writer protocol of :mod:`pointsman.sim.server`)."""

    def __init__(self, req: MessagesRequest, rid: str, created: int) -> None:
        self.p = req.parsed
        self.rid = rid

    def _usage(self, completion: int) -> dict[str, int]:
        return {"input_tokens": self.p.prompt_len, "output_tokens": completion}

    def full(self, text: str, completion: int, cached: int, finish_reason: str) -> bytes:
        return _encode(
            {
                "id": self.rid,
                "type": "message",
                "role": "assistant",
                "content": [{"type": "text", "text": text}],
                "model": self.p.model,
                "stop_reason": _stop_reason(finish_reason),
                "usage": self._usage(completion),
            }
        )

    def opening(self) -> bytes:
        return b""

    def first(self) -> bytes:
        start = {
            "type": "message_start",
            "message": {
                "id": self.rid,
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": self.p.model,
                "stop_reason": None,
                "stop_sequence": None,
                "usage": self._usage(0),
            },
        }
        return _event("message_start", _encode(start)) + _event(
            "content_block_start",
            b'{"type":"content_block_start","content_block":{"type":"text","text":""},"index":0}',
        )

    def delta(self, text: str) -> bytes:
        if not text:
            return b""
        return _event(
            "content_block_delta",
            b'{"type":"content_block_delta","delta":{"type":"text_delta","text":'
            + _encode(text)
            + b'},"index":0}',
        )

    def closing(self, tail: str, completion: int, cached: int, finish_reason: str) -> bytes:
        end = {
            "type": "message_delta",
            "delta": {"stop_reason": _stop_reason(finish_reason), "stop_sequence": None},
            "usage": self._usage(completion),
        }
        return b"".join(
            (
                self.delta(tail),
                _event("content_block_stop", b'{"type":"content_block_stop","index":0}'),
                _event("message_delta", _encode(end)),
                _event("message_stop", b'{"type":"message_stop"}'),
            )
        )


__all__ = ["MessageWriter", "MessagesRequest", "count_tokens_body", "parse_messages"]

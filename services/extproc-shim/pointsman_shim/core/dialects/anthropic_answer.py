"""Answers of the Anthropic Messages API: translated from chat completions, and read for usage
and the semantic cache when an engine sends them itself.

The translation follows Anthropic's documented formats (and agrees with vLLM 0.32's own Messages
endpoint, captured in ``tests/fixtures/vllm-0.32``):

* a message is ``{"id", "type": "message", "role": "assistant", "model", "content": [blocks],
  "stop_reason", "stop_sequence", "usage": {"input_tokens", "output_tokens"}}``; the engine's
  reasoning becomes a ``thinking`` block first (with an empty ``signature``: the engine signs
  nothing), its text a ``text`` block, each tool call a ``tool_use`` block (arguments parsed into
  ``input``);
* ``stop_reason``: ``stop`` -> ``end_turn`` (``stop_sequence`` when vLLM's ``stop_reason`` names
  one of the request's ``stop_sequences``), ``length`` -> ``max_tokens``, tool calls ->
  ``tool_use`` (whatever the finish reason: vLLM ends a named tool choice with ``stop``);
* a stream is ``message_start`` (input tokens unknown yet: 0), for each block
  ``content_block_start``, its deltas (``text_delta``, ``thinking_delta``, ``input_json_delta``)
  and ``content_block_stop``, then ``message_delta`` (stop reason, and the usage with input and
  output tokens) and ``message_stop``;
* a stream that breaks (malformed chunk, engine error, cut short) ends with Anthropic's error
  event, ``event: error`` ``{"type": "error", "error": {"type": "api_error", "message"}}``; a JSON
  answer that cannot be translated becomes an error body with status 502;
* an engine's error answer (any status >= 400, OpenAI's shape, vLLM's ``detail``, plain text from
  the gateway) becomes Anthropic's error format with the same status.
"""

from __future__ import annotations

from typing import Any

import msgspec

from pointsman_shim.core.dialects import chat_answer as chat
from pointsman_shim.core.dialects.base import Filled, Usage
from pointsman_shim.core.dialects.bodies import BodyReader, WholeAnswer, json_object
from pointsman_shim.core.dialects.sse import event

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()

#: Chat completions' finish reasons (the semantic cache's vocabulary too) as Anthropic's.
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
#: And back, for answers read from a native pool.
FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}
#: Anthropic's error ``type`` for each HTTP status it documents; other 4xx and 5xx fall back.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    return _ERROR_TYPES.get(status) or ("invalid_request_error" if status < 500 else "api_error")


def error_body(message: str, status: int) -> bytes:
    """``{"type": "error", "error": {"type", "message"}}``, Anthropic's error format."""
    return _encoder.encode(
        {"type": "error", "error": {"type": error_type(status), "message": message}}
    )


def message(
    mid: str,
    model: str,
    content: list[dict[str, Any]],
    stop_reason: str | None,
    usage: dict[str, Any],
    stop_sequence: str | None = None,
) -> dict[str, Any]:
    return {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": usage,
    }


def stop_of(
    finish: str | None, stop_reason: Any, stops: list[str], tools: bool
) -> tuple[str, str | None]:
    """Anthropic's ``stop_reason`` and ``stop_sequence`` of a chat finish."""
    if tools:
        return "tool_use", None
    if finish == "stop" and isinstance(stop_reason, str) and stop_reason in stops:
        return "stop_sequence", stop_reason
    return STOP_REASONS.get(finish or "stop", "end_turn"), None


def _input_of(arguments: str) -> dict[str, Any]:
    try:
        value = _decoder.decode(arguments) if arguments.strip() else {}
    except msgspec.DecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _usage(prompt: int | None, completion: int | None) -> dict[str, int]:
    return {"input_tokens": prompt or 0, "output_tokens": completion or 0}


def _api_error(message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": "api_error", "message": message}}


class JsonTranslator(WholeAnswer):
    """A chat completion JSON body -> one Anthropic message."""

    def __init__(self, mid: str, model: str, stops: list[str]) -> None:
        super().__init__()
        self.mid = mid
        self.model = model
        self.stops = stops

    def translate(self, raw: bytes | None) -> bytes:
        try:
            answer = chat.read_answer(raw)
        except chat.TranslationError as exc:
            return self.fail(502, _encoder.encode(_api_error(str(exc))))
        content: list[dict[str, Any]] = []
        if answer.reasoning:
            content.append({"type": "thinking", "thinking": answer.reasoning, "signature": ""})
        if answer.content:
            content.append({"type": "text", "text": answer.content})
        for call in answer.tool_calls:
            content.append(
                {
                    "type": "tool_use",
                    "id": call.id,
                    "name": call.name,
                    "input": _input_of(call.arguments),
                }
            )
        stop, sequence = stop_of(
            answer.finish_reason, answer.stop_reason, self.stops, bool(answer.tool_calls)
        )
        body = message(
            self.mid,
            answer.model or self.model,
            content,
            stop,
            _usage(answer.prompt_tokens, answer.completion_tokens),
            sequence,
        )
        return _encoder.encode(body)


class StreamTranslator(chat.StreamTranslation):
    """A chat completions SSE stream -> Anthropic's message events, as it streams."""

    def __init__(self, mid: str, model: str, stops: list[str]) -> None:
        super().__init__()
        self.mid = mid
        self.model = model
        self.stops = stops
        #: the open block: ("text" | "thinking" | "tool", tool index), and its index
        self._open: tuple[str, int] | None = None
        self._index = -1
        self._tool_blocks: dict[int, int] = {}
        self._stop_reason: Any = None

    def _events(self, events: list[chat.Event]) -> bytes:
        out: list[bytes] = []
        for e in events:
            if self.failed or self._ended:
                break
            if not self._started and not isinstance(e, chat.Failure):
                self._start(e, out)
            if isinstance(e, chat.Text):
                self._block("text", 0, out, {"type": "text", "text": ""})
                out.append(self._delta({"type": "text_delta", "text": e.text}))
            elif isinstance(e, chat.Reasoning):
                thinking: dict[str, Any] = {"type": "thinking", "thinking": "", "signature": ""}
                self._block("thinking", 0, out, thinking)
                out.append(self._delta({"type": "thinking_delta", "thinking": e.text}))
            elif isinstance(e, chat.ToolStart):
                tool: dict[str, Any] = {"type": "tool_use", "id": e.id, "name": e.name, "input": {}}
                self._block("tool", e.index, out, tool)
                self._tool_blocks[e.index] = self._index
            elif isinstance(e, chat.ToolArguments):
                index = self._tool_blocks.get(e.index, self._index)
                delta = {"type": "input_json_delta", "partial_json": e.text}
                out.append(self._delta(delta, index))
            elif isinstance(e, chat.Finish):
                self._finish, self._stop_reason = e.reason, e.stop_reason
            elif isinstance(e, chat.UsageSeen):
                self._usage = (e.prompt_tokens, e.completion_tokens)
            elif isinstance(e, chat.End):
                self._end(out)
            elif isinstance(e, chat.Failure):
                self._close(out)
                self.failed = True
                out.append(event("error", _api_error(e.message)))
        return b"".join(out)

    def _start(self, e: chat.Event, out: list[bytes]) -> None:
        self._started = True
        model = e.model if isinstance(e, chat.Start) and e.model else self.model
        start = message(self.mid, model, [], None, _usage(0, 0))
        out.append(event("message_start", {"type": "message_start", "message": start}))

    def _delta(self, delta: dict[str, Any], index: int | None = None) -> bytes:
        body = {
            "type": "content_block_delta",
            "index": self._index if index is None else index,
            "delta": delta,
        }
        return event("content_block_delta", body)

    def _block(self, kind: str, key: int, out: list[bytes], block: dict[str, Any]) -> None:
        if self._open == (kind, key):
            return
        self._close(out)
        self._index += 1
        self._open = (kind, key)
        body = {"type": "content_block_start", "index": self._index, "content_block": block}
        out.append(event("content_block_start", body))

    def _close(self, out: list[bytes]) -> None:
        if self._open is not None:
            body = {"type": "content_block_stop", "index": self._index}
            out.append(event("content_block_stop", body))
            self._open = None

    def _end(self, out: list[bytes]) -> None:
        self._close(out)
        self._ended = True
        stop, sequence = stop_of(
            self._finish, self._stop_reason, self.stops, bool(self._tool_blocks)
        )
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": sequence},
            "usage": _usage(*self._usage),
        }
        out.append(event("message_delta", delta))
        out.append(event("message_stop", {"type": "message_stop"}))


class ErrorTranslator(WholeAnswer):
    """An error answer (status >= 400) in any shape -> Anthropic's error format, same status,
    with Anthropic's error type for it (vLLM's Messages endpoint sends its own type names)."""

    def __init__(self, status: int) -> None:
        super().__init__()
        self.upstream_status = status

    def translate(self, raw: bytes | None) -> bytes:
        body = json_object(raw) if raw is not None else None
        message: str | None = None
        if body is not None:  # OpenAI's shape, Anthropic's (vLLM's types), vLLM's detail
            error = body.get("error")
            if isinstance(error, dict) and isinstance(error.get("message"), str):
                message = error["message"]
            elif isinstance(body.get("message"), str):
                message = body["message"]
            elif body.get("detail") is not None:
                detail = body["detail"]
                message = detail if isinstance(detail, str) else _encoder.encode(detail).decode()
        if message is None:
            text = (raw or b"")[:4096].decode("utf-8", "replace").strip()
            message = text or f"the model's engine answered with status {self.upstream_status}"
        return error_body(message, self.upstream_status)


class CountTranslator(WholeAnswer):
    """A one-token chat completion's ``usage.prompt_tokens`` -> ``count_tokens``'
    ``{"input_tokens"}``."""

    def translate(self, raw: bytes | None) -> bytes:
        try:
            count = chat.read_answer(raw).prompt_tokens
        except chat.TranslationError as exc:
            return self.fail(502, _encoder.encode(_api_error(str(exc))))
        if count is None:
            error = _api_error("the engine did not report the prompt's tokens")
            return self.fail(502, _encoder.encode(error))
        return _encoder.encode({"input_tokens": count})


# -- reading a native pool's answers -----------------------------------------------------------


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class UsageReader(BodyReader):
    """``usage.input_tokens`` / ``output_tokens`` of a message, or of ``message_start`` and
    ``message_delta`` in a stream."""

    def __init__(self, *, sse: bool) -> None:
        super().__init__(sse=sse)
        self._prompt: int | None = None
        self._completion: int | None = None
        self._seen = False

    def on_event(self, name: str, payload: bytes) -> None:
        body = json_object(payload)
        if body is None:
            self.broken = True
        else:
            self.read(body)

    def read(self, body: dict[str, Any]) -> None:
        kind = body.get("type")
        usage: Any = None
        if kind == "message_start" and isinstance(body.get("message"), dict):
            usage = body["message"].get("usage")
        elif kind == "message_delta":
            usage = body.get("usage")
        if isinstance(usage, dict):
            self._seen = True
            self._prompt = _int(usage.get("input_tokens")) or self._prompt
            self._completion = _int(usage.get("output_tokens"))

    def finish(self) -> Usage | None:
        if self.sse:
            self.end_events()
        else:
            body = self.json_body()
            if body is not None:
                self.read({"type": "message_delta", "usage": body.get("usage")})
        if not self._seen:
            return None
        p, c = self._prompt, self._completion
        return Usage(p, c, p + c if p is not None and c is not None else None)


class AnswerReader(BodyReader):
    """The text of a message with text blocks only, for the semantic cache; ``None`` for tool use,
    a stream without ``message_stop``, or anything malformed."""

    def __init__(self, *, sse: bool) -> None:
        super().__init__(sse=sse)
        self._parts: list[str] = []
        self._stop: str | None = None
        self._done = False
        self._usage = UsageReader(sse=True)

    def on_event(self, name: str, payload: bytes) -> None:
        body = json_object(payload)
        if body is None:
            self.broken = True
            return
        kind = body.get("type")
        self._usage.read(body)
        if kind == "content_block_start":
            block = body.get("content_block")
            if not isinstance(block, dict) or block.get("type") != "text":
                self.broken = True
        elif kind == "content_block_delta":
            delta = body.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("text"), str):
                self._parts.append(delta["text"])
        elif kind == "message_delta":
            delta = body.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
                self._stop = delta["stop_reason"]
        elif kind == "message_stop":
            self._done = True
        elif kind == "error":
            self.broken = True

    def finish(self) -> Filled | None:
        if self.sse:
            self.end_events()
        else:
            body = self.json_body()
            if body is None:
                return None
            blocks = body.get("content")
            if not isinstance(blocks, list) or any(
                not isinstance(b, dict) or b.get("type") != "text" for b in blocks
            ):
                return None
            self._parts = [str(b.get("text", "")) for b in blocks]
            stop = body.get("stop_reason")
            self._stop = stop if isinstance(stop, str) else None
            self._done = True
            self._usage.read({"type": "message_delta", "usage": body.get("usage")})
        if self.broken or not self._done or self._stop not in FINISH_REASONS:
            return None
        usage = self._usage.finish()
        return Filled(
            "".join(self._parts),
            "assistant",
            FINISH_REASONS[self._stop],
            usage.prompt_tokens if usage else None,
            usage.completion_tokens if usage else None,
        )


class NoUsage:
    """A token count generates nothing: its usage is known to be empty."""

    def feed(self, data: bytes) -> None:
        return None

    def finish(self) -> Usage | None:
        return Usage()


class NoAnswer:
    def feed(self, data: bytes) -> None:
        return None

    def finish(self) -> Filled | None:
        return None

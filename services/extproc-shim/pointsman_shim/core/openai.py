"""Parse an OpenAI-style request body once, and reject bad input with a clear error.

The shim sees every request before any engine does, so it is where malformed input must stop:
each check below maps to one ``reason`` (a counter label) and one 4xx answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from pointsman_shim.core.errors import RequestError

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
MODELS_PATH = "/v1/models"

Kind = Literal["chat", "completion"]

#: Parameters that matter for routing and caching decisions, passed on to the classifier.
_PARAM_KEYS = (
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "tools",
    "tool_choice",
    "response_format",
    "stream",
    "seed",
)


def route_kind(path: str) -> Kind | None:
    """Which OpenAI endpoint a request path is (query string ignored); ``None`` = pass through."""
    bare = path.split("?", 1)[0].rstrip("/")
    if bare == CHAT_PATH:
        return "chat"
    if bare == COMPLETIONS_PATH:
        return "completion"
    return None


@dataclass(slots=True)
class ChatTurn:
    role: str
    content: str


@dataclass(slots=True)
class LLMRequest:
    """A validated request: the decoded body plus what routing needs from it."""

    kind: Kind
    model: str
    body: dict[str, Any]
    stream: bool = False
    include_usage: bool = False
    turns: list[ChatTurn] = field(default_factory=list)
    prompt: str | None = None

    def prompt_text(self) -> str:
        """The prompt as one string, in order: what prefix-cache affinity hashes."""
        if self.kind == "completion":
            return self.prompt or ""
        return "".join(f"<|{t.role}|>{t.content}\n" for t in self.turns)

    def params(self) -> dict[str, Any]:
        return {k: self.body[k] for k in _PARAM_KEYS if k in self.body}


_decoder = msgspec.json.Decoder()


def parse(kind: Kind, raw: bytes, *, max_bytes: int) -> LLMRequest:
    """Decode and validate a chat or completion body; raises :class:`RequestError`."""
    if len(raw) > max_bytes:
        raise RequestError(
            413,
            f"request body is {len(raw)} bytes; the limit is {max_bytes} bytes",
            reason="body_too_large",
        )
    if not raw.strip():
        raise RequestError(
            400, "request body is empty; expected a JSON object", reason="empty_body"
        )
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(
            400, f"request body is not valid UTF-8 (byte {exc.start})", reason="invalid_utf8"
        ) from None
    try:
        body = _decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise RequestError(
            400, f"request body is not valid JSON: {exc}", reason="invalid_json"
        ) from None
    if not isinstance(body, dict):
        raise RequestError(
            400,
            f"request body must be a JSON object, not {_json_type(body)}",
            reason="body_not_object",
        )
    model = body.get("model")
    if model is None:
        raise RequestError(400, "'model' is required", reason="missing_model", param="model")
    if not isinstance(model, str):
        raise RequestError(
            400,
            f"'model' must be a string, not {_json_type(model)}",
            reason="invalid_model",
            param="model",
        )
    if not model.strip():
        raise RequestError(400, "'model' must not be empty", reason="invalid_model", param="model")

    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise RequestError(
            400, "'stream' must be a boolean", reason="invalid_stream", param="stream"
        )
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True

    request = LLMRequest(
        kind=kind, model=model, body=body, stream=stream, include_usage=include_usage
    )
    if kind == "chat":
        request.turns = _turns(body.get("messages"))
    else:
        request.prompt = _prompt(body.get("prompt"))
    return request


def _turns(messages: Any) -> list[ChatTurn]:
    if messages is None:
        raise RequestError(
            400, "'messages' is required", reason="missing_messages", param="messages"
        )
    if not isinstance(messages, list):
        raise RequestError(
            400,
            f"'messages' must be an array, not {_json_type(messages)}",
            reason="invalid_messages",
            param="messages",
        )
    if not messages:
        raise RequestError(
            400, "'messages' must not be empty", reason="empty_messages", param="messages"
        )
    turns = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RequestError(
                400,
                f"'messages[{i}]' must be an object",
                reason="invalid_messages",
                param="messages",
            )
        role = message.get("role")
        if not isinstance(role, str):
            raise RequestError(
                400,
                f"'messages[{i}].role' must be a string",
                reason="invalid_messages",
                param="messages",
            )
        turns.append(ChatTurn(role, content_text(message.get("content"))))
    return turns


def content_text(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a multi-part array."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                text = part.get("text")
                if isinstance(text, str):
                    parts.append(text)
        return "\n".join(parts)
    return ""


def _prompt(prompt: Any) -> str:
    if prompt is None:
        raise RequestError(400, "'prompt' is required", reason="missing_prompt", param="prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return "\n".join(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
        # Token ids: no text to classify, but a stable string keeps prefix affinity working.
        return " ".join(str(p) for p in prompt)
    raise RequestError(
        400,
        "'prompt' must be a non-empty string, array of strings or array of token ids",
        reason="invalid_prompt",
        param="prompt",
    )


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"

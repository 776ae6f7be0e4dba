"""What OpenAI's chat completions and completions APIs share: body checks, errors, readers.

The shim sees every request before any engine does, so it is where malformed input must stop:
each check below maps to one ``reason`` (a counter label) and one 4xx answer. The two OpenAI
dialects (:mod:`.openai_chat`, :mod:`.openai_completions`) add what differs: the prompt's shape,
the system prompt, the shape of a choice.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import msgspec

from pointsman.v1.classify import CachedAnswer
from pointsman_shim.core.dialects.base import BodyChanges, LLMRequest, Rendered, Upstream
from pointsman_shim.core.dialects.openai_fill import Reassembler
from pointsman_shim.core.dialects.openai_usage import UsageReader
from pointsman_shim.core.errors import RequestError

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

_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()

#: Deepest nesting of arrays and objects a request body may have. msgspec's decoder recurses and
#: raised RecursionError at about 1,000 levels; real requests (tool schemas included) stay far
#: below this.
MAX_JSON_DEPTH = 128
#: A JSON string, escapes included (the unrolled form: no backtracking).
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_CONTROL = re.compile("[\x00-\x1f\x7f]")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def too_deep(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON text ``raw`` nests arrays and objects deeper than ``limit``. Counts the
    brackets outside strings; cheap when the body has fewer brackets than the limit (most)."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    depth = 0
    for b in _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS):
        if b == 0x5B or b == 0x7B:  # [ {
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


class OpenAIDialect:
    """The methods both OpenAI dialects share; subclasses add ``parse`` and ``rewrite`` (see
    :class:`~pointsman_shim.core.dialects.base.Dialect`)."""

    name: str
    paths: tuple[str, ...]
    #: Chat completions (else the legacy completions): the shape of a cached answer's body.
    chat: bool

    def render_cached(
        self, request: LLMRequest, answer: CachedAnswer, *, model: str, nonce: str, created: int
    ) -> Rendered:
        rid = f"{'chatcmpl' if self.chat else 'cmpl'}-cache-{nonce}"
        return render(request, answer, chat=self.chat, rid=rid, model=model, created=created)

    def usage_reader(self, *, sse: bool) -> UsageReader:
        return UsageReader(sse=sse)

    def answer_reader(self, *, sse: bool) -> Reassembler:
        return Reassembler(sse=sse)

    def error_body(
        self, message: str, *, type: str, code: str, param: str | None = None, status: int = 400
    ) -> bytes:
        return error_body(message, type=type, code=code, param=param)


def error_body(message: str, *, type: str, code: str, param: str | None = None) -> bytes:
    """``{"error": {"message", "type", "param", "code"}}`` as OpenAI and vLLM send it."""
    return _encoder.encode(
        {"error": {"message": message, "type": type, "param": param, "code": code}}
    )


def decode(dialect: str, raw: bytes, *, max_bytes: int) -> LLMRequest:
    """The checks every OpenAI body passes: size, UTF-8, a JSON object, ``model``, ``stream``.

    The caller adds the prompt (``turns`` or ``prompt``). Raises :class:`RequestError`.
    """
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
    if too_deep(raw):
        raise _too_deep()
    try:
        body = _decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise RequestError(
            400, f"request body is not valid JSON: {exc}", reason="invalid_json"
        ) from None
    except RecursionError:  # cannot happen below MAX_JSON_DEPTH; never a crash if it did
        raise _too_deep() from None
    if not isinstance(body, dict):
        raise RequestError(
            400,
            f"request body must be a JSON object, not {json_type(body)}",
            reason="body_not_object",
        )
    model = body.get("model")
    if model is None:
        raise RequestError(400, "'model' is required", reason="missing_model", param="model")
    if not isinstance(model, str):
        raise RequestError(
            400,
            f"'model' must be a string, not {json_type(model)}",
            reason="invalid_model",
            param="model",
        )
    if not model.strip():
        raise RequestError(400, "'model' must not be empty", reason="invalid_model", param="model")
    if _CONTROL.search(model):
        # It travels in headers (x-selected-model): Envoy refuses such a header mutation with
        # a 500 (found by the fuzz test).
        raise RequestError(
            400,
            "'model' must not contain control characters",
            reason="invalid_model",
            param="model",
        )

    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise RequestError(
            400, "'stream' must be a boolean", reason="invalid_stream", param="stream"
        )
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    params = {k: body[k] for k in _PARAM_KEYS if k in body}
    if "stop" in body:
        params["stop"] = body["stop"]
    if include_usage:  # the cache renders a hit's usage chunk only when asked for
        params["stream_options"] = {"include_usage": True}
    return LLMRequest(
        dialect=dialect,
        model=model,
        body=body,
        stream=stream,
        include_usage=include_usage,
        params=params,
    )


def _too_deep() -> RequestError:
    return RequestError(
        400,
        f"request body nests arrays and objects deeper than {MAX_JSON_DEPTH} levels",
        reason="json_too_deep",
    )


def json_type(value: Any) -> str:
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


# -- rewriting ---------------------------------------------------------------------------------


def deep_merge(target: dict[str, Any], changes: dict[str, Any]) -> None:
    """Merge ``changes`` into ``target`` in place: nested objects merge, everything else replaces."""
    for key, value in changes.items():
        current = target.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            deep_merge(current, value)
        else:
            target[key] = copy.deepcopy(value)


def changed_body(request: LLMRequest, changes: BodyChanges) -> dict[str, Any]:
    """A copy of the body with the model and ``body_set`` applied; the input stays untouched."""
    body = dict(request.body)  # shallow: nested values are copied before they change
    body["model"] = changes.model
    if changes.body_set:
        for key in changes.body_set:
            if isinstance(body.get(key), dict):
                body[key] = copy.deepcopy(body[key])
        deep_merge(body, changes.body_set)
    return body


def upstream(request: LLMRequest, body: dict[str, Any]) -> Upstream:
    """The new body, or none when it equals the client's (whose bytes then pass untouched)."""
    return Upstream(None if body == request.body else _encoder.encode(body))


# -- rendering a cached answer -----------------------------------------------------------------


def render(
    request: LLMRequest, answer: CachedAnswer, *, chat: bool, rid: str, model: str, created: int
) -> Rendered:
    """One cached answer as an OpenAI server sends it: a complete JSON body, or, when the request
    streams, a complete SSE stream with ``data: [DONE]`` last (chat: a role chunk, the content
    chunk, the finish chunk; completions: the text chunk, the finish chunk). With
    ``stream_options.include_usage`` every chunk carries ``"usage": null`` and one last chunk with
    empty ``choices`` carries the usage, as vLLM does."""
    finish = answer.finish_reason or "stop"
    usage = _usage(answer)
    if not request.stream:
        shape: dict[str, Any] = (
            {"message": {"role": answer.role, "content": answer.content}}
            if chat
            else {"text": answer.content}
        )
        body: dict[str, Any] = {
            "id": rid,
            "object": "chat.completion" if chat else "text_completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, **shape, "logprobs": None, "finish_reason": finish}],
        }
        if usage is not None:
            body["usage"] = usage
        return Rendered(_encoder.encode(body), "application/json")
    deltas: list[tuple[dict[str, Any], str | None]] = (
        [
            ({"delta": {"role": answer.role, "content": ""}}, None),
            ({"delta": {"content": answer.content}}, None),
            ({"delta": {}}, finish),
        ]
        if chat
        else [({"text": answer.content}, None), ({"text": ""}, finish)]
    )
    obj = "chat.completion.chunk" if chat else "text_completion"
    head: dict[str, Any] = {"id": rid, "object": obj, "created": created, "model": model}
    chunks = [
        {**head, "choices": [{"index": 0, **shape, "logprobs": None, "finish_reason": end}]}
        for shape, end in deltas
    ]
    if request.include_usage:
        for c in chunks:
            c["usage"] = None
        chunks.append({**head, "choices": [], "usage": usage or dict(_NO_USAGE)})
    out = bytearray()
    for c in chunks:
        out += b"data: " + _encoder.encode(c) + b"\n\n"
    out += b"data: [DONE]\n\n"
    return Rendered(bytes(out), "text/event-stream")


_NO_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def _usage(a: CachedAnswer) -> dict[str, int] | None:
    if a.prompt_tokens is None and a.completion_tokens is None:
        return None
    p = a.prompt_tokens or 0
    c = a.completion_tokens or 0
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

"""Answers of the OpenAI Responses API: translated from chat completions, rendered from a cache
hit, and read (usage, the answer to cache, the response object to keep) when an engine sends them
itself.

The response object and the event stream follow OpenAI's documented formats, checked against
vLLM 0.32's own (``tests/fixtures/vllm-0.32/responses*``), so a client sees the same shapes from a
native and a translated pool:

* output items: a ``reasoning`` item (``reasoning_text`` content) when the engine reasoned, a
  ``message`` item (one ``output_text`` part) when it wrote text, one ``function_call`` item per
  tool call (``call_id`` is the engine's tool call id);
* ``status`` ``completed``, or ``incomplete`` with ``incomplete_details.reason
  "max_output_tokens"`` when the output limit cut the answer;
* a stream is ``response.created`` and ``response.in_progress``, then per item
  ``response.output_item.added``, its parts and deltas (``response.content_part.added``,
  ``response.output_text.delta``, ``response.output_text.done``, ``response.content_part.done``;
  ``response.reasoning_text.delta``/``.done``; ``response.function_call_arguments.delta``/
  ``.done``), ``response.output_item.done``, and last ``response.completed`` with the whole
  response and its usage (also when incomplete, as vLLM does: clients wait for that event).
  Every event is ``event: TYPE`` + ``data: JSON`` with a ``sequence_number`` counting from 0;
* a stream that breaks ends with ``response.failed`` (status ``failed``, an ``error`` with code
  ``server_error``) after the items seen so far are closed; a JSON answer that cannot be
  translated becomes a 502 error body.
"""

from __future__ import annotations

from typing import Any

import msgspec

from pointsman.v1.classify import CachedAnswer
from pointsman_shim.core.dialects import chat_answer as chat
from pointsman_shim.core.dialects import openai
from pointsman_shim.core.dialects.base import Filled, LLMRequest, Rendered, Usage
from pointsman_shim.core.dialects.bodies import BodyReader, WholeAnswer, json_object
from pointsman_shim.core.dialects.sse import event

_encoder = msgspec.json.Encoder()

#: Request fields the response object repeats, and their defaults.
_ECHO: dict[str, Any] = {
    "instructions": None,
    "max_output_tokens": None,
    "metadata": {},
    "parallel_tool_calls": True,
    "reasoning": None,
    "temperature": None,
    "text": {"format": {"type": "text"}},
    "tool_choice": "auto",
    "tools": [],
    "top_p": None,
    "truncation": "disabled",
    "user": None,
}
_FINISHED = ("response.completed", "response.incomplete", "response.failed")


def response_object(
    request: LLMRequest,
    *,
    rid: str,
    created: int,
    model: str,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The response object answering ``request``, with the request fields it repeats."""
    body = request.body
    echo = {k: body.get(k) if body.get(k) is not None else v for k, v in _ECHO.items()}
    return {
        "id": rid,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": error,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "model": model,
        "output": output,
        "previous_response_id": request.previous_response_id,
        "store": request.store,
        "usage": usage,
        **echo,
    }


def usage_of(prompt: int | None, completion: int | None) -> dict[str, Any]:
    p, c = prompt or 0, completion or 0
    return {
        "input_tokens": p,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": c,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": p + c,
    }


def _status(finish: str | None) -> str:
    return "incomplete" if finish == "length" else "completed"


def _message(mid: str, text: str, status: str = "completed") -> dict[str, Any]:
    content = [_text_part(text)] if status == "completed" else []
    return {"id": mid, "type": "message", "status": status, "role": "assistant", "content": content}


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _reasoning(rid: str, text: str, status: str = "completed") -> dict[str, Any]:
    content = [{"type": "reasoning_text", "text": text}] if status == "completed" else []
    return {"id": rid, "type": "reasoning", "summary": [], "content": content, "status": status}


def _call(
    fid: str, call_id: str, name: str, arguments: str, status: str = "completed"
) -> dict[str, Any]:
    return {
        "id": fid,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def _failed(message: str) -> dict[str, Any]:
    return {"code": "server_error", "message": message}


class JsonTranslator(WholeAnswer):
    """A chat completion JSON body -> one response object."""

    def __init__(self, request: LLMRequest, *, nonce: str, created: int) -> None:
        super().__init__()
        self.request = request
        self.nonce = nonce
        self.created = created
        self._result: dict[str, Any] | None = None

    @property
    def result(self) -> dict[str, Any] | None:
        return self._result

    def translate(self, raw: bytes | None) -> bytes:
        try:
            answer = chat.read_answer(raw)
        except chat.TranslationError as exc:
            error = openai.error_body(str(exc), type="server_error", code="translation_failed")
            return self.fail(502, error)
        n = self.nonce
        output: list[dict[str, Any]] = []
        if answer.reasoning:
            output.append(_reasoning(f"rs_{n}", answer.reasoning))
        if answer.content:
            output.append(_message(f"msg_{n}", answer.content))
        for i, call in enumerate(answer.tool_calls):
            output.append(_call(f"fc_{n}_{i}", call.id, call.name, call.arguments))
        self._result = response_object(
            self.request,
            rid=f"resp_{n}",
            created=self.created,
            model=answer.model or self.request.model,
            status=_status(answer.finish_reason),
            output=output,
            usage=usage_of(answer.prompt_tokens, answer.completion_tokens),
        )
        return _encoder.encode(self._result)


class StreamTranslator(chat.StreamTranslation):
    """A chat completions SSE stream -> the Responses API's typed events, as it streams."""

    def __init__(self, request: LLMRequest, *, nonce: str, created: int) -> None:
        super().__init__()
        self.request = request
        self.nonce = nonce
        self.created = created
        self._seq = 0
        self._model = request.model
        #: finished output items, in order
        self._output: list[dict[str, Any]] = []
        #: the open item: its kind ("message", "reasoning", "call"), key and text so far
        self._open: tuple[str, int] | None = None
        self._text: list[str] = []
        self._call: dict[str, Any] = {}
        self._calls: set[int] = set()
        self._result: dict[str, Any] | None = None

    @property
    def result(self) -> dict[str, Any] | None:
        return self._result

    def _emit(self, kind: str, fields: dict[str, Any]) -> bytes:
        fields["type"] = kind
        fields["sequence_number"] = self._seq
        self._seq += 1
        return event(kind, fields)

    def _response(
        self, status: str, usage: dict[str, Any] | None, error: Any = None
    ) -> dict[str, Any]:
        return response_object(
            self.request,
            rid=f"resp_{self.nonce}",
            created=self.created,
            model=self._model,
            status=status,
            output=list(self._output),
            usage=usage,
            error=error,
        )

    def _events(self, events: list[chat.Event]) -> bytes:
        out: list[bytes] = []
        for e in events:
            if self.failed or self._ended:
                break
            if not self._started:
                if isinstance(e, chat.Start) and e.model:
                    self._model = e.model
                self._started = True
                start = self._response("in_progress", None)
                out.append(self._emit("response.created", {"response": start}))
                out.append(self._emit("response.in_progress", {"response": start}))
            if isinstance(e, chat.Text):
                self._item("message", 0, out)
                self._text.append(e.text)
                out.append(
                    self._emit(
                        "response.output_text.delta",
                        {**self._ids(), "delta": e.text, "logprobs": []},
                    )
                )
            elif isinstance(e, chat.Reasoning):
                self._item("reasoning", 0, out)
                self._text.append(e.text)
                out.append(
                    self._emit("response.reasoning_text.delta", {**self._ids(), "delta": e.text})
                )
            elif isinstance(e, chat.ToolStart):
                self._close(out)
                self._calls.add(e.index)
                index = len(self._output)
                fid = f"fc_{self.nonce}_{e.index}"
                self._call = _call(fid, e.id, e.name, "", "in_progress")
                self._open = ("call", e.index)
                added = {"output_index": index, "item": dict(self._call)}
                out.append(self._emit("response.output_item.added", added))
            elif isinstance(e, chat.ToolArguments):
                if self._open == ("call", e.index):
                    self._text.append(e.text)
                    delta = {
                        "item_id": self._call["id"],
                        "output_index": len(self._output),
                        "delta": e.text,
                    }
                    out.append(self._emit("response.function_call_arguments.delta", delta))
            elif isinstance(e, chat.Finish):
                self._finish = e.reason
            elif isinstance(e, chat.UsageSeen):
                self._usage = (e.prompt_tokens, e.completion_tokens)
            elif isinstance(e, chat.End):
                self._close(out)
                self._ended = True
                self._result = self._response(_status(self._finish), usage_of(*self._usage))
                out.append(self._emit("response.completed", {"response": self._result}))
            elif isinstance(e, chat.Failure):
                self._close(out)
                self.failed = True
                failed = self._response("failed", None, _failed(e.message))
                out.append(self._emit("response.failed", {"response": failed}))
        return b"".join(out)

    def _ids(self) -> dict[str, Any]:
        kind = self._open[0] if self._open else "message"
        item_id = f"msg_{self.nonce}" if kind == "message" else f"rs_{self.nonce}"
        return {"item_id": item_id, "output_index": len(self._output), "content_index": 0}

    def _item(self, kind: str, key: int, out: list[bytes]) -> None:
        if self._open == (kind, key):
            return
        self._close(out)
        self._open = (kind, key)
        self._text = []
        index = len(self._output)
        if kind == "message":
            item = _message(f"msg_{self.nonce}", "", "in_progress")
            part = _text_part("")
        else:
            item = _reasoning(f"rs_{self.nonce}", "", "in_progress")
            part = {"type": "reasoning_text", "text": ""}
        out.append(self._emit("response.output_item.added", {"output_index": index, "item": item}))
        out.append(self._emit("response.content_part.added", {**self._ids(), "part": part}))

    def _close(self, out: list[bytes]) -> None:
        if self._open is None:
            return
        kind = self._open[0]
        text = "".join(self._text)
        index = len(self._output)
        if kind == "call":
            item = {**self._call, "arguments": text, "status": "completed"}
            done = {
                "item_id": item["id"],
                "output_index": index,
                "name": item["name"],
                "arguments": text,
            }
            out.append(self._emit("response.function_call_arguments.done", done))
        else:
            ids = self._ids()
            if kind == "message":
                item = _message(ids["item_id"], text)
                part: dict[str, Any] = _text_part(text)
                out.append(
                    self._emit("response.output_text.done", {**ids, "text": text, "logprobs": []})
                )
            else:
                item = _reasoning(ids["item_id"], text)
                part = {"type": "reasoning_text", "text": text}
                out.append(self._emit("response.reasoning_text.done", {**ids, "text": text}))
            out.append(self._emit("response.content_part.done", {**ids, "part": part}))
        out.append(self._emit("response.output_item.done", {"output_index": index, "item": item}))
        self._output.append(item)
        self._open = None
        self._text = []


def render_cached(
    request: LLMRequest, answer: CachedAnswer, *, model: str, nonce: str, created: int
) -> Rendered:
    """A cache hit as the response object, or as its event stream, made the way a translated
    answer is (one text message), so it reads exactly like an engine's."""
    n = f"cache_{nonce}"
    finish = answer.finish_reason or "stop"
    chunks = [
        {
            "id": f"chatcmpl-{n}",
            "model": model,
            "choices": [{"index": 0, "delta": {"content": answer.content}}],
        },
        {"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]},
        {
            "choices": [],
            "usage": {
                "prompt_tokens": answer.prompt_tokens,
                "completion_tokens": answer.completion_tokens,
            },
        },
    ]
    upstream = (
        b"".join(b"data: " + _encoder.encode(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
    )
    if request.stream:
        streamer = StreamTranslator(request, nonce=n, created=created)
        body = streamer.feed(upstream) + streamer.finish()
        return Rendered(body, "text/event-stream", state=streamer.result)
    message = {
        "id": f"chatcmpl-{n}",
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.content},
                "finish_reason": finish,
            }
        ],
        "usage": {
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
        },
    }
    translator = JsonTranslator(request, nonce=n, created=created)
    translator.feed(_encoder.encode(message))
    body = translator.finish()
    return Rendered(body, "application/json", state=translator.result)


# -- reading a native pool's answers -----------------------------------------------------------


class ResponseReader(BodyReader):
    """The final response object of one native answer: the JSON body, or the ``response`` of
    the stream's last ``response.completed`` / ``.incomplete`` / ``.failed`` event. Holds at most
    one event (or the bounded JSON body) at a time."""

    def __init__(self, *, sse: bool) -> None:
        super().__init__(sse=sse)
        self._final: dict[str, Any] | None = None

    def on_event(self, name: str, payload: bytes) -> None:
        if name and name not in _FINISHED:
            return
        if not name and not any(k.encode() in payload for k in _FINISHED):
            return
        body = json_object(payload)
        if body is not None and body.get("type") in _FINISHED:
            response = body.get("response")
            if isinstance(response, dict):
                self._final = response

    def response(self) -> dict[str, Any] | None:
        """The response object, once the body ended (``None``: none seen, or malformed)."""
        if self.sse:
            self.end_events()
            return None if self.broken else self._final
        body = self.json_body()
        self._final = body if body is not None and body.get("object") == "response" else None
        return self._final


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def usage_in(response: dict[str, Any] | None) -> Usage | None:
    usage = response.get("usage") if response else None
    if not isinstance(usage, dict):
        return None
    return Usage(
        _int(usage.get("input_tokens")),
        _int(usage.get("output_tokens")),
        _int(usage.get("total_tokens")),
    )


class UsageReader(ResponseReader):
    def finish(self) -> Usage | None:
        return usage_in(self.response())


class AnswerReader(ResponseReader):
    """The text of a response whose output is one message (reasoning items aside), for the
    semantic cache; ``None`` for function calls, a failed response, anything else."""

    def finish(self) -> Filled | None:
        response = self.response()
        if response is None or response.get("status") not in ("completed", "incomplete"):
            return None
        output = response.get("output")
        if not isinstance(output, list):
            return None
        messages = [i for i in output if isinstance(i, dict) and i.get("type") != "reasoning"]
        if len(messages) != 1 or messages[0].get("type") != "message":
            return None
        content = messages[0].get("content")
        if not isinstance(content, list) or not all(
            isinstance(p, dict) and p.get("type") == "output_text" for p in content
        ):
            return None
        usage = usage_in(response)
        return Filled(
            "".join(str(p.get("text", "")) for p in content),
            "assistant",
            "length" if response.get("status") == "incomplete" else "stop",
            usage.prompt_tokens if usage else None,
            usage.completion_tokens if usage else None,
        )


def history_of(response: dict[str, Any]) -> list[dict[str, Any]]:
    """The output items of a kept response that a later turn's input repeats."""
    output = response.get("output")
    if not isinstance(output, list):
        return []
    return [
        item
        for item in output
        if isinstance(item, dict) and item.get("type") in ("message", "function_call", "reasoning")
    ]

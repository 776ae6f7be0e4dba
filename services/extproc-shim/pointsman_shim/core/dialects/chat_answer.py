"""Read what a chat completions engine answered, normalised, for the translating dialects.

A translated request's answer arrives in chat completions format: one JSON body, or an SSE
stream of chunks. The Responses and Messages translators both need the same things from it, in
order: text, reasoning text, tool calls (id and name, then argument fragments), how it finished,
and the usage. :func:`read_answer` reads a JSON body into a :class:`ChatAnswer`;
:class:`ChatStream` turns a stream into a list of :data:`Event` values as chunks arrive.

Engines differ in small ways that are all accepted: the reasoning text is ``reasoning_content``
(older vLLM, SGLang, DeepSeek) or ``reasoning`` (vLLM 0.32); a named ``tool_choice`` ends with
``finish_reason: stop`` and ``required`` with ``tool_calls`` (vLLM); several tokens may share one
chunk. Anything malformed becomes a :class:`Failure`, never an exception.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from pointsman_shim.core.dialects.sse import EventSplitter, EventTooLarge

_decoder = msgspec.json.Decoder()


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str = ""


@dataclass(slots=True)
class ChatAnswer:
    """A complete chat completion (choice 0)."""

    id: str = ""
    model: str = ""
    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    #: vLLM's ``stop_reason``: the stop string (or token id) that ended the answer.
    stop_reason: Any = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


# -- the events of a stream, in the order the engine sent them --------------------------------


@dataclass(slots=True)
class Start:
    """The first chunk: the upstream's id and model."""

    id: str
    model: str


@dataclass(slots=True)
class Text:
    text: str


@dataclass(slots=True)
class Reasoning:
    text: str


@dataclass(slots=True)
class ToolStart:
    index: int
    id: str
    name: str


@dataclass(slots=True)
class ToolArguments:
    index: int
    text: str


@dataclass(slots=True)
class Finish:
    reason: str
    stop_reason: Any = None


@dataclass(slots=True)
class UsageSeen:
    prompt_tokens: int | None
    completion_tokens: int | None


@dataclass(slots=True)
class End:
    """``data: [DONE]``, or the end of a body that had a finish reason."""


@dataclass(slots=True)
class Failure:
    """The upstream answer is malformed, an error, or cut short."""

    message: str


Event = Start | Text | Reasoning | ToolStart | ToolArguments | Finish | UsageSeen | End | Failure


class TranslationError(Exception):
    """An upstream answer that cannot be translated (malformed, or an error)."""


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _error_message(body: dict[str, Any]) -> str | None:
    """The message of an error object in any shape engines send (OpenAI's, vLLM's ``detail``)."""
    error = body.get("error")
    if isinstance(error, dict):
        message = error.get("message")
        return message if isinstance(message, str) else "upstream error"
    if isinstance(error, str):
        return error
    if body.get("object") == "error":
        message = body.get("message")
        return message if isinstance(message, str) else "upstream error"
    return None


def _reasoning_of(message: dict[str, Any]) -> str:
    for key in ("reasoning_content", "reasoning"):
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def read_answer(raw: bytes | None) -> ChatAnswer:
    """A chat completion JSON body; raises :class:`TranslationError` when it is not one
    (``None``: a body too large to read)."""
    if raw is None:
        raise TranslationError("the engine's answer is too large to translate")
    try:
        body = _decoder.decode(raw)
    except msgspec.DecodeError:
        raise TranslationError("the engine's answer is not valid JSON") from None
    if not isinstance(body, dict):
        raise TranslationError("the engine's answer is not a JSON object")
    failed = _error_message(body)
    if failed is not None:
        raise TranslationError(failed)
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise TranslationError("the engine's answer has no choices")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        raise TranslationError("the engine's answer has no message")
    content = message.get("content")
    calls = []
    raw_calls = message.get("tool_calls") or []
    if not isinstance(raw_calls, list):
        raise TranslationError("the engine's tool_calls are not a list")
    for call in raw_calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise TranslationError("a tool call of the engine has no function name")
        arguments = function.get("arguments")
        calls.append(
            ToolCall(
                str(call.get("id") or ""),
                function["name"],
                arguments if isinstance(arguments, str) else "{}",
            )
        )
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    assert isinstance(usage, dict)
    finish = choice.get("finish_reason")
    return ChatAnswer(
        id=str(body.get("id") or ""),
        model=str(body.get("model") or ""),
        content=content if isinstance(content, str) else "",
        reasoning=_reasoning_of(message),
        tool_calls=calls,
        finish_reason=finish if isinstance(finish, str) else None,
        stop_reason=choice.get("stop_reason"),
        prompt_tokens=_int(usage.get("prompt_tokens")),
        completion_tokens=_int(usage.get("completion_tokens")),
    )


class ChatStream:
    """Feed the chunks of a chat completions SSE body; get its :data:`Event` values.

    The stream ends well with a :class:`Finish`, then usage when the engine sends it, then
    :class:`End`; :meth:`finish` reports a :class:`Failure` for a body that stopped before its
    finish reason. After a failure the rest of the body is ignored.
    """

    __slots__ = ("_calls", "_done", "_failed", "_finished", "_splitter", "_started")

    def __init__(self) -> None:
        self._splitter = EventSplitter()
        self._started = False
        self._finished = False
        self._done = False
        self._failed = False
        #: tool call index -> id, as announced
        self._calls: dict[int, str] = {}

    def feed(self, chunk: bytes) -> list[Event]:
        if self._failed or self._done:
            return []
        try:
            events = self._splitter.feed(chunk)
        except EventTooLarge as exc:
            return self._fail(str(exc))
        return self._read(events)

    def finish(self) -> list[Event]:
        if self._failed or self._done:
            return []
        out = self._read(self._splitter.finish())
        if self._failed or self._done:
            return out
        if self._finished:  # a finish reason but no [DONE]: complete all the same
            self._done = True
            return [*out, End()]
        return [*out, *self._fail("the engine's stream ended before the answer was complete")]

    def _fail(self, message: str) -> list[Event]:
        self._failed = True
        return [Failure(message)]

    def _read(self, events: list[tuple[str, bytes]]) -> list[Event]:
        out: list[Event] = []
        for _, payload in events:
            if payload.strip() == b"[DONE]":
                if not self._finished:
                    return [*out, *self._fail("the engine's stream ended without a finish reason")]
                self._done = True
                out.append(End())
                return out
            try:
                chunk = _decoder.decode(payload)
            except msgspec.DecodeError:
                return [*out, *self._fail("the engine sent a chunk that is not valid JSON")]
            if not isinstance(chunk, dict):
                return [*out, *self._fail("the engine sent a chunk that is not a JSON object")]
            failed = _error_message(chunk)
            if failed is not None:
                return [*out, *self._fail(failed)]
            if not self._started:
                self._started = True
                out.append(Start(str(chunk.get("id") or ""), str(chunk.get("model") or "")))
            choices = chunk.get("choices")
            if isinstance(choices, list):
                for choice in choices:
                    if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                        continue
                    bad = self._choice(choice, out)
                    if bad:
                        return [*out, *self._fail(bad)]
            usage = chunk.get("usage")
            if isinstance(usage, dict):
                out.append(
                    UsageSeen(
                        _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))
                    )
                )
        return out

    def _choice(self, choice: dict[str, Any], out: list[Event]) -> str | None:
        delta = choice.get("delta")
        if isinstance(delta, dict):
            reasoning = _reasoning_of(delta)
            if reasoning:
                out.append(Reasoning(reasoning))
            content = delta.get("content")
            if isinstance(content, str) and content:
                out.append(Text(content))
            calls = delta.get("tool_calls")
            if isinstance(calls, list):
                for call in calls:
                    bad = self._tool_delta(call, out)
                    if bad:
                        return bad
        finish = choice.get("finish_reason")
        if isinstance(finish, str):
            self._finished = True
            out.append(Finish(finish, choice.get("stop_reason")))
        return None

    def _tool_delta(self, call: Any, out: list[Event]) -> str | None:
        if not isinstance(call, dict):
            return "the engine sent a tool call that is not an object"
        index = _int(call.get("index"))
        if index is None:
            index = (
                len(self._calls) - 1 if call.get("id") is None and self._calls else len(self._calls)
            )
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        assert isinstance(function, dict)
        if index not in self._calls:
            name = function.get("name")
            if not isinstance(name, str) or not name:
                return "the engine sent tool call arguments before the tool's name"
            call_id = str(call.get("id") or f"call_{index}")
            self._calls[index] = call_id
            out.append(ToolStart(index, call_id, name))
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            out.append(ToolArguments(index, arguments))
        return None


class StreamTranslation:
    """What a translator of a chat completions event stream into another API's events keeps
    whatever the API (:class:`~pointsman_shim.core.dialects.base.Translating`): the parsed
    stream, whether it started, ended or failed, how it finished and its usage. A subclass turns
    the stream's :class:`Event` s into its API's bytes in :meth:`_events`."""

    def __init__(self) -> None:
        self.failed = False
        self.status: int | None = None
        self._stream = ChatStream()
        self._started = False
        self._ended = False
        self._finish: str | None = None
        self._usage: tuple[int | None, int | None] = (None, None)

    @property
    def result(self) -> dict[str, Any] | None:
        return None

    def feed(self, data: bytes) -> bytes:
        return self._events(self._stream.feed(data))

    def finish(self) -> bytes:
        return self._events(self._stream.finish())

    def _events(self, events: list[Event]) -> bytes:
        raise NotImplementedError

"""The seam between the shim and one HTTP API: the :class:`Dialect` interface and its values.

A dialect is everything the shim knows about one API (OpenAI chat completions, completions, ...):
which request paths are its own, how its body parses into the one normalised
:class:`LLMRequest` that the classifier and the picker see, how a routing decision rewrites its
body, how its responses report usage and carry the answer the semantic cache stores, how a cached
answer and an error look in its format. The routing policy (:mod:`pointsman_shim.core.policy`)
and the ext_proc handler only ever call these methods, so a new API is one new module and one
line in :mod:`.registry`, and nothing else in the shim changes.

Everything here is pure: no I/O, no clock (the caller passes ``created`` and ``nonce``). The
values are slotted dataclasses built once per request and never changed after; they are not
frozen because building a frozen one cost about 1 µs more here, on every request's path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pointsman.v1.classify import CachedAnswer


@dataclass(slots=True)
class ChatTurn:
    role: str
    content: str


@dataclass(slots=True)
class LLMRequest:
    """A validated request, normalised: what the classifier and the picker see, whatever the API.

    ``turns`` holds a conversation (chat-like APIs, a system prompt as a ``system`` turn) and
    ``prompt`` a bare prompt (completion-like APIs); exactly one of them is set. ``params`` holds
    the parameters that matter for routing and caching, under OpenAI chat completions' names
    (``temperature``, ``max_tokens``, ``stop``, ``tools``, ``stream``, ``stream_options``, ...),
    so the classifier's cache keys do not depend on the API. ``body`` is the decoded client body in
    the dialect's own format, which only the dialect reads again (to rewrite it).
    """

    dialect: str
    model: str
    body: dict[str, Any]
    stream: bool = False
    include_usage: bool = False
    turns: list[ChatTurn] = field(default_factory=list)
    prompt: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def prompt_text(self) -> str:
        """The prompt as one string, in order: what prefix-cache affinity hashes."""
        if self.prompt is not None:
            return self.prompt
        return "".join(f"<|{t.role}|>{t.content}\n" for t in self.turns)


@dataclass(slots=True)
class BodyChanges:
    """What a routing decision changes in a request, in no API's format.

    ``body_set`` is deep-merged into the body's top level (reasoning switches such as
    ``chat_template_kwargs.enable_thinking``); ``system_prompt`` is inserted before the client's
    own turns (``insert``) or replaces the client's system turns (``replace``).
    """

    model: str
    body_set: dict[str, Any] = field(default_factory=dict)
    system_prompt: str | None = None
    system_prompt_mode: Literal["insert", "replace"] = "insert"


@dataclass(slots=True)
class Upstream:
    """What goes upstream instead of the client's request.

    ``body`` is the new body (``None``: nothing changed, the client's bytes pass untouched);
    ``path`` is set only by a dialect that sends the request to another API than the client's
    (see :class:`Dialect`), and becomes the routed request's ``:path``.
    """

    body: bytes | None
    path: str | None = None


@dataclass(slots=True)
class Rendered:
    """A response body the shim sends the client itself, with its content type."""

    body: bytes
    content_type: str


@dataclass(slots=True)
class Usage:
    """Token counts a response reported (``None``: not reported)."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None


@dataclass(slots=True)
class Filled:
    """One complete answer read from a response, as the semantic cache stores it."""

    content: str
    role: str = "assistant"
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class UsageReading(Protocol):
    """Fed the response body chunk by chunk as it streams past; :meth:`finish` at its end.

    It must not hold a whole body it does not need (a bound, or the current SSE line only).
    """

    def feed(self, data: bytes) -> None: ...

    def finish(self) -> Usage | None: ...


class AnswerReading(Protocol):
    """Like :class:`UsageReading`; :meth:`finish` gives the answer, or ``None`` when the
    response is not one complete, storable answer (several choices, tool calls, cut short)."""

    def feed(self, data: bytes) -> None: ...

    def finish(self) -> Filled | None: ...


class ErrorFormat(Protocol):
    def error_body(self, message: str, *, type: str, code: str, param: str | None = None) -> bytes:
        """An error response body in the API's own format (content type ``application/json``).

        ``type`` and ``code`` use OpenAI's vocabulary (``invalid_request_error``,
        ``rate_limit_exceeded``, ``service_unavailable``, a rejection's reason as ``code``); a
        dialect maps them to its own.
        """
        ...


class Dialect(ErrorFormat, Protocol):
    """One HTTP API the shim routes. Implementations are stateless; one instance serves all.

    ``name`` identifies the dialect in the ``pointsman`` dynamic metadata (an observer stream,
    maybe on another shim replica, picks its response readers by it), so it never changes once
    released. ``paths`` are the request paths it owns, without query string or trailing slash.

    **Translating dialects.** An API whose pools may only speak another one (the Anthropic
    Messages API in front of vLLM pools that speak chat completions, the Responses API) plugs in
    without a change to the policy:

    * :meth:`rewrite` always returns a body in the upstream's format and sets
      :attr:`Upstream.path` to the upstream's path (``/v1/chat/completions``); the handler sets
      ``:path`` on the routed request.
    * :meth:`usage_reader` and :meth:`answer_reader` read what the upstream sends (the chat
      dialect's readers serve, or wrap them), since both run on the untranslated response.
    * Translating the answer back is one more method, ``response_translator(request, sse=...)``
      returning an object with ``feed(chunk) -> bytes`` and ``finish() -> bytes``. The decision
      stream then asks Envoy for the response body (``mode_override`` with a streamed response
      body mode) and answers every chunk with a body mutation carrying the translated bytes (the
      observer layout keeps reading the upstream's bytes for usage and the cache). Nothing
      in the policy changes; the handler gains that response step.
    * State the API keeps between requests (the Responses API's ``previous_response_id``) is read
      and written by an adapter of the handler around :meth:`parse` and the cache fill, never by
      the dialect, which stays pure: :meth:`parse` leaves the reference in
      :attr:`LLMRequest.body` for that adapter to resolve into ``turns``.
    * :meth:`render_cached` and :meth:`error_body` always speak the client's API.
    """

    name: str
    paths: tuple[str, ...]

    def parse(self, raw: bytes, *, max_bytes: int) -> LLMRequest:
        """Decode and validate a request body; bad input raises
        :class:`~pointsman_shim.core.errors.RequestError` with its own ``reason``."""
        ...

    def rewrite(self, request: LLMRequest, changes: BodyChanges) -> Upstream:
        """The request to send upstream after a decision; ``Upstream(None)`` when nothing changes
        (then the client's bytes pass untouched)."""
        ...

    def usage_reader(self, *, sse: bool) -> UsageReading:
        """A reader of the token usage of one response (``sse``: the response is an event
        stream, from its ``content-type``)."""
        ...

    def answer_reader(self, *, sse: bool) -> AnswerReading:
        """A reader of the complete answer of one response, for the semantic cache."""
        ...

    def render_cached(
        self, request: LLMRequest, answer: CachedAnswer, *, model: str, nonce: str, created: int
    ) -> Rendered:
        """A semantic-cache hit as the API would have answered ``request``: JSON, or an event
        stream when the request asked to stream. ``nonce`` makes the response id unique,
        ``created`` is Unix time."""
        ...

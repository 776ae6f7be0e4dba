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
    #: State the request continues (the Responses API's ``previous_response_id``), for the
    #: handler's state adapter to resolve; ``None``: a stateless request.
    previous_response_id: str | None = None
    #: The API keeps this request's answer (the Responses API's ``store``, default true).
    store: bool = False

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
    #: The classifier's reasoning switch, for an API with a field of its own (Anthropic's
    #: ``thinking``); ``body_set`` already holds it in the model family's form.
    reasoning: bool | None = None
    #: How the chosen pool serves the client's API: ``native``, or ``chat`` (translate to chat
    #: completions). Only a :class:`TranslatingDialect` reads it.
    upstream: Literal["native", "chat"] = "native"


@dataclass(slots=True)
class Upstream:
    """What goes upstream instead of the client's request.

    ``body`` is the new body (``None``: nothing changed, the client's bytes pass untouched);
    ``path`` is set only by a dialect that sends the request to another API than the client's
    (see :class:`Dialect`), and becomes the routed request's ``:path``. ``speaks`` names the
    dialect whose readers read the upstream's answer (``None``: this one), so the response path
    reads usage and cache fills from the bytes the engine sent, whoever sees them.
    """

    body: bytes | None
    path: str | None = None
    speaks: str | None = None


@dataclass(frozen=True, slots=True)
class UpstreamAnswer:
    """What the response path knows of an upstream answer when it starts: its HTTP ``status``,
    whether it is an event stream (``sse``), whether the request went upstream ``translated``;
    and what the translation of it takes: ``nonce`` makes ids unique, ``created`` is Unix time."""

    status: int
    sse: bool
    translated: bool
    nonce: str
    created: int


@dataclass(slots=True)
class Rendered:
    """A response body the shim sends the client itself, with its content type."""

    body: bytes
    content_type: str
    #: What the API keeps of this answer (the Responses API's response object), when it keeps any.
    state: dict[str, Any] | None = None


@dataclass(slots=True)
class Usage:
    """Token counts a response reported (``None``: not reported)."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    #: Prompt tokens served from the engine's prefix cache (OpenAI's
    #: ``usage.prompt_tokens_details.cached_tokens``), when reported.
    cached_tokens: int | None = None


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
    def error_body(
        self, message: str, *, type: str, code: str, param: str | None = None, status: int = 400
    ) -> bytes:
        """An error response body in the API's own format (content type ``application/json``).

        ``type`` and ``code`` use OpenAI's vocabulary (``invalid_request_error``,
        ``rate_limit_exceeded``, ``service_unavailable``, a rejection's reason as ``code``);
        ``status`` is the HTTP status it goes with. A dialect maps them to its own.
        """
        ...


class Dialect(ErrorFormat, Protocol):
    """One HTTP API the shim routes. Implementations are stateless; one instance serves all.

    ``name`` identifies the dialect in the ``pointsman`` dynamic metadata (an observer stream,
    maybe on another shim replica, picks its response readers by it), so it never changes once
    released. ``paths`` are the request paths it owns, without query string or trailing slash.

    **Translating dialects.** An API whose pools may only speak another one (the Anthropic
    Messages API in front of vLLM pools that speak chat completions, the Responses API in front
    of an engine without it) implements :class:`TranslatingDialect`; the policy does not change:

    * the policy says in :attr:`BodyChanges.upstream` how the chosen pool serves the API
      (``shim.apis``); for ``chat``, :meth:`rewrite` returns a chat completions body and sets
      :attr:`Upstream.path` (the handler sets ``:path``) and :attr:`Upstream.speaks`.
    * :meth:`usage_reader` and :meth:`answer_reader` read the API's own answers (a native
      pool); the answers of a translated request are read by the readers of the dialect named
      in ``speaks``, on the untranslated bytes, whichever stream sees them.
    * ``response_translator`` translates the answer back. The decision stream asks Envoy for the
      response (a ``mode_override`` in the request headers response asks for the response
      headers, one in the response headers response for a streamed response body, so only
      requests that need it pay) and answers every chunk with a body mutation carrying the
      translated bytes; the observer layout keeps reading the upstream's bytes.
    * State the API keeps between requests (the Responses API's ``previous_response_id``) is read
      and written by an adapter of the handler around :meth:`parse` and the response path, never
      by the dialect, which stays pure: :meth:`parse` leaves the reference in
      :attr:`LLMRequest.previous_response_id` for that adapter to resolve.
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


class Translating(Protocol):
    """Turns an upstream answer into the client's API as it streams past: :meth:`feed` each
    body chunk, :meth:`finish` at the end of the body; each returns the bytes to send the client
    instead (possibly none yet). Pure, and never raises on bad input: a malformed or cut upstream
    answer ends the translated one with the API's own error (an error event in a stream), after
    which :attr:`failed` is true and the rest of the upstream body is dropped. :attr:`result` is
    the complete answer in the client's format, once finished, when the API keeps state of it
    (the Responses API's response object). :attr:`status` replaces the upstream's HTTP status
    when the translation of a whole (JSON) answer failed and the status can still change."""

    failed: bool
    status: int | None

    def feed(self, data: bytes) -> bytes: ...

    def finish(self) -> bytes: ...

    @property
    def result(self) -> dict[str, Any] | None: ...


class TranslatingDialect(Dialect, Protocol):
    """A dialect whose pools may not speak its API: the Responses and Messages APIs.

    ``api`` is its key in ``shim.apis`` (``responses``, ``messages``), which says per pool
    whether the engine speaks it (``native``) or gets chat completions (``chat``); the policy
    puts the answer in :attr:`BodyChanges.upstream`. :meth:`rewrite` then returns a chat body
    with :attr:`Upstream.path` and :attr:`Upstream.speaks` set, and the handler asks Envoy for the
    response to run it through :meth:`response_translator`. ``reformats_errors``: the engine's
    error answers need rewriting into the API's error format even from a native pool (the
    handler then watches every response of the API). ``generates``: the request produces an
    answer (false for a token count: no classifier, no cache).
    """

    api: str
    reformats_errors: bool
    generates: bool

    def response_translator(
        self, request: LLMRequest, answer: UpstreamAnswer
    ) -> Translating | None:
        """The translator of one upstream answer, or ``None`` when it passes untouched."""
        ...

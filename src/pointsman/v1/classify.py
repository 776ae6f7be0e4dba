"""Contracts between the shim and the classifier (model selection and safety).

The classifier owns every decision that needs a model; the shim only applies the decision to the
request with generic operations (set fields, insert or replace a system prompt, block). That keeps
routing logic out of the shim and lets one classifier reply drive any body rewrite.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from pointsman.v1.messages import ModelCandidate
from pointsman.v1.subjects import PREFIX

#: Request-reply, shim -> classifier: :class:`ClassifyRequest` -> :class:`ClassifyReply`.
CLASSIFY = f"{PREFIX}.classify"
CLASSIFIER_QUEUE = "pointsman-classifier"


class Message(msgspec.Struct, kw_only=True):
    """One chat turn, flattened to text (multi-part content keeps its text parts only)."""

    role: str
    content: str


class ClassifyRequest(msgspec.Struct, kw_only=True):
    """Everything the classifier may look at for one request.

    ``messages`` is set for chat completions, ``prompt`` for legacy completions. ``headers`` holds
    the request headers the classifier's policies read (lower-case names, no credentials).
    ``params`` holds the sampling and shape parameters that matter for caching (temperature,
    max_tokens, tools, response_format, stream).
    """

    request_id: str
    model: str
    messages: list[Message] = msgspec.field(default_factory=list)
    prompt: str | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    params: dict[str, Any] = msgspec.field(default_factory=dict)
    #: The conversation this request belongs to (``x-session-id``, the session of the response
    #: it continues, or a hash of the conversation's opening turns), when the shim knows one.
    session: str | None = None
    #: The request continues the session (an earlier turn may have chosen its model).
    follow_up: bool = False
    #: Milliseconds the caller still waits for the answer when it sent the request (the shim's
    #: ``classifier.timeout_ms``): the classifier admits the request only if it can answer
    #: within it, and answers ``error = "overloaded"`` at once otherwise (issue 12). A relative
    #: budget, not a timestamp, so that hosts need no common clock. ``None``: the classifier's
    #: own ``batching.budget_ms``.
    budget_ms: float | None = None


class Block(msgspec.Struct, kw_only=True):
    """Answer the client at once instead of routing (jailbreak, PII policy, ...)."""

    status: int = 403
    message: str
    type: str = "invalid_request_error"
    code: str
    reason: str


class ImmediateAnswer(msgspec.Struct, kw_only=True):
    """A complete answer, already rendered for the client (how classifiers answered a
    semantic-cache hit before :class:`CachedAnswer`; a shim still sends it on unchanged)."""

    status: int = 200
    body: bytes
    content_type: str = "application/json"


class AnswerText(msgspec.Struct, kw_only=True):
    """One model answer as the semantic cache keeps and serves it: its text, how it ended, its
    token usage, and ``model``, the model that produced it."""

    content: str
    role: str = "assistant"
    finish_reason: str | None = "stop"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    model: str = ""


def answer_text(answer: AnswerText) -> dict[str, Any]:
    """The :class:`AnswerText` fields of ``answer`` (of any subclass), by name."""
    return {name: getattr(answer, name) for name in AnswerText.__struct_fields__}


class CachedAnswer(AnswerText, kw_only=True):
    """A semantic-cache hit: the stored answer, which the shim renders in the format of the API
    the client spoke (JSON or an event stream, chat or completion, or another API's dialect).

    ``similarity`` is the cosine similarity of the prompt to the stored prompt (also reported in
    the ``x-pointsman-cache-similarity`` header).
    """

    similarity: float = 0.0


class ClassifyReply(msgspec.Struct, kw_only=True):
    """The classifier's decision for one request.

    ``model`` is the model to route to (the client's own choice unless it asked for an auto
    name). When ``block`` is set the shim answers the client with it and routes nothing; when
    ``cached`` is set it answers with that semantic-cache hit. ``body_set`` is deep-merged into
    the request body's top level (reasoning switches such as
    ``chat_template_kwargs.enable_thinking``). ``headers`` are added to the routed request and
    reported on the response, or to the answer.

    ``answer`` is what classifiers sent for a hit before ``cached`` existed; a shim still sends it
    as it is. A shim from before ``cached`` ignores that field and routes the request (answered
    upstream, not stored, though reported as a cache hit): upgrade shims before classifiers.
    """

    model: str
    selected: bool = False
    category: str | None = None
    confidence: float | None = None
    reasoning: bool | None = None
    body_set: dict[str, Any] = msgspec.field(default_factory=dict)
    system_prompt: str | None = None
    system_prompt_mode: Literal["insert", "replace"] = "insert"
    block: Block | None = None
    answer: ImmediateAnswer | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    classifier: str = ""
    #: Semantic cache: an opaque token set when the lookup missed and the answer may be stored.
    #: The shim publishes the complete 2xx answer with it as a ``pointsman.v1.cache.CacheStore``.
    cache_store: str | None = None
    #: Semantic cache: the hit, for the shim to render (replaces ``answer``; added after v1).
    cached: CachedAnswer | None = None
    #: Set when the classifier made no decision (``"overloaded"``: its queue is full and it shed
    #: the request; ``"bad_request"``: nothing to classify was malformed). The shim then applies
    #: its fail-open / fail-closed policy exactly as for a timeout, without waiting for one.
    error: str | None = None
    #: ``model: auto``: the served candidate models that may take the request, ranked best
    #: first (``model`` first) with their quality scores (``categories.*.models[].score``). The
    #: shim passes them to the picker, which may choose a lower-ranked one whose pool can serve
    #: sooner (see services/picker/README.md, "One decision for model and endpoint"). Empty:
    #: the classifier chose ``model`` alone. Added after v1: older shims ignore it.
    candidates: list[ModelCandidate] = msgspec.field(default_factory=list)

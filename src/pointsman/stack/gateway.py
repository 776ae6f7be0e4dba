"""What the gateway promises clients and engines: the API paths it serves, the errors it answers
itself, and how it treats a pool's endpoints (retries, health checks).

Pointsman's Envoy config (:mod:`pointsman.stack.envoy`) is rendered from this module, and the
Kubernetes overlays are tested against it, so one list decides what is reachable:

* :data:`API_ROUTES` is the LLM API. Every other path gets a 404 and every other method a 405,
  both as OpenAI-style JSON from Envoy itself: they never reach the shim or an engine (an
  engine's ``/metrics``, ``/health``, ``/tokenize`` or admin paths stay private). A new API (a
  dialect of the shim) adds one :class:`ApiRoute` here; an operator adds paths of their own with
  ``gateway.extra_api_routes``.
* :data:`LOCAL_REPLIES` maps each reply Envoy makes itself (no healthy upstream, connect
  failure, 413, 431, ext_proc failure, ...) to ``{"error": {"message", "type", "param",
  "code"}}``. The shim's own answers and the engines' answers are left as they are.
* :class:`GatewayConfig` is the ``gateway:`` section of the config file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]

_SEGMENT = r"[A-Za-z0-9._~-]+"
_PATH = re.compile(rf"^(/({_SEGMENT}|\{{[A-Za-z_][A-Za-z0-9_]*\}}))+$")
#: RE2 for one ``{name}`` segment of a templated path.
_ONE_SEGMENT = "[^/]+"


@dataclass(frozen=True)
class ApiRoute:
    """One path of the API the gateway serves, and the methods it allows there.

    ``path`` is matched exactly (the query string aside); a ``{name}`` segment stands for any one
    path segment (``/v1/responses/{id}``). Trailing slashes, doubled slashes and encoded
    characters do not match: the gateway fails closed.
    """

    path: str
    methods: tuple[str, ...] = ("POST",)

    def __post_init__(self) -> None:
        if not _PATH.match(self.path):
            raise ValueError(
                f"API path {self.path!r} is not of the form /segment/... "
                "(letters, digits, '._~-', or a '{name}' placeholder per segment)"
            )
        if not self.methods:
            raise ValueError(f"API path {self.path!r} allows no method")

    @property
    def templated(self) -> bool:
        return "{" in self.path

    def regex(self) -> str:
        """The path as an RE2 that must match the whole path (Envoy's ``safe_regex``)."""
        parts = []
        for segment in self.path.split("/")[1:]:
            parts.append(_ONE_SEGMENT if segment.startswith("{") else re.escape(segment))
        return "/" + "/".join(parts)


#: The LLM API the gateway exposes: one entry per path of the shim's dialects (docs/apis.md).
API_ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute("/v1/chat/completions"),
    ApiRoute("/v1/completions"),
    ApiRoute("/v1/models", ("GET",)),
    # OpenAI Responses: GET and DELETE of a kept response are answered by the shim itself
    ApiRoute("/v1/responses"),
    ApiRoute("/v1/responses/{id}", ("GET", "DELETE")),
    # Anthropic Messages
    ApiRoute("/v1/messages"),
    ApiRoute("/v1/messages/count_tokens"),
)


@dataclass(frozen=True)
class LocalReply:
    """A reply Envoy makes itself, and the OpenAI error it becomes.

    Matched in order, first match wins, and only on replies Envoy generated: the shim's immediate
    responses always carry a ``content-type`` (JSON), Envoy's own carry none until they are
    mapped, and responses from engines are not local replies at all.
    """

    #: The error's ``code``, also sent as the ``x-pointsman-error`` header.
    code: str
    type: str
    #: Envoy substitution format (``%REQ(:METHOD)%`` ...), escaped into JSON by Envoy.
    message: str
    status: int | None = None
    #: Envoy response flags (``UH``, ``UF``, ...): any of them matches.
    flags: tuple[str, ...] = ()
    #: An extra CEL condition (``response.code_details.startsWith('ext_proc')``).
    cel: str | None = None
    #: Answer with this status instead of Envoy's.
    rewrite_status: int | None = None


_URL = "%REQ(:METHOD)% %PATH(NQ)%"
_UPSTREAM_FLAGS = ("UF", "URX", "UR", "UC", "LR", "UPE", "UMSDR", "DF", "DO", "OM")

LOCAL_REPLIES: tuple[LocalReply, ...] = (
    LocalReply(
        "unknown_url",
        "invalid_request_error",
        f"Invalid URL ({_URL}): this gateway serves only the LLM API",
        status=404,
    ),
    LocalReply(
        "method_not_allowed",
        "invalid_request_error",
        f"Invalid method for URL ({_URL})",
        status=405,
    ),
    LocalReply(
        "request_too_large",
        "invalid_request_error",
        "request body larger than the gateway accepts",
        status=413,
    ),
    LocalReply(
        "request_headers_too_large",
        "invalid_request_error",
        "request headers larger or more numerous than the gateway accepts",
        status=431,
    ),
    LocalReply(
        # The client's headers left no room for those the shim and Envoy add (Envoy: 500).
        "request_headers_too_large",
        "invalid_request_error",
        "request headers larger or more numerous than the gateway accepts",
        cel="response.code_details == 'header_mutation_result_exceeds_limit'",
        rewrite_status=431,
    ),
    LocalReply(
        "request_timeout",
        "invalid_request_error",
        "the request was not received in time",
        status=408,
    ),
    LocalReply(
        "gateway_processing_failed",
        "server_error",
        "the gateway's request processing (Pointsman) failed or timed out; try again later",
        cel="response.code_details.startsWith('ext_proc')",
    ),
    LocalReply(
        "no_healthy_upstream",
        "service_unavailable",
        "no healthy endpoint serves this model now; try again later",
        flags=("UH",),
    ),
    LocalReply(
        "upstream_overloaded",
        "service_unavailable",
        "the model's endpoints are at the gateway's connection limit; try again later",
        flags=("UO", "RL"),
    ),
    LocalReply(
        "upstream_timeout", "server_error", "the model server did not answer in time", flags=("UT",)
    ),
    LocalReply(
        "upstream_unavailable",
        "service_unavailable",
        "the model server refused or dropped the connection before answering; try again later",
        flags=_UPSTREAM_FLAGS,
    ),
    LocalReply(
        "bad_request",
        "invalid_request_error",
        "malformed HTTP request (%RESPONSE_CODE_DETAILS%)",
        cel="response.code >= 400 && response.code < 500",
    ),
    LocalReply(
        "gateway_error",
        "server_error",
        "the gateway failed to serve the request (%RESPONSE_CODE_DETAILS%)",
        cel="response.code >= 500",
    ),
)

#: True for a reply Envoy made itself and has not yet given a body type: the shim's immediate
#: responses set ``content-type``, Envoy's own get theirs only from the mapper.
ENVOY_MADE = "!('content-type' in response.headers)"


def _post_only() -> list[Method]:
    return ["POST"]


class ApiRouteConfig(BaseModel):
    """An API path added by the operator (``gateway.extra_api_routes`` entry)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    methods: list[Method] = Field(default_factory=_post_only, min_length=1)

    @field_validator("path")
    @classmethod
    def _path_form(cls, value: str) -> str:
        ApiRoute(value)  # raises ValueError with the rule
        return value


class HealthCheck(BaseModel):
    """Envoy's active health check of every endpoint of every pool (``gateway.health_check``)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    #: vLLM and SGLang serve ``GET /health`` (200 when the engine is up); so does the simulator.
    path: str = Field(default="/health", pattern=r"^/\S*$")
    interval_ms: int = Field(default=5000, ge=100)
    timeout_ms: int = Field(default=2000, ge=50)
    #: Consecutive failed checks before an endpoint leaves the pool.
    unhealthy_threshold: int = Field(default=2, ge=1)
    #: Consecutive passed checks before it comes back.
    healthy_threshold: int = Field(default=1, ge=1)


class GatewayConfig(BaseModel):
    """The ``gateway:`` section: the Envoy config ``pointsman up`` and docker-compose render."""

    model_config = ConfigDict(extra="forbid")

    #: Paths served besides :data:`API_ROUTES` (e.g. ``{path: /v1/embeddings}``); every other
    #: path gets a 404.
    extra_api_routes: list[ApiRouteConfig] = Field(default_factory=list)
    #: Retries of a request whose endpoint refused the connection or the stream, or reset it
    #: before the response began, each on another endpoint of the same pool (0: none).
    retries: int = Field(default=1, ge=0, le=5)
    health_check: HealthCheck = Field(default_factory=HealthCheck)
    #: Consecutive connect failures / resets that eject an endpoint for a while (outlier
    #: detection, between health checks; 0: off).
    eject_after_failures: int = Field(default=3, ge=0)

    def api_routes(self) -> tuple[ApiRoute, ...]:
        """:data:`API_ROUTES` then the extra ones; an extra path that repeats one replaces it."""
        extra = [ApiRoute(r.path, tuple(r.methods)) for r in self.extra_api_routes]
        replaced = {r.path for r in extra}
        return tuple(r for r in API_ROUTES if r.path not in replaced) + tuple(extra)

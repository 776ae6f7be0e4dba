"""Configuration of the extproc-shim: the ``shim:`` section of the Pointsman config file."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pointsman.redisconf import RedisBacked
from pointsman.v1.policy import ModelRewrite, RewriteRule, RewriteTarget

FailureMode = Literal["fail-open", "fail-closed"]
#: What the shim decides: ``full`` (the model, then the endpoint from Pointsman's picker),
#: ``selector`` (the model only; the gateway routes by ``x-selected-model`` to a pool whose own
#: endpoint picker chooses the pod) or ``picker`` (an endpoint picker for pools behind another
#: model selector: no classifier, and the report headers of the stage before it are kept).
Mode = Literal["full", "selector", "picker"]
#: How a pool serves an API: ``native`` (its engine speaks it; the request passes through, made
#: stateless) or ``chat`` (the shim translates it to chat completions and the answer back).
ApiMode = Literal["native", "chat"]


class ClassifierCall(BaseModel):
    """How the shim asks the classifier (model selection and safety checks)."""

    model_config = ConfigDict(extra="forbid")

    #: Ask the classifier at all. Off: ``auto`` names go to ``default_model``, no safety checks.
    enabled: bool = False
    #: Deadline of one classify request-reply for a prompt of up to 1,000 characters, in ms.
    timeout_ms: float = Field(default=150.0, gt=0)
    #: Added to the deadline per 1,000 characters of prompt text beyond the first 1,000. The
    #: safety checks read a long prompt window by window, so their time grows with its length:
    #: on a 2-core CPU about 40-80 ms per 1,000 characters (services/classifier/README.md,
    #: Long prompts). 0: every prompt gets ``timeout_ms``.
    timeout_per_kchar_ms: float = Field(default=200.0, ge=0)
    #: The longest deadline, whatever the prompt's length (the classifier reads at most its
    #: ``prompt.max_chars``, 8,000 by default). Envoy's ext_proc ``message_timeout`` must be
    #: longer than this plus the pick's wait.
    max_timeout_ms: float = Field(default=2000.0, gt=0)
    #: What to do when the classifier does not answer in time or NATS is down.
    failure_mode: FailureMode = "fail-open"
    #: What to do then when the classifier blocks anything (``safety_blocks``): ``fail-closed``
    #: answers 503 with ``Retry-After`` rather than route a request with no safety verdict;
    #: ``fail-open`` lets ``failure_mode`` decide, as for model selection alone.
    safety_failure_mode: FailureMode = "fail-closed"
    #: Whether the classifier blocks requests (a jailbreak block, or PII some model may not
    #: receive). ``None``: read from the config file's ``classifier`` section with the
    #: classifier's defaults (jailbreak blocking is on by default), see :func:`safety_blocks`.
    safety_blocks: bool | None = None

    @property
    def longest_ms(self) -> float:
        """The longest the shim may wait for one classify answer."""
        if self.timeout_per_kchar_ms <= 0:
            return self.timeout_ms
        return max(self.timeout_ms, self.max_timeout_ms)


class ExtProcTls(BaseModel):
    """TLS of the ext_proc port (and the gRPC health port); off unless a certificate is set."""

    model_config = ConfigDict(extra="forbid")

    #: Server certificate chain and key (PEM). Set = the ext_proc port speaks TLS.
    cert_file: str | None = None
    key_file: str | None = None
    #: CA bundle of the client certificates to require (mutual TLS: only a gateway holding a
    #: certificate from this CA may connect).
    client_ca_file: str | None = None


class PoolApis(BaseModel):
    """Which APIs one pool's engine serves itself; ``None``: the section's default."""

    model_config = ConfigDict(extra="forbid")

    responses: ApiMode | None = None
    messages: ApiMode | None = None


class Apis(BaseModel):
    """How pools serve the OpenAI Responses API and the Anthropic Messages API.

    vLLM serves ``/v1/responses`` itself, so Responses default to ``native``; not every engine
    serves ``/v1/messages``, so Messages default to ``chat`` (translated). ``pools`` overrides
    either per pool (served model name).
    """

    model_config = ConfigDict(extra="forbid")

    responses: ApiMode = "native"
    messages: ApiMode = "chat"
    pools: dict[str, PoolApis] = Field(default_factory=dict)

    def mode(self, api: str, pool: str) -> ApiMode:
        """How ``pool`` serves ``api`` (``responses`` or ``messages``)."""
        own = self.pools.get(pool)
        value: ApiMode | None = getattr(own, api) if own is not None else None
        return value if value is not None else getattr(self, api)

    def translates(self, api: str) -> bool:
        """Whether any pool gets ``api`` translated (then its responses must be seen)."""
        return getattr(self, api) == "chat" or any(
            getattr(p, api) == "chat" for p in self.pools.values()
        )


class ResponsesStore(RedisBacked):
    """Where the Responses API's state lives: stored responses and their conversations.

    ``redis_url`` is the Redis holding the state; ``""``: no store (stateful calls answer 503,
    ``store`` is ignored). While Redis is down (:class:`RedisBacked`), stateful calls answer 503.
    """

    model_config = ConfigDict(extra="forbid")

    #: Prefix of every key (several deployments may share one Redis).
    key_prefix: str = "pointsman:responses"
    #: Seconds a stored response (and the conversation it continues) lives.
    ttl_s: float = Field(default=86400.0, gt=0)
    #: Deadline of one Redis call (longer here than :class:`RedisBacked`'s default).
    redis_timeout_ms: float = Field(default=100.0, gt=0)
    #: A ``previous_response_id`` or ``GET`` that finds nothing waits this long for a response
    #: still being kept (its answer reached the client before the record reached Redis) before
    #: answering 404; 0 = answer at once.
    pending_wait_ms: float = Field(default=500.0, ge=0, le=10_000)


class RewriteTargetConfig(BaseModel):
    """One weighted target of a rewrite rule."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    weight: int = Field(default=1, ge=1, le=1_000_000)


class RewriteRuleConfig(BaseModel):
    """Requests for one of ``matches`` (exact model names; empty: every request for the
    rewrite's ``pool``) go to ``targets`` by weight."""

    model_config = ConfigDict(extra="forbid")

    matches: list[str] = Field(default_factory=list)
    targets: list[RewriteTargetConfig] = Field(min_length=1)


class ModelRewriteConfig(BaseModel):
    """An InferenceModelRewrite written in the config file."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    pool: str = ""
    rules: list[RewriteRuleConfig] = Field(min_length=1)

    def contract(self) -> ModelRewrite:
        return ModelRewrite(
            name=self.name,
            pool=self.pool,
            rules=[
                RewriteRule(
                    models=list(r.matches),
                    targets=[RewriteTarget(t.model, t.weight) for t in r.targets],
                )
                for r in self.rules
            ],
        )


class ShimConfig(BaseModel):
    """Every key of the ``shim:`` section, with its default."""

    model_config = ConfigDict(extra="forbid")

    #: ``full``, ``selector`` or ``picker`` (see :data:`Mode`).
    mode: Mode = "full"
    #: ext_proc gRPC listen address.
    listen: str = "0.0.0.0:9002"
    #: gRPC health service (grpc.health.v1) listen address, separate so probes never queue
    #: behind ext_proc streams.
    health_listen: str = "0.0.0.0:9003"
    #: Address of the HTTP port (``pointsman up``: 127.0.0.1).
    http_host: str = "0.0.0.0"
    #: HTTP port for /metrics, /healthz and /readyz.
    http_port: int = Field(default=9102, ge=0, le=65535)
    #: Model names that ask Pointsman to choose the model.
    auto_models: list[str] = Field(default_factory=lambda: ["auto", "MoM"])
    #: Where auto names go when no classifier is configured or it fails open.
    default_model: str | None = None
    #: Deadline of one pick request-reply, in milliseconds (well inside Envoy's message_timeout).
    pick_timeout_ms: float = Field(default=50.0, gt=0)
    #: How long a request may wait in the picker's flow control when its pool is saturated (sent
    #: with each pick; the shim waits ``pick_timeout_ms`` plus this). 0: no waiting, a saturated
    #: pool sheds low priorities at once. Envoy's ext_proc ``message_timeout`` must exceed the
    #: sum (``pointsman up`` raises it; the shipped manifests use 1 s).
    queue_wait_ms: float = Field(default=700.0, ge=0)
    #: What to do when the picker does not answer in time or NATS is down: ``fail-open`` lets
    #: Envoy's own route and load balancing serve the request; ``fail-closed`` answers 503.
    failure_mode: FailureMode = "fail-open"
    #: How many endpoints to send Envoy (primary plus fallbacks, as an ordered comma list in the
    #: header and the ``envoy.lb`` metadata). Pointsman's Envoy config (override_host load
    #: balancing) sends the request to the first and a retry to the next; a gateway that reads a
    #: single address (an ORIGINAL_DST cluster) needs 1.
    max_endpoints: int = Field(default=2, ge=1, le=16)
    #: Largest request body accepted, in bytes (413 above). Envoy's own buffer limit must be larger.
    max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    #: Request body mode expected when Envoy does not say (Envoy >= 1.33 says, per stream).
    body_mode: Literal["BUFFERED", "FULL_DUPLEX_STREAMED"] = "BUFFERED"
    #: Send the prompt text to the picker for prefix-cache affinity.
    send_prompt: bool = True
    classifier: ClassifierCall = Field(default_factory=ClassifierCall)
    #: Publish a completion event (usage, endpoint, status) for every routed response.
    publish_completions: bool = True
    #: An endpoint no collector snapshot has named for this long is no longer routed to (the
    #: config's static ``pools`` always are).
    forget_after_s: float = Field(default=300.0, gt=0)
    tls: ExtProcTls = Field(default_factory=ExtProcTls)
    #: Which pools serve the Responses and Messages APIs natively, which get them translated.
    apis: Apis = Field(default_factory=Apis)
    #: The Responses API's stored responses (``GET``/``DELETE``, ``previous_response_id``).
    responses: ResponsesStore = Field(default_factory=ResponsesStore)
    #: Model-name rewrites with weighted targets (InferenceModelRewrite in the config file);
    #: those the collector reads from Kubernetes come after them.
    model_rewrites: list[ModelRewriteConfig] = Field(default_factory=list)


def safety_blocks(classifier: object) -> bool:
    """Whether a classifier with this config section (the raw ``classifier`` mapping) blocks any
    request: jailbreak detection on with ``action: block`` (globally or for one category), or
    PII detection on with some model not allowed every entity type. Mirrors the classifier's
    defaults (jailbreak on, block; PII on, every type allowed); a test holds the two together."""
    section = classifier if isinstance(classifier, dict) else {}

    def sub(mapping: object, key: str) -> dict[str, Any]:
        value = mapping.get(key) if isinstance(mapping, dict) else None
        return value if isinstance(value, dict) else {}

    jailbreak = sub(section, "jailbreak")
    if jailbreak.get("action", "block") == "block":
        if jailbreak.get("enabled", True) is not False:
            return True
        for category in sub(section, "categories").values():
            if sub(category, "jailbreak").get("enabled") is True:
                return True
    pii = sub(section, "pii")
    if pii.get("enabled", True) is not False:
        allowed = [pii.get("default_allowed", ["*"])]
        allowed += [m.get("pii_allowed") for m in sub(section, "models").values() if m]
        if any(isinstance(a, list) and "*" not in a for a in allowed):
            return True
    return False

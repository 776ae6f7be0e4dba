"""The plugin contracts of the scheduling pipeline (in the spirit of the llm-d scheduler).

A profile runs ``filters -> weighted scorers -> picker`` over a pool's candidates:

* a :class:`Filter` returns a subset of the candidates, in their order, and has no side effects;
* a :class:`Scorer` returns one score per candidate in [0, 1] (the pipeline clamps anything
  else) and declares a :class:`Category`, so a profile can be reasoned about;
* a :class:`Picker` orders the scored candidates into the result, best first.

Every plugin is a pure function of the :class:`Cycle` (the request, the instant, read-only
views of shared state) and the candidates. A plugin that needs state to remember a decision
(prefix index, sessions) implements :class:`Observer` and *returns* the updates; the replica's
shell applies them, locally and to the shared store.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import msgspec

from pointsman_picker.core.latency import LatencySample, Prediction
from pointsman_picker.core.types import Endpoint, Request


class Category(enum.Enum):
    """What a scorer optimises: keep related requests together, or spread load."""

    AFFINITY = "affinity"
    DISTRIBUTION = "distribution"
    BALANCE = "balance"


# --- updates a decision asks the shell to remember (also the shared-state wire format) ----


class Assigned(msgspec.Struct, frozen=True, tag="assigned"):
    """A request went to ``endpoint`` at ``at``: pending load until the next scrape."""

    request_id: str
    pool: str
    endpoint: str
    at: float


class PrefixStored(msgspec.Struct, frozen=True, tag="prefix"):
    """``endpoint`` now likely caches these prompt blocks (chained hashes, in prompt order)."""

    pool: str
    endpoint: str
    hashes: tuple[int, ...]
    capacity: int


class SessionBound(msgspec.Struct, frozen=True, tag="session"):
    """Requests of ``session`` should keep going to ``endpoint`` until ``at + ttl_s``."""

    pool: str
    session: str
    endpoint: str
    at: float
    ttl_s: float


#: ``LatencySample`` (:mod:`pointsman_picker.core.latency`): one completed request to learn from.
Update = Assigned | PrefixStored | SessionBound | LatencySample


# --- what plugins can read ----------------------------------------------------------------


class PrefixLookup(Protocol):
    def match(self, hashes: Sequence[int]) -> Mapping[str, int]:
        """Per endpoint, how many leading blocks of ``hashes`` it likely holds (absent = 0)."""
        ...


class _NoPrefix:
    def match(self, hashes: Sequence[int]) -> Mapping[str, int]:
        return {}


class LatencyLookup(Protocol):
    def predict(self, pool: str, endpoint: str, x: Sequence[float]) -> Prediction:
        """Predicted TTFT and TPOT of ``endpoint`` for features ``x`` (``None``: unknown)."""
        ...


@dataclass(frozen=True, slots=True)
class Session:
    endpoint: str
    at: float


@dataclass(slots=True)
class Cycle:
    """One scheduling cycle: the request, the instant, and read-only state views.

    ``memo`` lets plugins share derived data within the cycle (the prompt's block hashes are
    computed once even when the scorer and its observer both need them).
    """

    request: Request
    now: float
    rng: random.Random
    prefix: PrefixLookup = field(default_factory=_NoPrefix)
    sessions: Callable[[str], Session | None] = lambda _s: None
    memo: dict[object, object] = field(default_factory=dict)
    #: The latency predictor (``None``: none kept; the latency plugins then stay neutral).
    latency: LatencyLookup | None = None
    #: An endpoint's prefill backlog in thousands of tokens (``core/latency.py``'s
    #: :class:`~pointsman_picker.core.latency.Backlog`), a feature of the predictor.
    backlog: Callable[[str], float] = lambda _address: 0.0


# --- the plugin contracts -----------------------------------------------------------------


@runtime_checkable
class Filter(Protocol):
    def filter(self, cycle: Cycle, candidates: Sequence[Endpoint]) -> list[Endpoint]:
        """A subset of ``candidates`` (same order); never adds an endpoint."""
        ...


@runtime_checkable
class Scorer(Protocol):
    @property
    def category(self) -> Category: ...

    def score(self, cycle: Cycle, candidates: Sequence[Endpoint]) -> list[float]:
        """One score in [0, 1] per candidate, higher is better."""
        ...


@runtime_checkable
class Picker(Protocol):
    def pick(
        self, cycle: Cycle, candidates: Sequence[Endpoint], scores: Sequence[float], limit: int
    ) -> list[Endpoint]:
        """At most ``limit`` candidates, best first (primary, then fallbacks)."""
        ...


@runtime_checkable
class Admitter(Protocol):
    def admit(self, cycle: Cycle, candidates: Sequence[Endpoint]) -> str | None:
        """``None`` to go on scheduling; else the reason to refuse the request (a 429)."""
        ...


@runtime_checkable
class Observer(Protocol):
    def routed(self, cycle: Cycle, endpoint: Endpoint) -> list[Update]:
        """What to remember now that the request goes to ``endpoint``."""
        ...

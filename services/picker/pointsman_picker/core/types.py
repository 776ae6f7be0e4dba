"""Plain data the scheduling core works on: endpoints as seen at one instant, and the request.

Everything here is immutable, so a plugin can never change what the next plugin sees, and a
decision can be replayed from its inputs in a test.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One engine replica of a pool, as the picker sees it when it decides.

    ``waiting``, ``running`` and ``kv_usage`` come from the endpoint's last snapshot;
    ``pending`` counts the requests pickers assigned to it *after* that snapshot was scraped
    (not yet visible in its metrics), so scorers can correct stale numbers; ``freed`` counts the
    requests assigned *before* it that completed since (in its metrics, but gone).
    """

    address: str
    healthy: bool = True
    scraped_at: float = 0.0
    waiting: int = 0
    running: int = 0
    kv_usage: float = 0.0
    pending: int = 0
    freed: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)
    lora_running: tuple[str, ...] = ()
    lora_waiting: tuple[str, ...] = ()
    max_lora: int = 0
    #: Milliseconds of prompt work queued on the endpoint behind the prompt it computes now: what
    #: this replica sent it before its newest request and it has presumably not computed yet
    #: (the latency predictor's fluid prefill backlog at the pool's learnt prefill speed; 0
    #: without the predictor). Read by ``saturation.max_prefill_ms``.
    prefill_ms: float = 0.0
    #: The engine's KV-cache capacity in tokens (its cache config's block size times its number
    #: of blocks, as the collector read them; 0: not reported).
    kv_tokens: int = 0

    @property
    def queue(self) -> int:
        """Waiting requests, counting the pending ones as queued (the pessimistic guess)."""
        return self.waiting + self.pending

    @property
    def backlog(self) -> int:
        """The queue as saturation reads it: the scrape's waiting requests, plus those sent since,
        less those that have completed since (each made room for one), as if the engine were
        full at the scrape. A fast engine whose answers come back as quickly as requests are
        sent stays unsaturated; a burst onto it counts whole."""
        return max(0, self.waiting + self.pending - self.freed)

    @property
    def load(self) -> int:
        """Running requests plus those assigned since the snapshot."""
        return self.running + self.pending


@dataclass(frozen=True, slots=True)
class Request:
    """What the core knows of one request.

    ``model`` is the name the client asked for (a pool, or a LoRA adapter served by one);
    ``adapter`` is set when it names an adapter. ``priority`` is already resolved from the
    objective or priority header.
    """

    request_id: str
    model: str
    pool: str
    adapter: str | None = None
    prompt: str | None = None
    session: str | None = None
    priority: int = 0
    objective: str | None = None
    subset: frozenset[str] | None = None
    max_endpoints: int = 3
    debug: bool = False
    #: The request's latency objective in milliseconds (``None``: none), see ``core/slo.py``.
    slo_ttft_ms: float | None = None
    slo_tpot_ms: float | None = None

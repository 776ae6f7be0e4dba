"""Flow control's decisions as pure functions: who is served next, from where a tenant starts,
what a request costs, and whether it may wait at all.

When a pool is saturated, requests wait in the picker instead of being shed. Which one goes
next when capacity frees is decided here, from plain values:

* **Priority bands first.** A higher priority (objective or ``x-pointsman-priority``) is always
  served before a lower one.
* **Within a band, the Virtual Token Counter** (Sheng et al., "Fairness in Serving Large
  Language Models", OSDI 2024). Each tenant has a counter of the service it received, in
  tokens: input tokens plus ``output`` weight times output tokens. The waiting tenant with the
  lowest counter goes next, its oldest request first. So a tenant that sends ten times the load
  gets no more than an equal share of the tokens while both wait.
* **No banked credit.** A tenant that (re)joins the queue starts from at least the lowest
  counter of the tenants waiting (or, when nobody waits, the counter of the last tenant served):
  time away, or being new, does not buy a burst ahead of the others.
* **Ties** (a returning tenant lifted to exactly the backlogged tenant's counter) go to the
  tenant with fewer requests waiting, then the oldest: the tenant that just came back is served
  next rather than after one more of the backlogged tenant's requests.

Nothing here knows about asyncio, Redis or the bus: :mod:`pointsman_picker.flow` is the shell.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

#: Reasons a request leaves flow control without being served (``x-pointsman-drop-reason``).
QUEUE_FULL = "queue_full"
TENANT_QUEUE_FULL = "tenant_queue_full"
TTL_EXPIRED = "ttl_expired"


@dataclass(frozen=True, slots=True)
class Weights:
    """Tokens of service: ``input`` per prompt token, ``output`` per generated token (decode
    costs an engine more per token than prefill, so output usually weighs more)."""

    input: float = 1.0
    output: float = 2.0


@dataclass(frozen=True, slots=True)
class Head:
    """The oldest waiting request of one (priority band, tenant) queue."""

    priority: int
    tenant: str
    #: Arrival order in this replica (smaller = older).
    seq: int
    #: Requests waiting in this (band, tenant) queue: the tie-break before age.
    queued: int = 0


def cost(prompt_tokens: float, completion_tokens: float, weights: Weights) -> float:
    """The service one request received, in weighted tokens (negative counts read as 0)."""
    return weights.input * max(prompt_tokens, 0.0) + weights.output * max(completion_tokens, 0.0)


def estimate_prompt_tokens(prompt: str | None) -> float:
    """A prompt's tokens before the engine counted them: about 4 UTF-8 bytes per token (the
    completion event corrects it with the engine's count)."""
    if not prompt:
        return 0.0
    return len(prompt.encode("utf-8", "surrogatepass")) / 4.0


def lifted(own: float | None, waiting: Iterable[float], last_served: float | None) -> float:
    """The counter of a tenant whose queue was empty and now gets a request.

    ``own`` is its counter (``None``: never seen), ``waiting`` the counters of the tenants that
    have requests waiting now, ``last_served`` the counter of the tenant served last (the floor
    when nobody waits). The result is ``own`` raised to that floor, never lowered.
    """
    floor = min(waiting, default=None)
    if floor is None:
        floor = last_served
    if own is None:
        return floor if floor is not None else 0.0
    return own if floor is None else max(own, floor)


def next_head(heads: Sequence[Head], counters: Mapping[str, float]) -> Head | None:
    """The request to dispatch: highest band, then lowest tenant counter, then the shorter
    queue, then oldest."""
    best: Head | None = None
    best_key: tuple[int, float, int, int] | None = None
    for h in heads:
        key = (-h.priority, counters.get(h.tenant, 0.0), h.queued, h.seq)
        if best_key is None or key < best_key:
            best, best_key = h, key
    return best


def admit(
    queued: int, max_queued: int, tenant_queued: int, max_queued_per_tenant: int
) -> str | None:
    """Whether one more request may wait: ``None``, or the reason it is turned away. The
    per-tenant bound keeps a heavy tenant from filling the queue the light ones need."""
    if queued >= max_queued:
        return QUEUE_FULL
    if tenant_queued >= max_queued_per_tenant:
        return TENANT_QUEUE_FULL
    return None


def tenant_of(headers: Mapping[str, str], header: str, default: str) -> str:
    """The request's tenant: the configured header's value, or ``default`` without one."""
    value = headers.get(header, "").strip()
    return value or default

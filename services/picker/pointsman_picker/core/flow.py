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

* **Capacity held back for a tenant under its share** (:class:`Reserve`, off by default). VTC
  orders the queue, but a light tenant's request still waits for a batch slot to free and then
  for the engine's step in progress (a heavy tenant's prefill). With a reserve, a tenant *over*
  its fair share of the recent service (:class:`RecentService`) may not take an endpoint's last
  ``slots`` batch slots, and is not sent to an endpoint whose prefill backlog exceeds
  ``backlog_ktokens`` (one prefill at a time, so a step in progress is short); a tenant *under*
  its share, while another is over, goes to the endpoint whose prefill backlog plus its own
  uncached prompt is the least (:func:`restriction`). With one active tenant nothing is held
  back.

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


def _key(h: Head, counters: Mapping[str, float]) -> tuple[int, float, int, int]:
    return (-h.priority, counters.get(h.tenant, 0.0), h.queued, h.seq)


def next_head(heads: Sequence[Head], counters: Mapping[str, float]) -> Head | None:
    """The request to dispatch: highest band, then lowest tenant counter, then the shorter
    queue, then oldest."""
    best: Head | None = None
    best_key: tuple[int, float, int, int] | None = None
    for h in heads:
        key = _key(h, counters)
        if best_key is None or key < best_key:
            best, best_key = h, key
    return best


def ordered_heads(heads: Sequence[Head], counters: Mapping[str, float]) -> list[Head]:
    """Every head in :func:`next_head`'s order (the first is :func:`next_head`'s): with a
    :class:`Reserve`, the first whose tenant may take the capacity left goes."""
    return sorted(heads, key=lambda h: _key(h, counters))


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


# --- capacity held back for tenants under their share ---------------------------------------------


@dataclass(frozen=True, slots=True)
class Reserve:
    """``flow_control.reserve``: what a tenant over its fair share may not take."""

    #: Per endpoint, the last batch slots (of ``saturation.max_in_flight``) that only a tenant
    #: at or under its share may take; 0: none.
    slots: int = 0
    #: A tenant over its share is not sent to an endpoint whose prefill backlog (thousand
    #: uncached prompt tokens sent and presumably not computed yet) exceeds this; ``None``: no
    #: such bound.
    backlog_ktokens: float | None = None
    #: Half-life of the recent service (seconds), and how long a tenant counts as active after
    #: it was last served.
    window_s: float = 10.0

    @property
    def enabled(self) -> bool:
        return self.slots > 0 or self.backlog_ktokens is not None


@dataclass(frozen=True, slots=True)
class Restriction:
    """Where one request may go, beyond the pool's saturation thresholds."""

    #: Requests in flight at which an endpoint is full for this request (``None``: the pool's
    #: ``max_in_flight``).
    max_in_flight: int | None = None
    #: Prefill backlog (thousand tokens) above which an endpoint is full for it (``None``: none).
    max_backlog_ktokens: float | None = None
    #: Go to the endpoint whose prefill backlog plus this prompt's uncached tokens is least (a
    #: tenant under its share while another is over: its request should start soonest).
    soonest: bool = False


class RecentService:
    """Per tenant, the weighted tokens served in the recent past: each charge decays with
    half-life ``window_s``. Pure: the caller passes the time. A tenant is *active* while it was
    charged within the last ``window_s`` or has requests waiting."""

    __slots__ = ("_last", "_swept", "_value", "window_s")

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._value: dict[str, tuple[float, float]] = {}
        self._last: dict[str, float] = {}
        self._swept = float("-inf")

    def value(self, tenant: str, now: float) -> float:
        found = self._value.get(tenant)
        if found is None:
            return 0.0
        v, at = found
        decay: float = 0.5 ** (max(now - at, 0.0) / self.window_s)
        return v * decay

    def charge(self, tenant: str, amount: float, now: float, *, served: bool = True) -> None:
        """Add ``amount`` tokens of service (a correction when not ``served``: the completion's
        count, which does not make the tenant active again)."""
        self._value[tenant] = (max(self.value(tenant, now) + amount, 0.0), now)
        if served:
            self._last[tenant] = now

    def active(self, now: float, waiting: Iterable[str] = ()) -> set[str]:
        found = {t for t, at in self._last.items() if now - at <= self.window_s}
        found.update(waiting)
        return found

    def standing(self, tenant: str, now: float, waiting: Iterable[str] = ()) -> tuple[bool, bool]:
        """(``tenant`` is over its share, another active tenant is): over = more than an equal
        share of the active tenants' recent service; nobody is while fewer than two are
        active."""
        active = self.active(now, waiting)
        active.add(tenant)
        if len(active) < 2:
            return False, False
        values = {t: self.value(t, now) for t in active}
        share = sum(values.values()) / len(values)
        mine = values.pop(tenant) > share
        return mine, any(v > share for v in values.values())

    def forget_idle(self, now: float) -> None:
        """Drop tenants idle for many windows (their service has decayed to nothing); looks at
        most once a window."""
        if now - self._swept < self.window_s:
            return
        self._swept = now
        old = [t for t, at in self._last.items() if now - at > 20 * self.window_s]
        for t in old:
            self._last.pop(t, None)
            self._value.pop(t, None)


def restriction(
    reserve: Reserve, max_in_flight: int, *, over: bool, contended: bool
) -> Restriction | None:
    """Where a request of a tenant may go under ``reserve``: ``over`` its share, the last
    ``slots`` of ``max_in_flight`` (when set) and endpoints with a long prefill backlog are not
    for it; under its share while another tenant is over (``contended``), it goes where it
    starts soonest; otherwise (or with the reserve off) nothing is restricted (``None``)."""
    if not reserve.enabled:
        return None
    if over:
        bound = max_in_flight - reserve.slots if max_in_flight > 0 and reserve.slots > 0 else None
        return Restriction(
            max_in_flight=None if bound is None else max(bound, 1),
            max_backlog_ktokens=reserve.backlog_ktokens,
        )
    if contended:
        return Restriction(soonest=True)
    return None

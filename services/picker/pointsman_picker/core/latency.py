"""The latency predictor: per endpoint, online, the TTFT and the time per output token.

Per pool and target, a recursive-least-squares regression (RLS, with a forgetting factor so the
model follows a fleet whose behaviour drifts) over a handful of features seen *when the request
was picked*:

* the prompt's tokens not expected in the prefix cache, and those expected in it (thousands);
* the endpoint's queue (waiting plus pending assignments) and running requests;
* its KV-cache use (0..1);
* its prefill backlog: the uncached prompt tokens (thousands) this replica sent it and it has
  not computed yet, as a fluid queue draining at the pool's learnt prefill speed
  (:class:`Backlog`). The queue and running counts miss what decides TTFT when the engine's
  batch has room: how much prompt work is ahead of the request in the same steps;
* a constant;

times, per endpoint, a running factor of how much slower or faster than the pool it is (see :class:`LatencyModel`). One
update costs about 100 float operations per target, one prediction 6: pure Python, no numpy,
cheap enough for the pick path (a pick predicts for every candidate). With no sample of the
pool at all there is no prediction (``None``), and the plugins then neither filter nor refuse.

Learning: the replica that picked a request remembers the features it saw; when the shim's
completion event for it arrives (every replica receives every completion), that replica turns
it into a :class:`LatencySample`, learns from it and shares it through the shared-state channel
(:mod:`pointsman_picker.redis_state`). Every replica applies every sample, so all replicas learn
the same model from the same stream, without shipping coefficients.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from operator import mul

import msgspec

#: Feature order of a sample's ``features`` (and of the coefficients).
FEATURES: tuple[str, ...] = (
    "bias",
    "new_prompt_ktokens",
    "cached_prompt_ktokens",
    "queue",
    "running",
    "kv_usage",
    "backlog_ktokens",
)
N_FEATURES = len(FEATURES)
#: Positions in the feature vector read outside the model: the uncached prompt, the backlog.
NEW_PROMPT = FEATURES.index("new_prompt_ktokens")
BACKLOG = FEATURES.index("backlog_ktokens")
#: Rough tokens per UTF-8 byte of prompt text (English and code average about 4 bytes a token).
BYTES_PER_TOKEN = 4.0


class LatencySample(msgspec.Struct, frozen=True, tag="latency"):
    """One completed request: what the picker saw when it chose ``endpoint``, and what came of
    it (``None``: not measured, e.g. a non-streamed answer has no TTFT of its own)."""

    pool: str
    endpoint: str
    features: tuple[float, ...]
    ttft_ms: float | None = None
    tpot_ms: float | None = None


def features(
    *,
    prompt_tokens: float,
    cached_tokens: float,
    queue: int,
    running: int,
    kv_usage: float,
    backlog_ktokens: float = 0.0,
) -> tuple[float, ...]:
    """The feature vector, in :data:`FEATURES` order."""
    cached = min(max(cached_tokens, 0.0), max(prompt_tokens, 0.0))
    new = max(prompt_tokens - cached, 0.0)
    return (
        1.0,
        new / 1000.0,
        cached / 1000.0,
        float(queue),
        float(running),
        float(kv_usage),
        max(float(backlog_ktokens), 0.0),
    )


def prompt_tokens_of(prompt: str | None) -> float:
    """A tokenizer-free estimate of the prompt's tokens (UTF-8 bytes / 4)."""
    if not prompt:
        return 0.0
    return len(prompt.encode("utf-8", "surrogatepass")) / BYTES_PER_TOKEN


class RLS:
    """Recursive least squares with exponential forgetting (``lam``) and a ridge start
    (``P = delta * I``). ``P``'s diagonal is capped so that a feature that stops varying cannot
    blow it up (the usual wind-up of forgetting RLS)."""

    __slots__ = ("cap", "lam", "n", "p", "w")

    def __init__(self, n: int = N_FEATURES, *, lam: float = 0.995, delta: float = 100.0) -> None:
        self.w = [0.0] * n
        self.p = [[delta if i == j else 0.0 for j in range(n)] for i in range(n)]
        self.lam = lam
        self.cap = delta * 10.0
        self.n = 0

    def predict(self, x: Sequence[float]) -> float:
        return float(sum(map(mul, self.w, x)))

    def update(self, x: Sequence[float], y: float) -> None:
        p = self.p
        px = [sum(map(mul, row, x)) for row in p]
        denom = self.lam + sum(map(mul, x, px))
        if denom <= 1e-12 or not math.isfinite(denom):
            return
        err = y - sum(map(mul, self.w, x))
        gain = [v / denom for v in px]
        self.w = [wi + gi * err for wi, gi in zip(self.w, gain, strict=True)]
        inv = 1.0 / self.lam
        worst = 0.0
        for i, gi in enumerate(gain):
            row = [(r - gi * pj) * inv for r, pj in zip(p[i], px, strict=True)]
            p[i] = row
            worst = max(worst, row[i])
        if worst > self.cap:
            scale = self.cap / worst
            self.p = [[v * scale for v in row] for row in p]
        self.n += 1


@dataclass(frozen=True, slots=True)
class Prediction:
    ttft_ms: float | None
    tpot_ms: float | None


class _Pair:
    __slots__ = ("rate", "tpot", "ttft")

    def __init__(self, lam: float) -> None:
        self.ttft = RLS(lam=lam)
        self.tpot = RLS(lam=lam)
        #: the smoothed prefill speed (thousand tokens/s), see :meth:`LatencyModel.prefill_rate`
        self.rate: float | None = None


class _Scale:
    """An endpoint's running means, per target, of what it took and what the pool's model
    predicted for it: their ratio is how much slower (or faster) than the pool it is."""

    __slots__ = ("n", "tpot_pred", "tpot_seen", "ttft_pred", "ttft_seen")

    def __init__(self) -> None:
        self.ttft_seen = self.ttft_pred = 0.0
        self.tpot_seen = self.tpot_pred = 0.0
        self.n = 0

    def factor(self, target: str, trust: float) -> float:
        seen: float = getattr(self, f"{target}_seen")
        pred: float = getattr(self, f"{target}_pred")
        if pred <= 1e-9 or seen <= 0:
            return 1.0
        return 1.0 + trust * (min(max(seen / pred, 0.1), 10.0) - 1.0)


class LatencyModel:
    """TTFT and TPOT (milliseconds) per endpoint: the pool's regression plus the endpoint's own
    offset.

    The slopes (what a queued request, a thousand prompt tokens, KV pressure cost) are learnt
    per pool, from every sample of every endpoint of the pool: the replicas of a pool run the
    same model server, and the pool's samples vary far more than one endpoint's do (a
    per-endpoint regression that only ever saw an empty queue would say a queue costs nothing,
    and send it everything). Each endpoint's prediction is scaled by its own factor: the ratio
    of the exponentially weighted means (rate ``scale_rate``) of what its requests took and
    what the pool's model predicted for them, shrunk towards 1 until it has ``min_samples``
    samples and bounded to [0.1, 10]: a slower replica is predicted slower. At prediction the
    load features' slopes (queue, running, KV use) are taken as at least 0 (more load never
    makes a request faster), so an extrapolation cannot invert the order of endpoints.

    ``max_endpoints`` bounds memory: the endpoints learnt longest ago are forgotten first.
    """

    def __init__(
        self,
        *,
        forgetting: float = 0.995,
        min_samples: int = 8,
        scale_rate: float = 0.05,
        max_endpoints: int = 10_000,
    ) -> None:
        self._lam = forgetting
        self.min_samples = min_samples
        self._rate = scale_rate
        self._max = max_endpoints
        self._scales: OrderedDict[tuple[str, str], _Scale] = OrderedDict()
        self._pools: dict[str, _Pair] = {}
        self.samples = 0

    def learn(self, s: LatencySample) -> bool:
        """Learn one sample; ``False`` when it was unusable (wrong shape, not finite)."""
        x = s.features
        if len(x) != N_FEATURES or not all(math.isfinite(v) for v in x):
            return False
        key = (s.pool, s.endpoint)
        off = self._scales.get(key)
        if off is None:
            off = self._scales[key] = _Scale()
            if len(self._scales) > self._max:
                self._scales.popitem(last=False)
        else:
            self._scales.move_to_end(key)
        pool = self._pools.get(s.pool)
        if pool is None:
            pool = self._pools[s.pool] = _Pair(self._lam)
        used = False
        rate = max(self._rate, 1.0 / (off.n + 1))  # a plain mean over the first samples
        for target, value in (("ttft", s.ttft_ms), ("tpot", s.tpot_ms)):
            if value is None or not math.isfinite(value) or value < 0:
                continue
            model: RLS = getattr(pool, target)
            if model.n:
                pred = max(0.0, _monotone(model.w, x))
                seen = getattr(off, f"{target}_seen")
                setattr(off, f"{target}_seen", seen + rate * (value - seen))
                was = getattr(off, f"{target}_pred")
                setattr(off, f"{target}_pred", was + rate * (pred - was))
            model.update(x, value)
            used = True
            if target == "ttft":
                _smooth_rate(pool)
        if used:
            off.n += 1
            self.samples += 1
        return used

    def predict(self, pool: str, endpoint: str, x: Sequence[float]) -> Prediction:
        shared = self._pools.get(pool)
        if shared is None:
            return Prediction(None, None)
        off = self._scales.get((pool, endpoint))
        trust = 0.0 if off is None else min(1.0, off.n / self.min_samples)
        out: list[float | None] = []
        for target, model in (("ttft", shared.ttft), ("tpot", shared.tpot)):
            if model.n == 0:
                out.append(None)
                continue
            factor = off.factor(target, trust) if off is not None else 1.0
            out.append(max(0.0, _monotone(model.w, x)) * factor)
        return Prediction(out[0], out[1])

    def coefficients(self, pool: str) -> dict[str, list[float]] | None:
        """The pool's coefficients (for debugging and the docs' examples)."""
        pair = self._pools.get(pool)
        if pair is None:
            return None
        return {"ttft": list(pair.ttft.w), "tpot": list(pair.tpot.w)}

    def prefill_rate(self, pool: str) -> float | None:
        """Thousands of uncached prompt tokens per second the pool's TTFT model implies (the
        inverse of its slope on ``new_prompt_ktokens``); ``None`` before it learnt a slope."""
        pair = self._pools.get(pool)
        return None if pair is None else pair.rate

    def forget_endpoint(self, pool: str, endpoint: str) -> None:
        self._scales.pop((pool, endpoint), None)


#: Bounds and the start value of a pool's prefill speed (thousand tokens/s) for :class:`Backlog`.
MIN_RATE, MAX_RATE, DEFAULT_RATE = 0.1, 1000.0, 8.0
#: Weight of one sample in the smoothed prefill speed: the backlog is sensitive to it (a speed
#: 10 % off costs much of the feature's worth, ``bench.scheduling.predictor_fit``), and the
#: regression's slope moves with every sample, so it is averaged over about 100.
RATE_SMOOTHING = 0.01


#: Samples before the slope is trusted for the prefill speed (the first fits are wild).
RATE_WARMUP = 32


def _smooth_rate(pair: _Pair) -> None:
    ms_per_ktoken = pair.ttft.w[1]
    if pair.ttft.n < RATE_WARMUP or not math.isfinite(ms_per_ktoken) or ms_per_ktoken <= 1e-3:
        return
    now = min(max(1000.0 / ms_per_ktoken, MIN_RATE), MAX_RATE)
    pair.rate = now if pair.rate is None else pair.rate + RATE_SMOOTHING * (now - pair.rate)


class Backlog:
    """Per endpoint, the prompt work (thousands of uncached tokens) this replica sent it and it
    has presumably not computed yet: a fluid queue that each pick adds its request's uncached
    prompt to and that drains at ``rate`` (the pool's prefill speed, thousand tokens a second,
    :meth:`LatencyModel.prefill_rate`), first come, first served as the engine computes
    prompts. Only this replica's picks count (each replica sees its share of the load; the
    predictor learns the slope from the same view). O(1) per call."""

    __slots__ = ("_max", "_q")

    def __init__(self, max_endpoints: int = 10_000) -> None:
        #: (level at ``since``, ``since``, the newest request's own work)
        self._q: OrderedDict[tuple[str, str], tuple[float, float, float]] = OrderedDict()
        self._max = max_endpoints

    def at(self, pool: str, endpoint: str, now: float, rate: float) -> float:
        """The work left: what a request sent now would find ahead of it."""
        found = self._q.get((pool, endpoint))
        if found is None:
            return 0.0
        level, since, _ = found
        return max(0.0, level - rate * max(now - since, 0.0))

    def queued(self, pool: str, endpoint: str, now: float, rate: float) -> float:
        """The work left that was sent before the newest request (first come, first served:
        it drains first). 0 once the newest request's own prompt is the one being computed
        (or all is done): a request sent now would wait for that prompt only, and then have
        an engine step to itself rather than share one with prompts queued before it."""
        found = self._q.get((pool, endpoint))
        if found is None:
            return 0.0
        return max(0.0, self.at(pool, endpoint, now, rate) - found[2])

    def add(self, pool: str, endpoint: str, ktokens: float, now: float, rate: float) -> None:
        key = (pool, endpoint)
        own = max(ktokens, 0.0)
        self._q[key] = (self.at(pool, endpoint, now, rate) + own, now, own)
        self._q.move_to_end(key)
        if len(self._q) > self._max:
            self._q.popitem(last=False)

    def forget_endpoint(self, pool: str, endpoint: str) -> None:
        self._q.pop((pool, endpoint), None)


#: The load features (queue, running, KV use, backlog): more never makes a request faster.
_LOAD = (3, 4, 5, 6)


def _monotone(w: Sequence[float], x: Sequence[float]) -> float:
    """``w . x`` with the load features' slopes taken as at least 0. (Only those: the prompt
    features are often collinear with the bias, a prompt's new and cached tokens summing to
    its length, and a fit may then balance a large bias with negative prompt slopes.)"""
    total: float = sum(map(mul, w, x))
    for i in _LOAD:
        if w[i] < 0:
            total -= w[i] * x[i]
    return total

"""The latency predictor: per endpoint, online, the TTFT and the time per output token.

Each endpoint has two recursive-least-squares regressions (RLS, with a forgetting factor so the
model follows a fleet whose behaviour drifts) over a handful of features seen *when the request
was picked*:

* the prompt's tokens not expected in the prefix cache, and those expected in it (thousands);
* the endpoint's queue (waiting plus pending assignments) and running requests;
* its KV-cache use (0..1);
* a constant.

One update costs about 100 float operations per target, one prediction 6: pure Python, no
numpy, cheap enough for the pick path (a pick predicts for every candidate). A pool-wide model
learns from every sample of the pool and answers for an endpoint with fewer than
``min_samples`` samples of its own, so a new replica is not blind; with no sample at all there
is no prediction (``None``), and the plugins then neither filter nor refuse.

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
)
N_FEATURES = len(FEATURES)
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
    *, prompt_tokens: float, cached_tokens: float, queue: int, running: int, kv_usage: float
) -> tuple[float, ...]:
    """The feature vector, in :data:`FEATURES` order."""
    cached = min(max(cached_tokens, 0.0), max(prompt_tokens, 0.0))
    new = max(prompt_tokens - cached, 0.0)
    return (1.0, new / 1000.0, cached / 1000.0, float(queue), float(running), float(kv_usage))


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
    __slots__ = ("tpot", "ttft")

    def __init__(self, lam: float) -> None:
        self.ttft = RLS(lam=lam)
        self.tpot = RLS(lam=lam)


class LatencyModel:
    """Per-endpoint and per-pool regressions of TTFT and TPOT (milliseconds).

    ``max_endpoints`` bounds memory: the endpoints learnt longest ago are forgotten first.
    """

    def __init__(
        self, *, forgetting: float = 0.995, min_samples: int = 8, max_endpoints: int = 10_000
    ) -> None:
        self._lam = forgetting
        self.min_samples = min_samples
        self._max = max_endpoints
        self._endpoints: OrderedDict[tuple[str, str], _Pair] = OrderedDict()
        self._pools: dict[str, _Pair] = {}
        self.samples = 0

    def learn(self, s: LatencySample) -> bool:
        """Learn one sample; ``False`` when it was unusable (wrong shape, not finite)."""
        x = s.features
        if len(x) != N_FEATURES or not all(math.isfinite(v) for v in x):
            return False
        key = (s.pool, s.endpoint)
        pair = self._endpoints.get(key)
        if pair is None:
            pair = self._endpoints[key] = _Pair(self._lam)
            if len(self._endpoints) > self._max:
                self._endpoints.popitem(last=False)
        else:
            self._endpoints.move_to_end(key)
        pool = self._pools.get(s.pool)
        if pool is None:
            pool = self._pools[s.pool] = _Pair(self._lam)
        used = False
        for target, value in (("ttft", s.ttft_ms), ("tpot", s.tpot_ms)):
            if value is None or not math.isfinite(value) or value < 0:
                continue
            getattr(pair, target).update(x, value)
            getattr(pool, target).update(x, value)
            used = True
        if used:
            self.samples += 1
        return used

    def _one(self, own: RLS | None, pool: RLS | None, x: Sequence[float]) -> float | None:
        model = own if own is not None and own.n >= self.min_samples else pool
        if model is None or model.n == 0:
            return None
        return max(0.0, model.predict(x))

    def predict(self, pool: str, endpoint: str, x: Sequence[float]) -> Prediction:
        pair = self._endpoints.get((pool, endpoint))
        shared = self._pools.get(pool)
        return Prediction(
            self._one(pair.ttft if pair else None, shared.ttft if shared else None, x),
            self._one(pair.tpot if pair else None, shared.tpot if shared else None, x),
        )

    def coefficients(self, pool: str, endpoint: str) -> dict[str, list[float]] | None:
        """The endpoint's coefficients (for debugging and the docs' examples)."""
        pair = self._endpoints.get((pool, endpoint))
        if pair is None:
            return None
        return {"ttft": list(pair.ttft.w), "tpot": list(pair.tpot.w)}

    def forget_endpoint(self, pool: str, endpoint: str) -> None:
        self._endpoints.pop((pool, endpoint), None)

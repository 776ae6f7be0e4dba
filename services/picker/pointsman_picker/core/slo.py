"""A request's latency objective (SLO) and the predicted latency of each candidate for it.

The SLO comes from the request's headers, ours or llm-d's names (the first found wins)::

    x-pointsman-slo-ttft-ms / x-llm-d-slo-ttft-ms   time to first token, milliseconds
    x-pointsman-slo-tpot-ms / x-llm-d-slo-tpot-ms   time per output token, milliseconds

or, for a header left out, from the request's objective (``picker.objectives.NAME.slo_ttft_ms``
and ``slo_tpot_ms``). A malformed, non-positive or non-finite value counts as absent.

:func:`predictions` asks the predictor once per cycle for every candidate (memoised in the
cycle, so the scorer, the filter and the admission step share the work) and :func:`meets` says
whether a prediction keeps to the SLO.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from pointsman_picker.core.framework import Cycle
from pointsman_picker.core.latency import Prediction, features, prompt_tokens_of
from pointsman_picker.core.prefix import block_hashes
from pointsman_picker.core.types import Endpoint

TTFT_HEADERS = ("x-pointsman-slo-ttft-ms", "x-llm-d-slo-ttft-ms")
TPOT_HEADERS = ("x-pointsman-slo-tpot-ms", "x-llm-d-slo-tpot-ms")
#: The prefix-cache scorer's defaults: the same blocks (and the same memo entry) as it uses.
BLOCK_SIZE = 64
MAX_BLOCKS = 256

_UNKNOWN = Prediction(None, None)


def _ms(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        v = float(value.strip())
    except ValueError:
        return None
    return v if math.isfinite(v) and v > 0 else None


def slo_of(
    headers: Mapping[str, str],
    objective: str | None,
    table: Mapping[str, tuple[float | None, float | None]],
) -> tuple[float | None, float | None]:
    """(TTFT, TPOT) objective in ms of a request: its headers, then its objective's config."""
    ttft = next((v for n in TTFT_HEADERS if (v := _ms(headers.get(n))) is not None), None)
    tpot = next((v for n in TPOT_HEADERS if (v := _ms(headers.get(n))) is not None), None)
    if (ttft is None or tpot is None) and objective is not None:
        cfg_ttft, cfg_tpot = table.get(objective, (None, None))
        ttft = ttft if ttft is not None else cfg_ttft
        tpot = tpot if tpot is not None else cfg_tpot
    return ttft, tpot


def feature_vector(cycle: Cycle, endpoint: Endpoint) -> tuple[float, ...]:
    """What the predictor is asked (and later taught) for ``endpoint`` in this cycle."""
    req = cycle.request
    key = ("latency-prompt", BLOCK_SIZE, MAX_BLOCKS)
    found = cycle.memo.get(key)
    if isinstance(found, tuple):
        tokens, hashes = found
    else:
        tokens = prompt_tokens_of(req.prompt)
        hkey = ("prefix-hashes", BLOCK_SIZE, MAX_BLOCKS)
        cached_hashes = cycle.memo.get(hkey)
        if isinstance(cached_hashes, tuple):
            hashes = cached_hashes
        else:
            hashes = block_hashes(
                req.prompt or "", block_size=BLOCK_SIZE, max_blocks=MAX_BLOCKS, seed=req.model
            )
            cycle.memo[hkey] = hashes
        cycle.memo[key] = (tokens, hashes)
    cached = 0.0
    if hashes:
        mkey = ("prefix-match", BLOCK_SIZE, MAX_BLOCKS)  # shared with the prefix-cache scorer
        m = cycle.memo.get(mkey)
        if m is None:
            m = cycle.memo[mkey] = cycle.prefix.match(hashes)
        matched = int(m.get(endpoint.address, 0))  # type: ignore[attr-defined]
        # The index sees the first MAX_BLOCKS blocks only: a longer prompt is taken to hit in
        # the same proportion as its hashed part.
        cached = tokens * matched / len(hashes)
    return features(
        prompt_tokens=tokens,
        cached_tokens=cached,
        queue=endpoint.queue,
        running=endpoint.load,
        kv_usage=endpoint.kv_usage,
        backlog_ktokens=cycle.backlog(endpoint.address),
    )


def predictions(cycle: Cycle, candidates: Sequence[Endpoint]) -> list[Prediction]:
    """The predicted TTFT and TPOT of each candidate (unknown without a predictor)."""
    model = cycle.latency
    if model is None:
        return [_UNKNOWN] * len(candidates)
    cache = cycle.memo.get("latency-predictions")
    if not isinstance(cache, dict):
        cache = {}
        cycle.memo["latency-predictions"] = cache
    out = []
    pool = cycle.request.pool
    for e in candidates:
        p = cache.get(e.address)
        if p is None:
            p = cache[e.address] = model.predict(pool, e.address, feature_vector(cycle, e))
        out.append(p)
    return out


def meets(p: Prediction, ttft_ms: float | None, tpot_ms: float | None, margin: float) -> bool:
    """The prediction keeps to the SLO with ``margin`` (0.1 = 10% headroom) to spare; an unknown
    prediction is given the benefit of the doubt."""
    scale = 1.0 - margin
    if ttft_ms is not None and p.ttft_ms is not None and p.ttft_ms > ttft_ms * scale:
        return False
    return not (tpot_ms is not None and p.tpot_ms is not None and p.tpot_ms > tpot_ms * scale)


def headroom(p: Prediction, ttft_ms: float | None, tpot_ms: float | None) -> float | None:
    """The smaller relative headroom of the two objectives (1 = predicted instant, 0 = exactly
    at the SLO, negative = misses it); ``None`` when nothing can be judged."""
    rooms = []
    if ttft_ms is not None and p.ttft_ms is not None:
        rooms.append(1.0 - p.ttft_ms / ttft_ms)
    if tpot_ms is not None and p.tpot_ms is not None:
        rooms.append(1.0 - p.tpot_ms / tpot_ms)
    return min(rooms) if rooms else None

"""The request streams bench/scheduling replays: each a list of :class:`Req` (send time, body,
tenant), deterministic for a seed, so every router gets the same requests at the same instants.

* ``shared-prefix``: groups of requests sharing a long document (RAG-like), Poisson arrivals;
* ``mooncake``: the Mooncake conversation trace (arrivals, lengths, prefix block hashes mapped
  to fixed filler text so the cache-hit pattern is exact), time-compressed to the rate;
* ``azure``: mixed prompt lengths: the Azure LLM inference traces (conversation and code,
  2023-11-16), their context and generated token counts in trace order, unique prompts (the
  traces carry no prefix information), Poisson arrivals at the rate;
* ``tenants``: two tenants (``Authorization: Bearer heavy`` / ``light``) at 10:1 offered load,
  Azure conversation lengths;
* ``auto``: ``model: auto`` requests, Azure conversation lengths (the model is chosen by the
  router: only Pointsman's rows can run it).
"""

from __future__ import annotations

import csv
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

MODEL = "bench-model"
_REPO = Path(__file__).resolve().parents[2]


def _traces() -> Path:
    """``$POINTSMAN_TRACES``, else the first ``shared/data/traces`` found beside the checkout
    (the main checkout's sibling, a worktree's ``shared/``, or two levels up)."""
    if os.environ.get("POINTSMAN_TRACES"):
        return Path(os.environ["POINTSMAN_TRACES"])
    for root in (_REPO / "shared", _REPO.parent / "shared", _REPO.parent.parent / "shared"):
        if (root / "data" / "traces").is_dir():
            return root / "data" / "traces"
    return _REPO.parent / "shared" / "data" / "traces"


DATA = _traces()
MOONCAKE = DATA / "mooncake"
AZURE = DATA / "azure_2023"
SYSTEM = "You are a helpful assistant. Answer from the document."
#: The simulators' context (8192 tokens) less room for the output.
MAX_PROMPT_TOKENS = 7 * 512
WORKLOADS = ("shared-prefix", "mooncake", "azure", "tenants", "auto")


@dataclass(frozen=True)
class Req:
    at: float
    body: bytes
    group: int
    tenant: str = ""
    #: prompt tokens (about: 4 characters a token) and the output asked, for fairness figures
    prompt_tokens: int = 0
    max_tokens: int = 0
    headers: dict[str, str] = field(default_factory=dict)


def words(rng: random.Random, chars: int) -> str:
    out: list[str] = []
    n = 0
    while n < chars:
        w = f"w{rng.randrange(36**4):x}"
        out.append(w)
        n += len(w) + 1
    return " ".join(out)[:chars]


def body(document: str, question: str, max_tokens: int, model: str = MODEL) -> bytes:
    """One chat turn: a short fixed system prompt, then the (shared) document and the question
    in the user message, as in retrieval-augmented chat. Some routers look only at the last
    user message; the shared prefix is there, so every router can see it."""
    return json.dumps(
        {
            "model": model,
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"{document}\n\n{question}"},
            ],
            "max_tokens": max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()


def poisson_arrivals(rng: random.Random, rate: float, duration: float) -> list[float]:
    """Arrival times of a Poisson process at ``rate``/s over ``duration`` s, drawn from ``rng``."""
    times: list[float] = []
    t = rng.expovariate(rate)
    while t < duration:
        times.append(t)
        t += rng.expovariate(rate)
    return times


def shared_prefix(
    rate: float, duration: float, *, groups: int, prefix_tokens: int, question_tokens: int,
    max_tokens: int, seed: int,
) -> list[Req]:  # fmt: skip
    rng = random.Random(seed)
    docs = [f"[group {g}] " + words(rng, prefix_tokens * 4) for g in range(groups)]
    reqs: list[Req] = []
    for i, t in enumerate(poisson_arrivals(random.Random(seed + 1), rate, duration)):
        g = rng.randrange(groups)
        user = f"user {i}: " + words(rng, question_tokens * 4)
        reqs.append(
            Req(t, body(docs[g], user, max_tokens), g, prompt_tokens=prefix_tokens +
                question_tokens, max_tokens=max_tokens)
        )  # fmt: skip
    return reqs


def mooncake(rate: float, duration: float, *, max_tokens_cap: int, seed: int) -> list[Req]:
    """The Mooncake conversation trace, time-compressed to ``rate``, lengths capped to fit."""
    path = next((p for p in sorted(MOONCAKE.glob("*conversation*")) if p.is_file()), None)
    if path is None:
        raise SystemExit(f"no Mooncake conversation trace under {MOONCAKE}")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows.sort(key=lambda r: r["timestamp"])
    span_s = (rows[-1]["timestamp"] - rows[0]["timestamp"]) / 1000 or 1.0
    native = len(rows) / span_s
    scale = native / rate  # trace seconds per replay second
    blocks: dict[int, str] = {}
    rng = random.Random(seed)
    reqs: list[Req] = []
    t0 = rows[0]["timestamp"]
    for row in rows:
        at = (row["timestamp"] - t0) / 1000 * scale
        if at >= duration:
            break
        # 512-token blocks of 2048 chars; cap prompts to what the simulator accepts (8192).
        ids = row["hash_ids"][:7]
        text = "".join(blocks.setdefault(h, words(random.Random(h), 2048)) for h in ids)
        rest = min(row["input_length"], MAX_PROMPT_TOKENS) - 512 * len(ids)
        if rest > 0:
            text += words(rng, rest * 4)
        out = max(1, min(row["output_length"], max_tokens_cap))
        reqs.append(
            Req(at, body(text, "Continue the conversation.", out), ids[0] if ids else -1,
                prompt_tokens=min(row["input_length"], MAX_PROMPT_TOKENS), max_tokens=out)
        )  # fmt: skip
    return reqs


def azure_lengths(kind: str) -> list[tuple[int, int]]:
    """(context tokens, generated tokens) of the Azure trace ``conv`` or ``code``, in order."""
    path = AZURE / f"AzureLLMInferenceTrace_{kind}.csv"
    if not path.is_file():
        raise SystemExit(f"no Azure trace at {path}")
    with path.open() as f:
        return [(int(r["ContextTokens"]), int(r["GeneratedTokens"])) for r in csv.DictReader(f)]


def _unique(
    rng: random.Random, at: float, i: int, prompt: int, out: int, max_tokens_cap: int,
    *, tenant: str = "", model: str = MODEL,
) -> Req:  # fmt: skip
    prompt = max(8, min(prompt, MAX_PROMPT_TOKENS))
    out = max(1, min(out, max_tokens_cap))
    text = f"request {i} " + words(rng, prompt * 4)
    headers = {"authorization": f"Bearer {tenant}"} if tenant else {}
    return Req(at, body(text, "Answer briefly.", out, model), -1, tenant, prompt, out, headers)


def azure(rate: float, duration: float, *, max_tokens_cap: int, seed: int) -> list[Req]:
    """Mixed lengths: the conversation and code traces interleaved (both in trace order, code
    every third request as in the traces' relative volume), Poisson arrivals at ``rate``."""
    conv, code = azure_lengths("conv"), azure_lengths("code")
    rng = random.Random(seed)
    reqs: list[Req] = []
    for i, t in enumerate(poisson_arrivals(random.Random(seed + 1), rate, duration)):
        prompt, out = code[i // 3 % len(code)] if i % 3 == 2 else conv[i % len(conv)]
        reqs.append(_unique(rng, t, i, prompt, out, max_tokens_cap))
    return reqs


def tenants(
    rate: float, duration: float, *, max_tokens_cap: int, seed: int, ratio: float = 10.0,
    only: str | None = None,
) -> list[Req]:  # fmt: skip
    """Two tenants, ``heavy`` at ``ratio`` times ``light``'s rate (``rate`` is the sum), each
    Poisson, conversation lengths. ``only``: keep one tenant's requests (its unloaded run)."""
    conv = azure_lengths("conv")
    rng = random.Random(seed)
    reqs: list[Req] = []
    i = 0
    for tenant, share in (("heavy", ratio / (ratio + 1)), ("light", 1 / (ratio + 1))):
        for t in poisson_arrivals(random.Random(f"{seed}-{tenant}"), rate * share, duration):
            prompt, out = conv[i % len(conv)]
            reqs.append(_unique(rng, t, i, prompt, out, max_tokens_cap, tenant=tenant))
            i += 1
    reqs.sort(key=lambda r: r.at)
    return [r for r in reqs if only is None or r.tenant == only]


def auto(rate: float, duration: float, *, max_tokens_cap: int, seed: int) -> list[Req]:
    """``model: auto`` requests with conversation lengths, Poisson arrivals."""
    conv = azure_lengths("conv")
    rng = random.Random(seed)
    reqs: list[Req] = []
    for i, t in enumerate(poisson_arrivals(random.Random(seed + 1), rate, duration)):
        prompt, out = conv[i % len(conv)]
        reqs.append(_unique(rng, t, i, prompt, out, max_tokens_cap, model="auto"))
    return reqs

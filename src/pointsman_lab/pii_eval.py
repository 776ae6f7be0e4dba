"""``pointsman eval pii FILE [--json]``: entity-level precision, recall and F1 of the PII detectors.

The file is Presidio's JSON format (a list of ``{"full_text", "spans": [{"entity_type",
"start_position", "end_position", ...}]}``, as ``../shared/data/pii/generated_3000.json``).
The detectors are those the classifier runs: the pattern and checksum recognisers and the PII
token head on the shared encoder (or a configured ``pii.model``), merged as the service merges
them.

**Types.** Gold and found types are compared after :func:`normalise`: Presidio's ``GPE``,
``STREET_ADDRESS`` and ``ZIP_CODE`` (and the pattern recogniser's ``STREET_ADDRESS``) count as
``LOCATION``. Gold types no detector finds (``AGE``, ``TITLE``, ``NRP``, ``US_DRIVER_LICENSE``
in Presidio's data) are listed apart and left out of the totals.

**Matching rule** (``--rule``, default ``overlap``): a found span matches a gold span of the same
type when their common characters are at least half of the *longer* of the two (each span
matches at most one other; pairs with the most overlap first). ``exact``: same type, same start
and end. A found span without a match is a false positive, a gold span without one a false
negative. Totals are micro-averaged over the detected types.

``--json`` prints ``{"f1", "precision", "recall", "per_type": {TYPE: {"precision", "recall",
"f1", "support", "found"}}, ...}`` as the last line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

#: Presidio and common NER names -> the names the classifier reports and policies list.
ALIASES = {
    "GPE": "LOCATION",
    "LOC": "LOCATION",
    "STREET_ADDRESS": "LOCATION",
    "ZIP_CODE": "LOCATION",
    "ADDRESS": "LOCATION",
    "PER": "PERSON",
    "ORG": "ORGANIZATION",
    "DATE": "DATE_TIME",
    "TIME": "DATE_TIME",
}


def normalise(entity_type: str) -> str:
    t = entity_type.upper()
    return ALIASES.get(t, t)


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    entity_type: str


def _overlap(a: Span, b: Span) -> int:
    return max(0, min(a.end, b.end) - max(a.start, b.start))


def matches(
    gold: Sequence[Span], found: Sequence[Span], rule: str = "overlap"
) -> list[tuple[int, int]]:
    """One-to-one ``(gold index, found index)`` pairs of the same type under ``rule``."""
    pairs: list[tuple[int, int, int]] = []
    for i, g in enumerate(gold):
        for j, f in enumerate(found):
            if g.entity_type != f.entity_type:
                continue
            if rule == "exact":
                if (g.start, g.end) == (f.start, f.end):
                    pairs.append((g.end - g.start, i, j))
                continue
            ov = _overlap(g, f)
            if ov > 0 and 2 * ov >= max(g.end - g.start, f.end - f.start):
                pairs.append((ov, i, j))
    pairs.sort(key=lambda p: (-p[0], p[1], p[2]))
    used_g: set[int] = set()
    used_f: set[int] = set()
    out = []
    for _, i, j in pairs:
        if i in used_g or j in used_f:
            continue
        used_g.add(i)
        used_f.add(j)
        out.append((i, j))
    return out


def _prf(tp: int, n_found: int, n_gold: int) -> dict[str, float]:
    p = tp / n_found if n_found else 0.0
    r = tp / n_gold if n_gold else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def score(
    gold: Iterable[Sequence[Span]],
    found: Iterable[Sequence[Span]],
    detected: Iterable[str],
    rule: str = "overlap",
) -> dict[str, Any]:
    """Entity-level figures over the ``detected`` types (normalised), micro-averaged.

    ``gold[k]`` and ``found[k]`` are the spans of sentence k (any type names; normalised here).
    """
    types = sorted({normalise(t) for t in detected})
    tp = dict.fromkeys(types, 0)
    n_gold = dict.fromkeys(types, 0)
    n_found = dict.fromkeys(types, 0)
    undetected: dict[str, int] = {}
    for gs, fs in zip(gold, found, strict=True):
        g = [Span(s.start, s.end, normalise(s.entity_type)) for s in gs]
        f = [Span(s.start, s.end, normalise(s.entity_type)) for s in fs]
        for s in g:
            if s.entity_type not in n_gold:
                undetected[s.entity_type] = undetected.get(s.entity_type, 0) + 1
        g = [s for s in g if s.entity_type in n_gold]
        f = [s for s in f if s.entity_type in n_found]
        for s in g:
            n_gold[s.entity_type] += 1
        for s in f:
            n_found[s.entity_type] += 1
        for i, _ in matches(g, f, rule):
            tp[g[i].entity_type] += 1
    per_type = {
        t: {**_prf(tp[t], n_found[t], n_gold[t]), "support": n_gold[t], "found": n_found[t]}
        for t in types
        if n_gold[t] or n_found[t]
    }
    total = _prf(sum(tp.values()), sum(n_found.values()), sum(n_gold.values()))
    return {
        **total,
        "rule": rule,
        "support": sum(n_gold.values()),
        "per_type": per_type,
        "not_detected": dict(sorted(undetected.items())),
    }


def table(result: dict[str, Any]) -> str:
    rows = [f"{'type':<16}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}{'found':>8}"]
    for t, v in result["per_type"].items():
        rows.append(
            f"{t:<16}{v['precision']:>10.3f}{v['recall']:>10.3f}{v['f1']:>10.3f}"
            f"{v['support']:>9}{v['found']:>8}"
        )
    rows.append(
        f"{'all (micro)':<16}{result['precision']:>10.3f}{result['recall']:>10.3f}"
        f"{result['f1']:>10.3f}{result['support']:>9}"
    )
    if result["not_detected"]:
        left = ", ".join(f"{k} ({v})" for k, v in result["not_detected"].items())
        rows.append(f"gold types no detector finds (left out): {left}")
    return "\n".join(rows)


#: Pattern types whose findings give way to an overlapping model finding: the address regexes
#: see a number and a street suffix, the model the whole address in its context.
MODEL_OVER = frozenset({"STREET_ADDRESS"})


def detect(texts: list[str], cfg: Any, batch_size: int = 32) -> tuple[list[list[Span]], set[str]]:
    """The classifier's PII findings for ``texts`` (patterns + model), and the types it can find."""
    from pointsman_classifier import pii
    from pointsman_classifier.engine import Engine

    engine = Engine(cfg)
    detectable = set(pii.PATTERN_TYPES if cfg.pii.recognizers is None else cfg.pii.recognizers)
    detectable |= set(engine.pii_types())
    out: list[list[Span]] = []
    for b in range(0, len(texts), batch_size):
        chunk = texts[b : b + batch_size]
        for text, o in zip(chunk, engine.run(chunk), strict=True):
            merged = pii.merge(pii.find(text, cfg.pii.recognizers), o.pii, prefer=MODEL_OVER)
            out.append([Span(f.start, f.end, f.entity_type) for f in merged])
    return out, detectable


def main(argv: list[str], prog: str | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=prog or "pointsman eval pii",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("files", nargs="+", help="Presidio-format JSON files")
    p.add_argument("--json", action="store_true", help="print the result as JSON on the last line")
    p.add_argument("--rule", choices=["overlap", "exact"], default="overlap")
    p.add_argument("--config", help="Pointsman config file (its classifier section is used)")
    p.add_argument("--heads-dir", help="heads directory with pii.* (default: the shipped head)")
    p.add_argument(
        "--threshold", type=float, help="token probability threshold (pii.model_threshold)"
    )
    p.add_argument("--quantize", choices=["auto", "none", "int8"], help="encoder quantization")
    p.add_argument("--device", help="auto, cpu, cuda")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit", type=int, default=0, help="only the first N sentences")
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args(argv)

    from pointsman import configfile
    from pointsman_classifier.config import ClassifierConfig
    from pointsman_lab import data

    try:
        cfg = configfile.section(configfile.read(args.config), "classifier", ClassifierConfig)
    except configfile.ConfigError as exc:
        print(f"{p.prog}: {exc}", file=sys.stderr)
        return 2
    over: dict[str, Any] = {
        "threads": args.threads,
        "jailbreak": cfg.jailbreak.model_copy(update={"enabled": False}),
    }
    for key in ("heads_dir", "quantize", "device"):
        if getattr(args, key):
            over[key] = getattr(args, key)
    if args.threshold is not None:
        over["pii"] = cfg.pii.model_copy(update={"model_threshold": args.threshold})
    cfg = cfg.model_copy(update=over)
    try:
        examples = [e for f in args.files for e in data.read_pii(f)]
    except (OSError, ValueError, KeyError, data.DataError) as exc:
        print(f"{p.prog}: {exc}", file=sys.stderr)
        return 2
    examples = examples[: args.limit or None]
    found, detectable = detect([e.text for e in examples], cfg, args.batch_size)
    gold = [[Span(s.start, s.end, s.entity_type) for s in e.spans] for e in examples]
    result = score(gold, found, detectable, args.rule)
    result["rows"] = len(examples)
    print(table(result))
    print(f"matching rule: {args.rule}; {len(examples)} sentences")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

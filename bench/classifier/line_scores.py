"""Each line of a long prompt scored alone by the safety branch: does it find injections buried
in documents without flagging real chat? (issue 13; tried, not shipped.)

    python -m bench.classifier.line_scores SAFETY.jsonl [--margins 0,1,2,3,4,5,6,8] [--quantize none]

``SAFETY.jsonl`` is ``python -m pointsman_lab.safety_data OUT.jsonl``'s data set; its ``calib``
and ``validation`` rows are read. Every text is scored whole, as the service does (windows and
their margin), and each of its lines of 16 characters or more alone when it has two or more such
lines. For each margin m the prompt's score is the higher of the whole text's and the best
line's less m in log-odds (a line is one more chance of a false positive, as a window is), and
the table gives what that flags: benign and attacks of both splits, real chat by length (tokens
counted as characters / 4), injections by source. The margin would be chosen on ``calib``;
validation shows what it does to sources never trained on. ``--quantize none`` (float32, batched;
scores do not depend on batch neighbours) is much faster than the service's int8 and close to it.
Writes every row's scores to ``bench/results/classifier-line-scores.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from pointsman_lab.jailbreak_eval import bucket_name
from pointsman_lab.safety_scores import REAL_CHAT


def lines_of(text: str) -> list[str]:
    """The lines scored alone: 16 characters or more, each once; none for a one-line text."""
    lines = [s for s in (raw.strip() for raw in text.split("\n")) if len(s) >= 16]
    return list(dict.fromkeys(lines)) if len(lines) >= 2 else []


def logit(p: float) -> float:
    p = min(max(p, 1e-9), 1 - 1e-9)
    return math.log(p / (1 - p))


def score(rows: list[dict[str, Any]], quantize: str, threads: int) -> list[dict[str, Any]]:
    from pointsman_classifier.config import ClassifierConfig
    from pointsman_lab.evaluate import run_engine

    texts = list(dict.fromkeys(t for r in rows for t in (r["text"], *lines_of(r["text"]))))
    cfg = ClassifierConfig.model_validate(
        {
            "threads": threads,
            "engine_process": False,
            "quantize": quantize,
            "pii": {"enabled": False},
        }
    )
    outs, _ = run_engine(cfg, texts, 64)
    got = {t: o.jailbreak or 0.0 for t, o in zip(texts, outs, strict=True)}
    return [
        {
            "split": r["split"],
            "label": r["label"],
            "source": r["source"],
            "chars": len(r["text"]),
            "whole": got[r["text"]],
            "lines": [got[s] for s in lines_of(r["text"])],
        }
        for r in rows
    ]


def table(scored: list[dict[str, Any]], margin: float) -> dict[str, tuple[int, int]]:
    """(flagged, rows) per group at ``margin``."""
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in scored:
        s = logit(r["whole"])
        if r["lines"]:
            s = max(s, max(logit(x) for x in r["lines"]) - margin)
        groups = [f"{r['split']} {r['label']}"]
        if (
            r["split"] == "validation"
            and r["label"] == "benign"
            and r["source"].startswith(REAL_CHAT)
        ):
            groups.append(f"real chat {bucket_name(r['chars'] // 4)}")
        if r["split"] == "validation" and r["label"] == "injection":
            groups.append("injection " + ":".join(r["source"].split(":")[:2]))
        for g in groups:
            out[g][0] += s >= 0
            out[g][1] += 1
    return {g: (a, n) for g, (a, n) in sorted(out.items())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.classifier.line_scores", description=__doc__)
    p.add_argument("data", type=Path, help="pointsman_lab.safety_data's JSONL")
    p.add_argument("--margins", default="0,1,2,3,4,5,6,8")
    p.add_argument("--quantize", default="none", choices=("none", "int8", "auto"))
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    p.add_argument("--out", type=Path, default=Path("bench/results/classifier-line-scores.json"))
    args = p.parse_args(argv)
    rows = [json.loads(line) for line in args.data.open(encoding="utf-8")]
    scored = score(
        [r for r in rows if r["split"] in ("calib", "validation")], args.quantize, args.threads
    )
    margins = [float(m) for m in args.margins.split(",")]
    tables = {
        "lines not read": table(scored, math.inf),
        **{f"margin {m:g}": table(scored, m) for m in margins},
    }
    groups = list(next(iter(tables.values())))
    print(f"{'group':<44}" + "".join(f"{name:>16}" for name in tables))
    for g in groups:
        cells = "".join(f"{f'{t[g][0]}/{t[g][1]}':>16}" for t in tables.values())
        print(f"{g:<44}{cells}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"quantize": args.quantize, "tables": tables, "rows": scored}, indent=1)
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Figures of a safety-branch training run from its ``scores.npz``, with the operating point
chosen on the ``calib`` split only.

``python -m pointsman_lab.safety_scores OUT/scores.npz safety.jsonl --k 4 [--json]`` reads every
window's probabilities (float32, as :mod:`pointsman_lab.safety_train` evaluated them), picks the
operating point: the lowest of ``--points`` at which the calibration split's benign FPR is at
most ``--calib-fpr`` (the shipped branch's rule), and reports for ``calib`` and ``validation``:
FPR, recall per class, per length bucket (real chat apart) and per source, for the window rule
``--margin`` (log-odds a window after the first loses, as ``jailbreak.window_margin``) and,
optionally, ``--margin-injection`` (the injection class's own margin in later windows).

This is the quick look before shipping: the service's own figures (int8, the engine's windows)
come from ``pointsman eval jailbreak``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
#: Length buckets (tokens with special tokens, whole prompt), as ``pointsman eval jailbreak``.
BUCKETS = ((0, 32), (32, 64), (64, 128), (128, 256), (256, 1024), (1024, 1 << 30))
#: Sources of real user chat (the FPR target of issue 13).
REAL_CHAT = ("arena-hard", "alpaca_eval", "mt_bench", "oasst")


def _squash(s: F64, margin: float) -> F64:
    out: F64 = s / (s + (1.0 - s) * math.exp(margin))
    return out


def row_scores(
    win: F64,
    owner: npt.NDArray[np.int32],
    n: int,
    point: float,
    margin: float,
    margin_injection: float | None = None,
) -> F64:
    """Each row's score: the benign logit raised by ``ln(point / (1 - point))`` (so that 0.5 is
    ``point`` on the head), 1 - P(benign) per window, a window after the first losing
    ``margin`` in log-odds (and, if given, the injection probability alone ``margin_injection``);
    the highest window."""
    z = np.log(np.clip(win, 1e-12, 1.0))
    z[:, 0] += math.log(point / (1.0 - point))
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    attack: F64 = p[:, 1] + p[:, 2]
    first = np.r_[True, owner[1:] != owner[:-1]]
    later = _squash(attack, margin)
    if margin_injection is not None:
        later = np.maximum(later, _squash(p[:, 2], margin_injection))
    s = np.where(first, attack, later)
    out: F64 = np.zeros(n)
    np.maximum.at(out, owner, s)
    return out


def _rate(flag: npt.NDArray[np.bool_], sel: npt.NDArray[np.bool_]) -> dict[str, Any]:
    k, n = int(flag[sel].sum()), int(sel.sum())
    return {"n": n, "flagged": k, "rate": round(k / n, 4) if n else None}


def figures(
    rows: Sequence[dict[str, str]], ntok: npt.NDArray[np.int64], score: F64, split: str
) -> dict[str, Any]:
    lab = np.array([r["label"] for r in rows])
    sel = np.array([r["split"] == split for r in rows])
    flag = score >= 0.5
    ben = sel & (lab == "benign")
    real = ben & np.array([r["source"].startswith(REAL_CHAT) for r in rows])
    out: dict[str, Any] = {
        "fpr": _rate(flag, ben),
        "fpr_real_chat": _rate(flag, real),
        "recall_jailbreak": _rate(flag, sel & (lab == "jailbreak")),
        "recall_injection": _rate(flag, sel & (lab == "injection")),
        "by_length": {},
        "by_source": {},
    }
    for lo, hi in BUCKETS:
        b = (ntok >= lo) & (ntok < hi)
        name = f"{lo}-{hi - 1}" if hi < 1 << 30 else f"{lo}+"
        out["by_length"][name] = {
            "fpr": _rate(flag, ben & b),
            "fpr_real_chat": _rate(flag, real & b),
            "recall_jailbreak": _rate(flag, sel & b & (lab == "jailbreak")),
            "recall_injection": _rate(flag, sel & b & (lab == "injection")),
        }
    groups: dict[str, list[int]] = defaultdict(list)
    for i in np.flatnonzero(sel).tolist():
        src = rows[i]["source"]
        parts = 3 if src.startswith("garak:latentinjection:") else 2
        if src.startswith(("p3-t0:", "promptinject:", "exercism:")):
            parts = 1  # template or exercise names: one group per family
        groups[f"{':'.join(src.split(':')[:parts])} {lab[i]}"].append(int(i))
    for g, idx in sorted(groups.items()):
        out["by_source"][g] = _rate(flag, np.isin(np.arange(len(rows)), idx))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("scores", type=Path)
    p.add_argument("data", type=Path, help="the safety.jsonl the run was trained on")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--tokenizer", type=Path, default=None, help="default: the shipped MiniLM's")
    p.add_argument("--points", default="0.5,0.8,0.9,0.95,0.98,0.99,0.995")
    p.add_argument("--calib-fpr", type=float, default=0.005)
    p.add_argument("--margin", type=float, default=5.0)
    p.add_argument("--margin-injection", type=float, default=None)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    from tokenizers import Tokenizer

    if args.tokenizer is None:
        from pointsman_classifier.encoder import default_model_path

        args.tokenizer = default_model_path() / "tokenizer.json"
    tok = Tokenizer.from_file(str(args.tokenizer))
    tok.no_truncation()
    tok.no_padding()
    with args.data.open(encoding="utf-8") as f:
        every = [json.loads(line) for line in f]
    d = np.load(args.scores)
    rows = [every[i] for i in d["eval_rows"]]
    ntok = np.array([len(e.ids) for e in tok.encode_batch([r["text"] for r in rows])])
    win = d[f"win_k{args.k}"].astype(np.float64)
    owner = d["win_owner"]
    chosen = None
    for point in sorted(float(x) for x in args.points.split(",")):
        s = row_scores(win, owner, len(rows), point, args.margin, args.margin_injection)
        calib = figures(rows, ntok, s, "calib")
        if calib["fpr"]["rate"] is not None and calib["fpr"]["rate"] <= args.calib_fpr:
            chosen = (point, s, calib)
            break
    if chosen is None:
        print("no operating point meets --calib-fpr on calib", file=sys.stderr)
        return 1
    point, s, calib = chosen
    result = {
        "k": args.k,
        "operating_point": point,
        "margin": args.margin,
        "margin_injection": args.margin_injection,
        "calib": calib,
        "validation": figures(rows, ntok, s, "validation"),
    }
    if not args.json:
        for split in ("calib", "validation"):
            r = result[split]
            print(
                f"{split}: FPR {r['fpr']['rate']} real chat {r['fpr_real_chat']['rate']} "
                f"jailbreak {r['recall_jailbreak']['rate']} injection {r['recall_injection']['rate']}"
            )
            for name, b in r["by_length"].items():
                rc, inj = b["fpr_real_chat"], b["recall_injection"]
                print(
                    f"  {name:9s} real chat {rc['flagged']}/{rc['n']}  "
                    f"injection {inj['flagged']}/{inj['n']}"
                )
    print(json.dumps(result) if args.json else f"operating point {point}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

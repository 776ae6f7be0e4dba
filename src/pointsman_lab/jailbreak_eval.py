"""``pointsman eval jailbreak FILE...``: the jailbreak and prompt-injection check on labelled data.

Runs the engine the service runs (the shipped safety branch by default, or what ``--config``
selects) and reports precision, recall, F1 and the false-positive rate (benign prompts flagged)
overall, per length bucket (tokens of the whole prompt, before any window is cut) and per
``source`` column when the file has one, plus the recall per attack class. Writes a
precision-recall curve as PNG. With ``--json`` the last output line is one JSON object:
``{"f1", "precision", "recall", "fpr", "threshold", "by_length", "by_source", ...}``.

Input: CSV or JSONL with a ``prompt``/``text`` column and a label column (``label``/``type``):
``benign``, ``jailbreak``, ``injection`` (any other non-benign value, ``1`` or ``true``: an
attack of no named class; ``0``/``false``/``safe``: benign). A ``jailbreak`` column of
True/False (the in-the-wild CSV) works too; a file without labels (MMLU-Pro) is all benign.
``--split NAME`` keeps the rows whose ``split`` column is NAME (the data set of
:mod:`pointsman_lab.safety_data`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from pointsman_lab import data

#: Length buckets in tokens (lower bounds); the last is open.
BUCKETS = (0, 32, 64, 128, 256, 1024)
ATTACK = "attack"


@dataclass(frozen=True)
class Row:
    text: str
    kind: str  # benign, jailbreak, injection or attack (no class named)
    source: str


def bucket_name(tokens: int) -> str:
    lo = max(b for b in BUCKETS if b <= tokens)
    i = BUCKETS.index(lo)
    return f"{lo}+" if i == len(BUCKETS) - 1 else f"{lo}-{BUCKETS[i + 1] - 1}"


def bucket_names() -> list[str]:
    return [bucket_name(b) for b in BUCKETS]


def kind_of(label: str) -> str:
    v = label.strip().lower()
    if v in {"benign", "0", "false", "safe", "no"}:
        return data.BENIGN
    if v in {"jailbreak", "injection"}:
        return v
    if v in {"prompt_injection", "prompt-injection"}:
        return "injection"
    return ATTACK


def read(path: Path, split: str | None = None, source_parts: int = 0) -> list[Row]:
    """The rows of one file (see the module doc for the columns)."""
    out = []
    for r in data.rows(path):
        text = data.pick(r, data.TEXT_KEYS)
        if text is None:
            continue
        if split is not None and str(r.get("split", "")) != split:
            continue
        label = data.pick(r, ("label", "type"))
        if label is not None:
            kind = kind_of(label)
        elif "jailbreak" in r:
            flag = str(r["jailbreak"]).strip().lower()
            kind = data.JAILBREAK if flag in {"true", "1", "yes"} else data.BENIGN
        else:
            kind = data.BENIGN  # a question set without safety labels
        source = str(r.get("source") or "")
        if source_parts:
            source = ":".join(source.split(":")[:source_parts])
        out.append(Row(text, kind, source))
    if not out:
        raise data.DataError(f"{path}: no rows with a text column (one of prompt, text)")
    return out


def binary(y: npt.NDArray[np.bool_], flagged: npt.NDArray[np.bool_]) -> dict[str, Any]:
    """Precision, recall, F1 and FPR of ``flagged`` against ``y`` (True = attack)."""
    tp = int((y & flagged).sum())
    fp = int((~y & flagged).sum())
    fn = int((y & ~flagged).sum())
    tn = int((~y & ~flagged).sum())
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    fpr = fp / (fp + tn) if fp + tn else 0.0
    return {
        "precision": prec,
        "recall": rec,
        "f1": f1,
        "fpr": fpr,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "attacks": tp + fn,
        "benign": fp + tn,
    }


def pr_curve(
    y: npt.NDArray[np.bool_], scores: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], float]:
    """Precision and recall at every distinct score as threshold, and the average precision."""
    order = np.argsort(-scores, kind="stable")
    ys = y[order]
    tp = np.cumsum(ys)
    fp = np.cumsum(~ys)
    # One point per distinct score: the last index of each run of equal scores.
    s = scores[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    positives = max(int(y.sum()), 1)
    precision = tp[last] / np.maximum(tp[last] + fp[last], 1)
    recall = tp[last] / positives
    ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    return precision.astype(np.float64), recall.astype(np.float64), ap


def save_pr_png(
    precision: npt.NDArray[np.float64],
    recall: npt.NDArray[np.float64],
    point: tuple[float, float],
    path: Path,
    title: str,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(recall, precision, lw=1.5)
    ax.plot([point[0]], [point[1]], "o", color="crimson", label="threshold")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def token_counts(engine: Any, texts: list[str]) -> list[int]:
    """Tokens of each whole text (special tokens included, nothing cut)."""
    from tokenizers import Tokenizer

    tk = Tokenizer.from_str(engine.encoder.tokenizer.backend_tokenizer.to_str())
    tk.no_truncation()
    tk.no_padding()
    return [len(e.ids) for e in tk.encode_batch(texts, add_special_tokens=True)]


def report(
    rows: list[Row], scores: npt.NDArray[np.float64], tokens: list[int], threshold: float
) -> dict[str, Any]:
    """Every figure of the evaluation, as one JSON-able dict."""
    kinds = np.array([r.kind for r in rows])
    y = kinds != data.BENIGN
    flagged = scores >= threshold
    result: dict[str, Any] = {"rows": len(rows), "threshold": threshold}
    result.update(binary(y, flagged))
    for k in (data.JAILBREAK, "injection", ATTACK):
        m = kinds == k
        if m.any():
            result[f"recall_{k}"] = float(flagged[m].mean())
            result[f"rows_{k}"] = int(m.sum())
    names = np.array([bucket_name(t) for t in tokens])
    result["by_length"] = {
        b: binary(y[names == b], flagged[names == b]) for b in bucket_names() if (names == b).any()
    }
    sources = [r.source for r in rows]
    if any(sources):
        groups: dict[str, list[int]] = defaultdict(list)
        for i, s in enumerate(sources):
            groups[s or "(none)"].append(i)
        by_source = {}
        for s, idx in sorted(groups.items()):
            ix = np.array(idx)
            by_source[s] = {
                **binary(y[ix], flagged[ix]),
                "kinds": sorted(set(kinds[ix].tolist())),
            }
        result["by_source"] = by_source
    return result


def print_report(result: dict[str, Any]) -> None:
    def line(name: str, r: dict[str, Any], width: int) -> str:
        rec = f"{r['recall']:6.3f}" if r["attacks"] else "     -"
        fpr = f"{r['fpr']:7.4f}" if r["benign"] else "      -"
        return (
            f"{name.ljust(width)}  {r['benign']:6d}  {fpr}  {r['attacks']:7d}  {rec}  "
            f"{r['precision']:9.3f}  {r['f1']:6.3f}"
        )

    head = "benign      FPR  attacks  recall  precision      F1"
    for title, table in (
        ("length (tokens)", result["by_length"]),
        ("source", result.get("by_source")),
    ):
        if not table:
            continue
        width = max(len(title), *(len(k) for k in table))
        print(f"{title.ljust(width)}  {head}")
        for k, r in table.items():
            print(line(k, r, width))
        print()
    print(
        f"threshold {result['threshold']}: precision {result['precision']:.4f}  recall "
        f"{result['recall']:.4f}  F1 {result['f1']:.4f}  FPR {result['fpr']:.4f} "
        f"({result['fp']}/{result['benign']} benign flagged)  average precision "
        f"{result.get('average_precision', 0.0):.4f}"
    )
    for k in (data.JAILBREAK, "injection", ATTACK):
        if f"recall_{k}" in result:
            print(f"recall on {k}: {result[f'recall_{k}']:.4f} ({result[f'rows_{k}']} rows)")


def _parser(prog: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0] if __doc__ else "")
    from pointsman_lab.evaluate import engine_args

    engine_args(p, png="PR-curve path (default bench/results/eval-jailbreak-pr.png; '' = none)")
    p.add_argument("--threshold", type=float, default=None, help="overrides jailbreak.threshold")
    p.add_argument("--split", default=None, help="only rows whose 'split' column is this")
    p.add_argument(
        "--source-parts",
        type=int,
        default=0,
        help="group sources by their first N ':'-separated parts (0: whole)",
    )
    p.add_argument("--scores", default=None, help="also write each row's score here (JSONL)")
    return p


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = _parser(prog).parse_args(argv)
    name = prog or "eval jailbreak"
    from pointsman import configfile
    from pointsman_classifier.config import ClassifierConfig
    from pointsman_lab.evaluate import finish, run_engine

    try:
        cfg = configfile.section(configfile.read(args.config), "classifier", ClassifierConfig)
        rows = [
            r
            for f in args.files
            for r in read(f, args.split, args.source_parts)[: args.limit or None]
        ]
    except (configfile.ConfigError, data.DataError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    over: dict[str, Any] = {"threads": args.threads, "engine_process": False}
    for key in ("device", "quantize", "heads_dir"):
        if getattr(args, key):
            over[key] = getattr(args, key)
    over["jailbreak"] = cfg.jailbreak.model_copy(update={"enabled": True})
    over["pii"] = cfg.pii.model_copy(update={"model": None})
    cfg = cfg.model_copy(update=over)
    threshold = args.threshold if args.threshold is not None else cfg.jailbreak.threshold
    t0 = time.monotonic()
    texts = [r.text for r in rows]
    outs, engine = run_engine(cfg, texts, args.batch_size)
    scores = np.array([o.jailbreak or 0.0 for o in outs], dtype=np.float64)
    tokens = token_counts(engine, texts)
    result = report(rows, scores, tokens, threshold)
    y = np.array([r.kind != data.BENIGN for r in rows])
    precision, recall, ap = pr_curve(y, scores)
    result["average_precision"] = ap
    print_report(result)
    if args.png != "":
        path = Path(args.png) if args.png else Path("bench/results/eval-jailbreak-pr.png")
        title = f"jailbreak + injection: AP {ap:.3f}, threshold {threshold}"
        save_pr_png(precision, recall, (result["recall"], result["precision"]), path, title)
        result["pr_png"] = str(path)
        print(f"PR curve: {path}")
    if args.scores:
        with Path(args.scores).open("w", encoding="utf-8") as f:
            for r, s, t in zip(rows, scores, tokens, strict=True):
                f.write(
                    json.dumps({"kind": r.kind, "source": r.source, "tokens": t, "score": s}) + "\n"
                )
    return finish(result, args, t0)


if __name__ == "__main__":
    sys.exit(main())

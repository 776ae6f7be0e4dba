"""``pointsman eval category FILE...``: measure a classifier on labelled data.

(``pointsman eval jailbreak`` is :mod:`pointsman_lab.jailbreak_eval`, ``pointsman eval pii``
:mod:`pointsman_lab.pii_eval`: the CLI sends those tasks there.)

Runs the same engine the service runs (shipped heads by default, or what ``--config`` says:
bring-your-own models, another encoder or heads directory) and prints accuracy, macro-F1, a
per-class table and writes a confusion matrix as PNG. With ``--json`` the last output line is one
JSON object with the metrics that apply (``accuracy``, ``macro_f1``, ``precision``, ``recall``,
``f1``, ``fpr``), for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from pointsman_classifier.config import ClassifierConfig
from pointsman_classifier.core import Outputs
from pointsman_lab import data

NONE = "(none)"


def per_class(
    y_true: list[str], y_pred: list[str], labels: list[str]
) -> tuple[dict[str, dict[str, float]], npt.NDArray[np.int64]]:
    """Precision/recall/F1/support per label and the confusion matrix (rows = truth)."""
    index = {lab: i for i, lab in enumerate(labels)}
    cm = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for t, p in zip(y_true, y_pred, strict=True):
        cm[index[t], index[p]] += 1
    table: dict[str, dict[str, float]] = {}
    for i, lab in enumerate(labels):
        tp = float(cm[i, i])
        fp = float(cm[:, i].sum() - cm[i, i])
        fn = float(cm[i, :].sum() - cm[i, i])
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        table[lab] = {"precision": prec, "recall": rec, "f1": f1, "support": float(cm[i].sum())}
    return table, cm


def macro_f1(table: dict[str, dict[str, float]], labels: list[str] | None = None) -> float:
    keys = [k for k in (labels or list(table)) if table[k]["support"] > 0]
    return float(np.mean([table[k]["f1"] for k in keys])) if keys else 0.0


def print_table(table: dict[str, dict[str, float]], title: str) -> None:
    width = max([len(k) for k in table] + [len(title)])
    print(f"{title.ljust(width)}  precision  recall     f1  support")
    for k, row in table.items():
        print(
            f"{k.ljust(width)}  {row['precision']:9.4f}  {row['recall']:6.4f}  "
            f"{row['f1']:5.4f}  {int(row['support']):7d}"
        )


def save_confusion(cm: npt.NDArray[np.int64], labels: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(labels)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * n + 2), max(3.5, 0.55 * n + 1.5)))
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(
                    j,
                    i,
                    str(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_engine(
    cfg: ClassifierConfig, texts: list[str], batch_size: int
) -> tuple[list[Outputs], Any]:
    """The engine's outputs for ``texts`` (batched by length, with a progress bar), and the
    engine."""
    from tqdm import tqdm  # type: ignore[import-untyped]

    from pointsman_classifier.engine import Engine

    engine = Engine(cfg)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[Outputs | None] = [None] * len(texts)
    with tqdm(total=len(texts), desc="classifying", unit="text", file=sys.stderr) as bar:
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            for i, o in zip(idx, engine.run([texts[i] for i in idx]), strict=True):
                out[i] = o
            bar.update(len(idx))
    return [o for o in out if o is not None], engine


def _top(probs: dict[str, float] | None) -> str:
    return max(probs.items(), key=lambda kv: kv[1])[0] if probs else NONE


def eval_category(args: argparse.Namespace, cfg: ClassifierConfig) -> dict[str, Any]:
    examples = [e for f in args.files for e in data.read_labelled(f)][: args.limit or None]
    cfg = cfg.model_copy(
        update={
            "jailbreak": cfg.jailbreak.model_copy(update={"enabled": False}),
            "pii": cfg.pii.model_copy(update={"model": None}),
        }
    )
    outs, _ = run_engine(cfg, [e.text for e in examples], args.batch_size)
    y_true = [e.label for e in examples]
    y_pred = [_top(o.categories) for o in outs]
    labels = sorted(set(y_true) | set(y_pred))
    table, cm = per_class(y_true, y_pred, labels)
    acc = float(np.mean([t == p for t, p in zip(y_true, y_pred, strict=True)]))
    print_table(table, "category")
    result = {
        "task": "category",
        "rows": len(examples),
        "accuracy": acc,
        "macro_f1": macro_f1(table, sorted(set(y_true))),
        "per_class": table,
    }
    print(f"\naccuracy {acc:.4f}  macro-F1 {result['macro_f1']:.4f}  ({len(examples)} rows)")
    _png(args, cm, labels, f"category: accuracy {acc:.3f} ({len(examples)} rows)", result)
    return result


def _png(
    args: argparse.Namespace,
    cm: npt.NDArray[np.int64],
    labels: list[str],
    title: str,
    result: dict[str, Any],
) -> None:
    if args.png == "":
        return
    path = Path(args.png) if args.png else Path("bench/results") / f"eval-{args.task}.png"
    save_confusion(cm, labels, path, title)
    result["confusion_png"] = str(path)
    print(f"confusion matrix: {path}")


def _parser(prog: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("task", choices=["category"])
    p.add_argument("--encoder", default=None, help="encoder model directory")
    engine_args(p, png="confusion matrix path (default bench/results/eval-TASK.png; '' = none)")
    return p


def engine_args(p: argparse.ArgumentParser, *, png: str) -> None:
    """The options every evaluation takes: its files, the engine it runs (config, heads,
    device, quantization, threads, batch), how many rows, the figure (``png``: its help) and
    the JSON line."""
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument(
        "--config",
        default=None,
        help="Pointsman config file: its classifier section picks models and heads",
    )
    p.add_argument(
        "--heads-dir", default=None, help="heads (and safety branch) directory (default: shipped)"
    )
    p.add_argument("--device", default=None, help="auto, cpu, cuda")
    p.add_argument(
        "--quantize", default=None, choices=["auto", "none", "int8"], help="encoder quantization"
    )
    p.add_argument("--limit", type=int, default=0, help="first N rows of each file only")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--png", default=None, help=png)
    p.add_argument("--json", action="store_true", help="last line: one JSON object of metrics")


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = _parser(prog).parse_args(argv)
    from pointsman import configfile

    try:
        cfg = configfile.section(configfile.read(args.config), "classifier", ClassifierConfig)
    except configfile.ConfigError as exc:
        print(f"{prog or 'eval'}: {exc}", file=sys.stderr)
        return 2
    over: dict[str, Any] = {"threads": args.threads}
    if args.heads_dir:
        over["heads_dir"] = args.heads_dir
    if args.encoder:
        over["encoder"] = args.encoder
    if args.device:
        over["device"] = args.device
    if args.quantize:
        over["quantize"] = args.quantize
    cfg = cfg.model_copy(update=over)
    t0 = time.monotonic()
    try:
        fn = {"category": eval_category}[args.task]
        result = fn(args, cfg)
    except data.DataError as exc:
        print(f"{prog or 'eval'}: {exc}", file=sys.stderr)
        return 2
    return finish(result, args, t0)


def finish(result: dict[str, Any], args: argparse.Namespace, started: float) -> int:
    """An evaluation's end: its time and files added to ``result``, printed as one JSON line
    with ``--json``; the exit status."""
    result["seconds"] = round(time.monotonic() - started, 2)
    result["files"] = [str(f) for f in args.files]
    if args.json:
        print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``pointsman train``: train the category and jailbreak heads on the shared encoder.

The encoder stays frozen; only a small head is fitted on its pooled features, so training takes
seconds once the features are embedded (and cached on disk, see :mod:`featurecache`). The heads
land as small files that the service loads by default from ``pointsman_classifier/models``.

Jailbreak training adds benign negatives beyond the labelled set (``--extra-benign``, e.g.
MMLU-Pro questions) and extra positives (``--extra-jailbreak``, e.g. in-the-wild prompts): the
labelled set's jailbreaks are much longer than its benign prompts, and a head that learned
"long = jailbreak" would block every long, harmless question. Mean pooling over at most
``max_length`` tokens and long benign negatives take that shortcut away.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from pointsman_classifier.heads import Head, shipped_dir
from pointsman_lab import data

log = logging.getLogger(__name__)

# Layers 1-4 of the MiniLM's 6: measured on MMLU-Pro validation (int8 features), layers 1-6 gave
# 0.854 and 1-4 0.842 category accuracy, jailbreak F1 1.000 either way, and a service whose heads
# stop at layer 4 skips a third of the encoder's work on every request (see engine._depth).
CATEGORY_LAYERS = [1, 2, 3, 4]
JAILBREAK_LAYERS = [1, 2, 3, 4]


def fit_head(
    name: str,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    labels: list[str],
    layers: list[int],
    *,
    hidden: int = 0,
    epochs: int = 60,
    lr: float = 2e-3,
    weight_decay: float = 1e-2,
    dropout: float = 0.1,
    batch_size: int = 64,
    class_weight: npt.NDArray[np.float32] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> Head:
    """Fit standardisation + (optional ReLU hidden layer) + softmax with AdamW, full precision."""
    import torch
    from tqdm import tqdm  # type: ignore[import-untyped]

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    mean = x.mean(axis=0)
    std = x.std(axis=0) + 1e-4
    xs = torch.from_numpy(((x - mean) / std).astype(np.float32))
    ys = torch.from_numpy(y.astype(np.int64))
    n_in, n_out = xs.shape[1], len(labels)
    mods: list[Any] = [torch.nn.Dropout(dropout)]
    if hidden:
        mods += [torch.nn.Linear(n_in, hidden), torch.nn.ReLU(), torch.nn.Dropout(dropout)]
    mods.append(torch.nn.Linear(hidden or n_in, n_out))
    net = torch.nn.Sequential(*mods)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    cw = torch.from_numpy(class_weight) if class_weight is not None else None
    loss_fn = torch.nn.CrossEntropyLoss(weight=cw, label_smoothing=0.05)
    bar = tqdm(range(epochs), desc=f"training {name}", unit="epoch", disable=not progress)
    for _ in bar:
        net.train()
        perm = rng.permutation(len(xs))
        total = 0.0
        for start in range(0, len(perm), batch_size):
            idx = torch.from_numpy(perm[start : start + batch_size])
            opt.zero_grad()
            loss = loss_fn(net(xs[idx]), ys[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        bar.set_postfix(loss=f"{total / len(xs):.4f}")
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    weights = {"mean": mean.astype(np.float32), "std": std.astype(np.float32)}
    if hidden:
        weights["w1"] = linears[0].weight.detach().numpy().copy()
        weights["b1"] = linears[0].bias.detach().numpy().copy()
    weights["w_out"] = linears[-1].weight.detach().numpy().copy()
    weights["b_out"] = linears[-1].bias.detach().numpy().copy()
    meta = {
        "hidden": hidden,
        "epochs": epochs,
        "lr": lr,
        "weight_decay": weight_decay,
        "dropout": dropout,
        "train_rows": len(xs),
    }
    return Head(name, labels, layers, weights, meta)


def balanced_weights(y: npt.NDArray[np.int64], n: int) -> npt.NDArray[np.float32]:
    counts = np.bincount(y, minlength=n).astype(np.float32)
    w: npt.NDArray[np.float32] = (counts.sum() / (n * np.maximum(counts, 1.0))).astype(np.float32)
    return w


def _parser(prog: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Train a classifier head (category or jailbreak) on the frozen encoder.",
    )
    p.add_argument("task", choices=["category", "jailbreak"])
    p.add_argument(
        "files",
        nargs="+",
        type=Path,
        help="labelled training files (MMLU-Pro JSONL, CSV with prompt/type, ...)",
    )
    p.add_argument(
        "--extra-benign",
        nargs="*",
        type=Path,
        default=[],
        help="jailbreak only: files whose texts are all benign (e.g. MMLU-Pro JSONL)",
    )
    p.add_argument(
        "--extra-jailbreak",
        nargs="*",
        type=Path,
        default=[],
        help="jailbreak only: files whose texts are all jailbreaks (in-the-wild CSV)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="directory for NAME.safetensors + NAME.json (default: the shipped models)",
    )
    p.add_argument("--name", default=None, help="head name (default: the task)")
    p.add_argument("--encoder", default=None, help="encoder model dir (default: shipped MiniLM)")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument(
        "--layers", default=None, help="encoder layers to read, comma-separated (default: per task)"
    )
    p.add_argument("--hidden", type=int, default=None, help="hidden units, 0 = linear")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument(
        "--dropout", type=float, default=None, help="default 0.2 category, 0.1 jailbreak"
    )
    p.add_argument("--weight-decay", type=float, default=1e-2)
    p.add_argument("--batch-size", type=int, default=64, help="head training batch size")
    p.add_argument("--embed-batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    p.add_argument(
        "--quantize",
        choices=["auto", "none", "int8"],
        default="auto",
        help="encoder quantization while embedding (as classifier.quantize; auto = int8 on CPU)",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(".cache/pointsman-classifier"),
        help="where embedded features are cached ('' to disable)",
    )
    p.add_argument(
        "--max-benign",
        type=int,
        default=3000,
        help="jailbreak only: cap on extra benign rows (sampled, seeded)",
    )
    p.add_argument(
        "--long-benign",
        type=int,
        default=300,
        help="jailbreak only: add N long benign texts, each 4-10 benign training prompts joined",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = _parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from pointsman_classifier.encoder import Encoder
    from pointsman_lab import featurecache

    try:
        if args.task == "category":
            examples = [e for f in args.files for e in data.read_labelled(f)]
            groups = [examples]
        else:
            examples = [e for f in args.files for e in data.read_jailbreak(f)]
            rng = np.random.default_rng(args.seed)
            benign = [
                data.Example(e.text, data.BENIGN)
                for f in args.extra_benign
                for e in data.read_jailbreak(f)
            ]
            if len(benign) > args.max_benign:
                keep = rng.choice(len(benign), args.max_benign, replace=False)
                benign = [benign[int(i)] for i in sorted(keep)]
            bad = [
                data.Example(e.text, data.JAILBREAK)
                for f in args.extra_jailbreak
                for e in data.read_jailbreak(f)
            ]
            # Long benign texts (several benign training prompts joined): without them every
            # long training text is a jailbreak, and length is the easiest thing to learn.
            pool = [e.text for e in examples if e.label == data.BENIGN]
            long_benign = []
            for _ in range(args.long_benign if pool else 0):
                k = int(rng.integers(4, 11))
                picks = rng.choice(len(pool), min(k, len(pool)), replace=False)
                long_benign.append(data.Example(" ".join(pool[int(i)] for i in picks), data.BENIGN))
            groups = [examples, benign, bad, long_benign]
            examples = examples + benign + bad + long_benign
    except data.DataError as exc:
        print(f"{prog or 'train'}: {exc}", file=sys.stderr)
        return 2
    if args.task == "jailbreak":
        labels = [data.BENIGN, data.JAILBREAK]
    else:
        labels = sorted({e.label for e in examples})
    if len(labels) < 2:
        print(f"{prog or 'train'}: need at least two labels, found {labels}", file=sys.stderr)
        return 2
    index = {lab: i for i, lab in enumerate(labels)}
    y = np.array([index[e.label] for e in examples], dtype=np.int64)
    layers = (
        [int(s) for s in args.layers.split(",")]
        if args.layers
        else CATEGORY_LAYERS
        if args.task == "category"
        else JAILBREAK_LAYERS
    )
    hidden = args.hidden if args.hidden is not None else (128 if args.task == "category" else 0)
    epochs = args.epochs or (40 if args.task == "category" else 60)

    t0 = time.monotonic()
    encoder = Encoder(
        args.encoder,
        device="auto",
        max_length=args.max_length,
        threads=args.threads,
        quantize=args.quantize,
    )
    cache = args.cache_dir if str(args.cache_dir) else None
    # Each source is cached on its own, so adding a source re-embeds only that one.
    parts = [
        featurecache.features(
            encoder,
            [e.text for e in g],
            cache,
            batch_size=args.embed_batch_size,
            desc=f"embedding {len(g)} texts",
        )
        for g in groups
        if g
    ]
    pooled = np.concatenate(parts, axis=0)
    from pointsman_classifier.encoder import Features

    x = Features(pooled, []).select(layers)
    head = fit_head(
        args.name or args.task,
        x,
        y,
        labels,
        layers,
        hidden=hidden,
        epochs=epochs,
        lr=args.lr,
        weight_decay=args.weight_decay,
        dropout=args.dropout
        if args.dropout is not None
        else (0.2 if args.task == "category" else 0.1),
        batch_size=args.batch_size,
        class_weight=balanced_weights(y, len(labels)),
        seed=args.seed,
        progress=not args.quiet,
    )
    head.meta.update(
        {
            "encoder": encoder.name,
            "max_length": args.max_length,
            "quantize": encoder.quantize,
            "trained_on": [
                str(f) for f in [*args.files, *args.extra_benign, *args.extra_jailbreak]
            ],
        }
    )
    out = args.out or shipped_dir()
    wpath, jpath = head.save(out)
    train_acc = float((head.probs_from(x).argmax(axis=1) == y).mean())
    print(
        f"trained '{head.name}' on {len(examples)} rows, {len(labels)} labels, "
        f"layers {layers}, hidden {hidden}: train accuracy {train_acc:.4f} "
        f"in {time.monotonic() - t0:.1f}s"
    )
    print(f"wrote {wpath} and {jpath}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

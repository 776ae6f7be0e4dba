"""Train the PII token head (``piihead.PiiBranch``) on the shared MiniLM, offline, on the CPU.

    python -m pointsman_lab.pii_train generate --wheel presidio_evaluator-0.3.2-py3-none-any.whl
    python -m pointsman_lab.pii_train train

``generate`` writes the data (``pointsman_lab.pii_data``: train and validation sentences from
different templates). ``train`` tokenizes each sentence with the encoder's tokenizer, tags its
tokens BIO from the gold spans (types normalised as ``pii_eval.normalise``; types the head does
not find are ``O``), computes the frozen trunk's token states at layer ``--at`` once, then trains
the branch (``--layers`` transformer layers initialised from the trunk's next layers, plus a
linear layer) on them. It evaluates entity-level figures on the validation sentences with the
same decoding the service uses and saves the branch with its figures in ``pii.json``.

Not imported by the classifier service.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pointsman_lab import pii_data
from pointsman_lab.pii_eval import Span, normalise, score

SHARED = Path("../shared/data/pii/generated_3000.json")
DATA = Path("build/pii-data")


def bio_tags(
    offsets: list[tuple[int, int]], spans: list[Span], labels: tuple[str, ...]
) -> list[int]:
    """Per-token tag ids: ``B-T`` on a span's first token, ``I-T`` on the rest, ``O`` elsewhere
    (special tokens, ``(0, 0)`` offsets, get -100: no loss)."""
    index = {lab: i for i, lab in enumerate(labels)}
    started: set[int] = set()
    tags = []
    for s, e in offsets:
        if s == e:
            tags.append(-100)
            continue
        tag = index["O"]
        for k, sp in enumerate(spans):
            if s < sp.end and e > sp.start and f"B-{sp.entity_type}" in index:
                tag = index[("I-" if k in started else "B-") + sp.entity_type]
                started.add(k)
                break
        tags.append(tag)
    return tags


def tag_weights(labels: tuple[str, ...], type_weights: dict[str, float]) -> torch.Tensor:
    """Loss weight per tag: a type's ``B-``/``I-`` tags take its weight, other tags 1."""
    unknown = set(type_weights) - {lab.split("-", 1)[1] for lab in labels if "-" in lab}
    if unknown:
        raise ValueError(f"no tags of type {', '.join(sorted(unknown))}")
    return torch.tensor(
        [type_weights.get(lab.split("-", 1)[1], 1.0) if "-" in lab else 1.0 for lab in labels]
    )


class Prepared:
    """Token ids, offsets and tags of a set of sentences, and the trunk's states at ``at``."""

    def __init__(
        self, rows: list[dict[str, Any]], tokenizer: Any, labels: tuple[str, ...], max_length: int
    ):
        self.texts = [r["full_text"] for r in rows]
        self.gold = [
            [
                Span(int(s["start_position"]), int(s["end_position"]), normalise(s["entity_type"]))
                for s in r["spans"]
            ]
            for r in rows
        ]
        enc = tokenizer(
            self.texts, truncation=True, max_length=max_length, return_offsets_mapping=True
        )
        self.ids: list[list[int]] = [list(x) for x in enc["input_ids"]]
        self.offsets: list[list[tuple[int, int]]] = [
            [tuple(o) for o in x] for x in enc["offset_mapping"]
        ]
        self.tags = [bio_tags(o, g, labels) for o, g in zip(self.offsets, self.gold, strict=True)]
        self.states: list[torch.Tensor] = []

    @torch.inference_mode()
    def compute_states(self, model: Any, at: int, batch: int = 64) -> None:
        full = model.encoder.layer
        model.encoder.layer = full[: max(at, 1)]  # the layers above are not needed here
        try:
            self._states(model, at, batch)
        finally:
            model.encoder.layer = full

    def _states(self, model: Any, at: int, batch: int) -> None:
        device = next(model.parameters()).device
        order = sorted(range(len(self.ids)), key=lambda i: len(self.ids[i]))
        states: list[torch.Tensor | None] = [None] * len(self.ids)
        for k in range(0, len(order), batch):
            idx = order[k : k + batch]
            t = max(len(self.ids[i]) for i in idx)
            ids = torch.zeros((len(idx), t), dtype=torch.long)
            mask = torch.zeros((len(idx), t), dtype=torch.long)
            for r, i in enumerate(idx):
                ids[r, : len(self.ids[i])] = torch.tensor(self.ids[i])
                mask[r, : len(self.ids[i])] = 1
            out = model(
                input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True
            )
            h = out.hidden_states[at].cpu()
            for r, i in enumerate(idx):
                states[i] = h[r, : len(self.ids[i])].to(torch.float16).clone()
        self.states = [s for s in states if s is not None]


def _batches(n_items: list[int], size: int, rng: random.Random) -> list[list[int]]:
    order = sorted(range(len(n_items)), key=lambda i: (n_items[i], rng.random()))
    out = [order[k : k + size] for k in range(0, len(order), size)]
    rng.shuffle(out)
    return out


def _pad(
    prep: Prepared, idx: list[int], with_tags: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    t = max(len(prep.ids[i]) for i in idx)
    x = torch.zeros((len(idx), t, prep.states[idx[0]].shape[1]))
    mask = torch.zeros((len(idx), t), dtype=torch.bool)
    y = torch.full((len(idx), t), -100, dtype=torch.long)
    for r, i in enumerate(idx):
        n = len(prep.ids[i])
        x[r, :n] = prep.states[i].float()
        mask[r, :n] = True
        if with_tags:
            y[r, :n] = torch.tensor(prep.tags[i])
    return x, mask, y


@torch.inference_mode()
def predict(branch: Any, prep: Prepared, threshold: float, batch: int = 64) -> list[list[Span]]:
    """Decoded spans per sentence, with the service's decoding (``engine.decode_tags``)."""
    from pointsman_classifier.engine import decode_tags

    device = next(branch.parameters()).device
    branch.eval()
    out: list[list[Span]] = [[] for _ in prep.ids]
    order = sorted(range(len(prep.ids)), key=lambda i: len(prep.ids[i]))
    for k in range(0, len(order), batch):
        idx = order[k : k + batch]
        x, mask, _ = _pad(prep, idx, with_tags=False)
        probs = branch(x.to(device), mask[:, None, None, :].to(device)).cpu().numpy()
        for r, i in enumerate(idx):
            n = len(prep.ids[i])
            found = decode_tags(
                branch.labels,
                probs[r, :n],
                [list(o) for o in prep.offsets[i]],
                threshold,
                prep.texts[i],
            )
            out[i] = [Span(f.start, f.end, f.entity_type) for f in found]
    return out


def train_branch(
    model: Any,
    train: Prepared,
    val: Prepared,
    at: int,
    layers: int,
    epochs: int,
    lr: float,
    seed: int,
    threshold: float,
    dropout: float = 0.1,
    log: Any = print,
    device: str = "cpu",
    type_weights: dict[str, float] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Fine-tune a branch on ``train``'s states; ``type_weights`` scale the loss of a type's
    ``B-``/``I-`` tags (1.0 for the others and ``O``)."""
    from pointsman_classifier.pii import MODEL_TYPES
    from pointsman_classifier.piihead import PiiBranch

    torch.manual_seed(seed)
    rng = random.Random(seed)
    branch = PiiBranch.from_trunk(model, at, layers)
    branch.dropout = dropout
    branch.to(device)
    weight = tag_weights(branch.labels, type_weights or {}).to(device)
    head_params = list(branch.out.parameters())
    body_params = [p for n, p in branch.named_parameters() if not n.startswith("out.")]
    opt = torch.optim.AdamW(
        [{"params": body_params, "lr": lr}, {"params": head_params, "lr": lr * 10}],
        weight_decay=0.01,
    )
    batches_per_epoch = (len(train.ids) + 31) // 32
    total = epochs * batches_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[lr, lr * 10], total_steps=total, pct_start=0.1
    )
    history = []
    for ep in range(epochs):
        branch.train()
        t0 = time.monotonic()
        losses = []
        for idx in _batches([len(x) for x in train.ids], 32, rng):
            x, mask, y = _pad(train, idx)
            x, mask, y = x.to(device), mask.to(device), y.to(device)
            # Feature noise: the service's int8 trunk gives slightly different states.
            x = x + 0.02 * x.std() * torch.randn_like(x)
            logits = branch.logits(x, mask[:, None, None, :])
            loss = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                y.reshape(-1),
                weight=weight,
                ignore_index=-100,
            )
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        res = score(val.gold, predict(branch, val, threshold), MODEL_TYPES)
        history.append({"epoch": ep + 1, "loss": float(np.mean(losses)), "val_f1": res["f1"]})
        log(
            f"epoch {ep + 1}: loss {np.mean(losses):.4f}  val F1 {res['f1']:.4f}  "
            + "  ".join(f"{t} {v['f1']:.3f}" for t, v in res["per_type"].items())
            + f"  ({time.monotonic() - t0:.0f} s)"
        )
    branch.to("cpu")
    return branch, {"history": history}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pointsman_lab.pii_train", description=__doc__.split("\n\n")[0]
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="write train.json and validation.json")
    g.add_argument("--wheel", type=Path, required=True, help="presidio_evaluator-0.3.2 wheel")
    g.add_argument("--shared", type=Path, default=SHARED)
    g.add_argument("--out", type=Path, default=DATA)
    g.add_argument("--seed", type=int, default=13)
    g.add_argument("--presidio", type=int, default=6000, help="sentences of presidio templates")
    g.add_argument("--own", type=int, default=3000, help="sentences of our training templates")
    g.add_argument("--composed", type=int, default=12000, help="sentences composed from parts")
    g.add_argument(
        "--refill", type=int, default=0, help="refill.json: new sentences of validation templates"
    )
    t = sub.add_parser("train", help="train the branch; save pii.safetensors and pii.json")
    t.add_argument("--data", type=Path, default=DATA)
    t.add_argument(
        "--out", type=Path, default=Path("services/classifier/pointsman_classifier/models")
    )
    t.add_argument(
        "--at", type=int, default=4, help="trunk layer whose token states the branch reads"
    )
    t.add_argument("--layers", type=int, default=1, help="transformer layers of the branch")
    t.add_argument("--epochs", type=int, default=4)
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--threshold", type=float, default=0.5, help="as pii.model_threshold")
    t.add_argument("--seed", type=int, default=7)
    t.add_argument("--dropout", type=float, default=0.1)
    t.add_argument("--limit", type=int, default=0, help="first N training sentences only")
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--device", default="cpu", help="torch device for the states and the training")
    t.add_argument("--encoder", type=Path, help="encoder directory (default: the MiniLM package)")
    t.add_argument(
        "--type-weight",
        action="append",
        default=[],
        metavar="TYPE=W",
        help="loss weight of a type's tags (repeatable; default 1)",
    )
    t.add_argument("--states-only", action="store_true", help="compute and cache the states")
    args = p.parse_args(argv)
    if args.cmd == "generate":
        if os.environ.get("PYTHONHASHSEED") != "0":
            # Some Faker locales pick from sets: their order, so the data, follows the hash seed.
            env = {**os.environ, "PYTHONHASHSEED": "0"}
            os.execve(sys.executable, [sys.executable, "-m", "pointsman_lab.pii_train", *argv], env)
        sizes = pii_data.generate(
            args.shared,
            args.wheel,
            args.out,
            args.seed,
            args.presidio,
            args.own,
            args.composed,
            args.refill,
        )
        print(json.dumps(sizes))
        return 0

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    from transformers import AutoModel, AutoTokenizer

    from pointsman_classifier.encoder import DEFAULT_MAX_LENGTH, default_model_path
    from pointsman_classifier.pii import MODEL_TYPES
    from pointsman_classifier.piihead import LABELS

    path = args.encoder or default_model_path()
    tok = AutoTokenizer.from_pretrained(str(path))
    # float32 whatever the stored weights are (the carried MiniLM is float16)
    model = AutoModel.from_pretrained(str(path)).float().eval()
    rows = json.loads((args.data / "train.json").read_text(encoding="utf-8"))
    if args.limit:
        rows = random.Random(args.seed).sample(rows, min(args.limit, len(rows)))
    vrows = json.loads((args.data / "validation.json").read_text(encoding="utf-8"))
    t0 = time.monotonic()
    train = Prepared(rows, tok, LABELS, DEFAULT_MAX_LENGTH)
    val = Prepared(vrows, tok, LABELS, DEFAULT_MAX_LENGTH)
    key = hashlib.sha1(
        (args.data / "train.json").read_bytes()
        + (args.data / "validation.json").read_bytes()
        + f"{args.at}:{args.limit}:{args.seed}".encode()
    ).hexdigest()[:16]
    cache = args.data / f"states-{key}.pt"
    if cache.exists():
        train.states, val.states = torch.load(cache)
    else:
        model.to(args.device)
        train.compute_states(model, args.at)
        val.compute_states(model, args.at)
        model.to("cpu")
        torch.save((train.states, val.states), cache)
    print(f"trunk states of {len(rows)} + {len(vrows)} sentences in {time.monotonic() - t0:.0f} s")
    if args.states_only:
        return 0
    weights = {k: float(v) for k, v in (w.split("=", 1) for w in args.type_weight)}
    branch, info = train_branch(
        model,
        train,
        val,
        args.at,
        args.layers,
        args.epochs,
        args.lr,
        args.seed,
        args.threshold,
        args.dropout,
        device=args.device,
        type_weights=weights,
    )
    res = score(val.gold, predict(branch, val, args.threshold), MODEL_TYPES)
    branch.meta = {
        "encoder": "all-MiniLM-L6-v2",
        "max_length": DEFAULT_MAX_LENGTH,
        "epochs": args.epochs,
        "lr": args.lr,
        "seed": args.seed,
        "dropout": args.dropout,
        **({"type_weights": weights} if weights else {}),
        "train_sentences": len(rows),
        "trained_on": [str(args.data / "train.json")],
        "validation": {
            "file": str(args.data / "validation.json"),
            "sentences": len(vrows),
            "rule": res["rule"],
            "f1": res["f1"],
            "precision": res["precision"],
            "recall": res["recall"],
            "per_type": res["per_type"],
        },
        **info,
    }
    branch.save(args.out)
    print(
        json.dumps({"f1": res["f1"], "per_type": {k: v["f1"] for k, v in res["per_type"].items()}})
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

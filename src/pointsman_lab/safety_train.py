"""Fine-tune the safety branch: a copy of the MiniLM's upper layers plus a 3-class head.

The shipped encoder (the trunk) stays frozen: its outputs feed the category head and the PII
token head unchanged. The branch starts from the trunk's hidden state after layer ``k``, runs
copies of layers ``k..n-1`` that are fine-tuned here, takes the masked mean of their output and
a linear layer gives benign / jailbreak / injection. Several ``k`` are trained in one run so the
choice can be made against the CPU budget afterwards.

Self-contained on purpose (torch, numpy and the ``tokenizers`` package only; no Pointsman
imports), so it runs on a bare GPU machine from a folder holding ``model/`` (the MiniLM's
``config.json``, ``tokenizer.json`` and weights) and ``safety.jsonl`` (or ``.jsonl.gz``, from
:mod:`pointsman_lab.safety_data`)::

    python safety_train.py --carry DIR --out OUT --ks 5,4,3 --epochs 4

The layer arithmetic is that of ``pointsman_classifier.fastbert`` (fused query/key/value,
``scaled_dot_product_attention``, exact GELU), so the runtime computes the same function.
Writes ``branch_kK.safetensors`` per ``k`` (float16) and ``scores.npz``: ``eval_rows`` (the
evaluated rows, ``calib`` and ``validation``, by position in the file) and per ``k`` (``kK``) the class probabilities of its window with the
highest non-benign probability (windows of ``max_length`` tokens overlapping by ``stride``), and
(``win_kK``) every window's probabilities, ``win_owner`` giving each window's row in ``eval_rows``
(so that window aggregation rules can be compared on the ``calib`` split afterwards).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LABELS = ("benign", "jailbreak", "injection")
MAX_LENGTH = 256
STRIDE = 32
MAX_WINDOWS = 16


class Layer(nn.Module):
    """One BERT layer, as ``fastbert.PooledBert`` computes it."""

    def __init__(self, hidden: int, inter: int, heads: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.attn_out = nn.Linear(hidden, hidden)
        self.attn_norm = nn.LayerNorm(hidden, eps=eps)
        self.ffn_in = nn.Linear(hidden, inter)
        self.ffn_out = nn.Linear(inter, hidden)
        self.ffn_norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor, drop: float = 0.0) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        a = F.dropout(self.attn_out(a.transpose(1, 2).reshape(b, t, -1)), drop, self.training)
        x = self.attn_norm(a + x)
        f = F.dropout(self.ffn_out(F.gelu(self.ffn_in(x))), drop, self.training)
        out: torch.Tensor = self.ffn_norm(f + x)
        return out


def load_layers(weights: dict[str, torch.Tensor], cfg: dict[str, Any]) -> list[Layer]:
    out = []
    for i in range(int(cfg["num_hidden_layers"])):
        p = f"encoder.layer.{i}."
        layer = Layer(
            cfg["hidden_size"],
            cfg["intermediate_size"],
            cfg["num_attention_heads"],
            cfg["layer_norm_eps"],
        )
        sd = {
            "qkv.weight": torch.cat(
                [weights[p + f"attention.self.{n}.weight"] for n in ("query", "key", "value")]
            ),
            "qkv.bias": torch.cat(
                [weights[p + f"attention.self.{n}.bias"] for n in ("query", "key", "value")]
            ),
            "attn_out.weight": weights[p + "attention.output.dense.weight"],
            "attn_out.bias": weights[p + "attention.output.dense.bias"],
            "attn_norm.weight": weights[p + "attention.output.LayerNorm.weight"],
            "attn_norm.bias": weights[p + "attention.output.LayerNorm.bias"],
            "ffn_in.weight": weights[p + "intermediate.dense.weight"],
            "ffn_in.bias": weights[p + "intermediate.dense.bias"],
            "ffn_out.weight": weights[p + "output.dense.weight"],
            "ffn_out.bias": weights[p + "output.dense.bias"],
            "ffn_norm.weight": weights[p + "output.LayerNorm.weight"],
            "ffn_norm.bias": weights[p + "output.LayerNorm.bias"],
        }
        layer.load_state_dict({k: v.float() for k, v in sd.items()})
        out.append(layer)
    return out


class Trunk(nn.Module):
    """Frozen embeddings and layers ``0..k-1``: the hidden state the branch starts from."""

    def __init__(self, weights: dict[str, torch.Tensor], cfg: dict[str, Any], k: int) -> None:
        super().__init__()
        h = cfg["hidden_size"]
        self.word = nn.Embedding.from_pretrained(  # type: ignore[no-untyped-call]
            weights["embeddings.word_embeddings.weight"].float()
        )
        self.position = weights["embeddings.position_embeddings.weight"].float()
        self.token_type = weights["embeddings.token_type_embeddings.weight"].float()[0]
        self.norm = nn.LayerNorm(h, eps=cfg["layer_norm_eps"])
        self.norm.load_state_dict(
            {
                "weight": weights["embeddings.LayerNorm.weight"].float(),
                "bias": weights["embeddings.LayerNorm.bias"].float(),
            }
        )
        self.layers = nn.ModuleList(load_layers(weights, cfg)[:k])
        self.position = nn.Parameter(self.position, requires_grad=False)
        self.token_type = nn.Parameter(self.token_type, requires_grad=False)
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, ids: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        x = self.norm(self.word(ids) + self.position[:t] + self.token_type)
        for layer in self.layers:
            x = layer(x, attn_mask)
        out: torch.Tensor = x
        return out


class Branch(nn.Module):
    """Layers ``k..n-1`` (copies, trained) and the head over their masked mean."""

    def __init__(self, layers: list[Layer], hidden: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.head = nn.Linear(hidden, len(LABELS))

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, attn_mask: torch.Tensor, drop: float = 0.0
    ) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, attn_mask, drop)
        m = mask.to(x.dtype).unsqueeze(-1)
        pooled = (x * m).sum(dim=1, dtype=torch.float32) / m.sum(dim=1, dtype=torch.float32)
        logits: torch.Tensor = self.head(F.dropout(pooled, drop, self.training))
        return logits


def windows(
    tok: Any, texts: list[str], spans: list[tuple[int, int]] | None = None
) -> tuple[list[list[list[int]]], dict[int, list[int]]]:
    """Each text's windows: ``MAX_LENGTH`` tokens with special tokens, overlapping by
    ``STRIDE``; at most ``MAX_WINDOWS``, evenly spaced, first and last included. With ``spans``
    (a character range per text, or ``(-1, -1)``), the windows that hold most of a text's range
    are kept too and listed in the second value (text index -> positions of its windows)."""
    tok.enable_truncation(MAX_LENGTH, stride=STRIDE)
    tok.no_padding()
    out = []
    hits: dict[int, list[int]] = {}
    for j, e in enumerate(tok.encode_batch([t[: MAX_LENGTH * 8 * MAX_WINDOWS] for t in texts])):
        encs = [e, *e.overflowing]
        hit: list[int] = []
        if spans is not None and spans[j][0] >= 0:
            a, b = spans[j]
            for i, w in enumerate(encs):
                offs = [
                    o for o, sid in zip(w.offsets, w.special_tokens_mask, strict=True) if not sid
                ]
                if not offs:
                    continue
                lo, hi = offs[0][0], offs[-1][1]
                if min(b, hi) - max(a, lo) >= 0.6 * min(b - a, 600):
                    hit.append(i)
        keep = list(range(len(encs)))
        if len(encs) > MAX_WINDOWS:
            keep = sorted(
                {int(i) for i in np.linspace(0, len(encs) - 1, MAX_WINDOWS).round()} | set(hit)
            )
        out.append([encs[i].ids for i in keep])
        if spans is not None and spans[j][0] >= 0:
            hits[j] = [keep.index(i) for i in hit]
    return out, hits


def _span(value: str | None) -> tuple[int, int]:
    if not value:
        return (-1, -1)
    a, b = value.split(",")
    return (int(a), int(b))


def batches(seqs: list[list[int]], order: list[int], size: int, device: torch.device) -> Any:
    for s in range(0, len(order), size):
        idx = order[s : s + size]
        t = max(len(seqs[i]) for i in idx)
        ids = torch.zeros((len(idx), t), dtype=torch.long)
        for j, i in enumerate(idx):
            ids[j, : len(seqs[i])] = torch.tensor(seqs[i])
        mask = ids != 0
        ids, mask = ids.to(device), mask.to(device)
        yield idx, ids, mask, mask[:, None, None, :]


def _schedule(warm: int, total: int) -> Any:
    """Linear warm-up over ``warm`` steps, then linear decay to 0 at ``total``."""
    return lambda s: min(1.0, (s + 1) / warm) * max(0.0, (total - s) / max(1, total - warm))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--carry", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--ks", default="4")
    p.add_argument("--epochs", type=float, default=4.0)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--head-lr", type=float, default=1e-3)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--max-steps", type=int, default=0, help="stop each k after N steps (tests)")
    p.add_argument("--limit", type=int, default=0, help="first N rows only (tests)")
    p.add_argument("--seconds-per-k", type=float, default=1e9)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    from safetensors.torch import load_file, save_file
    from tokenizers import Tokenizer

    t0 = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(args.device)
    torch.manual_seed(0)
    random.seed(0)
    cfg = json.loads((args.carry / "model" / "config.json").read_text())
    weights = load_file(str(args.carry / "model" / "model.safetensors"))
    tok = Tokenizer.from_file(str(args.carry / "model" / "tokenizer.json"))
    src = args.carry / "safety.jsonl.gz"
    with (
        gzip.open(src, "rt", encoding="utf-8")
        if src.exists()
        else (args.carry / "safety.jsonl").open(encoding="utf-8") as f
    ):
        rows = [json.loads(line) for line in f]
    if args.limit:
        rng = random.Random(0)
        rows = rng.sample(rows, min(args.limit, len(rows)))
    spans = [_span(r.get("span")) for r in rows]
    wins, hits = windows(tok, [r["text"] for r in rows], spans)
    y_all = [LABELS.index(r["label"]) for r in rows]
    # Training windows: every window of a benign text (at most 4: it is benign everywhere),
    # the first and last of an attack (its windows between may hold only a document). An attack
    # whose place is known (``span``: synthetic deep records) gives the windows that hold it as
    # attacks and up to two others as benign (they hold only the document).
    tr_seq: list[list[int]] = []
    tr_y: list[int] = []
    tr_w: list[float] = []
    for j, (r, ws, y) in enumerate(zip(rows, wins, y_all, strict=True)):
        if r["split"] != "train":
            continue
        if j in hits:
            pos = hits[j]
            rest = [i for i in range(len(ws)) if i not in pos]
            other = [rest[i] for i in sorted(random.sample(range(len(rest)), min(2, len(rest))))]
            for i in pos:
                tr_seq.append(ws[i])
                tr_y.append(y)
                tr_w.append(1.0 / max(1, len(pos)))
            for i in other:
                tr_seq.append(ws[i])
                tr_y.append(0)
                tr_w.append(0.5)
            continue
        if y == 0:
            pick = (
                ws
                if len(ws) <= 4
                else [ws[i] for i in np.linspace(0, len(ws) - 1, 4).round().astype(int)]
            )
        else:
            pick = ws if len(ws) <= 2 else [ws[0], ws[-1]]
        for w in pick:
            tr_seq.append(w)
            tr_y.append(y)
            tr_w.append(1.0 / len(pick))
    counts = np.bincount(np.array(tr_y), minlength=3).astype(np.float64)
    class_w = torch.tensor((counts.sum() / np.maximum(counts, 1)) ** 0.5, dtype=torch.float32)
    class_w = (class_w / class_w[0]).to(dev)
    ev_rows = [i for i, r in enumerate(rows) if r["split"] != "train"]
    ev_seq: list[list[int]] = []
    ev_owner: list[int] = []
    for j, i in enumerate(ev_rows):
        for w in wins[i]:
            ev_seq.append(w)
            ev_owner.append(j)
    log: dict[str, Any] = {
        "train_windows": len(tr_seq),
        "class_counts": counts.tolist(),
        "class_weight": class_w.tolist(),
        "eval_rows": len(ev_rows),
        "eval_windows": len(ev_seq),
        "prep_s": round(time.time() - t0, 1),
        "ks": {},
    }
    print(json.dumps(log), flush=True)
    scores: dict[str, np.ndarray] = {
        "eval_rows": np.array(ev_rows, dtype=np.int32),
        "win_owner": np.array(ev_owner, dtype=np.int32),
    }
    layers_all = cfg["num_hidden_layers"]
    for k in [int(x) for x in args.ks.split(",")]:
        tk = time.time()
        trunk = Trunk(weights, cfg, k).to(dev).eval()
        branch = Branch(load_layers(weights, cfg)[k:], cfg["hidden_size"]).to(dev)
        opt = torch.optim.AdamW(
            [
                {"params": branch.layers.parameters(), "lr": args.lr},
                {"params": branch.head.parameters(), "lr": args.head_lr},
            ],
            weight_decay=0.01,
        )
        steps_per_epoch = math.ceil(len(tr_seq) / args.batch)
        total = int(steps_per_epoch * args.epochs)
        if args.max_steps:
            total = min(total, args.max_steps)
        warm = max(1, total // 20)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(warm, total))
        step = 0
        losses = []
        yw = torch.tensor(tr_y)
        ww = torch.tensor(tr_w)
        amp = dev.type == "cuda"
        while step < total and time.time() - tk < args.seconds_per_k:
            order = list(range(len(tr_seq)))
            random.shuffle(order)
            # Batches of similar length (less padding), in random order.
            chunks = [order[s : s + args.batch * 50] for s in range(0, len(order), args.batch * 50)]
            order = [i for c in chunks for i in sorted(c, key=lambda i: len(tr_seq[i]))]
            bl = list(batches(tr_seq, order, args.batch, torch.device("cpu")))
            random.shuffle(bl)
            branch.train()
            for idx, ids, mask, am in bl:
                if step >= total or time.time() - tk > args.seconds_per_k:
                    break
                ids, mask, am = ids.to(dev), mask.to(dev), am.to(dev)
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                    with torch.no_grad():
                        h = trunk(ids, am)
                    logits = branch(h, mask, am, args.dropout).float()
                yb = yw[idx].to(dev)
                loss = (
                    F.cross_entropy(logits, yb, weight=class_w, reduction="none") * ww[idx].to(dev)
                ).sum() / ww[idx].sum().to(dev)
                opt.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                torch.nn.utils.clip_grad_norm_(branch.parameters(), 1.0)
                opt.step()
                sched.step()
                losses.append(loss.item())
                step += 1
                if step % 200 == 0:
                    print(
                        f"k={k} step {step}/{total} loss {np.mean(losses[-200:]):.4f} {time.time() - tk:.0f}s",
                        flush=True,
                    )
        train_s = time.time() - tk
        # Evaluation: float32, each window's probabilities; per row the window with the highest
        # non-benign probability.
        branch.eval()
        probs = np.zeros((len(ev_seq), 3), dtype=np.float32)
        order = sorted(range(len(ev_seq)), key=lambda i: len(ev_seq[i]))
        with torch.no_grad():
            for idx, ids, mask, am in batches(ev_seq, order, 256, dev):
                logits = branch(trunk(ids, am), mask, am).float()
                probs[idx] = torch.softmax(logits, dim=-1).cpu().numpy()
        best = np.zeros((len(ev_rows), 3), dtype=np.float32)
        best[:, 0] = 2.0
        for i, o in enumerate(ev_owner):
            if probs[i, 0] < best[o, 0]:
                best[o] = probs[i]
        scores[f"k{k}"] = best
        scores[f"win_k{k}"] = probs
        np.savez(args.out / "scores.npz", **scores)  # type: ignore[arg-type]
        sd = {
            f"layers.{i}.{n}": v.detach().to(torch.float16).cpu().contiguous()
            for i, layer in enumerate(branch.layers)
            for n, v in layer.state_dict().items()
        }
        sd["head.weight"] = branch.head.weight.detach().float().cpu().contiguous()
        sd["head.bias"] = branch.head.bias.detach().float().cpu().contiguous()
        save_file(
            sd,
            str(args.out / f"branch_k{k}.safetensors"),
            metadata={
                "start_layer": str(k),
                "layers": str(layers_all - k),
                "labels": ",".join(LABELS),
            },
        )
        log["ks"][str(k)] = {
            "steps": step,
            "train_s": round(train_s, 1),
            "eval_s": round(time.time() - tk - train_s, 1),
            "final_loss": float(np.mean(losses[-100:])) if losses else None,
        }
        print(json.dumps({"k": k, **log["ks"][str(k)]}), flush=True)
        (args.out / "log.json").write_text(json.dumps(log, indent=1))
    log["total_s"] = round(time.time() - t0, 1)
    (args.out / "log.json").write_text(json.dumps(log, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

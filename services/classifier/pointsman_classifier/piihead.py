"""The PII token head: people, places and addresses, organisations, dates from the shared pass.

A *branch* of the shared encoder: it takes the token states of trunk layer ``at`` (computed for
the category and jailbreak heads anyway), runs ``layers`` transformer layers of its own
(initialised from the trunk's next layers and fine-tuned for PII by
``python -m pointsman_lab.pii_train``) and a linear layer to BIO tags over
:data:`MODEL_TYPES`. The trunk's own layers and outputs are untouched: the category and
jailbreak heads see the same features with or without the branch.

It runs inside :class:`pointsman_classifier.fastbert.PooledBert`'s forward pass, so the CPU
path and the GPU path (CUDA graphs) run the same module on the same batch. It is stored as
``pii.safetensors`` beside ``pii.json`` (labels, ``at``, shape, training and validation figures).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pointsman_classifier.fastbert import Layer, bert_layer
from pointsman_classifier.pii import MODEL_TYPES

LABELS = ("O", *(f"{p}-{t}" for t in MODEL_TYPES for p in ("B", "I")))
NAME = "pii"


class PiiBranch(nn.Module):
    """``forward(states, attn_mask) -> [batch, tokens, labels]`` tag probabilities (float32)."""

    def __init__(
        self,
        at: int,
        hidden: int,
        heads: int,
        intermediate: int,
        n_layers: int,
        labels: tuple[str, ...] = LABELS,
        eps: float = 1e-12,
        meta: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.at = at
        self.heads = heads
        self.labels = tuple(labels)
        self.shape = {"hidden": hidden, "heads": heads, "intermediate": intermediate}
        self.eps = eps
        self.meta = dict(meta or {})
        self.layers = nn.ModuleList(Layer(hidden, intermediate, eps) for _ in range(n_layers))
        self.out = nn.Linear(hidden, len(self.labels))
        #: Dropout on the states entering each layer and the output layer, in training only.
        self.dropout = 0.0
        self.eval()

    @classmethod
    def from_trunk(cls, model: Any, at: int, n_layers: int) -> PiiBranch:
        """A branch whose layers start as copies of ``model``'s layers ``at+1 .. at+n_layers``."""
        cfg = model.config
        eps = float(cfg.layer_norm_eps)
        branch = cls(
            at,
            int(cfg.hidden_size),
            int(cfg.num_attention_heads),
            int(cfg.intermediate_size),
            n_layers,
            eps=eps,
        )
        trunk = model.encoder.layer
        for i in range(n_layers):
            src = trunk[min(at + i, len(trunk) - 1)]
            branch.layers[i] = Layer.from_hf(src, copy=True)
        return branch

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        return torch.softmax(self.logits(x, attn_mask).float(), dim=-1)

    def logits(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        drop = self.dropout if self.training else 0.0
        for layer in self.layers:
            x = bert_layer(F.dropout(x, drop) if drop else x, attn_mask, self.heads, layer)
        out: torch.Tensor = self.out(F.dropout(x, drop) if drop else x)
        return out

    def save(self, directory: Path) -> tuple[Path, Path]:
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        wpath, jpath = directory / f"{NAME}.safetensors", directory / f"{NAME}.json"
        # float16 halves the shipped file; the weights are loaded back as float32.
        save_file(
            {k: v.detach().to(torch.float16).contiguous() for k, v in self.state_dict().items()},
            str(wpath),
        )
        doc = {
            "name": NAME,
            "labels": list(self.labels),
            "at": self.at,
            "layers": len(self.layers),
            **self.shape,
            "layer_norm_eps": self.eps,
            **self.meta,
        }
        jpath.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        return wpath, jpath


def load(directory: Path) -> PiiBranch | None:
    """The branch stored in ``directory``, or ``None`` when it holds none."""
    from safetensors.torch import load_file

    wpath, jpath = directory / f"{NAME}.safetensors", directory / f"{NAME}.json"
    if not wpath.exists() or not jpath.exists():
        return None
    doc = json.loads(jpath.read_text(encoding="utf-8"))
    known = {"name", "labels", "at", "layers", "hidden", "heads", "intermediate", "layer_norm_eps"}
    branch = PiiBranch(
        int(doc["at"]),
        int(doc["hidden"]),
        int(doc["heads"]),
        int(doc["intermediate"]),
        int(doc["layers"]),
        tuple(doc["labels"]),
        float(doc["layer_norm_eps"]),
        {k: v for k, v in doc.items() if k not in known},
    )
    state = {k: v.float() for k, v in load_file(str(wpath)).items()}
    branch.load_state_dict(state)
    return branch.eval()

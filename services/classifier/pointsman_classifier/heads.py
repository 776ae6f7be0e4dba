"""Small classification heads over the shared encoder's pooled features.

A head is a standardisation, an optional hidden layer (ReLU) and a linear layer with softmax,
stored as ``NAME.safetensors`` (the weights) beside ``NAME.json`` (labels, which encoder layers it
reads, how it was trained, its validation figures). It runs in numpy: after the encoder the
features are a few KB per text, so the head costs microseconds and needs no device.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from safetensors.numpy import load_file, save_file

from pointsman_classifier.encoder import Features

_HALF = frozenset({"w1", "w_out"})

#: The frozen-feature heads shipped in the package (``pointsman train`` on ../shared/data); the
#: jailbreak check ships as a fine-tuned safety branch (fastbert.SafetyBranch, models/safety.*).
SHIPPED = ("category",)


class HeadError(Exception):
    """A head's files are missing or do not match the encoder."""


@dataclass
class Head:
    """``labels[i]`` is the class of output column i; ``layers`` the encoder layers read."""

    name: str
    labels: list[str]
    layers: list[int]
    weights: dict[str, npt.NDArray[np.float32]]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def input_dim(self) -> int:
        return int(self.weights["mean"].shape[0])

    def logits(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        w = self.weights
        h: npt.NDArray[np.float32] = (x - w["mean"]) / w["std"]
        if "w1" in w:
            h = np.maximum(h @ w["w1"].T + w["b1"], np.float32(0.0))
        out: npt.NDArray[np.float32] = h @ w["w_out"].T + w["b_out"]
        return out

    def probs_from(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        z = self.logits(x)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        p: npt.NDArray[np.float32] = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
        return p

    def probs(self, features: Features) -> npt.NDArray[np.float32]:
        """``[batch, n_labels]`` class probabilities."""
        return self.probs_from(features.select(self.layers))

    def save(self, directory: Path) -> tuple[Path, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        wpath = directory / f"{self.name}.safetensors"
        jpath = directory / f"{self.name}.json"
        # Matrices in float16 halve the shipped files at no measurable cost in accuracy; the
        # standardisation stays float32 (it divides by small numbers).
        save_file(
            {
                k: np.ascontiguousarray(v, dtype=np.float16 if k in _HALF else np.float32)
                for k, v in self.weights.items()
            },
            str(wpath),
        )
        doc = {"name": self.name, "labels": self.labels, "layers": self.layers, **self.meta}
        jpath.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        return wpath, jpath


def load(name: str, directory: Path | None = None) -> Head:
    """Load head ``name`` from ``directory``, or the one shipped with the package."""
    base = directory if directory is not None else shipped_dir()
    wpath = base / f"{name}.safetensors"
    jpath = base / f"{name}.json"
    if not wpath.exists() or not jpath.exists():
        raise HeadError(
            f"head '{name}' not found in {base} (need {wpath.name} and {jpath.name}); "
            "train one with 'pointsman train'"
        )
    doc = json.loads(jpath.read_text(encoding="utf-8"))
    weights = {k: v.astype(np.float32) for k, v in load_file(str(wpath)).items()}
    meta = {k: v for k, v in doc.items() if k not in {"name", "labels", "layers"}}
    head = Head(name, list(doc["labels"]), [int(i) for i in doc["layers"]], weights, meta)
    if weights["w_out"].shape[0] != len(head.labels):
        raise HeadError(
            f"head '{name}': {len(head.labels)} labels but {weights['w_out'].shape[0]} outputs"
        )
    return head


def shipped_dir() -> Path:
    # Beside this module rather than importlib.resources: an editable install made before the
    # package had its __init__ resolves it as a namespace package, which resources rejects.
    return Path(__file__).resolve().parent / "models"


def check_encoder(head: Head, hidden_size: int, n_layers: int) -> None:
    """Fail at start-up, not on the first request, when a head was trained on another encoder."""
    expected = hidden_size * len(head.layers)
    if head.input_dim != expected or any(abs(i) > n_layers for i in head.layers):
        raise HeadError(
            f"head '{head.name}' expects {head.input_dim} features from layers {head.layers}, "
            f"but the encoder gives {hidden_size} per layer and has {n_layers} layers; "
            "retrain the head for this encoder with 'pointsman train --encoder ...'"
        )

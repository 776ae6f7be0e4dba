"""Pooled encoder features of training sets, cached on disk.

Embedding the training sets is the slow part of ``pointsman train`` on a CPU (minutes); the heads
themselves train in seconds. The cache is keyed by the encoder, the truncation length and the exact
texts, so a changed data file or model never reuses stale features.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import numpy.typing as npt

from pointsman_classifier.encoder import Encoder

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path(".cache") / "pointsman-classifier"


def _key(encoder: Encoder, texts: list[str]) -> str:
    h = hashlib.sha256()
    # int8 and float32 encoders give slightly different features: never mix them.
    key = f"{encoder.path.resolve()}|{encoder.max_length}|{len(texts)}"
    if encoder.quantize != "none":
        key += f"|{encoder.quantize}"
    h.update(key.encode())
    for t in texts:
        h.update(t.encode("utf-8", "replace"))
        h.update(b"\0")
    return h.hexdigest()[:24]


def encode_many(
    encoder: Encoder,
    texts: list[str],
    batch_size: int = 32,
    progress: bool = True,
    desc: str = "embedding",
) -> npt.NDArray[np.float32]:
    """Pooled layers for many texts, batched by length (less padding, much faster on CPU)."""
    from tqdm import tqdm  # type: ignore[import-untyped]

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), encoder.n_layers + 1, encoder.hidden_size), dtype=np.float32)
    bar = tqdm(total=len(texts), desc=desc, unit="text", disable=not progress)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        feats = encoder([texts[i] for i in idx])
        out[idx] = feats.layers
        bar.update(len(idx))
    bar.close()
    return out


def features(
    encoder: Encoder,
    texts: list[str],
    cache_dir: Path | None = DEFAULT_CACHE_DIR,
    batch_size: int = 32,
    desc: str = "embedding",
) -> npt.NDArray[np.float32]:
    """``[n, layers, hidden]`` pooled features of ``texts``, from the cache when present."""
    path = cache_dir / f"{_key(encoder, texts)}.npy" if cache_dir is not None else None
    if path is not None and path.exists():
        log.info("features of %d texts from cache %s", len(texts), path)
        cached: npt.NDArray[np.float32] = np.load(path).astype(np.float32)
        return cached
    out = encode_many(encoder, texts, batch_size=batch_size, desc=desc)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, out.astype(np.float16))
    return out

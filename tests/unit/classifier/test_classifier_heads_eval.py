"""Head files round-trip; evaluation metrics; the shipped heads match the shipped encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pointsman_classifier import heads
from pointsman_classifier.encoder import Features
from pointsman_lab.evaluate import macro_f1, per_class


def test_head_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w = {
        "mean": rng.normal(size=8).astype(np.float32),
        "std": np.ones(8, np.float32),
        "w1": rng.normal(size=(4, 8)).astype(np.float32),
        "b1": np.zeros(4, np.float32),
        "w_out": rng.normal(size=(3, 4)).astype(np.float32),
        "b_out": np.zeros(3, np.float32),
    }
    head = heads.Head("h", ["a", "b", "c"], [1, 2], w, {"note": "x"})
    head.save(tmp_path)
    back = heads.load("h", tmp_path)
    assert back.labels == ["a", "b", "c"] and back.layers == [1, 2] and back.meta["note"] == "x"
    feats = Features(rng.normal(size=(5, 3, 4)).astype(np.float32), [1] * 5)
    p1, p2 = head.probs(feats), back.probs(feats)
    assert p1.shape == (5, 3)
    np.testing.assert_allclose(p2.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(p1, p2, atol=2e-2)  # matrices are stored in float16


def test_missing_head_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(heads.HeadError, match="pointsman train"):
        heads.load("category", tmp_path)


@pytest.mark.parametrize("name", heads.SHIPPED)
def test_shipped_heads_fit_minilm(name: str) -> None:
    head = heads.load(name)
    heads.check_encoder(head, hidden_size=384, n_layers=6)
    with pytest.raises(heads.HeadError, match="retrain"):
        heads.check_encoder(head, hidden_size=768, n_layers=12)


def test_per_class_and_macro_f1() -> None:
    table, cm = per_class(["a", "a", "b", "b"], ["a", "b", "b", "b"], ["a", "b"])
    assert cm.tolist() == [[1, 1], [0, 2]]
    assert table["a"]["precision"] == 1.0 and table["a"]["recall"] == 0.5
    assert table["b"]["precision"] == pytest.approx(2 / 3)
    assert macro_f1(table) == pytest.approx((2 / 3 + 0.8) / 2)

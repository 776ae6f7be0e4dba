"""Bring-your-own Hugging Face models: label maps from their config, spans from token labels."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")


def _tiny(tmp: Path, kind: str, labels: list[str]) -> str:
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForSequenceClassification,
        BertForTokenClassification,
    )

    from pointsman_classifier.encoder import default_model_path

    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        id2label=dict(enumerate(labels)),
        label2id={lab: i for i, lab in enumerate(labels)},
    )
    cls = BertForTokenClassification if kind == "tok" else BertForSequenceClassification
    d = tmp / kind
    cls(cfg).save_pretrained(d)
    AutoTokenizer.from_pretrained(str(default_model_path())).save_pretrained(d)
    return str(d)


def test_byo_models_replace_heads_and_add_pii(tmp_path: Path) -> None:
    from pointsman_classifier.config import ClassifierConfig
    from pointsman_classifier.engine import Engine

    cats = ["math", "law", "other"]
    cfg = ClassifierConfig.model_validate(
        {
            "device": "cpu",
            "threads": 1,
            "category": {"model": _tiny(tmp_path, "seq", cats)},
            "jailbreak": {"model": _tiny(tmp_path, "jb", ["SAFE", "INJECTION"])},
            "pii": {
                "model": _tiny(tmp_path, "tok", ["O", "B-PERSON", "I-PERSON"]),
                "model_threshold": 0.0,
            },
        }
    )
    engine = Engine(cfg)
    [out] = engine.run(["My name is John Smith, what is 2+2?"])
    assert out.categories is not None and set(out.categories) == set(cats)
    assert abs(sum(out.categories.values()) - 1) < 1e-5
    assert out.jailbreak is not None and 0 <= out.jailbreak <= 1
    # Both heads are the models' own and the semantic cache is off: no sentence embedding needed.
    assert out.embedding is None and out.tokens > 0
    assert all(f.entity_type == "PERSON" and f.source == "model" for f in out.pii)


def test_spans_from_token_labels() -> None:
    from pointsman_classifier.engine import spans_from_tokens

    labels = ["O", "B-PERSON", "I-PERSON", "O", "B-ORG", "B-ORG", "O"]
    scores = [0.9, 0.9, 0.8, 0.9, 0.9, 0.3, 0.9]
    offsets = [[0, 0], [0, 4], [5, 10], [11, 13], [14, 18], [19, 22], [0, 0]]
    spans = spans_from_tokens(labels, scores, offsets, threshold=0.5)
    assert [(f.entity_type, f.start, f.end) for f in spans] == [("PERSON", 0, 10), ("ORG", 14, 18)]

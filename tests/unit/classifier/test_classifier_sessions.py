"""Sessions that stay put: the stickiness decision, and its effect on the classifier's reply."""

from __future__ import annotations

import pytest

from pointsman.v1.classify import ClassifyRequest, Message
from pointsman_classifier.config import ClassifierConfig
from pointsman_classifier.core import Signals, decide
from pointsman_classifier.sessions import Choice, stick

MATH = Choice(category="math", model="qwen3-8b")


@pytest.mark.parametrize(
    ("previous", "fresh", "probs", "keep", "verdict"),
    [
        (None, "code", {"code": 0.9}, None, "new"),
        (MATH, "math", {"math": 0.8}, "math", "kept"),
        (MATH, None, None, "math", "kept"),  # nothing classified (an empty turn): stay
        # "commit it": code, but not by far
        (MATH, "code", {"code": 0.45, "math": 0.30}, "math", "kept"),
        # clearly about something else
        (MATH, "creative", {"creative": 0.9, "math": 0.02}, None, "switched"),
        # exactly the margin switches
        (MATH, "code", {"code": 0.5, "math": 0.2}, None, "switched"),
        # the earlier category is not even scored any more: the margin is against 0
        (Choice(category="other"), "code", {"code": 0.35}, None, "switched"),
    ],
)
def test_stick(
    previous: Choice | None,
    fresh: str | None,
    probs: dict[str, float] | None,
    keep: str | None,
    verdict: str,
) -> None:
    assert stick(previous, fresh, probs, 0.3) == (keep, verdict)


def test_a_kept_category_decides_the_model_reasoning_and_headers() -> None:
    cfg = ClassifierConfig.model_validate(
        {
            "categories": {
                "math": {"models": [{"model": "qwen3-8b", "score": 1.0, "reasoning": True}]},
                "code": {"models": [{"model": "coder", "score": 1.0}]},
            },
            "jailbreak": {"enabled": False},
            "pii": {"enabled": False},
        }
    )
    req = ClassifyRequest(
        request_id="r", model="auto", messages=[Message(role="user", content="commit it")]
    )
    signals = Signals(categories={"code": 0.45, "math": 0.30})
    fresh = decide(req, signals, cfg, frozenset({"qwen3-8b", "coder"}))
    kept = decide(req, signals, cfg, frozenset({"qwen3-8b", "coder"}), keep_category="math")
    assert (fresh.model, fresh.category) == ("coder", "code")
    assert (kept.model, kept.category, kept.reasoning) == ("qwen3-8b", "math", True)
    assert kept.headers["x-pointsman-category"] == "math"
    assert kept.headers["x-pointsman-confidence"] == "0.300"

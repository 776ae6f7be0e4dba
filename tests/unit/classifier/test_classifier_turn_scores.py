"""The per-process cache of turns' safety scores (``pointsman_classifier.turn_scores``)."""

from __future__ import annotations

from pointsman_classifier.turn_scores import TurnScores


def test_least_recently_used_turn_goes_first() -> None:
    scores = TurnScores(2)
    scores.put("a", 0.1)
    scores.put("b", 0.2)
    assert scores.get("a") == 0.1  # now the most recent
    scores.put("c", 0.3)
    assert (scores.get("a"), scores.get("b"), scores.get("c")) == (0.1, None, 0.3)
    assert len(scores) == 2


def test_size_zero_keeps_nothing() -> None:
    scores = TurnScores(0)
    scores.put("a", 0.5)
    assert scores.get("a") is None and len(scores) == 0


def test_a_score_of_zero_is_kept_and_odd_text_is_a_key() -> None:
    scores = TurnScores(4)
    scores.put("\ud800 lone surrogate", 0.0)
    assert scores.get("\ud800 lone surrogate") == 0.0
    assert scores.get("lone surrogate") is None

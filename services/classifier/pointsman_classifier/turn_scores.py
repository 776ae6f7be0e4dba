"""Safety scores of turns already read, so a conversation's history is scored once per turn.

A chat client resends the whole history with every request; the safety check reads each earlier
turn on its own (``jailbreak.read_roles``, :func:`pointsman_classifier.core.safety_turns`), so
without this a conversation of n turns would cost n classifications per request. Keyed by a
BLAKE2b digest of the text, so no prompt text is kept. Per process: a replica that has not seen
a turn scores it again, with the same result (scores do not depend on batch neighbours).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict


class TurnScores:
    """A bounded least-recently-used map of text -> safety score."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._scores: OrderedDict[bytes, float] = OrderedDict()

    @staticmethod
    def _key(text: str) -> bytes:
        return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()

    def get(self, text: str) -> float | None:
        key = self._key(text)
        score = self._scores.get(key)
        if score is not None:
            self._scores.move_to_end(key)
        return score

    def put(self, text: str, score: float) -> None:
        if self.size <= 0:
            return
        key = self._key(text)
        self._scores[key] = score
        self._scores.move_to_end(key)
        while len(self._scores) > self.size:
            self._scores.popitem(last=False)

    def __len__(self) -> int:
        return len(self._scores)

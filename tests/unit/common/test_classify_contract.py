"""The classify contract across a rollout: ``cached`` (added after v1) beside the older ``answer``."""

from __future__ import annotations

import msgspec

from pointsman.v1 import decode, encode
from pointsman.v1.classify import CachedAnswer, ClassifyReply, ImmediateAnswer


class ReplyBeforeCached(msgspec.Struct, kw_only=True):
    """The part of ``ClassifyReply`` a shim from before ``cached`` reads."""

    model: str
    answer: ImmediateAnswer | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)


def test_a_shim_from_before_cached_reads_a_hit_as_a_decision_to_route() -> None:
    new = ClassifyReply(model="m1", cached=CachedAnswer(content="4", similarity=0.97))
    old = decode(encode(new), ReplyBeforeCached)
    assert (old.model, old.answer) == ("m1", None)


def test_an_older_classifiers_rendered_answer_still_reads() -> None:
    old = ReplyBeforeCached(model="m1", answer=ImmediateAnswer(body=b'{"id": "x"}'))
    reply = decode(encode(old), ClassifyReply)
    assert reply.cached is None
    assert reply.answer is not None and reply.answer.body == b'{"id": "x"}'

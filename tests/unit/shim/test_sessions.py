"""Session identity: which conversation a request belongs to."""

from __future__ import annotations

from pointsman_shim.core.dialects.base import ChatTurn, LLMRequest
from pointsman_shim.core.sessions import identify


def request(*turns: tuple[str, str]) -> LLMRequest:
    return LLMRequest("openai-chat", "auto", {}, turns=[ChatTurn(r, c) for r, c in turns])


FIRST = request(("system", "be brief"), ("user", "derive x^3"))
SECOND = request(
    ("system", "be brief"), ("user", "derive x^3"), ("assistant", "3x^2"), ("user", "and again")
)


def test_every_turn_of_a_conversation_has_the_opening_identity() -> None:
    one, two = identify(FIRST, {}, "t"), identify(SECOND, {}, "t")
    assert one is not None and two is not None
    assert one.id == two.id and one.source == two.source == "conversation"
    assert not one.follow_up and two.follow_up  # a first turn inherits nothing


def test_the_opening_is_what_matters() -> None:
    other = identify(request(("system", "be brief"), ("user", "derive x^4")), {}, "t")
    no_system = identify(request(("user", "derive x^3")), {}, "t")
    base = identify(FIRST, {}, "t")
    assert other is not None and no_system is not None and base is not None
    assert len({base.id, other.id, no_system.id}) == 3


def test_tenants_never_share_a_session() -> None:
    a, b = (
        identify(SECOND, {"x-session-id": "s1"}, "alice"),
        identify(SECOND, {"x-session-id": "s1"}, "bob"),
    )
    assert a is not None and b is not None and a.id != b.id
    c, d = identify(FIRST, {}, "alice"), identify(FIRST, {}, "bob")
    assert c is not None and d is not None and c.id != d.id


def test_precedence_header_then_previous_response_then_conversation() -> None:
    header = identify(FIRST, {"x-session-id": " s1 "}, "t", inherited="c:abc")
    assert header is not None and header.source == "header" and header.follow_up
    assert header.id == identify(SECOND, {"x-session-id": "s1"}, "t").id  # type: ignore[union-attr]
    inherited = identify(FIRST, {}, "t", inherited="c:abc")
    assert inherited is not None and (inherited.id, inherited.source) == (
        "c:abc",
        "previous_response",
    )
    assert identify(request(("system", "only")), {}, "t") is None
    long_id = identify(FIRST, {"x-session-id": "x" * 10_000}, "t")
    assert long_id is not None and len(long_id.id) < 40

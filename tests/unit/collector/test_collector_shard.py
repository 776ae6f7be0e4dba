"""Rendezvous assignment: one owner each, minimal movement, even spread."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pointsman_collector.core.shard import Heartbeat, assign, live_members, owner

KEYS = st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=60, unique=True)
MEMBERS = st.lists(
    st.text("abcdefgh0123456789-", min_size=1, max_size=8), min_size=1, max_size=6, unique=True
)


@settings(max_examples=200, deadline=None)
@given(KEYS, MEMBERS)
def test_every_key_has_exactly_one_owner(keys: list[str], members: list[str]) -> None:
    shares = assign(keys, members)
    flat = [k for ks in shares.values() for k in ks]
    assert sorted(flat) == sorted(keys)
    # Order of the member list does not matter: every replica computes the same answer.
    assert assign(keys, list(reversed(members))) == {m: shares[m] for m in reversed(members)}


@settings(max_examples=200, deadline=None)
@given(KEYS, MEMBERS, st.data())
def test_removing_a_member_moves_only_its_keys(
    keys: list[str], members: list[str], data: st.DataObject
) -> None:
    gone = data.draw(st.sampled_from(members))
    rest = [m for m in members if m != gone]
    for k in keys:
        before = owner(k, members)
        after = owner(k, rest)
        if before != gone:
            assert after == before
        else:
            assert after in rest or not rest


@settings(max_examples=200, deadline=None)
@given(KEYS, MEMBERS)
def test_joining_member_only_takes_keys(keys: list[str], members: list[str]) -> None:
    new = "joiner-" + "x" * 3
    for k in keys:
        after = owner(k, [*members, new])
        assert after in (owner(k, members), new)


def test_spread_is_even() -> None:
    keys = [f"pool|10.0.{i // 250}.{i % 250}:8000" for i in range(2000)]
    shares = assign(keys, ["c1", "c2", "c3", "c4"])
    sizes = sorted(len(v) for v in shares.values())
    assert sizes[0] > 400 and sizes[-1] < 600, sizes


def test_no_members_no_owner() -> None:
    assert owner("k", []) is None


def test_live_members_leases_and_states() -> None:
    hbs = {
        "a": Heartbeat("a", 10.0),
        "b": Heartbeat("b", 9.0),  # lease ran out
        "c": Heartbeat("c", 10.0, active=False),  # warming up
        "d": Heartbeat("d", 10.0, leaving=True),
    }
    assert live_members(hbs, 10.2, 0.5, "me", True) == ["a", "me"]
    assert live_members(hbs, 10.2, 0.5, "me", False) == ["a"]

"""Which collector replica scrapes which endpoint: rendezvous (highest-random-weight) hashing.

Every replica computes the same owner for an endpoint from the same member list, so no endpoint is
scraped twice once the replicas agree on who is alive. When a member leaves, only its endpoints
move (each to the member that ranked second); when one joins, it takes about 1/N of the endpoints
and nothing else moves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


def weight(member: str, key: str) -> int:
    digest = hashlib.blake2b(f"{member}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(key: str, members: Sequence[str]) -> str | None:
    """The member that owns ``key``; None when there are no members."""
    if not members:
        return None
    return max(members, key=lambda m: (weight(m, key), m))


def assign(keys: Iterable[str], members: Sequence[str]) -> dict[str, list[str]]:
    """Every member's keys (members without keys map to an empty list)."""
    out: dict[str, list[str]] = {m: [] for m in members}
    for key in keys:
        m = owner(key, members)
        if m is not None:
            out[m].append(key)
    return out


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A replica's announcement as the membership logic sees it."""

    member: str
    seen_at: float
    active: bool = True
    leaving: bool = False


def live_members(
    heartbeats: Mapping[str, Heartbeat], now: float, lease_s: float, me: str, me_active: bool
) -> list[str]:
    """Members whose lease has not run out, that are active and not leaving; sorted.

    A replica still warming up (``active=False``) is not given endpoints yet, so the others keep
    scraping them until it is ready to take over.
    """
    members = {
        hb.member
        for hb in heartbeats.values()
        if hb.active and not hb.leaving and now - hb.seen_at <= lease_s
    }
    if me_active:
        members.add(me)
    else:
        members.discard(me)
    return sorted(members)

"""Which conversation a request belongs to: the session identity the classifier (model
stickiness) and the picker (endpoint affinity) key their session state on. Pure.

In order of precedence:

1. ``header``: the client's ``x-session-id``;
2. ``previous_response``: the session of the response a Responses API request continues (kept
   with that response, so a chain of ``previous_response_id`` turns is one session from its
   first turn, whatever identified that one);
3. ``conversation``: a hash of the conversation's opening (its system turns and first user
   turn, salted with the tenant), which every later turn of a chat-style conversation repeats.

Two conversations that open with the same words under the same credentials share a
``conversation`` identity; a first turn is therefore never treated as a follow-up (it has no
earlier assistant turn), so it cannot inherit another conversation's choices, though it does
replace them. Clients that need exact sessions send ``x-session-id``.

Every identity is a hash salted with the tenant (the SHA-256 of the request's credentials), so
two tenants never share session state, whatever ids their clients choose.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from pointsman_shim.core.dialects.base import LLMRequest


@dataclass(frozen=True, slots=True)
class Session:
    """``id`` keys the session state; ``source`` is reported in ``x-pointsman-session``;
    ``follow_up``: an earlier turn of this session may have made choices to keep."""

    id: str
    source: str
    follow_up: bool


def identify(
    request: LLMRequest,
    headers: Mapping[str, str],
    tenant: str,
    inherited: str | None = None,
) -> Session | None:
    """The request's session, ``None`` when it has none (no user turn to start one)."""
    given = headers.get("x-session-id", "").strip()
    if given:
        return Session(f"s:{_digest(tenant, given)}", "header", True)
    if inherited:
        return Session(inherited, "previous_response", True)
    first_user = next((i for i, t in enumerate(request.turns) if t.role == "user"), None)
    if first_user is None:
        return None
    opening = [
        f"{t.role}\x1f{t.content}"
        for t in request.turns[: first_user + 1]
        if t.role in ("system", "user")
    ]
    follow_up = any(t.role == "assistant" for t in request.turns[first_user:])
    return Session(f"c:{_digest(tenant, *opening)}", "conversation", follow_up)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1e".join(parts).encode()).hexdigest()[:32]

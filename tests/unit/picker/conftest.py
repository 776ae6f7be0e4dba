"""Builders for the picker's unit tests: endpoints and cycles with fixed time and seed."""

from __future__ import annotations

import random
from typing import Any

from pointsman_picker.core.framework import Cycle, PrefixLookup, Session
from pointsman_picker.core.types import Endpoint, Request

NOW = 1000.0


def ep(address: str, **kw: Any) -> Endpoint:
    kw.setdefault("scraped_at", NOW - 0.05)
    return Endpoint(address=address, **kw)


def cycle(
    prompt: str | None = None,
    *,
    prefix: PrefixLookup | None = None,
    sessions: dict[str, Session] | None = None,
    seed: int = 0,
    **req: Any,
) -> Cycle:
    req.setdefault("request_id", "r1")
    req.setdefault("model", "m")
    req.setdefault("pool", "m")
    c = Cycle(request=Request(prompt=prompt, **req), now=NOW, rng=random.Random(seed))
    if prefix is not None:
        c.prefix = prefix
    if sessions is not None:
        c.sessions = sessions.get
    return c

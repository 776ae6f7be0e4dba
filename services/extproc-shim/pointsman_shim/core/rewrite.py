"""Apply a routing decision to the request body.

The classifier decides *what* changes (model, reasoning switches, system prompt); this module only
knows *how* to apply generic changes to an OpenAI body, so the shim carries no routing policy.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pointsman_shim.core.openai import LLMRequest


def deep_merge(target: dict[str, Any], changes: dict[str, Any]) -> None:
    """Merge ``changes`` into ``target`` in place: nested objects merge, everything else replaces."""
    for key, value in changes.items():
        current = target.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            deep_merge(current, value)
        else:
            target[key] = copy.deepcopy(value)


def rewrite(
    request: LLMRequest,
    *,
    model: str,
    body_set: dict[str, Any] | None = None,
    system_prompt: str | None = None,
    system_prompt_mode: Literal["insert", "replace"] = "insert",
) -> dict[str, Any] | None:
    """The new body, or ``None`` when nothing changes (so the original bytes pass untouched).

    ``insert`` puts the system prompt before the client's messages (after any system messages the
    client sent, so the client's own instructions keep the last word); ``replace`` drops the
    client's system messages for ours.
    """
    body = dict(request.body)  # shallow: nested values are copied before they change
    body["model"] = model
    if body_set:
        for key in body_set:
            if isinstance(body.get(key), dict):
                body[key] = copy.deepcopy(body[key])
        deep_merge(body, body_set)
    if system_prompt is not None and request.kind == "chat":
        messages = list(body.get("messages") or [])
        system = {"role": "system", "content": system_prompt}
        if system_prompt_mode == "replace":
            messages = [system, *(m for m in messages if m.get("role") != "system")]
        else:
            first_other = next(
                (i for i, m in enumerate(messages) if m.get("role") != "system"), len(messages)
            )
            messages.insert(first_other, system)
        body["messages"] = messages
    return None if body == request.body else body

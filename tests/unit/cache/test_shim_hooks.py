"""The shim's part of the cache: what it sends the classifier (tenant hash, cache parameters)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pointsman.v1.classify import ClassifyRequest
from pointsman_shim.core.dialects import openai_chat
from pointsman_shim.core.policy import classify_request


def classify(headers: dict[str, str], **body: Any) -> ClassifyRequest:
    raw = json.dumps({"model": "m", "messages": [{"role": "user", "content": "q"}], **body})
    request = openai_chat.DIALECT.parse(raw.encode(), max_bytes=1 << 20)
    return classify_request(request, headers, "r")


def test_tenant_is_a_hash_of_authorization_and_cannot_be_forged() -> None:
    sent = classify({"authorization": "Bearer sk-secret", "x-tenant-id": "t1"})
    assert sent.headers["x-pointsman-tenant"] == hashlib.sha256(b"Bearer sk-secret").hexdigest()
    assert "authorization" not in sent.headers and sent.headers["x-tenant-id"] == "t1"
    forged = classify({"x-pointsman-tenant": "someone-else"})
    assert "x-pointsman-tenant" not in forged.headers


def test_cache_parameters_reach_the_classifier() -> None:
    sent = classify(
        {"cache-control": "no-cache"},
        stream=True,
        stream_options={"include_usage": True},
        stop=["\n"],
        temperature=0,
    )
    assert sent.headers["cache-control"] == "no-cache"
    assert sent.params["stream_options"] == {"include_usage": True}
    assert sent.params["stop"] == ["\n"] and sent.params["stream"] is True

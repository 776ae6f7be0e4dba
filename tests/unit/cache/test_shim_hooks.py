"""The shim's part of the cache: what it sends the classifier (tenant hash, cache parameters)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pointsman.v1.classify import ClassifyReply, ClassifyRequest
from pointsman_shim.config import ShimConfig
from pointsman_shim.core.openai import parse
from pointsman_shim.handlers import Processor, Stream


class FakeBus:
    def __init__(self) -> None:
        self.sent: list[ClassifyRequest] = []

    async def classify(self, request: ClassifyRequest, timeout: float) -> ClassifyReply:
        self.sent.append(request)
        return ClassifyReply(model=request.model)


async def classify(headers: dict[str, str], **body: Any) -> ClassifyRequest:
    bus = FakeBus()
    proc = Processor(ShimConfig(), bus)  # type: ignore[arg-type]
    raw = json.dumps({"model": "m", "messages": [{"role": "user", "content": "q"}], **body})
    await proc._classify(Stream(headers=headers), parse("chat", raw.encode(), max_bytes=1 << 20))
    return bus.sent[0]


async def test_tenant_is_a_hash_of_authorization_and_cannot_be_forged() -> None:
    sent = await classify({"authorization": "Bearer sk-secret", "x-tenant-id": "t1"})
    assert sent.headers["x-pointsman-tenant"] == hashlib.sha256(b"Bearer sk-secret").hexdigest()
    assert "authorization" not in sent.headers and sent.headers["x-tenant-id"] == "t1"
    forged = await classify({"x-pointsman-tenant": "someone-else"})
    assert "x-pointsman-tenant" not in forged.headers


async def test_cache_parameters_reach_the_classifier() -> None:
    sent = await classify(
        {"cache-control": "no-cache"},
        stream=True,
        stream_options={"include_usage": True},
        stop=["\n"],
        temperature=0,
    )
    assert sent.headers["cache-control"] == "no-cache"
    assert sent.params["stream_options"] == {"include_usage": True}
    assert sent.params["stop"] == ["\n"] and sent.params["stream"] is True

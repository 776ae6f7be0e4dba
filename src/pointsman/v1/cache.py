"""Contracts of the semantic cache: the shim stores answers, classifier replicas share entries.

A classifier that misses its cache lookup hands the shim an opaque ``cache_store`` token in the
:class:`~pointsman.v1.classify.ClassifyReply`. When the upstream answer is complete and 2xx the
shim reassembles it (JSON or SSE) and publishes one :class:`CacheStore` to the classifiers' queue
group: any replica completes the store, because the lookup parked what it knew (tenant, partition,
embedding) in Redis under the token. The replica that wrote the entry announces it with a
:class:`CacheEvent` to every replica (plain pub/sub, no queue group), so each keeps its in-process
vector index in sync without scanning Redis per request.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from pointsman.v1.subjects import PREFIX

#: Pub/sub into a queue group, shim -> one classifier: :class:`CacheStore`.
CACHE_STORE = f"{PREFIX}.cache.store"
CACHE_STORE_QUEUE = "pointsman-classifier-cache"
#: Pub/sub, classifier -> every classifier replica: :class:`CacheEvent`.
CACHE_EVENTS = f"{PREFIX}.cache.events"


class CacheStore(msgspec.Struct, kw_only=True):
    """One complete upstream answer to store under the token of a missed lookup.

    ``content`` is the whole generated text (chat ``message.content`` or completion ``text``);
    ``usage`` the upstream's token counts when it reported them.
    """

    token: str
    request_id: str = ""
    model: str = ""
    status: int = 200
    content: str
    role: str = "assistant"
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class CacheEvent(msgspec.Struct, kw_only=True):
    """An entry added to (``add``) or removed from (``remove``) the shared cache.

    ``embedding`` is the little-endian float32 vector of the prompt (``add`` only), so replicas
    index the entry without reading it from Redis; ``expires_at`` is Unix time.
    """

    op: Literal["add", "remove"]
    id: str
    partition: str = ""
    embedding: bytes = b""
    expires_at: float = 0.0
    origin: str = ""

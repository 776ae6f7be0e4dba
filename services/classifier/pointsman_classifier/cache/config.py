"""The ``classifier.cache`` section (semantic cache); every key has a default.

Documented with an example in services/classifier/README.md.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pointsman.redisconf import RedisBacked


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CacheOverride(_Strict):
    """Per category or per model: switch the cache off or use another similarity threshold."""

    enabled: bool | None = None
    threshold: float | None = Field(default=None, ge=0, le=1)


class CacheConfig(_Strict, RedisBacked):
    """``redis_url``, ``redis_timeout_ms``, ``redis_retry_s``: see :class:`RedisBacked`; while
    Redis is down, lookups miss and stores drop."""

    enabled: bool = False
    #: Prefix of every Redis key of the cache (several deployments may share one Redis).
    key_prefix: str = "pointsman:cache"
    #: Cosine similarity of the prompt embeddings at or above which a stored answer is returned.
    threshold: float = Field(default=0.92, ge=0, le=1)
    #: Requests with a higher ``temperature`` are neither answered from nor stored in the cache.
    max_temperature: float = Field(default=1.0, ge=0)
    #: The temperature assumed when a request sends none (engines default to 1.0).
    default_temperature: float = Field(default=1.0, ge=0)
    #: Seconds an entry lives (Redis TTL and the index's expiry).
    ttl_s: float = Field(default=3600.0, gt=0)
    #: Memory bound: past this many entries the least recently used are evicted.
    max_entries: int = Field(default=100_000, ge=1)
    #: Answers longer than this (bytes of UTF-8 content) are not stored.
    max_answer_bytes: int = Field(default=256 * 1024, ge=1)
    #: Store answers cut by ``max_tokens`` (``finish_reason: length``) too.
    store_truncated: bool = False
    #: Request header whose value is the tenant (lower case). ``x-pointsman-tenant`` is the
    #: SHA-256 of the request's ``authorization`` header, computed by the shim.
    tenant_header: str = "x-tenant-id"
    #: Seconds a missed lookup's token waits for the shim to store the answer.
    pending_ttl_s: float = Field(default=600.0, gt=0)
    #: ``hnsw`` (hnswlib, approximate) or ``exact`` (numpy brute force); ``auto`` = hnsw when
    #: hnswlib is installed, else exact. See bench/cache for the figures behind the default.
    index: Literal["auto", "hnsw", "exact"] = "auto"
    #: With ``hnsw``: a partition is searched exactly until it holds this many entries.
    hnsw_from: int = Field(default=4096, ge=1)
    #: HNSW search breadth (``ef``): higher = better recall, slower search.
    hnsw_ef: int = Field(default=128, ge=1)
    categories: dict[str, CacheOverride] = Field(default_factory=dict)
    models: dict[str, CacheOverride] = Field(default_factory=dict)

"""Pool snapshots for picker tests, as the collector would publish them."""

from __future__ import annotations

import time

from pointsman.v1 import EndpointMetrics, PoolSnapshot


def snapshot(pool: str, **waiting: int) -> PoolSnapshot:
    """One fresh snapshot; each keyword is an endpoint (``a_b_c_d-8000`` is ``a.b.c.d:8000``,
    ``a-1`` is ``a:1``) with its queue length."""
    now = time.time()
    return PoolSnapshot(
        pool=pool,
        collector="test",
        published_at=now,
        endpoints=[
            EndpointMetrics(
                address=addr.replace("_", ".").replace("-", ":"), scraped_at=now, waiting=w
            )
            for addr, w in waiting.items()
        ],
    )

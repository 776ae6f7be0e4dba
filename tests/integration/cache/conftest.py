"""A whole stack with the semantic cache on: its own redis-server (so a test can stop it)."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from pointsman.stack import Stack, StackOptions
from pointsman.stack.procs import free_port
from tests.helpers import procs

#: Short entries, so the TTL test waits seconds; every other test stores and hits well within.
TTL_S = 6.0
SIM_ARGS = ["--time-scale", "0.02", "--max-num-seqs", "4"]


@dataclass
class CacheStack:
    stack: Stack
    redis_url: str
    redis: procs.Proc

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the classifier's samples of ``name`` matching ``labels``."""
        port = self.stack.ports["classifier_http"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
        total = 0.0
        for line in text.splitlines():
            m = re.match(rf"^{name}(\{{[^}}]*\}})? (\S+)$", line)
            if not m:
                continue
            lab = m.group(1) or ""
            if all(f'{k}="{v}"' in lab for k, v in labels.items()):
                total += float(m.group(2))
        return total


@pytest.fixture(scope="module")
def cache_stack() -> Iterator[CacheStack]:
    port = free_port()
    argv = [procs.redis_server_binary(), "--bind", "127.0.0.1", "--port", str(port)]
    argv += ["--save", "", "--appendonly", "no"]
    redis = procs.spawn("redis-server", argv)
    try:
        procs.wait_until(lambda: procs.port_open(port), 15, "redis-server", redis)
        url = f"redis://127.0.0.1:{port}/0"
        options = StackOptions(
            models=["alpha"],
            replicas=1,
            gateway_port=0,
            sim_args=SIM_ARGS,
            classifier=True,
            overrides={
                "shim": {"pick_timeout_ms": 500, "classifier": {"timeout_ms": 5000}},
                "classifier": {
                    "default_model": "alpha",
                    "device": "cpu",
                    # The simulator ends every answer with an explicit limit as "length", and a
                    # Messages request always has one (max_tokens): store those answers too.
                    "cache": {
                        "enabled": True,
                        "redis_url": url,
                        "ttl_s": TTL_S,
                        "store_truncated": True,
                    },
                },
            },
        )
        with Stack(options) as stack:
            yield CacheStack(stack, url, redis)
    finally:
        redis.stop()

"""Whole-stack fixtures: real nats-server, collector, picker, shim, Envoy and simulators."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from pointsman.stack import Stack, StackOptions

#: Fast simulators: every simulated duration x0.02, short default outputs.
SIM_ARGS = ["--time-scale", "0.02", "--max-num-seqs", "4"]


def make_stack(**options: object) -> Stack:
    defaults: dict[str, object] = {
        "models": ["alpha", "beta"],
        "replicas": 2,
        "gateway_port": 0,
        "sim_args": SIM_ARGS,
        "overrides": {"shim": {"pick_timeout_ms": 300}},
    }
    defaults.update(options)
    return Stack(StackOptions(**defaults))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """BUFFERED body mode, fail-open."""
    with make_stack() as s:
        yield s


def waiting(endpoint: str) -> float:
    """The engine's own ``vllm:num_requests_waiting``, read from its /metrics."""
    text = httpx.get(f"http://{endpoint}/metrics").text
    line = next(x for x in text.splitlines() if x.startswith("vllm:num_requests_waiting{"))
    return float(line.rsplit(" ", 1)[1])


@contextlib.contextmanager
def queue_filled(endpoint: str, model: str, *, requests: int, min_waiting: int) -> Iterator[None]:
    """Long generations sent straight to one replica (not through the gateway) until its
    waiting queue holds ``min_waiting``; the block runs while they are queued."""

    def long_request() -> None:
        with httpx.Client(timeout=120) as c:
            body = {
                "model": model,
                "messages": [{"role": "user", "content": "hello"}],
                "max_tokens": 4000,
            }
            c.post(f"http://{endpoint}/v1/chat/completions", json=body)

    threads = [threading.Thread(target=long_request) for _ in range(requests)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 15
        while waiting(endpoint) < min_waiting:
            assert time.monotonic() < deadline, f"{endpoint} never queued {min_waiting} requests"
            time.sleep(0.05)
        time.sleep(0.3)  # the collector's next snapshot reaches the picker
        yield
    finally:
        for t in threads:
            t.join()

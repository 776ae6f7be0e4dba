"""The chaos suite's stack: every part a real process, supervised, under a steady load."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.chaos.scenario import Row, SteadyLoad, chaos_options, table
from pointsman.stack import Stack
from pointsman.stack.supervisor import RestartPolicy

ROWS: list[Row] = []
#: Seconds from SIGTERM to exit per service: {"with NATS": {...}, "NATS gone": {...}}.
EXITS: dict[str, dict[str, float]] = {}


@pytest.fixture(scope="module")
def chaos() -> Iterator[tuple[Stack, SteadyLoad]]:
    """``POINTSMAN_CHAOS_CLASSIFIER=0`` leaves the classifier out (faster)."""
    with_classifier = os.environ.get("POINTSMAN_CHAOS_CLASSIFIER", "1") != "0"
    with Stack(chaos_options(with_classifier)) as stack:
        stack.supervise(policy=RestartPolicy(initial_s=0.2, max_s=5.0))
        models = [*stack.pools, *(["auto"] if with_classifier else [])]
        load = SteadyLoad(stack.gateway_url, models, rate=10.0)
        load.start()
        try:
            yield stack, load
        finally:
            load.stop()
    if ROWS:
        print("\n" + table(ROWS))
        out = Path(os.environ.get("POINTSMAN_CHAOS_OUT", "/tmp/pointsman-chaos.json"))
        for case, exits in EXITS.items():
            print(f"SIGTERM to exit, {case}: {exits}")
        out.write_text(
            json.dumps({"rows": [r.as_dict() for r in ROWS], "sigterm_exit_s": EXITS}, indent=2)
        )

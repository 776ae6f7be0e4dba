"""Fuzz: hundreds of bad inputs through a real Envoy and the real shim (bench/fuzz/corpus.py).

Every error must be a 4xx/5xx with a JSON body in the API's error format, nothing that must be
refused may get a 2xx, the valid controls still get 200, every request gets an answer, and the
shim never hits an unexpected exception (``pointsman_shim_internal_errors_total`` stays absent).
The same corpus, larger, through the whole ``pointsman up`` stack: ``python -m bench.fuzz``.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest

from bench.fuzz.corpus import cases
from bench.fuzz.run import run
from tests.integration.gateway.conftest import MAX_BODY, Envoy, Shim, envoy, replicas

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gateway(shim: Shim) -> Iterator[Envoy]:
    with (
        replicas("alpha", 2) as alpha,
        envoy({"alpha": [r.endpoint for r in alpha]}, shim.port) as gw,
    ):
        yield gw


def test_bad_inputs_get_json_errors_and_nothing_breaks(gateway: Envoy, shim: Shim) -> None:
    corpus = cases("alpha", MAX_BODY, seed=12, random_count=120)
    report = run(gateway.url, corpus, workers=4)
    print("\n" + report.table())
    for case, answer, _ in report.problems + report.notable():
        print(case.family, case.name, answer.status, answer.body[:160])
    details = [
        f"{case.family}/{case.name} ({case.method} {case.path[:40]}): {'; '.join(found)}"
        for case, _, found in report.problems
    ]
    assert not details, "\n".join(details)
    assert report.sent == len(corpus) >= 250
    with urllib.request.urlopen(f"http://127.0.0.1:{shim.http_port}/metrics", timeout=5) as r:
        metrics = r.read().decode()
    assert "pointsman_shim_internal_errors_total{" not in metrics

"""The inline response path (one ext_proc filter that also sends the response, as a Gateway API
Inference Extension gateway or the Istio overlay configure it), through a real Envoy."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pointsman.stack import Stack
from tests.integration.e2e.conftest import make_stack, post_and_collect_completions

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def inline_stack() -> Iterator[Stack]:
    with make_stack(response_path="inline") as s:
        yield s


def test_inline_stream_reports_headers_and_one_completion(inline_stack: Stack) -> None:
    events, responses = post_and_collect_completions(
        inline_stack,
        [
            (
                {
                    "model": "beta",
                    "messages": [{"role": "user", "content": "Hello"}],
                    "max_tokens": 4,
                    "stream": stream,
                    **({"stream_options": {"include_usage": True}} if stream else {}),
                },
                {"x-request-id": f"inline-{i}"},
            )
            for i, stream in enumerate((False, True))
        ],
        "inline-",
    )
    assert sorted(e.request_id for e in events) == ["inline-0", "inline-1"]
    by_id = {e.request_id: e for e in events}
    for i, r in enumerate(responses):
        assert r.status_code == 200, r.text
        assert r.headers["x-selected-model"] == "beta"
        assert r.headers["x-pointsman-endpoint"] == r.headers["x-sim-endpoint"]
        e = by_id[f"inline-{i}"]
        assert e.endpoint == r.headers["x-sim-endpoint"]
        assert e.completion_tokens == 4
    assert by_id["inline-1"].stream and not by_id["inline-0"].stream

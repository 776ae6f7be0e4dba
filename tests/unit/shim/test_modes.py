"""The shim's modes on real ext_proc messages: ``selector`` (model only, the gateway's pool
picker chooses the pod), ``picker`` (an endpoint picker behind another selector), and the
model-name rewrite in both."""

from __future__ import annotations

import json
from typing import Any

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from pointsman.v1 import PickReply, PickStatus
from pointsman.v1.classify import ClassifyReply
from pointsman.v1.policy import InferencePolicy, ModelRewrite, RewriteRule, RewriteTarget
from pointsman_shim.config import ShimConfig
from pointsman_shim.handlers import CONTEXT_NAMESPACE, Processor
from tests.helpers.extproc import ScriptedBus, body_msg, headers_msg, run, set_headers

CHAT = "/v1/chat/completions"


def _chat(model: str) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "2+2?"}]}).encode()


def _processor(bus: ScriptedBus, **shim: Any) -> Processor:
    config = ShimConfig.model_validate({"responses": {"redis_url": ""}, **shim})
    return Processor(config, bus, clock=lambda: 1.0, new_id=lambda: "id")


def _routed(responses: list[pb.ProcessingResponse]) -> pb.CommonResponse:
    """The body response that carries the decision (BUFFERED)."""
    return responses[-1].request_body.response


def _removed(responses: list[pb.ProcessingResponse]) -> set[str]:
    return set(responses[0].request_headers.response.header_mutation.remove_headers)


async def test_selector_sets_the_model_clears_the_route_and_picks_nothing() -> None:
    bus = ScriptedBus(
        classify=ClassifyReply(
            model="qwen3-math", headers={"x-pointsman-category": "math"}, reasoning=True
        )
    )
    processor = _processor(bus, mode="selector", classifier={"enabled": True})
    out = await run(
        processor,
        [
            headers_msg(CHAT, {"x-gateway-destination-endpoint": "10.0.0.9:8000"}),
            body_msg(_chat("auto")),
        ],
    )
    assert [c for c, _ in bus.calls if not c.startswith("publish")] == ["classify"]
    assert "x-gateway-destination-endpoint" in _removed(out)
    common = _routed(out)
    headers = set_headers(common)
    assert headers["x-selected-model"] == "qwen3-math"
    assert headers["x-pointsman-route"] == "selected"
    assert headers["x-pointsman-category"] == "math"
    assert "x-gateway-destination-endpoint" not in headers
    assert common.clear_route_cache
    assert json.loads(common.body_mutation.body)["model"] == "qwen3-math"
    assert "envoy.lb" not in out[-1].dynamic_metadata.fields


async def test_selector_passes_the_model_list_to_the_gateway() -> None:
    bus = ScriptedBus()
    out = await run(
        _processor(bus, mode="selector"), [headers_msg("/v1/models", method="GET", eos=True)]
    )
    assert bus.calls == []
    assert out[0].HasField("request_headers")


async def test_picker_mode_keeps_the_selectors_reports_and_never_classifies() -> None:
    pick = PickReply(status=PickStatus.OK, endpoints=["10.0.0.1:8000"])
    bus = ScriptedBus(pick=pick)
    processor = _processor(bus, mode="picker", classifier={"enabled": True})
    upstream = {
        "x-selected-model": "qwen3-math",
        "x-pointsman-category": "math",
        "x-gateway-destination-endpoint": "10.6.6.6:8000",
    }
    out = await run(processor, [headers_msg(CHAT, upstream), body_msg(_chat("qwen3-math"))])
    assert [c for c, _ in bus.calls if not c.startswith("publish")] == ["pick"]
    assert _removed(out) == {"x-gateway-destination-endpoint"}
    headers = set_headers(_routed(out))
    assert headers["x-gateway-destination-endpoint"] == "10.0.0.1:8000"
    assert headers["x-pointsman-route"] == "picked"
    # inline (the response comes to this stream): the selector's observer context is left alone
    assert CONTEXT_NAMESPACE not in out[-1].dynamic_metadata.fields


async def test_rewrite_from_config_and_from_the_cluster_policy() -> None:
    pick = PickReply(status=PickStatus.OK, endpoints=["10.0.0.1:8000"])
    bus = ScriptedBus(pick=pick)
    processor = _processor(
        bus,
        model_rewrites=[
            {"name": "cfg", "rules": [{"matches": ["a"], "targets": [{"model": "a-lora"}]}]}
        ],
    )
    out = await run(processor, [headers_msg(CHAT), body_msg(_chat("a"))])
    headers = set_headers(_routed(out))
    assert (headers["x-selected-model"], headers["x-pointsman-rewrite"]) == ("a-lora", "a-lora")
    assert bus.calls[-1][1].model == "a-lora"  # type: ignore[union-attr]

    processor.apply_policy(
        InferencePolicy(
            rewrites=[
                ModelRewrite(
                    name="kube",
                    rules=[RewriteRule(targets=[RewriteTarget("b-canary")], models=["b"])],
                )
            ]
        )
    )
    out = await run(processor, [headers_msg(CHAT), body_msg(_chat("b"))])
    assert set_headers(_routed(out))["x-selected-model"] == "b-canary"
    out = await run(processor, [headers_msg(CHAT), body_msg(_chat("a"))])
    assert set_headers(_routed(out))["x-selected-model"] == "a-lora"  # the config's stays

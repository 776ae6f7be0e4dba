"""The shim's routing policy over plain data: classifier and picker replies in, decisions out."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from pointsman.v1 import ModelCandidate, ModelsReply, PickReply, PickStatus, PoolInfo
from pointsman.v1.classify import Block, CachedAnswer, ClassifyReply, ImmediateAnswer
from pointsman_shim.config import ShimConfig
from pointsman_shim.core.dialects import openai_chat, openai_completions
from pointsman_shim.core.dialects.base import BodyChanges, LLMRequest
from pointsman_shim.core.errors import RequestError
from pointsman_shim.core.policy import (
    Answer,
    Choice,
    Passthrough,
    Route,
    Unavailable,
    choose,
    classify_request,
    classify_timeout_ms,
    list_models,
    pick_request,
    reject,
    route,
)

CHAT = openai_chat.DIALECT


def request(model: str = "m1", **fields: Any) -> LLMRequest:
    body = {"model": model, "messages": [{"role": "user", "content": "2+2?"}], **fields}
    return CHAT.parse(json.dumps(body).encode(), max_bytes=1 << 20)


def config(**kw: Any) -> ShimConfig:
    return ShimConfig(**kw)


ON = {"classifier": {"enabled": True}}
#: A classifier that only selects models (blocks nothing): it may fail open.
SELECT_ONLY = {"classifier": {"enabled": True, "safety_blocks": False}}
CLOSED = {"classifier": {"enabled": True, "failure_mode": "fail-closed"}}
HIT = CachedAnswer(content="4", prompt_tokens=3, completion_tokens=1, model="m1", similarity=0.97)


def decide_model(
    classified: ClassifyReply | Unavailable | None, model: str = "m1", **cfg: Any
) -> Choice | Answer:
    return choose(request(model), CHAT, classified, config(**cfg), now=1000.0, nonce=lambda: "n")


def fields(decision: Any, names: str) -> tuple[Any, ...]:
    return tuple(getattr(decision, n) for n in names.split())


# -- step 1: the model -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("classified", "model", "cfg", "expected"),
    [
        (None, "m1", {}, ("m1", "picked", {}, ())),
        (None, "auto", {"default_model": "d"}, ("d", "default-model", {}, ())),
        (None, "MoM", {"default_model": "d"}, ("d", "default-model", {}, ())),
        (
            Unavailable("classifier", "timeout"),
            "m1",
            SELECT_ONLY,
            ("m1", "picked", {"x-pointsman-classifier": "fail-open"}, ("classifier",)),
        ),
        (
            Unavailable("classifier", "overloaded"),
            "auto",
            {**SELECT_ONLY, "default_model": "d"},
            ("d", "picked", {"x-pointsman-classifier": "fail-open"}, ("classifier",)),
        ),
        (
            Unavailable("classifier", "timeout"),
            "m1",
            {"classifier": {"enabled": True, "safety_failure_mode": "fail-open"}},
            ("m1", "picked", {"x-pointsman-classifier": "fail-open"}, ("classifier",)),
        ),
        (
            ClassifyReply(model="math", headers={"x-pointsman-category": "math"}),
            "auto",
            ON,
            ("math", "picked", {"x-pointsman-category": "math"}, ()),
        ),
    ],
)
def test_choose_a_model(
    classified: ClassifyReply | Unavailable | None,
    model: str,
    cfg: dict[str, Any],
    expected: tuple[Any, ...],
) -> None:
    choice = decide_model(classified, model, **cfg)
    assert isinstance(choice, Choice)
    assert fields(choice, "model route headers fail_open") == expected


@pytest.mark.parametrize(
    ("classified", "model", "cfg", "expected"),
    [
        (None, "auto", {}, (404, "unknown_model", "rejected", ())),
        (
            Unavailable("classifier", "no_responders"),
            "auto",
            SELECT_ONLY,
            (404, "unknown_model", "rejected", ("classifier",)),
        ),
        # issue 12: no safety verdict while the classifier blocks (the default): 503, not open
        (
            Unavailable("classifier", "timeout"),
            "m1",
            ON,
            (503, "safety_unavailable", "fail_closed", ()),
        ),
        (
            Unavailable("classifier", "overloaded"),
            "auto",
            {"classifier": {"enabled": True, "safety_blocks": True}, "default_model": "d"},
            (503, "safety_unavailable", "fail_closed", ()),
        ),
        (
            Unavailable("classifier", "timeout"),
            "m1",
            CLOSED,
            (503, "bus_classifier_timeout", "fail_closed", ()),
        ),
        (
            Unavailable("classifier", "overloaded"),
            "auto",
            {**CLOSED, "default_model": "d"},
            (503, "bus_classifier_overloaded", "fail_closed", ()),
        ),
        (
            ClassifyReply(
                model="m1", block=Block(status=451, message="no", code="c", reason="pii")
            ),
            "m1",
            ON,
            (451, "", "blocked", ()),
        ),
        (ClassifyReply(model="m1", cached=HIT), "m1", ON, (200, "", "answered", ())),
        (
            ClassifyReply(model="m1", answer=ImmediateAnswer(status=203, body=b"x")),
            "m1",
            ON,
            (203, "", "answered", ()),
        ),
    ],
)
def test_choose_an_answer(
    classified: ClassifyReply | Unavailable | None,
    model: str,
    cfg: dict[str, Any],
    expected: tuple[Any, ...],
) -> None:
    answer = decide_model(classified, model, **cfg)
    assert isinstance(answer, Answer)
    assert fields(answer, "status reason outcome fail_open") == expected


def test_block_answers_in_the_dialects_error_format() -> None:
    block = Block(message="prompt blocked", code="jailbreak_detected", reason="jailbreak")
    answer = decide_model(ClassifyReply(model="m1", block=block, headers={"x-a": "1"}), **ON)
    assert isinstance(answer, Answer)
    assert answer.headers == {"x-pointsman-block-reason": "jailbreak", "x-a": "1"}
    assert json.loads(answer.body)["error"] == {
        "message": "prompt blocked",
        "type": "invalid_request_error",
        "param": None,
        "code": "jailbreak_detected",
    }


def test_a_cache_hit_is_rendered_for_the_request_and_wins_over_an_old_answer() -> None:
    reply = ClassifyReply(
        model="",  # no decided model: the stored answer's
        cached=HIT,
        answer=ImmediateAnswer(body=b"old"),
        headers={"x-pointsman-cache": "hit"},
    )
    plain = choose(request(), CHAT, reply, config(**ON), now=1000.9, nonce=lambda: "abc")
    assert isinstance(plain, Answer) and plain.content_type == "application/json"
    body = json.loads(plain.body)
    assert (body["id"], body["created"], body["model"]) == ("chatcmpl-cache-abc", 1000, "m1")
    assert plain.headers == {"x-pointsman-cache": "hit"}
    streamed = choose(
        request(stream=True), CHAT, reply, config(**ON), now=1000, nonce=lambda: "abc"
    )
    assert isinstance(streamed, Answer) and streamed.content_type == "text/event-stream"
    assert streamed.body.endswith(b"data: [DONE]\n\n")


def test_classifier_changes_reach_the_body() -> None:
    reply = ClassifyReply(
        model="math",
        body_set={"chat_template_kwargs": {"enable_thinking": True}},
        system_prompt="S",
        system_prompt_mode="replace",
        cache_store="tok",
    )
    choice = decide_model(reply, "auto", **ON)
    assert isinstance(choice, Choice)
    assert choice.changes == BodyChanges(
        "math", {"chat_template_kwargs": {"enable_thinking": True}}, "S", "replace"
    )
    assert choice.cache_token == "tok"


# -- step 2: the endpoints ---------------------------------------------------------------------

OK = PickReply(
    status=PickStatus.OK,
    endpoints=["a:1", "b:1", "c:1"],
    prefill="p:1",
    scores={"a:1": 0.9},
)


def decide_route(
    picked: PickReply | Unavailable,
    choice: Choice | None = None,
    debug: bool = False,
    hinted: bool = False,
    **cfg: Any,
) -> Route | Answer:
    choice = choice or Choice(BodyChanges("m1"))
    return route(request(), CHAT, choice, picked, config(**cfg), debug=debug, hinted=hinted)


@pytest.mark.parametrize(
    ("picked", "cfg", "debug", "expected"),
    [
        (
            OK,
            {"max_endpoints": 1},
            False,
            (["a:1"], "picked", "routed", {"x-prefiller-host-port": "p:1"}),
        ),
        (
            OK,
            {"max_endpoints": 2},
            True,
            (
                ["a:1", "b:1"],
                "picked",
                "routed",
                {"x-prefiller-host-port": "p:1", "x-pointsman-scores": '{"a:1":0.9}'},
            ),
        ),
        (
            PickReply(status=PickStatus.OK),
            {},
            True,
            ([], "picked", "routed", {}),
        ),
        (
            Unavailable("picker", "timeout"),
            {},
            False,
            ([], "fail-open", "fail_open", {}),
        ),
    ],
)
def test_route(
    picked: PickReply | Unavailable, cfg: dict[str, Any], debug: bool, expected: tuple[Any, ...]
) -> None:
    decision = decide_route(picked, debug=debug, **cfg)
    assert isinstance(decision, Route)
    endpoints, label, outcome, extra = expected
    assert fields(decision, "endpoints route outcome") == (endpoints, label, outcome)
    assert decision.headers == {**extra, "x-pointsman-route": label}  # the route header is last
    assert list(decision.headers)[-1] == "x-pointsman-route"


@pytest.mark.parametrize(
    ("picked", "cfg", "expected"),
    [
        (PickReply(status=PickStatus.UNKNOWN_MODEL), {}, (404, "unknown_model", "rejected")),
        (
            PickReply(status=PickStatus.NO_ENDPOINTS),
            {"failure_mode": "fail-closed"},
            (503, "no_endpoints", "rejected"),
        ),
        (PickReply(status=PickStatus.SHED), {}, (429, "shed", "shed")),
        (PickReply(status=PickStatus.DROPPED), {}, (503, "dropped", "shed")),
        (
            Unavailable("picker", "no_responders"),
            {"failure_mode": "fail-closed"},
            (503, "bus_picker_no_responders", "fail_closed"),
        ),
    ],
)
def test_route_answers(
    picked: PickReply | Unavailable, cfg: dict[str, Any], expected: tuple[Any, ...]
) -> None:
    answer = decide_route(picked, **cfg)
    assert isinstance(answer, Answer)
    assert fields(answer, "status reason outcome") == expected
    assert answer.headers["x-pointsman-error"] == answer.reason


def test_shed_and_no_endpoints_say_why() -> None:
    shed = decide_route(PickReply(status=PickStatus.SHED))
    assert isinstance(shed, Answer) and shed.headers["x-pointsman-shed-reason"] == "saturated"
    shed = decide_route(PickReply(status=PickStatus.SHED, reason="kv"))
    assert isinstance(shed, Answer) and shed.headers["x-pointsman-shed-reason"] == "kv"
    full = decide_route(PickReply(status=PickStatus.SHED, reason="tenant_queue_full"))
    assert isinstance(full, Answer) and full.status == 429
    assert full.headers["x-pointsman-drop-reason"] == "tenant_queue_full"
    assert "queue is full" in json.loads(full.body)["error"]["message"]
    gone = decide_route(PickReply(status=PickStatus.DROPPED, reason="ttl_expired"))
    assert isinstance(gone, Answer) and gone.status == 503
    assert gone.headers["x-pointsman-drop-reason"] == "ttl_expired"
    assert json.loads(gone.body)["error"]["type"] == "service_unavailable"
    none = decide_route(
        PickReply(status=PickStatus.NO_ENDPOINTS, reason="all stale"), failure_mode="fail-closed"
    )
    assert isinstance(none, Answer)
    assert json.loads(none.body)["error"]["message"].endswith("(all stale)")


def test_no_endpoints_fails_open_unless_closed_or_hinted() -> None:
    """Issue 12: the picker's no_endpoints falls back to Envoy's load balancing by default."""
    none = PickReply(status=PickStatus.NO_ENDPOINTS, reason="no healthy, fresh endpoint")
    opened = decide_route(none)
    assert isinstance(opened, Route)
    assert (opened.route, opened.endpoints, opened.outcome) == ("fail-open", [], "fail_open")
    assert opened.fail_open == ("no_endpoints",)
    assert opened.headers["x-pointsman-route"] == "fail-open"
    # a gateway's subset hint cannot be kept by Envoy's own balancing: 503
    hinted = decide_route(none, hinted=True)
    assert isinstance(hinted, Answer) and (hinted.status, hinted.reason) == (503, "no_endpoints")
    closed = decide_route(none, failure_mode="fail-closed")
    assert isinstance(closed, Answer) and closed.status == 503


def test_failures_before_the_answer_are_carried() -> None:
    """A classifier that failed open is counted even when the picker then ends the request."""
    choice = Choice(BodyChanges("m1"), fail_open=("classifier",))
    closed = decide_route(Unavailable("picker", "timeout"), choice, failure_mode="fail-closed")
    assert isinstance(closed, Answer) and closed.fail_open == ("classifier",)
    opened = decide_route(Unavailable("picker", "timeout"), choice)
    assert isinstance(opened, Route) and opened.fail_open == ("classifier", "picker")


def test_routed_request_headers_and_body() -> None:
    choice = Choice(BodyChanges("m2"), headers={"x-pointsman-category": "c"}, cache_token="t")
    decision = decide_route(OK, choice, max_endpoints=2)
    assert isinstance(decision, Route)
    assert decision.request_headers() == {
        "x-selected-model": "m2",
        "x-pointsman-category": "c",
        "x-prefiller-host-port": "p:1",
        "x-pointsman-route": "picked",
        "x-gateway-destination-endpoint": "a:1,b:1",
    }
    assert decision.body is not None and json.loads(decision.body)["model"] == "m2"
    assert decision.cache_token == "t" and decision.path is None
    unchanged = decide_route(OK)
    assert isinstance(unchanged, Route) and unchanged.body is None  # the client's bytes


# -- what the services are told, models, rejections ---------------------------------------------


def test_pick_request() -> None:
    headers = {"x-session-id": "s", "authorization": "Bearer k"}
    sent = pick_request(request(), "m2", headers, "r", ["a:1"], config(max_endpoints=2))
    assert (sent.model, sent.subset, sent.max_endpoints) == ("m2", ["a:1"], 2)
    # the credential travels only as its hash: flow control's tenant, never the client's word
    tenant = hashlib.sha256(b"Bearer k").hexdigest()
    assert sent.headers == {"x-session-id": "s", "x-pointsman-tenant": tenant}
    assert sent.prompt == "<|user|>2+2?\n" and sent.max_wait_ms == 700.0
    quiet = pick_request(
        request(), "m2", {"x-pointsman-tenant": "forged"}, "r", None,
        config(send_prompt=False, queue_wait_ms=0),
    )  # fmt: skip
    assert quiet.prompt is None and quiet.max_wait_ms is None
    assert "x-pointsman-tenant" not in quiet.headers


def test_classify_request_of_a_completion() -> None:
    raw = b'{"model": "auto", "prompt": "2+2=", "max_tokens": 3}'
    llm = openai_completions.DIALECT.parse(raw, max_bytes=1 << 20)
    sent = classify_request(llm, {}, "r")
    assert (sent.prompt, sent.messages, sent.params) == ("2+2=", [], {"max_tokens": 3})


@pytest.mark.parametrize(
    ("chars", "call", "expected"),
    [
        (10, {}, 150),
        (1000, {}, 150),  # the first 1,000 characters are in timeout_ms
        (3000, {}, 550),
        (5500, {}, 1050),  # a 1,300-token document
        (40_000, {}, 2000),  # capped
        (40_000, {"timeout_per_kchar_ms": 0}, 150),
        (3000, {"timeout_ms": 2500}, 2500),  # never below timeout_ms, even above the cap
    ],
)
def test_a_long_prompt_gets_a_longer_classifier_deadline(
    chars: int, call: dict[str, Any], expected: float
) -> None:
    config = ShimConfig.model_validate({"classifier": {"enabled": True, **call}})
    turns = [
        {"role": "system", "content": "s" * 100},
        {"role": "user", "content": "u" * (chars - 100)},
    ]
    sent = classify_request(request("auto", messages=turns), {}, "r")
    assert classify_timeout_ms(config.classifier, sent) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("reply", "cfg", "expected"),
    [
        (ModelsReply(pools=[]), {}, []),
        (
            ModelsReply(pools=[PoolInfo(name="b", endpoints=1, healthy=1), PoolInfo(name="a", endpoints=1, healthy=1, created=5)]),
            {},
            [("a", 5), ("b", 1000)],
        ),
        (ModelsReply(pools=[]), {"default_model": "d"}, [("auto", 1000), ("MoM", 1000)]),
        (ModelsReply(pools=[]), ON, [("auto", 1000), ("MoM", 1000)]),
    ],
)  # fmt: skip
def test_list_models(reply: ModelsReply, cfg: dict[str, Any], expected: list[Any]) -> None:
    answer = list_models(reply, config(**cfg), now=1000.5)
    assert isinstance(answer, Answer) and answer.outcome == "answered"
    body = json.loads(answer.body)
    assert body["object"] == "list"
    assert [(m["id"], m["created"]) for m in body["data"]] == expected


def test_list_models_when_the_picker_is_gone() -> None:
    gone = Unavailable("picker", "timeout")
    assert list_models(gone, config(), now=0) == Passthrough(outcome=None, fail_open=("picker",))
    closed = list_models(gone, config(failure_mode="fail-closed"), now=0)
    assert isinstance(closed, Answer) and closed.reason == "bus_picker_timeout"


def test_reject() -> None:
    error = RequestError(413, "too big", reason="body_too_large", headers={"x-a": "1"})
    answer = reject(error, CHAT)
    assert answer.headers == {"x-pointsman-error": "body_too_large", "x-a": "1"}
    assert json.loads(answer.body) == {
        "error": {
            "message": "too big",
            "type": "invalid_request_error",
            "param": None,
            "code": "body_too_large",
        }
    }


def test_no_safety_verdict_says_when_to_retry() -> None:
    answer = decide_model(Unavailable("classifier", "overloaded"), "m1", **ON)
    assert isinstance(answer, Answer)
    assert answer.headers["retry-after"] == "1"
    assert answer.headers["x-pointsman-error"] == "safety_unavailable"
    error = json.loads(answer.body)["error"]
    assert (error["type"], error["code"]) == ("service_unavailable", "service_unavailable")


def test_slo_shed_says_so_in_its_message_and_reason() -> None:
    shed = decide_route(PickReply(status=PickStatus.SHED, reason="slo_unattainable"))
    assert isinstance(shed, Answer) and shed.status == 429
    assert shed.headers["x-pointsman-shed-reason"] == "slo_unattainable"
    error = json.loads(shed.body)["error"]
    assert "latency objective" in error["message"] and error["type"] == "rate_limit_exceeded"


def test_auto_candidates_travel_to_the_picker_and_its_choice_moves_the_model() -> None:
    cands = [ModelCandidate(model="big", score=0.9), ModelCandidate(model="small", score=0.7)]
    classified = ClassifyReply(model="big", selected=True, candidates=cands)
    choice = decide_model(classified, "auto", **ON)
    assert isinstance(choice, Choice) and choice.candidates == cands
    pick = pick_request(
        request("big"), "big", {}, "r1", None, config(), candidates=choice.candidates
    )
    assert pick.candidates == cands
    # Not the first candidate's model (a rewrite moved it): the picker is not asked to choose.
    assert (
        pick_request(request(), "x", {}, "r1", None, config(), candidates=cands).candidates is None
    )

    moved = PickReply(
        status=PickStatus.OK, endpoints=["s:1"], model="small", model_rank=1,
        model_reason="saturated",
    )  # fmt: skip
    quiet = route(request("auto"), CHAT, choice, moved, config())
    assert isinstance(quiet, Route) and quiet.model == "small"
    assert json.loads(quiet.body or b"{}")["model"] == "small"
    assert "x-pointsman-model-choice" not in quiet.headers  # not reported unless configured
    choice2 = decide_model(classified, "auto", **ON)
    assert isinstance(choice2, Choice)
    told = route(request("auto"), CHAT, choice2, moved, config(), report_choice=True)
    assert isinstance(told, Route)
    assert told.headers["x-pointsman-model-choice"] == "second; reason=saturated"
    # A reply naming a model that was not a candidate changes nothing.
    choice3 = decide_model(classified, "auto", **ON)
    assert isinstance(choice3, Choice)
    forged = PickReply(status=PickStatus.OK, endpoints=["s:1"], model="evil")
    kept = route(request("auto"), CHAT, choice3, forged, config())
    assert isinstance(kept, Route) and kept.model == "big"

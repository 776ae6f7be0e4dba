"""Table-driven tests of the classifier's pure decision core."""

from __future__ import annotations

from typing import Any

import pytest

from pointsman.v1.classify import ClassifyRequest, Message
from pointsman_classifier import core
from pointsman_classifier.config import ClassifierConfig
from pointsman_classifier.core import Signals, decide

CFG = ClassifierConfig.model_validate(
    {
        "default_model": "llama-3-8b",
        "categories": {
            "math": {
                "models": [
                    {"model": "qwen3-32b", "score": 1.0, "reasoning": True},
                    {"model": "deepseek-r1", "score": 0.8},
                    {"model": "llama-3-8b", "score": 0.3},
                ],
                "reasoning": False,
                "system_prompt": "You are a careful mathematician.",
            },
            "law": {
                "models": [{"model": "gpt-oss-120b", "score": 0.9}],
                "reasoning": True,
                "system_prompt": "You are a lawyer.",
                "system_prompt_mode": "replace",
                "jailbreak": {"threshold": 0.95},
            },
            "history": {
                "models": [{"model": "llama-3-8b", "score": 0.9, "reasoning": True}],
                "jailbreak": {"enabled": False},
            },
            "other": {"models": [{"model": "llama-3-8b", "score": 1.0}]},
        },
        "models": {
            "qwen3-32b": {"pii_allowed": []},
            "deepseek-r1": {"pii_allowed": ["EMAIL_ADDRESS"]},
            "llama-3-8b": {"pii_allowed": ["*"]},
            "gpt-oss-120b": {"pii_allowed": []},
        },
        "category": {"threshold": 0.5, "fallback": "other"},
    }
)
SERVED = frozenset({"qwen3-32b", "deepseek-r1", "llama-3-8b", "gpt-oss-120b"})


def req(model: str = "auto", debug: bool = False, **kw: Any) -> ClassifyRequest:
    headers = {"x-pointsman-debug": "1"} if debug else {}
    return ClassifyRequest(
        request_id="r1",
        model=model,
        messages=[Message(role="user", content="what is 2+2?")],
        headers=headers,
        **kw,
    )


def cats(top: str, p: float) -> dict[str, float]:
    rest = (1 - p) / 2
    others = [c for c in ("math", "law", "history") if c != top][:2]
    return {top: p, **{o: rest for o in others}}


@pytest.mark.parametrize(
    ("model", "signals", "served", "want_model", "want_selected", "want_category"),
    [
        # auto -> best-scoring candidate of the category
        ("auto", Signals(cats("math", 0.9)), SERVED, "qwen3-32b", True, "math"),
        ("MoM", Signals(cats("math", 0.9)), SERVED, "qwen3-32b", True, "math"),
        # best candidate not served -> next one
        ("auto", Signals(cats("math", 0.9)), SERVED - {"qwen3-32b"}, "deepseek-r1", True, "math"),
        # no served candidate -> default model
        ("auto", Signals(cats("law", 0.9)), frozenset({"llama-3-8b"}), "llama-3-8b", True, "law"),
        # empty served set = everything counts as served
        ("auto", Signals(cats("law", 0.9)), frozenset(), "gpt-oss-120b", True, "law"),
        # below the confidence threshold -> fallback category
        ("auto", Signals(cats("math", 0.4)), SERVED, "llama-3-8b", True, "other"),
        # an explicit model is kept
        ("llama-3-8b", Signals(cats("math", 0.9)), SERVED, "llama-3-8b", False, "math"),
        ("not-served", Signals(cats("math", 0.9)), SERVED, "not-served", False, "math"),
        # nothing classified (empty prompt) -> default model
        ("auto", Signals(None), SERVED, "llama-3-8b", True, None),
        # PII: the best candidate does not allow it -> the first that does
        (
            "auto",
            Signals(cats("math", 0.9), pii=frozenset({"EMAIL_ADDRESS"})),
            SERVED,
            "deepseek-r1",
            True,
            "math",
        ),
        (
            "auto",
            Signals(cats("math", 0.9), pii=frozenset({"CREDIT_CARD"})),
            SERVED,
            "llama-3-8b",
            True,
            "math",
        ),
        # PII: law's only candidate refuses it -> the default model allows everything
        (
            "auto",
            Signals(cats("law", 0.9), pii=frozenset({"US_SSN"})),
            SERVED,
            "llama-3-8b",
            True,
            "law",
        ),
    ],
)
def test_model_selection(
    model: str,
    signals: Signals,
    served: frozenset[str],
    want_model: str,
    want_selected: bool,
    want_category: str | None,
) -> None:
    reply = decide(req(model), signals, CFG, served)
    assert reply.block is None
    assert reply.model == want_model
    assert reply.selected is want_selected
    assert reply.category == want_category
    assert reply.headers[core.H_MODEL] == want_model
    assert reply.headers[core.H_SELECTED] == str(want_selected).lower()


@pytest.mark.parametrize(
    ("model", "category", "want_body", "want_reasoning"),
    [
        # qwen3: candidate-level reasoning wins over the category's
        ("auto", "math", {"chat_template_kwargs": {"enable_thinking": True}}, True),
        # gpt-oss: reasoning_effort, category-level reasoning
        ("auto", "law", {"reasoning_effort": "high"}, True),
        # llama has no reasoning family: nothing set
        ("auto", "history", {}, None),
        # explicit model: the category's settings are not applied by default
        ("qwen3-32b", "math", {}, None),
    ],
)
def test_reasoning_in_family_form(
    model: str, category: str, want_body: dict[str, Any], want_reasoning: bool | None
) -> None:
    reply = decide(req(model), Signals(cats(category, 0.9)), CFG, SERVED)
    assert reply.body_set == want_body
    assert reply.reasoning is want_reasoning
    if want_reasoning is None:
        assert core.H_REASONING not in reply.headers
    else:
        assert reply.headers[core.H_REASONING] == ("on" if want_reasoning else "off")


def test_deepseek_reasoning_off_from_category() -> None:
    reply = decide(req(), Signals(cats("math", 0.9)), CFG, SERVED - {"qwen3-32b"})
    assert reply.model == "deepseek-r1"
    assert reply.body_set == {"chat_template_kwargs": {"thinking": False}}
    assert reply.headers[core.H_REASONING] == "off"


@pytest.mark.parametrize(
    ("category", "want_prompt", "want_mode", "want_header"),
    [
        ("math", "You are a careful mathematician.", "insert", "inserted"),
        ("law", "You are a lawyer.", "replace", "replaced"),
        ("history", None, "insert", None),
    ],
)
def test_system_prompt(
    category: str, want_prompt: str | None, want_mode: str, want_header: str | None
) -> None:
    reply = decide(req(), Signals(cats(category, 0.9)), CFG, SERVED)
    assert reply.system_prompt == want_prompt
    assert reply.system_prompt_mode == want_mode
    assert reply.headers.get(core.H_SYSTEM_PROMPT) == want_header


def test_apply_to_explicit_gives_explicit_requests_the_category_settings() -> None:
    cfg = CFG.model_copy(update={"apply_to_explicit": True})
    reply = decide(req("qwen3-32b"), Signals(cats("math", 0.9)), cfg, SERVED)
    assert reply.model == "qwen3-32b"
    assert reply.system_prompt is not None
    assert reply.body_set == {"chat_template_kwargs": {"enable_thinking": True}}


@pytest.mark.parametrize(
    ("category", "score", "action", "model", "blocked", "tagged"),
    [
        ("math", 0.9, "block", "auto", True, False),
        ("math", 0.4, "block", "auto", False, False),
        ("math", 0.5, "block", "auto", True, False),  # threshold is inclusive
        ("math", 0.9, "block", "llama-3-8b", True, False),  # explicit models are checked too
        ("math", 0.9, "tag", "auto", False, True),
        ("law", 0.9, "block", "auto", False, False),  # law's own threshold is 0.95
        ("law", 0.96, "block", "auto", True, False),
        ("history", 0.99, "block", "auto", False, False),  # disabled for history
    ],
)
def test_jailbreak(
    category: str, score: float, action: str, model: str, blocked: bool, tagged: bool
) -> None:
    cfg = CFG.model_copy(
        update={"jailbreak": CFG.jailbreak.model_copy(update={"action": action, "status": 400})}
    )
    reply = decide(req(model), Signals(cats(category, 0.9), jailbreak=score), cfg, SERVED)
    assert (reply.block is not None) is blocked
    if reply.block is not None:
        assert reply.block.reason == "jailbreak"
        assert reply.block.status == 400
        assert reply.block.code == "jailbreak_detected"
        assert reply.system_prompt is None and reply.body_set == {}
    assert (reply.headers.get(core.H_JAILBREAK) == "detected") is tagged


@pytest.mark.parametrize(
    ("model", "pii", "want_block"),
    [
        # no served model of math/default allows a card when llama is not served
        ("auto", {"CREDIT_CARD"}, True),
        # the client asked for a model whose policy refuses it: block, never another model
        ("qwen3-32b", {"EMAIL_ADDRESS"}, True),
        ("deepseek-r1", {"EMAIL_ADDRESS"}, False),
        ("deepseek-r1", {"EMAIL_ADDRESS", "US_SSN"}, True),
        ("auto", set(), False),
    ],
)
def test_pii_block(model: str, pii: set[str], want_block: bool) -> None:
    cfg = CFG.model_copy(update={"default_model": "qwen3-32b"})
    served = SERVED - {"llama-3-8b"}
    reply = decide(req(model), Signals(cats("math", 0.9), pii=frozenset(pii)), cfg, served)
    assert (reply.block is not None) is want_block
    if reply.block is not None:
        assert reply.block.reason.startswith("pii:")
        assert reply.block.code == "pii_not_allowed"
    if pii:
        assert reply.headers[core.H_PII] == ",".join(sorted(pii))


def test_pii_checks_off_never_block() -> None:
    cfg = CFG.model_copy(update={"pii": CFG.pii.model_copy(update={"enabled": False})})
    reply = decide(req("qwen3-32b"), Signals(cats("math", 0.9), pii=frozenset({"US_SSN"})), cfg)
    assert reply.block is None


def test_debug_headers_only_when_asked() -> None:
    sig = Signals(cats("math", 0.9), jailbreak=0.01)
    plain = decide(req(), sig, CFG, SERVED)
    assert not any(h.startswith("x-pointsman-debug") for h in plain.headers)
    dbg = decide(req(debug=True), sig, CFG, SERVED - {"qwen3-32b"})
    assert dbg.headers[core.H_DEBUG_CATEGORIES].startswith("math=0.900")
    assert dbg.headers[core.H_DEBUG_JAILBREAK] == "0.010"
    cands = dbg.headers[core.H_DEBUG_CANDIDATES]
    assert cands.startswith("qwen3-32b=1.000!not_served,deepseek-r1=0.800*")
    assert dbg.headers[core.H_FALLBACK] == "not_served"
    assert dbg.headers[core.H_CONFIDENCE] == "0.900"


def test_default_model_is_first_served_when_unset() -> None:
    cfg = ClassifierConfig()
    reply = decide(req(), Signals(cats("math", 0.9)), cfg, frozenset({"b-model", "a-model"}))
    assert reply.model == "a-model"
    assert reply.headers[core.H_FALLBACK] == "default"


@pytest.mark.parametrize(
    ("source", "include_system", "want"),
    [
        ("last_user", False, "second"),
        ("all_user", False, "first\nsecond"),
        ("conversation", False, "first\nanswer\nsecond"),
        ("last_user", True, "sys\nsecond"),
    ],
)
def test_prompt_text(source: str, include_system: bool, want: str) -> None:
    cfg = ClassifierConfig.model_validate(
        {"prompt": {"source": source, "include_system": include_system}}
    )
    r = ClassifyRequest(
        request_id="r",
        model="auto",
        messages=[
            Message(role="system", content="sys"),
            Message(role="user", content="first"),
            Message(role="assistant", content="answer"),
            Message(role="user", content="second"),
        ],
    )
    assert core.prompt_text(r, cfg) == want


CONVERSATION = [
    Message(role="system", content="sys"),
    Message(role="developer", content="dev"),
    Message(role="user", content="first"),
    Message(role="assistant", content="answer"),
    Message(role="tool", content='{"temp_c": 14}'),
    Message(role="user", content="first"),
    Message(role="user", content="  "),
    Message(role="user", content="second"),
]


@pytest.mark.parametrize(
    ("jailbreak", "want"),
    [
        ({}, ["first", '{"temp_c": 14}']),  # newest first, no repeats, not the classified text
        ({"read_roles": ["system"]}, ["dev", "sys"]),
        ({"read_roles": ["assistant", "user"]}, ["first", "answer"]),
        ({"read_roles": []}, []),
        ({"max_turns": 1}, ["first"]),
        ({"max_turns": 0}, []),
        ({"max_turn_chars": 4}, []),  # a turn is read whole or not at all
        ({"max_turn_chars": 18}, ["first"]),
        ({"max_turn_chars": 19}, ["first", '{"temp_c": 14}']),
        ({"enabled": False}, []),
    ],
)
def test_safety_turns(jailbreak: dict[str, Any], want: list[str]) -> None:
    cfg = ClassifierConfig.model_validate({"jailbreak": jailbreak})
    r = ClassifyRequest(request_id="r", model="auto", messages=CONVERSATION)
    assert core.safety_turns(r, cfg, core.prompt_text(r, cfg)) == want


def test_safety_turns_are_cut_as_the_classified_text_is() -> None:
    cfg = ClassifierConfig.model_validate({"prompt": {"max_chars": 4}})
    r = ClassifyRequest(
        request_id="r",
        model="auto",
        messages=[Message(role="user", content="0123456789"), Message(role="user", content="x")],
    )
    assert core.safety_turns(r, cfg, "x") == ["6789"]
    # reading stops at the first turn that does not fit: an older, shorter one is not read
    cfg = ClassifierConfig.model_validate({"jailbreak": {"max_turn_chars": 5}})
    r.messages.insert(0, Message(role="user", content="ok"))
    assert core.safety_turns(r, cfg, "x") == []
    legacy = ClassifyRequest(request_id="r", model="auto", prompt="0123456789")
    assert core.safety_turns(legacy, cfg, core.prompt_text(legacy, cfg)) == []


def test_prompt_text_completions_and_overflow() -> None:
    cfg = ClassifierConfig.model_validate({"prompt": {"max_chars": 5}})
    r = ClassifyRequest(request_id="r", model="auto", prompt="0123456789")
    assert core.prompt_text(r, cfg) == "56789"


def test_unknown_family_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="not a reasoning family"):
        ClassifierConfig.model_validate({"models": {"m": {"family": "nope"}}})


def test_auto_sends_its_ranked_candidates_for_the_joint_choice() -> None:
    reply = decide(req(), Signals(cats("math", 0.9)), CFG, SERVED)
    assert [(c.model, c.score) for c in reply.candidates] == [
        ("qwen3-32b", 1.0),
        ("deepseek-r1", 0.8),
        ("llama-3-8b", 0.3),
    ]
    # Only the candidates that may take the request: served, and allowed to see its PII.
    pii = decide(req(), Signals(cats("math", 0.9), pii=frozenset({"EMAIL_ADDRESS"})), CFG, SERVED)
    assert [c.model for c in pii.candidates] == ["deepseek-r1", "llama-3-8b"]
    # A single candidate, an explicit model or a block: the model is decided, none sent.
    assert decide(req(), Signals(cats("law", 0.9)), CFG, SERVED).candidates == []
    assert decide(req("qwen3-32b"), Signals(cats("math", 0.9)), CFG, SERVED).candidates == []
    blocked = decide(req(), Signals(cats("math", 0.9), jailbreak=0.99), CFG, SERVED)
    assert blocked.block is not None and blocked.candidates == []

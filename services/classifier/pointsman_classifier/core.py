"""The classifier's decisions, as pure functions over the request, the model outputs and config.

Nothing here touches a model, the bus or the clock: :func:`decide` turns what the models said
about one prompt (:class:`Signals`) into the :class:`~pointsman.v1.classify.ClassifyReply` the shim
applies, so every routing rule is tested table-driven without I/O.

Order of the rules (each documented in services/classifier/README.md):

1. category: top class of the category classifier; below ``category.threshold`` -> fallback;
2. jailbreak: score >= threshold (per category) -> block, or tag and go on;
3. model: an auto name -> the category's served candidates by score, then the default model;
   any other name is kept;
4. PII: the first of those models whose policy allows every PII type found wins; none -> block
   (a client that named its model gets a block, never another model);
5. reasoning and system prompt of the category, for the chosen model, in its family's form;
6. headers for the routed request and the response.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from pointsman.v1.classify import Block, ClassifyReply, ClassifyRequest
from pointsman.v1.messages import ModelCandidate
from pointsman_classifier.config import (
    CategoryConfig,
    ClassifierConfig,
    ReasoningFamily,
)
from pointsman_classifier.pii import Finding

H_MODEL = "x-pointsman-model"
H_SELECTED = "x-pointsman-selected"
H_CATEGORY = "x-pointsman-category"
H_CONFIDENCE = "x-pointsman-confidence"
H_REASONING = "x-pointsman-reasoning"
H_SYSTEM_PROMPT = "x-pointsman-system-prompt"
H_JAILBREAK = "x-pointsman-jailbreak"
H_PII = "x-pointsman-pii"
H_FALLBACK = "x-pointsman-fallback"
H_DEBUG_CATEGORIES = "x-pointsman-debug-categories"
H_DEBUG_CANDIDATES = "x-pointsman-debug-candidates"
H_DEBUG_JAILBREAK = "x-pointsman-debug-jailbreak"

REASON_JAILBREAK = "jailbreak"
REASON_PII = "pii"

_TRUTHY = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Signals:
    """What the models found in one prompt.

    ``categories`` maps each category to its probability (``None``: not classified, e.g. an
    empty prompt); ``jailbreak`` is the attack probability (``None``: detector off);
    ``pii`` the entity types found, whatever detector found them.
    """

    categories: dict[str, float] | None = None
    jailbreak: float | None = None
    pii: frozenset[str] = field(default_factory=frozenset)


@dataclass
class Outputs:
    """What the models said about one prompt text (filled by the engine, read by handlers)."""

    categories: dict[str, float] | None = None
    jailbreak: float | None = None
    pii: list[Finding] = field(default_factory=list)
    #: The normalised sentence embedding (for the semantic cache), when the encoder ran.
    embedding: npt.NDArray[np.float32] | None = None
    tokens: int = 0


#: The engine's counters, summed over batches (``Engine.stats``): batches, prompts, tokens, and
#: seconds spent tokenizing, on the encoder's device (a GPU's busy time) and in the heads.
ENGINE_STATS = ("batches", "items", "tokens", "prepare_s", "device_s", "finish_s")


def guess_family(model: str) -> str | None:
    """The reasoning family a model name suggests, for models without a configured family."""
    name = model.lower()
    if "qwen3" in name:
        return "qwen3"
    if "deepseek" in name:
        return "deepseek"
    if "gpt-oss" in name:
        return "gpt-oss"
    return None


def reasoning_body(family: ReasoningFamily, on: bool) -> dict[str, Any]:
    """The body fields that switch reasoning on or off in ``family``'s own form."""
    if family.type == "chat_template_kwargs":
        return {"chat_template_kwargs": {family.parameter: on}}
    return {family.parameter: family.effort_on if on else family.effort_off}


def pii_allowed(cfg: ClassifierConfig, model: str, found: frozenset[str]) -> bool:
    if not found:
        return True
    policy = cfg.models.get(model)
    allowed = policy.pii_allowed if policy and policy.pii_allowed is not None else None
    if allowed is None:
        allowed = cfg.pii.default_allowed
    return "*" in allowed or found <= set(allowed)


def default_model(cfg: ClassifierConfig, served: frozenset[str] | None) -> str | None:
    if cfg.default_model:
        return cfg.default_model
    if served:
        return sorted(served)[0]
    return None


def top_category(
    cfg: ClassifierConfig, probs: dict[str, float] | None
) -> tuple[str | None, float | None, bool]:
    """(category, confidence of the top class, fell back to the fallback category?)."""
    if not probs:
        return None, None, False
    best = max(probs, key=lambda k: probs[k])
    conf = probs[best]
    if conf < cfg.category.threshold:
        return cfg.category.fallback, conf, True
    return best, conf, False


def _fmt(x: float) -> str:
    return f"{x:.3f}"


def decide(
    req: ClassifyRequest,
    signals: Signals,
    cfg: ClassifierConfig,
    served: frozenset[str] | None = None,
    classifier: str = "",
    keep_category: str | None = None,
) -> ClassifyReply:
    """The whole decision for one request (see the module doc for the order of the rules).

    ``served`` is the set of model names that can be routed to; ``None`` or empty means every
    configured model counts as served. ``keep_category`` replaces the classified category (a
    session staying on its earlier choice, see sessions.py).
    """
    debug = req.headers.get(cfg.debug_header, "").strip().lower() in _TRUTHY
    auto = req.model in cfg.auto_models
    headers: dict[str, str] = {}

    category, confidence, low_conf = top_category(cfg, signals.categories)
    if keep_category is not None:
        category, low_conf = keep_category, False
        confidence = (signals.categories or {}).get(keep_category, confidence)
    cat_cfg = cfg.categories.get(category or "", CategoryConfig())
    if category is not None and confidence is not None:
        headers[H_CATEGORY] = category
        headers[H_CONFIDENCE] = _fmt(confidence)
    if debug and signals.categories:
        top = sorted(signals.categories.items(), key=lambda kv: -kv[1])[:3]
        headers[H_DEBUG_CATEGORIES] = ",".join(f"{k}={_fmt(v)}" for k, v in top)
    if signals.pii:
        headers[H_PII] = ",".join(sorted(signals.pii))

    fallback_reason: str | None = "low_confidence" if low_conf else None

    # Jailbreak: checked for every request, whatever the model.
    jb = cfg.jailbreak
    jb_enabled = jb.enabled if cat_cfg.jailbreak.enabled is None else cat_cfg.jailbreak.enabled
    jb_threshold = (
        cat_cfg.jailbreak.threshold if cat_cfg.jailbreak.threshold is not None else jb.threshold
    )
    if debug and signals.jailbreak is not None:
        headers[H_DEBUG_JAILBREAK] = _fmt(signals.jailbreak)
    block: Block | None = None
    if jb_enabled and signals.jailbreak is not None and signals.jailbreak >= jb_threshold:
        if jb.action == "block":
            block = Block(
                status=jb.status,
                message=jb.message,
                code="jailbreak_detected",
                reason=REASON_JAILBREAK,
            )
        else:
            headers[H_JAILBREAK] = "detected"

    # Model: the client's own, or the best served candidate that may see the PII found.
    fallback_model = default_model(cfg, served)
    if auto:
        ranked = sorted(cat_cfg.models, key=lambda c: -c.score)
        options: list[tuple[str, float | None]] = [(c.model, c.score) for c in ranked]
        if fallback_model is not None and fallback_model not in [m for m, _ in options]:
            options.append((fallback_model, None))
    else:
        options = [(req.model, None)]
    notes: list[str] = []
    chosen: str | None = None
    eligible: list[ModelCandidate] = []
    for i, (name, score) in enumerate(options):
        tag = f"{name}={_fmt(score)}" if score is not None else f"{name}=default"
        if auto and served and name not in served:
            notes.append(tag + "!not_served")
            continue
        if cfg.pii.enabled and not pii_allowed(cfg, name, signals.pii):
            notes.append(tag + "!pii")
            continue
        if auto and score is not None:
            eligible.append(ModelCandidate(model=name, score=score))
        if chosen is None:
            chosen = name
            if i > 0:
                fallback_reason = fallback_reason or (
                    "pii" if any(n.endswith("!pii") for n in notes) else "not_served"
                )
            elif auto and score is None:
                fallback_reason = fallback_reason or "default"
            notes.append(tag + "*")
        else:
            notes.append(tag)
    if debug and auto:
        headers[H_DEBUG_CANDIDATES] = ",".join(notes)
    if chosen is None and block is None:
        if cfg.pii.enabled and signals.pii and any(n.endswith("!pii") for n in notes):
            types = ",".join(sorted(signals.pii))
            block = Block(
                status=cfg.pii.status,
                message=cfg.pii.message,
                code="pii_not_allowed",
                reason=f"{REASON_PII}:{types}",
            )
        else:
            fallback_reason = fallback_reason or "default"
    model = chosen or fallback_model or req.model
    if fallback_reason and auto:
        headers[H_FALLBACK] = fallback_reason

    reply = ClassifyReply(
        model=model,
        selected=auto and chosen is not None,
        category=category,
        confidence=confidence,
        block=block,
        classifier=classifier,
    )
    if reply.selected and block is None and len(eligible) > 1 and eligible[0].model == model:
        reply.candidates = eligible
    headers[H_MODEL] = model
    headers[H_SELECTED] = "true" if reply.selected else "false"

    if block is None and (auto or cfg.apply_to_explicit) and category is not None:
        _apply_category(reply, cfg, cat_cfg, model, headers)
    reply.headers = headers
    return reply


def _apply_category(
    reply: ClassifyReply,
    cfg: ClassifierConfig,
    cat_cfg: CategoryConfig,
    model: str,
    headers: dict[str, str],
) -> None:
    reasoning = cat_cfg.reasoning
    for cand in cat_cfg.models:
        if cand.model == model and cand.reasoning is not None:
            reasoning = cand.reasoning
    if reasoning is not None:
        policy = cfg.models.get(model)
        fam_name = policy.family if policy and policy.family else guess_family(model)
        family = cfg.reasoning_families.get(fam_name) if fam_name else None
        if family is not None:
            reply.reasoning = reasoning
            reply.body_set = reasoning_body(family, reasoning)
            headers[H_REASONING] = "on" if reasoning else "off"
    if cat_cfg.system_prompt:
        reply.system_prompt = cat_cfg.system_prompt
        reply.system_prompt_mode = cat_cfg.system_prompt_mode
        headers[H_SYSTEM_PROMPT] = (
            "inserted" if cat_cfg.system_prompt_mode == "insert" else "replaced"
        )


def prompt_text(req: ClassifyRequest, cfg: ClassifierConfig) -> str:
    """The text to classify, chosen by ``classifier.prompt`` (newest text kept on overflow)."""
    pc = cfg.prompt
    if not req.messages:
        text = req.prompt or ""
    else:
        parts: list[str] = []
        if pc.include_system:
            parts += [m.content for m in req.messages if m.role in ("system", "developer")]
        users = [m for m in req.messages if m.role == "user"]
        if pc.source == "last_user":
            parts += [users[-1].content] if users else []
        elif pc.source == "all_user":
            parts += [m.content for m in users]
        else:
            parts += [m.content for m in req.messages if m.role in ("user", "assistant")]
        text = "\n".join(p for p in parts if p)
    if len(text) > pc.max_chars:
        text = text[-pc.max_chars :]
    return text


def safety_turns(req: ClassifyRequest, cfg: ClassifierConfig, classified: str) -> list[str]:
    """The turns the safety check reads besides ``classified`` (the text :func:`prompt_text`
    chose), newest first: those of ``jailbreak.read_roles``, each cut as the classified text is
    (newest ``prompt.max_chars``), without repeats or the classified text itself, until
    ``jailbreak.max_turns`` turns or ``jailbreak.max_turn_chars`` characters. A turn is read
    whole or not at all, so its text, and its cached score, is the same in every request of the
    conversation."""
    jc = cfg.jailbreak
    if not jc.enabled or not req.messages:
        return []
    roles: set[str] = set(jc.read_roles)
    if "system" in roles:
        roles.add("developer")
    seen = {classified}
    turns: list[str] = []
    room = jc.max_turn_chars
    for m in reversed(req.messages):
        if len(turns) >= jc.max_turns:
            break
        if m.role not in roles:
            continue
        text = m.content[-cfg.prompt.max_chars :]
        if text in seen or not text.strip():
            continue
        if len(text) > room:
            break
        room -= len(text)
        seen.add(text)
        turns.append(text)
    return turns

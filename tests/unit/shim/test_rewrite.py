"""Model-name rewrites with weighted targets: the split, the precedence, the policy step."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pointsman.v1.policy import ModelRewrite, RewriteRule, RewriteTarget
from pointsman_shim.config import ShimConfig
from pointsman_shim.core import headers as h
from pointsman_shim.core import policy
from pointsman_shim.core.dialects.base import BodyChanges
from pointsman_shim.core.rewrite import Rewrites, draw, ordered, split


def _targets(*pairs: tuple[str, int]) -> list[RewriteTarget]:
    return [RewriteTarget(m, w) for m, w in pairs]


def _rewrite(
    name: str, models: list[str], targets: list[RewriteTarget], **kw: object
) -> ModelRewrite:
    return ModelRewrite(name=name, rules=[RewriteRule(targets=targets, models=models)], **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "weights",
    [(90, 10), (50, 50), (1, 3), (70, 20, 10), (1, 1, 1, 1)],
)
def test_split_holds_within_two_percent_over_10000_requests(weights: tuple[int, ...]) -> None:
    rng = random.Random(20261130)
    targets = _targets(*((f"m{i}", w) for i, w in enumerate(weights)))
    rewrites = Rewrites([_rewrite("canary", ["base"], targets)])
    n = 10_000
    seen = Counter(
        rewrites.apply("base", f"{rng.getrandbits(128):032x}").model  # type: ignore[union-attr]
        for _ in range(n)
    )
    total = sum(weights)
    for i, w in enumerate(weights):
        assert abs(seen[f"m{i}"] / n - w / total) <= 0.02, (seen, weights)


@given(
    weights=st.lists(st.integers(min_value=0, max_value=1_000_000), min_size=1, max_size=6),
    u=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
)
def test_split_always_names_a_target_with_weight(weights: list[int], u: float) -> None:
    targets = _targets(*((f"m{i}", w) for i, w in enumerate(weights)))
    chosen = split(targets, u)
    assert chosen in targets
    if sum(weights) > 0:
        assert chosen.weight > 0  # a target of weight 0 never gets a request


@given(key=st.text(max_size=64))
def test_draw_is_uniform_range_and_stable(key: str) -> None:
    value = draw(key)
    assert 0.0 <= value < 1.0
    assert draw(key) == value


@given(
    u=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    v=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
)
def test_split_is_monotonic_in_u(u: float, v: float) -> None:
    targets = _targets(("a", 3), ("b", 5), ("c", 2))
    order = [t.model for t in targets]
    lo, hi = sorted((u, v))
    assert order.index(split(targets, lo).model) <= order.index(split(targets, hi).model)


def test_same_request_same_target_and_no_match_is_none() -> None:
    rewrites = Rewrites([_rewrite("ab", ["base"], _targets(("a", 1), ("b", 1)))])
    first = rewrites.apply("base", "req-1")
    assert first is not None and first == rewrites.apply("base", "req-1")
    assert first.rewrite == "ab"
    assert rewrites.apply("other", "req-1") is None
    assert not Rewrites([])


def test_precedence_exact_over_pool_wide_then_oldest_then_first_rule() -> None:
    pool_wide = ModelRewrite(
        name="pool-wide",
        pool="llama",
        created=1.0,
        rules=[RewriteRule(targets=_targets(("llama-all", 1)))],
    )
    newer = _rewrite("newer", ["llama"], _targets(("llama-new", 1)), created=20.0)
    older = ModelRewrite(
        name="older",
        created=10.0,
        rules=[
            RewriteRule(targets=_targets(("llama-old", 1)), models=["llama"]),
            RewriteRule(targets=_targets(("llama-second", 1)), models=["llama"]),
        ],
    )
    rewrites = Rewrites(ordered([], [pool_wide, newer, older]))
    hit = rewrites.apply("llama", "k")
    assert hit is not None and (hit.model, hit.rewrite) == ("llama-old", "older")
    # only the pool-wide rule matches the pool's name when no exact rule does
    only_pool = Rewrites([pool_wide])
    assert only_pool.apply("llama", "k") is not None
    assert only_pool.apply("mistral", "k") is None
    # the config file's rewrites come before the cluster's
    config = _rewrite("from-config", ["llama"], _targets(("llama-cfg", 1)))
    hit = Rewrites(ordered([config], [older])).apply("llama", "k")
    assert hit is not None and hit.rewrite == "from-config"


def test_config_shape_becomes_the_contract() -> None:
    cfg = ShimConfig.model_validate(
        {
            "model_rewrites": [
                {
                    "name": "canary",
                    "pool": "llama",
                    "rules": [
                        {
                            "matches": ["llama"],
                            "targets": [{"model": "llama"}, {"model": "llama-lora", "weight": 9}],
                        }
                    ],
                }
            ]
        }
    )
    contract = cfg.model_rewrites[0].contract()
    assert contract.rules[0].targets == _targets(("llama", 1), ("llama-lora", 9))
    with pytest.raises(ValueError, match="weight"):
        ShimConfig.model_validate(
            {
                "model_rewrites": [
                    {"name": "x", "rules": [{"targets": [{"model": "a", "weight": 0}]}]}
                ]
            }
        )
    with pytest.raises(ValueError, match="targets"):
        ShimConfig.model_validate({"model_rewrites": [{"name": "x", "rules": [{"targets": []}]}]})


def test_policy_rewrite_moves_the_model_and_reports_the_target() -> None:
    rewrites = Rewrites([_rewrite("canary", ["llama"], _targets(("llama-lora", 1)))])
    choice = policy.rewrite(policy.Choice(BodyChanges("llama")), rewrites, "req")
    assert choice.model == "llama-lora"
    assert choice.headers[h.REWRITE] == "llama-lora"
    assert choice.rewrite == "canary"
    untouched = policy.rewrite(policy.Choice(BodyChanges("other")), rewrites, "req")
    assert untouched.model == "other" and h.REWRITE not in untouched.headers

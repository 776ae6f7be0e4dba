"""The collector's config section: defaults and the errors a typo gets."""

from __future__ import annotations

import pytest

from pointsman import configfile
from pointsman_collector.config import CollectorConfig


def test_defaults() -> None:
    cfg = configfile.section({}, "collector", CollectorConfig)
    assert (cfg.http_port, cfg.interval_ms, cfg.parser, cfg.client) == (9104, 50, "fast", "raw")
    assert cfg.sharding.enabled and cfg.latest.bucket == "pointsman-metrics"
    assert set(cfg.specs()) == {"vllm", "sglang"}


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"interval_msec": 50}, "collector.interval_msec"),
        ({"interval_ms": 0}, "collector.interval_ms"),
        ({"engine": "tgi"}, "unknown engine 'tgi'"),
        ({"kubernetes": {"sources": [{"pool": "m"}]}}, "exactly one of 'selector'"),
        (
            {"kubernetes": {"sources": [{"pool": "m", "selector": "a=b"}]}},
            "'port' is required",
        ),
        ({"sharding": {"lease": 1}}, "collector.sharding.lease"),
    ],
)
def test_bad_config_names_the_problem(section: dict[str, object], message: str) -> None:
    with pytest.raises(configfile.ConfigError, match=message):
        configfile.section({"collector": section}, "collector", CollectorConfig)


def test_replica_id_is_a_subject_token() -> None:
    assert CollectorConfig(id="pod.name/x y").replica_id() == "pod-name-x-y"

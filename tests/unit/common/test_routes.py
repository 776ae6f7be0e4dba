"""The route declarations of pointsman.v1 and the ``nats:`` config of the shared bus shell."""

from __future__ import annotations

import msgspec
import pytest

from pointsman import configfile
from pointsman.bus import NatsConfig, nats_config
from pointsman.v1 import routes

# The wire contract: old and new replicas must keep meeting on these during a rollout.
WIRE = {
    "PICK": ("pointsman.v1.pick", "pointsman-picker", True),
    "MODELS": ("pointsman.v1.models", "pointsman-picker", True),
    "CLASSIFY": ("pointsman.v1.classify", "pointsman-classifier", True),
    "SNAPSHOTS": ("pointsman.v1.metrics.>", "", False),
    "COMPLETIONS": ("pointsman.v1.completions", "", False),
    "CACHE_STORE": ("pointsman.v1.cache.store", "pointsman-classifier-cache", False),
    "CACHE_EVENTS": ("pointsman.v1.cache.events", "", False),
    "COLLECTOR_HEARTBEAT": ("pointsman.v1.collector.heartbeat", "", False),
    "POLICY": ("pointsman.v1.policy", "", False),
}


@pytest.mark.parametrize("name", sorted(WIRE))
def test_subjects_queues_and_kinds_are_stable(name: str) -> None:
    route = getattr(routes, name)
    subject, queue, answers = WIRE[name]
    assert (route.subject, route.queue, route.reply is not None) == (subject, queue, answers)


def test_every_route_is_listed_once() -> None:
    assert sorted(r.subject for r in routes.ALL) == sorted(s for s, _, _ in WIRE.values())


def test_decode_validates_and_reply_needs_a_reply_type() -> None:
    with pytest.raises(msgspec.ValidationError):
        routes.PICK.decode(b'{"request_id": 1, "model": "m"}')
    with pytest.raises(msgspec.DecodeError):
        routes.PICK.decode_reply(b"{not json")
    with pytest.raises(TypeError):
        routes.COMPLETIONS.decode_reply(b"{}")
    moved = routes.COLLECTOR_HEARTBEAT.on("custom.hb")
    assert (moved.subject, moved.request) == ("custom.hb", routes.COLLECTOR_HEARTBEAT.request)


def test_nats_section_env_wins_and_typos_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NATS_URL", raising=False)
    assert nats_config({}) == NatsConfig()
    assert nats_config({"nats": {"url": "nats://a:4222"}}).url == "nats://a:4222"
    monkeypatch.setenv("NATS_URL", "nats://b:4222,nats://c:4222")
    cfg = nats_config({"nats": {"url": "nats://a:4222"}})
    assert cfg.servers() == ["nats://b:4222", "nats://c:4222"]
    with pytest.raises(configfile.ConfigError, match=r"nats\.ur"):
        nats_config({"nats": {"ur": "nats://a:4222"}})

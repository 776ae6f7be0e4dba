"""Route only to known endpoints, and no debug oracle: the shim's pure policy and its view."""

from __future__ import annotations

import hashlib

import pytest

from pointsman.debug import DebugConfig, allowed
from pointsman.v1 import EndpointMetrics, PickReply, PickStatus, PoolSnapshot
from pointsman_shim.core import headers as h
from pointsman_shim.core.policy import Refused, vet_pick
from pointsman_shim.membership import Membership, static_pools

KNOWN = {
    "alpha": frozenset({"10.0.0.1:8000", "10.0.0.2:8000"}),
    "beta": frozenset({"10.0.1.1:8000"}),
}


def ok(*endpoints: str, prefill: str | None = None) -> PickReply:
    return PickReply(status=PickStatus.OK, endpoints=list(endpoints), prefill=prefill)


@pytest.mark.parametrize(
    ("model", "reply", "refused"),
    [
        ("alpha", ok("10.0.0.1:8000", "10.0.0.2:8000"), None),
        ("alpha", ok("10.0.0.1:8000", "127.0.0.1:6379"), ("not_in_pool", ("127.0.0.1:6379",))),
        ("alpha", ok("10.0.1.1:8000"), ("not_in_pool", ("10.0.1.1:8000",))),  # another pool's
        ("alpha", ok("10.0.0.1:8000", prefill="10.9.9.9:1"), ("not_in_pool", ("10.9.9.9:1",))),
        ("lora-x", ok("10.0.1.1:8000"), None),  # not a pool's name: one known pool holds it all
        ("lora-x", ok("10.0.1.1:8000", "10.0.0.1:8000"), ("unknown_pool", None)),
        ("gamma", ok("169.254.169.254:80"), ("unknown_pool", ("169.254.169.254:80",))),
        ("alpha", PickReply(status=PickStatus.SHED), None),
    ],
)
def test_vet_pick(model: str, reply: PickReply, refused: tuple[str, object] | None) -> None:
    got = vet_pick(reply, model, KNOWN)
    if refused is None:
        assert got is reply
        return
    assert isinstance(got, Refused)
    assert (got.service, got.kind, got.reason) == ("picker", "unknown_endpoint", refused[0])
    if refused[1] is not None:
        assert got.endpoints == refused[1]


def test_nothing_known_refuses_everything() -> None:
    assert isinstance(vet_pick(ok("10.0.0.1:8000"), "alpha", {}), Refused)


def test_membership_merges_static_and_discovered_and_forgets() -> None:
    now = [100.0]
    view = Membership(static_pools({"pools": {"alpha": ["10.0.0.1:8000"]}}), 30, lambda: now[0])
    snap = PoolSnapshot(
        pool="alpha",
        collector="c1",
        published_at=0,
        endpoints=[EndpointMetrics(address="10.0.0.5:8000")],
    )
    view.apply(snap)
    assert view.pools()["alpha"] == {"10.0.0.1:8000", "10.0.0.5:8000"}
    now[0] += 31
    # no snapshot at all since (every collector gone): the last known members stay
    assert view.pools()["alpha"] == {"10.0.0.1:8000", "10.0.0.5:8000"}
    now[0] += 1
    view.apply(PoolSnapshot(pool="alpha", collector="c1", published_at=0, endpoints=[]))
    # snapshots of the pool went on for 32 s without naming it: gone
    assert view.pools()["alpha"] == {"10.0.0.1:8000"}  # static pools stay


def test_static_pools_take_labelled_entries() -> None:
    data = {"pools": {"m": ["1.2.3.4:80", {"address": "5.6.7.8:80", "labels": {"a": "b"}}]}}
    assert static_pools(data) == {"m": frozenset({"1.2.3.4:80", "5.6.7.8:80"})}


AUTH = "Bearer sk-team-a"
AUTH_TENANT = "sha256:" + hashlib.sha256(AUTH.encode()).hexdigest()


@pytest.mark.parametrize(
    ("config", "headers", "expected"),
    [
        (DebugConfig(), {"x-pointsman-debug": "1"}, False),  # off by default
        (DebugConfig(enabled=True), {"x-pointsman-debug": "1"}, True),
        (DebugConfig(enabled=True), {"x-pointsman-debug": "0"}, False),
        (DebugConfig(enabled=True), {}, False),
        (DebugConfig(enabled=True, tenants=["a"]), {"x-pointsman-debug": "1"}, False),
        (
            DebugConfig(enabled=True, tenants=["a"]),
            {"x-pointsman-debug": "1", "x-tenant-id": "a"},
            True,
        ),
        (
            DebugConfig(enabled=True, tenants=[AUTH_TENANT]),
            {"x-pointsman-debug": "true", "authorization": AUTH},
            True,
        ),
        (
            DebugConfig(enabled=True, tenants=[AUTH_TENANT]),
            {"x-pointsman-debug": "1", "authorization": "Bearer other"},
            False,
        ),
    ],
)
def test_debug_allowed(config: DebugConfig, headers: dict[str, str], expected: bool) -> None:
    assert allowed(config, headers) is expected


def test_the_debug_header_reaches_the_services_only_when_allowed() -> None:
    headers = {"x-pointsman-debug": "1", "x-session-id": "s"}
    assert h.forwarded(headers) == {"x-session-id": "s"}
    assert h.forwarded(headers, debug=True) == headers

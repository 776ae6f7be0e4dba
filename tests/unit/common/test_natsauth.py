"""The NATS permissions generated from the route declarations (the real server: tests/integration/security)."""

from __future__ import annotations

from pointsman import natsauth
from pointsman.v1 import routes

PROMPTS = (routes.PICK.subject, routes.CLASSIFY.subject, routes.CACHE_STORE.subject)


def test_permissions_are_the_issues_list() -> None:
    p = natsauth.permissions()
    sends = {i: set(p[i].publish) for i in routes.IDENTITIES}
    reads = {i: set(p[i].subscribe) for i in routes.IDENTITIES}
    # only the shim publishes classify and pick requests
    assert [i for i in routes.IDENTITIES if routes.PICK.subject in sends[i]] == ["shim"]
    assert [i for i in routes.IDENTITIES if routes.CLASSIFY.subject in sends[i]] == ["shim"]
    # only classifiers subscribe to classify, only pickers to pick; nobody else reads prompts
    assert [i for i in routes.IDENTITIES if routes.CLASSIFY.subject in reads[i]] == ["classifier"]
    assert [i for i in routes.IDENTITIES if routes.PICK.subject in reads[i]] == ["picker"]
    for identity in routes.IDENTITIES:
        assert ">" not in reads[identity] and "pointsman.v1.>" not in reads[identity]
    # only collectors publish snapshots and write the bucket; pickers read it
    assert [i for i in routes.IDENTITIES if routes.SNAPSHOTS.subject in sends[i]] == ["collector"]
    assert [i for i in routes.IDENTITIES if "$KV.pointsman-metrics.>" in sends[i]] == ["collector"]
    assert "$JS.API.DIRECT.GET.KV_pointsman-metrics.>" in sends["picker"]
    assert not any(s.startswith("$JS") or s.startswith("$KV") for s in sends["shim"])
    # replies: only the answering identities, each inbox its own
    assert {i for i in routes.IDENTITIES if p[i].responses} == {"picker", "classifier"}
    for identity in routes.IDENTITIES:
        inboxes = {s for s in reads[identity] if s.startswith("_INBOX")}
        assert inboxes == {f"_INBOX.{identity}.>"}
        assert not any(s.startswith("_INBOX") for s in sends[identity])


def test_renamed_subjects_follow_the_config() -> None:
    config = {"collector": {"sharding": {"subject": "hb.x"}, "latest": {"bucket": "b2"}}}
    p = natsauth.permissions(config)
    assert "hb.x" in p["collector"].publish and "hb.x" in p["collector"].subscribe
    assert "$KV.b2.>" in p["collector"].publish


def test_rendered_block_names_keys_as_variables() -> None:
    text = natsauth.render_authorization()
    for identity in routes.IDENTITIES:
        assert f"nkey: ${natsauth.variable(identity)}\n" in text
    assert '"$JS.API.STREAM.INFO.KV_pointsman-metrics"' in text  # quoted: a subject, no variable
    keys = {"shim": ["UA", "UB"]}
    users = natsauth.authorization(keys)["users"]
    assert [u["nkey"] for u in users] == ["UA", "UB"]  # two keys during a rotation

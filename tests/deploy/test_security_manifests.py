"""deploy/kubernetes and the credentials command, checked offline for issue 11: NATS requires
TLS and each service's own NKey with the permissions generated from the routes, every pod
mounts only its own credentials, Redis has an ACL, and NetworkPolicies allow only what is needed.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pointsman import natsauth
from pointsman.stack import credentials
from pointsman.v1.routes import IDENTITIES
from tests.deploy.helpers import ROOT, render
from tests.helpers import procs

BASE = ROOT / "deploy" / "kubernetes" / "base"
TARGETS = ["base", "overlays/istio", "overlays/envoy-gateway", "overlays/inference-pool"]
SERVICES = ("shim", "picker", "collector", "classifier")


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}"
    return found[0]


def _config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    cm = next(
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("pointsman-config")
    )
    data: dict[str, Any] = yaml.safe_load(cm["data"]["pointsman.yaml"])
    return data


@pytest.fixture(scope="module", params=TARGETS)
def docs(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(request.param)


def test_nats_conf_is_rendered_from_the_routes() -> None:
    script = BASE / "render_nats.py"
    assert subprocess.run([sys.executable, str(script), "--check"], check=False).returncode == 0


def test_nats_requires_tls_and_the_generated_authorization(docs: list[dict[str, Any]]) -> None:
    conf = _one(docs, "ConfigMap", "pointsman-nats")["data"]["nats.conf"]
    assert conf.endswith(natsauth.render_authorization(_config(docs)))
    assert re.search(r"^tls \{", conf, re.M), "client connections need TLS"
    assert "verify: true" in conf.split("cluster {", 1)[1], "routes need mutual TLS"
    for identity in IDENTITIES:
        assert f"nkey: ${natsauth.variable(identity)}" in conf
    nats = _one(docs, "StatefulSet", "pointsman-nats")["spec"]["template"]["spec"]
    container = nats["containers"][0]
    assert {"secretRef": {"name": "pointsman-nats-users"}} in container["envFrom"]
    secrets = {v["name"]: v["secret"]["secretName"] for v in nats["volumes"] if "secret" in v}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert secrets[mounts["/etc/nats-tls"]] == "pointsman-nats-tls"


def test_each_service_mounts_only_its_own_identity(docs: list[dict[str, Any]]) -> None:
    config = _config(docs)
    nats = config["nats"]
    assert nats["url"].startswith("tls://")
    seed_dir = str(Path(nats["nkey_seed_file"]).parent)
    ca_dir = str(Path(nats["tls"]["ca_file"]).parent)
    redis_dir = str(Path(config["redis"]["password_file"]).parent)
    for svc in SERVICES:
        pod = _one(docs, "Deployment", f"pointsman-{svc}")["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in pod["containers"][0]["volumeMounts"]}
        assert mounts[seed_dir]["secret"]["secretName"] == f"pointsman-nats-{svc}"
        ca = mounts[ca_dir]["secret"]
        assert ca["secretName"] == "pointsman-nats-tls"
        assert ca["items"] == [{"key": "ca.crt", "path": "ca.crt"}], "never the server's key"
        others = {
            v["secret"]["secretName"]
            for v in pod["volumes"]
            if "secret" in v and v["secret"]["secretName"].startswith("pointsman-nats-")
        }
        assert others == {f"pointsman-nats-{svc}", "pointsman-nats-tls"}
        if svc in ("picker", "classifier"):
            assert mounts[redis_dir]["secret"]["secretName"] == f"pointsman-redis-{svc}"
            env = {e["name"]: e for e in pod["containers"][0].get("env", [])}
            ref = env["POINTSMAN_REDIS_USERNAME"]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": f"pointsman-redis-{svc}", "key": "username"}


def test_redis_has_an_acl_and_no_default_user(docs: list[dict[str, Any]]) -> None:
    pod = _one(docs, "Deployment", "pointsman-redis")["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    acl = args[args.index("--aclfile") + 1]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if acl.startswith(m["mountPath"]))
    assert volumes[mount["name"]]["secret"]["secretName"] == "pointsman-redis-acl"


def _peers(policy: dict[str, Any], port: str) -> list[dict[str, Any]]:
    return [
        peer
        for rule in policy["spec"]["ingress"]
        if any(p["port"] == port for p in rule["ports"])
        for peer in rule["from"]
    ]


def _names(peer: dict[str, Any]) -> set[str]:
    selector = peer["podSelector"]
    if "matchLabels" in selector:
        return {selector["matchLabels"].get("app.kubernetes.io/name", "")}
    (expr,) = selector["matchExpressions"]
    assert expr["key"] == "app.kubernetes.io/name" and expr["operator"] == "In"
    return set(expr["values"])


def test_network_policies_allow_only_what_is_needed(docs: list[dict[str, Any]]) -> None:
    prometheus = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }
    shim = _one(docs, "NetworkPolicy", "pointsman-shim")
    gateways = _peers(shim, "extproc")
    assert gateways and all("gateway" in yaml.safe_dump(p) for p in gateways)
    assert _peers(shim, "http") == [prometheus]
    metrics_only = _one(docs, "NetworkPolicy", "pointsman-metrics-only")
    assert _names({"podSelector": metrics_only["spec"]["podSelector"]}) == {
        "pointsman-picker",
        "pointsman-collector",
        "pointsman-classifier",
    }
    assert [r["ports"] for r in metrics_only["spec"]["ingress"]] == [[{"port": "http"}]]
    nats = _one(docs, "NetworkPolicy", "pointsman-nats")
    assert set().union(*map(_names, _peers(nats, "client"))) == {f"pointsman-{s}" for s in SERVICES}
    assert set().union(*map(_names, _peers(nats, "cluster"))) == {"pointsman-nats"}
    redis = _one(docs, "NetworkPolicy", "pointsman-redis")
    assert set().union(*map(_names, _peers(redis, "redis"))) == {
        "pointsman-picker",
        "pointsman-classifier",
        "pointsman-shim",
    }
    # every policy's named ports exist on the pods it selects
    for policy in (d for d in docs if d["kind"] == "NetworkPolicy"):
        names = _names({"podSelector": policy["spec"]["podSelector"]})
        for workload in (d for d in docs if d["kind"] in {"Deployment", "StatefulSet"}):
            labels = workload["spec"]["template"]["metadata"]["labels"]
            if labels.get("app.kubernetes.io/name") not in names:
                continue
            ports = {
                p["name"]
                for c in workload["spec"]["template"]["spec"]["containers"]
                for p in c.get("ports", [])
            }
            for rule in policy["spec"]["ingress"]:
                for port in rule["ports"]:
                    assert port["port"] in ports, (policy["metadata"]["name"], port)


def _generated() -> dict[str, dict[str, bytes]]:
    docs = credentials.kubernetes_secrets("pointsman")
    return {
        d["metadata"]["name"]: {k: base64.b64decode(v) for k, v in d["data"].items()} for d in docs
    }


def test_the_credentials_command_makes_every_secret_the_manifests_mount() -> None:
    docs = render("base")
    wanted: dict[str, set[str]] = {}
    for workload in (d for d in docs if d["kind"] in {"Deployment", "StatefulSet"}):
        pod = workload["spec"]["template"]["spec"]
        for v in pod.get("volumes", []):
            if "secret" in v:
                items = v["secret"].get("items")
                keys = {i["key"] for i in items} if items else set()
                wanted.setdefault(v["secret"]["secretName"], set()).update(keys)
        for c in pod["containers"]:
            for e in c.get("envFrom", []):
                wanted.setdefault(e["secretRef"]["name"], set())
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    wanted.setdefault(ref["name"], set()).add(ref["key"])
    made = _generated()
    for name, keys in wanted.items():
        assert name in made, name
        assert keys <= set(made[name]), (name, keys)
    users = made["pointsman-nats-users"]
    assert set(users) == {natsauth.variable(i) for i in IDENTITIES}
    for identity in IDENTITIES:
        import nkeys

        seed = made[f"pointsman-nats-{identity}"]["nkey.seed"].strip()
        assert (
            nkeys.from_seed(seed).public_key.decode() == users[natsauth.variable(identity)].decode()
        )
    acl = made["pointsman-redis-acl"]["users.acl"].decode()
    assert acl.startswith("user default off")
    for user in credentials.REDIS_USERS:
        assert made[f"pointsman-redis-{user}"]["password"].decode() not in acl  # hashes only


def test_the_nats_conf_is_accepted_by_nats_server(tmp_path: Path) -> None:
    """The rendered config, with the generated keys in the environment and a throwaway
    certificate where the Secret would be, passes ``nats-server -t``."""
    made = _generated()
    tls = tmp_path / "tls"
    tls.mkdir()
    for key, value in made["pointsman-nats-tls"].items():
        (tls / key).write_bytes(value)
    conf = (BASE / "nats.conf").read_text().replace("/etc/nats-tls", str(tls))
    conf = conf.replace("/data", str(tmp_path / "js")).replace("/var/run/nats", str(tmp_path))
    path = tmp_path / "nats.conf"
    path.write_text(conf)
    env = {**os.environ, "SERVER_NAME": "pointsman-nats-0"}
    env.update({k: v.decode() for k, v in made["pointsman-nats-users"].items()})
    result = subprocess.run(
        [procs.binary("nats-server"), "-c", str(path), "-t"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_cert_manager_component_issues_the_nats_tls_secret(tmp_path: Path) -> None:
    import shutil

    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(BASE, tmp_path)],
                "components": [
                    os.path.relpath(
                        ROOT / "deploy/kubernetes/components/nats-cert-manager", tmp_path
                    )
                ],
            }
        )
    )
    out = subprocess.run(
        ["kubectl", "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(tmp_path)],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout  # fmt: skip
    docs = list(yaml.safe_load_all(out))
    cert = _one(docs, "Certificate", "pointsman-nats-tls")
    nats = _one(docs, "StatefulSet", "pointsman-nats")["spec"]["template"]["spec"]
    tls = next(v for v in nats["volumes"] if v["name"] == "tls")
    assert cert["spec"]["secretName"] == tls["secret"]["secretName"]
    service = _one(docs, "Service", "pointsman-nats")["metadata"]["name"]
    assert service in cert["spec"]["dnsNames"]
    assert "*.pointsman-nats-headless" in cert["spec"]["dnsNames"]
    assert _one(docs, "Certificate", "pointsman-nats-ca")["spec"]["isCA"] is True

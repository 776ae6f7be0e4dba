"""The container images, checked offline: no Docker engine runs here, so the Dockerfiles are read.

What a build would get wrong silently is checked here: an image that installs another service's
extra (the shim pulling torch), a final stage that runs as root, a COPY of a path that is not in
the repository or is cut by .dockerignore, an entry point that names no package, ports that are
not the services' defaults.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.dockerfile import Dockerfile, parse

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Image:
    dockerfile: str
    build_args: dict[str, str]
    extra: str  # the pointsman extra it installs
    module: str  # the module it runs
    ports: set[int]  # the ports it exposes
    package_dir: str


#: One image per service, all from services/Dockerfile with the build args docker-compose.yml
#: gives them (test_compose checks that it does); the GPU classifier and the simulator have their
#: own files.
IMAGES = {
    "pointsman-shim": Image(
        "services/Dockerfile",
        {"SERVICE": "shim", "HTTP_PORT": "9102", "PORTS": "9002 9003 9102"},
        "shim",
        "pointsman_shim",
        {9002, 9003, 9102},
        "services/extproc-shim/pointsman_shim",
    ),
    "pointsman-picker": Image(
        "services/Dockerfile",
        {"SERVICE": "picker", "HTTP_PORT": "9103", "PORTS": "9103"},
        "picker",
        "pointsman_picker",
        {9103},
        "services/picker/pointsman_picker",
    ),
    "pointsman-collector": Image(
        "services/Dockerfile",
        {"SERVICE": "collector", "HTTP_PORT": "9104", "PORTS": "9104"},
        "collector",
        "pointsman_collector",
        {9104},
        "services/metrics-collector/pointsman_collector",
    ),
    "pointsman-classifier": Image(
        "services/Dockerfile",
        {
            "SERVICE": "classifier",
            "HTTP_PORT": "9105",
            "PORTS": "9105",
            "TORCH_INDEX_URL": "https://download.pytorch.org/whl/cpu",
        },
        "classifier",
        "pointsman_classifier",
        {9105},
        "services/classifier/pointsman_classifier",
    ),
    "pointsman-classifier-cuda": Image(
        "services/classifier/Dockerfile.cuda",
        {},
        "classifier",
        "pointsman_classifier",
        {9105},
        "services/classifier/pointsman_classifier",
    ),
    "pointsman-sim": Image(
        "deploy/compose/sim.Dockerfile", {}, "sim", "pointsman.sim", {8000}, "src/pointsman/sim"
    ),
}
TORCHLESS = {"shim", "picker", "collector", "sim"}
HEAVY = re.compile(r"^(torch|transformers|nvidia-|triton|sentence-transformers)", re.I)


def _pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as fh:
        return tomllib.load(fh)


def _dependencies(extra: str) -> list[str]:
    project = _pyproject()["project"]
    deps = list(project["dependencies"])
    for dep in project["optional-dependencies"][extra]:
        match = re.match(r"pointsman\[([^\]]+)\]", dep)
        if match:  # an extra that includes other extras
            for inner in match.group(1).split(","):
                deps += _dependencies(inner.strip())
        else:
            deps.append(dep)
    return deps


def _ignore_patterns() -> list[tuple[bool, str]]:
    """.dockerignore as (negated, pattern) in file order; the last match wins."""
    out = []
    for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        out.append((negated, line.lstrip("!").rstrip("/")))
    return out


def _in_context(rel: str) -> bool:
    """Whether a repository path reaches the build context through .dockerignore."""
    included = True
    for negated, pattern in _ignore_patterns():
        parts = rel.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        hit = any(fnmatch.fnmatch(p, pattern) for p in prefixes)
        if pattern.startswith("**/"):
            hit = hit or any(fnmatch.fnmatch(part, pattern[3:]) for part in parts)
        if hit:
            included = negated
    return included


def _built(name: str) -> Dockerfile:
    """The image's Dockerfile with its build args applied."""
    spec = IMAGES[name]
    path = ROOT / spec.dockerfile
    assert path.is_file(), f"{spec.dockerfile} is missing"
    return parse(path).built_with(spec.build_args)


@pytest.fixture(params=sorted(IMAGES))
def image(request: pytest.FixtureRequest) -> tuple[str, Dockerfile]:
    return request.param, _built(request.param)


def test_multi_stage_with_slim_runtime(image: tuple[str, Dockerfile]) -> None:
    name, df = image
    assert len(df.stages) >= 2, f"{name}: build in one stage, copy into a runtime stage"
    runtime = df.final
    assert "slim" in df.resolve(runtime.base), f"{name}: runtime stage should use a slim base"
    copies = [c.args for c in runtime.all("COPY")]
    assert any("--from=builder" in c for c in copies), f"{name}: runtime copies from builder"
    # The runtime stage installs nothing: no compilers, no pip downloads, no sources.
    for run in runtime.all("RUN"):
        assert "pip install" not in run.args, f"{name}: pip install in the runtime stage"
        assert "apt-get install" not in run.args, f"{name}: packages in the runtime stage"
    assert not any(c.split()[0] in {"src", "services", "."} for c in copies), name


def test_runs_as_non_root(image: tuple[str, Dockerfile]) -> None:
    name, df = image
    user = df.final.last("USER")
    assert user is not None, f"{name}: final stage has no USER"
    uid = user.args.split(":")[0]
    # Numeric, so Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
    assert uid.isdigit() and int(uid) != 0, f"{name}: USER {user.args} must be a non-zero uid"


def test_installs_only_its_own_extra(image: tuple[str, Dockerfile]) -> None:
    name, df = image
    extra = IMAGES[name].extra
    assert extra in _pyproject()["project"]["optional-dependencies"], f"no extra {extra!r}"
    text = " ".join(i.args for s in df.stages for i in s.all("RUN"))
    installed = set(re.findall(r"pointsman\[([a-z,]+)\]", text))
    assert installed == {extra}, f"{name}: installs pointsman[{installed}], want [{extra}]"
    if extra in TORCHLESS:
        heavy = [d for d in _dependencies(extra) if HEAVY.match(d)]
        assert not heavy, f"pointsman[{extra}] pulls {heavy}: the {name} image must stay torchless"
        # The shared Dockerfile installs torch only for a build given TORCH_INDEX_URL.
        torch = "torch" in text and ("TORCH_INDEX_URL" not in df.args or df.arg("TORCH_INDEX_URL"))
        assert not torch, f"{name} installs torch"


def test_classifier_variants_take_torch_from_the_right_index() -> None:
    cpu = _built("pointsman-classifier")
    cuda = _built("pointsman-classifier-cuda")
    assert cpu.arg("TORCH_INDEX_URL").endswith("/whl/cpu")
    assert re.search(r"/whl/cu\d+$", cuda.arg("TORCH_INDEX_URL"))
    pinned = next(d for d in _dependencies("classifier") if d.startswith("torch"))
    version = pinned.split("==")[1]
    for df in (cpu, cuda):
        assert df.arg("TORCH_VERSION") == version, f"{df.path}: TORCH_VERSION differs from {pinned}"
    env = " ".join(e.args for e in cuda.final.all("ENV"))
    assert "NVIDIA_VISIBLE_DEVICES" in env


def test_entrypoint_runs_the_service_module(image: tuple[str, Dockerfile]) -> None:
    name, df = image
    module, package_dir = IMAGES[name].module, IMAGES[name].package_dir
    entry = df.final.last("ENTRYPOINT")
    assert entry is not None
    argv = entry.exec_form()
    if argv == ["pointsman-service"]:
        # The shared Dockerfile links pointsman-service to the service's own script.
        runs = " ".join(i.args for s in df.stages for i in s.all("RUN"))
        link = re.search(r'ln -s "?(pointsman-[a-z]+)"? /opt/pointsman/bin/pointsman-service', runs)
        assert link, f"{name}: no pointsman-service link"
        scripts = _pyproject()["project"]["scripts"]
        assert scripts.get(link.group(1)) == f"{module}.__main__:main", f"{name}: {link.group(1)}"
    else:
        assert argv == ["python", "-m", module], f"{name}: ENTRYPOINT {argv}"
    assert (ROOT / package_dir).is_dir(), f"{package_dir} does not exist"
    cmd = df.final.last("CMD")
    assert cmd is not None and cmd.exec_form() is not None, f"{name}: CMD in exec form"
    if module.startswith("pointsman_"):
        assert cmd.exec_form() == ["--config", "/etc/pointsman/pointsman.yaml"]


def test_exposes_default_ports_and_checks_health(image: tuple[str, Dockerfile]) -> None:
    name, df = image
    ports = IMAGES[name].ports
    exposed = {int(p.split("/")[0]) for e in df.final.all("EXPOSE") for p in e.args.split()}
    assert exposed == ports, f"{name}: EXPOSE {sorted(exposed)}, want {sorted(ports)}"
    health = df.final.last("HEALTHCHECK")
    assert health is not None, f"{name}: no HEALTHCHECK"
    assert "/healthz" in health.args or "/health'" in health.args
    if "POINTSMAN_HEALTH_PORT" in health.args:
        env = " ".join(e.args for e in df.final.all("ENV"))
        port = re.search(r"POINTSMAN_HEALTH_PORT=(\d+)", env)
        assert port and int(port.group(1)) in ports, f"{name}: POINTSMAN_HEALTH_PORT in {env}"


def test_copied_paths_exist_and_reach_the_context(image: tuple[str, Dockerfile]) -> None:
    name, df = image
    for stage in df.stages:
        for copy in stage.all("COPY"):
            if "--from=" in copy.args:
                continue
            *sources, _dest = copy.args.split()
            for src in sources:
                if "*" in src:  # optional files (README.md*) may be absent
                    continue
                assert (ROOT / src).exists(), f"{name}: COPY {src}: not in the repository"
                assert _in_context(src), f"{name}: COPY {src} is excluded by .dockerignore"


def test_dockerignore_keeps_the_context_small() -> None:
    for heavy in (".venv", ".git", "tests", "bench", "deploy", "bench/results"):
        assert not _in_context(heavy), f".dockerignore lets {heavy} into the build context"
    for needed in ("pyproject.toml", "src/pointsman/cli.py", "services/picker"):
        assert _in_context(needed), f".dockerignore cuts {needed}"
    assert not _in_context("services/picker/pointsman_picker/__pycache__")

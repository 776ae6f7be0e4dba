"""The runtime classifier carries no offline tools (issue 10 item 7)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from pointsman import cli

ROOT = Path(__file__).resolve().parents[3]


def test_classifier_extra_has_no_training_dependencies() -> None:
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    extras = doc["project"]["optional-dependencies"]
    runtime = " ".join(extras["classifier"])
    assert "matplotlib" not in runtime and "tqdm" not in runtime
    train = " ".join(extras["train"])
    assert "matplotlib" in train and "tqdm" in train


def test_service_modules_import_no_offline_package() -> None:
    code = (
        "import sys\n"
        "import pointsman_classifier.app, pointsman_classifier.engine, pointsman_classifier.gpu\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'pointsman_lab', 'matplotlib'})\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_classifier_sources_do_not_use_tqdm() -> None:
    # transformers itself depends on tqdm (through huggingface_hub), so the module may be
    # installed; the service's own code never uses it.
    package = ROOT / "services" / "classifier" / "pointsman_classifier"
    users = [p.name for p in package.rglob("*.py") if "tqdm" in p.read_text(encoding="utf-8")]
    assert users == []


def test_eval_dispatches_tasks_to_their_modules(capsys: pytest.CaptureFixture[str]) -> None:
    # jailbreak: this package's evaluator (its --help exits 0 and names the command)
    with pytest.raises(SystemExit) as exc:
        cli.main(["eval", "jailbreak", "--help"])
    assert exc.value.code == 0
    assert "pointsman eval jailbreak" in capsys.readouterr().out
    # pii: its own module, or a clear error while it is not there
    if importlib.util.find_spec("pointsman_lab.pii_eval") is None:
        assert cli.main(["eval", "pii", "x.json"]) == 2
        assert "pointsman_lab.pii_eval is missing" in capsys.readouterr().err
    else:
        with pytest.raises(SystemExit) as exc:
            cli.main(["eval", "pii", "--help"])
        assert exc.value.code == 0


@pytest.mark.parametrize("missing", ["matplotlib", "tqdm"])
def test_offline_commands_name_the_extra_when_it_is_missing(missing: str) -> None:
    # A module set to None in sys.modules cannot be imported: as if it were not installed.
    code = (
        "import sys\n"
        f"sys.modules[{missing!r}] = None\n"
        "from pointsman.cli import main\n"
        "sys.exit(main(['eval', 'jailbreak', 'x.jsonl']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 2, done.stderr
    assert "pip install 'pointsman[train]'" in done.stderr

"""The shim's reading of whether the classifier blocks anything agrees with the classifier's.

``shim.classifier.safety_failure_mode: fail-closed`` (issue 12) applies when the classifier blocks
requests: the shim reads that from the config file's ``classifier`` section, with the
classifier's defaults, without importing the classifier. These cases hold the two together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pointsman_classifier.config import ClassifierConfig
from pointsman_shim.app import load_config
from pointsman_shim.config import safety_blocks


def blocks_per_classifier(section: dict[str, Any]) -> bool:
    """The truth, from the classifier's own config model (defaults included)."""
    cfg = ClassifierConfig.model_validate(section)
    jb = cfg.jailbreak
    jailbreak = jb.action == "block" and (
        jb.enabled or any(c.jailbreak.enabled for c in cfg.categories.values())
    )
    lists = [cfg.pii.default_allowed] + [
        m.pii_allowed for m in cfg.models.values() if m.pii_allowed is not None
    ]
    pii = cfg.pii.enabled and any("*" not in a for a in lists)
    return jailbreak or pii


SECTIONS: list[dict[str, Any]] = [
    {},  # the defaults: jailbreak blocking on
    {"jailbreak": {"enabled": False}},
    {"jailbreak": {"action": "tag"}},
    {"jailbreak": {"enabled": False}, "categories": {"law": {"jailbreak": {"enabled": True}}}},
    {"jailbreak": {"enabled": False}, "pii": {"default_allowed": ["EMAIL_ADDRESS"]}},
    {"jailbreak": {"enabled": False}, "models": {"small": {"pii_allowed": []}}},
    {"jailbreak": {"enabled": False}, "models": {"small": {"pii_allowed": ["*"]}}},
    {"jailbreak": {"enabled": False}, "pii": {"enabled": False, "default_allowed": []}},
]


@pytest.mark.parametrize("section", SECTIONS)
def test_shim_and_classifier_agree(section: dict[str, Any]) -> None:
    assert safety_blocks(section) is blocks_per_classifier(section)


def test_no_section_means_the_defaults() -> None:
    assert safety_blocks(None) is True


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"shim": {"classifier": {"enabled": True}}}, True),
        ({"shim": {}, "classifier": {"jailbreak": {"enabled": False}}}, False),
        # set explicitly in the shim's section: wins over the classifier's section
        (
            {
                "shim": {"classifier": {"safety_blocks": True}},
                "classifier": {"jailbreak": {"enabled": False}},
            },
            True,
        ),
    ],
)
def test_the_shim_reads_it_from_the_config_file(
    tmp_path: Path, data: dict[str, Any], expected: bool
) -> None:
    path = tmp_path / "pointsman.yaml"
    path.write_text(yaml.safe_dump(data))
    shim, _, _ = load_config(str(path))
    assert shim.classifier.safety_blocks is expected
    assert shim.classifier.safety_failure_mode == "fail-closed"

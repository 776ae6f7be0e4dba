"""Objectives: config (priority or criticality) and the cluster's InferenceObjectives in one
table, read by the saturation step through the existing priority."""

from __future__ import annotations

import pytest

from pointsman.v1 import PickRequest
from pointsman.v1.policy import InferencePolicy, Objective
from pointsman_picker.config import PickerConfig
from pointsman_picker.core.objectives import Objectives
from pointsman_picker.core.request import to_request
from pointsman_picker.scheduler import Scheduler
from pointsman_picker.telemetry import Telemetry


def test_config_takes_priorities_or_criticality() -> None:
    cfg = PickerConfig.model_validate(
        {
            "objectives": {
                "plain": 3,
                "critical": {"criticality": "Critical"},
                "batch": {"criticality": "Sheddable"},
                "both": {"priority": 7, "criticality": "Sheddable"},
                "empty": {},
            }
        }
    )
    assert cfg.objective_priorities() == {
        "plain": 3,
        "critical": 1,
        "batch": -1,
        "both": 7,
        "empty": 0,
    }
    with pytest.raises(ValueError, match="criticality"):
        PickerConfig.model_validate({"objectives": {"x": {"criticality": "Urgent"}}})


def test_the_config_file_wins_over_the_cluster() -> None:
    table = Objectives({"batch": -1}, [Objective("batch", 5), Objective("chat", 2)])
    assert (table.priority("batch"), table.priority("chat"), table.priority("x")) == (-1, 2, None)
    assert "chat" in table and len(table) == 2


def test_scheduler_takes_cluster_objectives_from_the_policy() -> None:
    scheduler = Scheduler(
        PickerConfig.model_validate({"objectives": {"batch": -1}}), Telemetry(), clock=lambda: 0.0
    )
    pick = PickRequest(
        request_id="r", model="m", headers={"x-gateway-inference-objective": "offline"}
    )
    assert to_request(pick, adapters={}, objectives=scheduler.objectives).priority == 0
    scheduler.on_policy(InferencePolicy(objectives=[Objective("offline", -3, pool="m")]))
    assert to_request(pick, adapters={}, objectives=scheduler.objectives).priority == -3
    assert scheduler.objectives.priority("batch") == -1


@pytest.mark.parametrize(
    ("address", "subset", "allowed"),
    [
        ("10.0.0.1:8000", {"10.0.0.1:8000"}, True),
        ("10.0.0.1:8002", {"10.0.0.1:8000"}, False),  # another data-parallel rank of the pod
        ("10.0.0.1:8002", {"10.0.0.1"}, True),  # the pod: any rank
        ("10.0.0.2:8000", {"10.0.0.1"}, False),
        ("[fd00::1]:3000", {"fd00::1"}, True),
        ("[fd00::1]:3000", {"[fd00::1]:3000"}, True),
    ],
)
def test_subset_hint_names_an_endpoint_or_a_pod(
    address: str, subset: set[str], allowed: bool
) -> None:
    from pointsman_picker.core.pipeline import in_subset

    assert in_subset(address, frozenset(subset)) is allowed

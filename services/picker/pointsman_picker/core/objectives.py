"""Objectives: the one table the picker reads a request's priority from.

An objective names a class of requests (header ``x-gateway-inference-objective``, the Inference
Extension's, or llm-d's ``x-llm-d-inference-objective``) and gives it a priority: higher is
served first, below 0 may be shed when the pool is saturated. The entries come from the config
file (``picker.objectives``) and from the InferenceObjectives the collector reads from
Kubernetes (:class:`pointsman.v1.policy.InferencePolicy`); the config file's win on a name both
give. Everything that orders or sheds by priority (the saturation step today, flow control
later) reads :meth:`Objectives.priority`, so a new source or field lands here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

from pointsman.v1.policy import Objective

Criticality = Literal["Critical", "Standard", "Sheddable"]
#: The Inference Extension's older InferenceModel ``criticality``, as a priority: Sheddable
#: requests are shed when the pool is saturated, Critical ones are served before Standard.
CRITICALITY: dict[str, int] = {"Critical": 1, "Standard": 0, "Sheddable": -1}


class Objectives:
    """Objective name -> priority; immutable, rebuilt when a source changes."""

    def __init__(
        self, config: Mapping[str, int] | None = None, cluster: Iterable[Objective] = ()
    ) -> None:
        table = {o.name: o.priority for o in cluster}
        table.update(config or {})
        self._table = table

    def priority(self, name: str) -> int | None:
        """The objective's priority; ``None`` for a name no source gives."""
        return self._table.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._table

    def __len__(self) -> int:
        return len(self._table)

    def as_dict(self) -> dict[str, int]:
        return dict(self._table)

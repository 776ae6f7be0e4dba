"""Reading the one Pointsman config file.

Every service and the CLI read the same YAML file (``--config`` or ``POINTSMAN_CONFIG``); each
takes its own section and validates it with its own pydantic model, so a typo fails at start-up
with the key's path in the message instead of being ignored.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml

M = TypeVar("M", bound=pydantic.BaseModel)

ENV_CONFIG = "POINTSMAN_CONFIG"


class ConfigError(Exception):
    """The config file is missing, unreadable, or does not validate."""


def read(path: str | os.PathLike[str] | None) -> dict[str, Any]:
    """Load the whole file as a mapping; ``None`` means ``$POINTSMAN_CONFIG`` or an empty config."""
    if path is None:
        path = os.environ.get(ENV_CONFIG) or None
    if path is None:
        return {}
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level")
    return data


def section(data: dict[str, Any], name: str, model: type[M], **overrides: Any) -> M:
    """Validate one section of the config; errors name the full key path (``picker.stale_ms``)."""
    raw = data.get(name) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config section '{name}' must be a mapping")
    merged = {**raw, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return model.model_validate(merged)
    except pydantic.ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in (name, *err["loc"]))
            lines.append(f"  {loc}: {err['msg']}")
        raise ConfigError("invalid config:\n" + "\n".join(lines)) from None

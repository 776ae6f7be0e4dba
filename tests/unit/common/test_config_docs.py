"""Every config key is documented, with its default (the guide's rule: docs are part of the
feature).

The config models of every section of the one config file are walked to their leaves
(``picker.flow_control.reserve.slots``, ...). Each leaf must appear in the Markdown docs: as a
key of a YAML block rooted at its section (``picker:`` ...), or as a key column of a table,
spelled in full (``collector.timeout_ms``) or under a heading that names its section (the
README's "### `shim:`"). Where the docs give a default as a plain value (a YAML block's value, a
table's backticked default), it must be the model's default.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from pointsman.bus import NatsConfig
from pointsman.debug import DebugConfig
from pointsman.redisconf import RedisSecurity
from pointsman.stack.gateway import GatewayConfig
from pointsman.tracing import TracingConfig
from pointsman_classifier.config import ClassifierConfig
from pointsman_collector.config import CollectorConfig
from pointsman_picker.config import PickerConfig
from pointsman_shim.config import ShimConfig

ROOT = Path(__file__).resolve().parents[3]
SECTIONS: dict[str, type[BaseModel]] = {
    "nats": NatsConfig,
    "redis": RedisSecurity,
    "debug": DebugConfig,
    "tracing": TracingConfig,
    "gateway": GatewayConfig,
    "shim": ShimConfig,
    "picker": PickerConfig,
    "classifier": ClassifierConfig,
    "collector": CollectorConfig,
}
NO_DEFAULT = object()
#: A table row: its first cell's backticked keys, then a backticked default (or other text).
ROW = re.compile(r"^\s*\|\s*((?:`[a-z_][a-z0-9_.]*`(?:,\s*)?)+)\s*\|\s*([^|]*)\|")
HEADING = re.compile(r"^#+ .*`([a-z_]+):`")


def docs() -> list[Path]:
    return [
        ROOT / "README.md",
        *sorted(ROOT.glob("services/*/README.md")),
        *sorted(ROOT.glob("docs/*.md")),
    ]


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The models a field holds directly (``M``, ``M | None``), not inside a list or dict."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [
            a
            for a in typing.get_args(annotation)
            if isinstance(a, type) and issubclass(a, BaseModel)
        ]
    return []


def leaves(model: type[BaseModel], prefix: str) -> Iterator[tuple[str, Any]]:
    """``(dotted path, default)`` of every leaf of ``model`` (:data:`NO_DEFAULT` for one made
    at start-up, e.g. ``<hostname>-<pid>``)."""
    for name, field in model.model_fields.items():
        path = f"{prefix}.{field.alias or name}"
        inner = _models(field.annotation)
        if inner:
            for sub in inner:
                yield from leaves(sub, path)
            continue
        yield path, NO_DEFAULT if field.default is PydanticUndefined else field.default


def plain(value: Any) -> str | None:
    """A default as the docs write it; ``None`` for one that has no single spelling."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, int | float | str):
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)
    if hasattr(value, "value"):  # an enum
        return plain(value.value)
    if value in ([], {}, ()):
        return "[]" if isinstance(value, list | tuple) else "{}"
    return None


def _number(text: str) -> str:
    """A documented default as :func:`plain` spells it (``1.0`` and ``1`` are one value)."""
    try:
        return plain(float(text)) or text
    except ValueError:
        return text


def documented() -> tuple[set[str], dict[str, set[str]]]:
    """Every documented key (full dotted path), and the defaults the docs give, by key: from
    the YAML blocks of a part headed "every key with its default" (other YAML blocks are
    examples), and from tables whose default cell is one backticked value. A default shown as
    ``<...>`` (made at start-up) is not compared."""
    keys: set[str] = set()
    defaults: dict[str, set[str]] = {}

    def walk(node: dict[str, Any], prefix: str, listing: bool) -> None:
        for key, value in node.items():
            path = f"{prefix}{key}"
            keys.add(path)
            if isinstance(value, dict) and value:
                walk(value, f"{path}.", listing)
            elif listing and (spelled := plain(value)) is not None:
                defaults.setdefault(path, set()).add(spelled)

    for doc in docs():
        lines = doc.read_text(encoding="utf-8").splitlines()
        section: str | None = None
        heading = ""
        i = 0
        while i < len(lines):
            line = lines[i]
            i += 1
            if line.startswith("#"):
                heading = line
                named = HEADING.match(line)
                section = named.group(1) if named and named.group(1) in SECTIONS else None
                continue
            if line.strip() in ("```yaml", "```yml"):
                block = []
                while i < len(lines) and lines[i].strip() != "```":
                    block.append(lines[i])
                    i += 1
                try:
                    data = yaml.safe_load("\n".join(block))
                except yaml.YAMLError:
                    continue
                if isinstance(data, dict):
                    rooted = {
                        k: v for k, v in data.items() if k in SECTIONS and isinstance(v, dict)
                    }
                    walk(rooted, "", "with its default" in heading)
                continue
            row = ROW.match(line)
            if row is None:
                continue
            cell = row.group(2).strip()
            given = cell[1:-1] if re.fullmatch(r"`[^`]*`", cell) else None
            for key in re.findall(r"`([^`]+)`", row.group(1)):
                if section is not None:
                    full = key if key.startswith(f"{section}.") else f"{section}.{key}"
                elif key.split(".")[0] in SECTIONS:
                    full = key
                else:
                    continue
                keys.add(full)
                if given is not None and not given.startswith("<"):
                    defaults.setdefault(full, set()).add(_number(given))
    return keys, defaults


def all_leaves() -> list[tuple[str, Any]]:
    return [leaf for name, model in SECTIONS.items() for leaf in leaves(model, name)]


def test_every_config_key_is_documented() -> None:
    keys, _ = documented()
    missing = [path for path, _ in all_leaves() if path not in keys]
    assert missing == [], f"config keys no doc mentions: {missing}"


def test_documented_defaults_are_the_models() -> None:
    _, defaults = documented()
    wrong = {}
    for path, default in all_leaves():
        want = plain(default) if default is not NO_DEFAULT else None
        found = defaults.get(path)
        if want is not None and found and want not in found:
            wrong[path] = (want, sorted(found))
    assert wrong == {}, f"docs give another default than the config model: {wrong}"


@pytest.mark.parametrize(
    ("value", "spelled"),
    [
        (True, "true"),
        (None, "null"),
        (5000.0, "5000"),
        (0.8, "0.8"),
        ([], "[]"),
        ({}, "{}"),
        ("x", "x"),
    ],
)
def test_defaults_are_spelled_as_the_docs_write_them(value: Any, spelled: str) -> None:
    assert plain(value) == spelled

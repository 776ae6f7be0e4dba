"""Readers for labelled data, in the formats of ``../shared/data`` as they are.

- category: MMLU-Pro JSONL (``question``, ``category``), or any CSV/JSONL with a text column
  (``text``/``prompt``/``question``) and a label column (``label``/``category``/``type``);
- jailbreak: CSV with ``prompt`` and ``type`` (``benign``/``jailbreak``), the in-the-wild CSV
  (``prompt`` and ``jailbreak`` = True), or MMLU-Pro JSONL (every question benign);
- pii: the presidio-style JSON list (``full_text``, ``spans[{entity_type, start_position,
  end_position}]``).
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

TEXT_KEYS = ("text", "prompt", "question", "full_text")
LABEL_KEYS = ("label", "category", "type")

BENIGN = "benign"
JAILBREAK = "jailbreak"


class DataError(Exception):
    """A data file is missing, unreadable, or has none of the expected columns."""


@dataclass(frozen=True)
class Example:
    text: str
    label: str


@dataclass(frozen=True)
class Span:
    entity_type: str
    start: int
    end: int


@dataclass(frozen=True)
class PiiExample:
    text: str
    spans: tuple[Span, ...]


def rows(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        raise DataError(f"data file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        csv.field_size_limit(sys.maxsize)
        with path.open(newline="", encoding="utf-8") as f:
            return [dict(r) for r in csv.DictReader(f)]
    if suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            data = data.get("data") or data.get("examples") or []
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of objects")
        return [r for r in data if isinstance(r, dict)]
    raise DataError(f"{path}: unknown format '{suffix}' (use .csv, .jsonl or .json)")


def pick(row: dict[str, object], keys: tuple[str, ...]) -> str | None:
    for k in keys:
        v = row.get(k)
        if v is not None and str(v) != "":
            return str(v)
    return None


def _examples(
    path: str | Path, label_of: Callable[[Path, dict[str, object]], str]
) -> list[Example]:
    """The rows of ``path`` that have a text column, each with its label (``label_of``)."""
    p = Path(path)
    out = []
    for row in rows(p):
        text = pick(row, TEXT_KEYS)
        if text is not None:
            out.append(Example(text, label_of(p, row)))
    if not out:
        raise DataError(f"{p}: no rows with a text column (one of {', '.join(TEXT_KEYS)})")
    return out


def read_labelled(path: str | Path) -> list[Example]:
    """Rows with a text and a label column (category data; also jailbreak CSVs)."""

    def label_of(p: Path, row: dict[str, object]) -> str:
        label = pick(row, LABEL_KEYS)
        if label is None:
            raise DataError(f"{p}: a row has no label column (one of {', '.join(LABEL_KEYS)})")
        return label.strip()

    return _examples(path, label_of)


def read_jailbreak(path: str | Path) -> list[Example]:
    """Binary benign/jailbreak examples from any of the jailbreak formats (see module doc)."""
    return _examples(path, _jailbreak_label)


def _jailbreak_label(_path: Path, row: dict[str, object]) -> str:
    if "type" in row:
        return BENIGN if str(row["type"]).strip().lower() == BENIGN else JAILBREAK
    if "jailbreak" in row:
        flag = str(row["jailbreak"]).strip().lower()
        return JAILBREAK if flag in {"true", "1", "yes", JAILBREAK} else BENIGN
    if "label" in row:
        flag = str(row["label"]).strip().lower()
        return BENIGN if flag in {BENIGN, "0", "false", "safe"} else JAILBREAK
    # A question set without safety labels (MMLU-Pro): every row is a benign prompt.
    return BENIGN


def read_pii(path: str | Path) -> list[PiiExample]:
    p = Path(path)
    out = []
    for row in rows(p):
        text = pick(row, ("full_text", "text"))
        if text is None:
            continue
        spans = []
        raw = row.get("spans") or []
        if not isinstance(raw, list):
            raise DataError(f"{p}: 'spans' must be a list")
        for s in raw:
            spans.append(
                Span(str(s["entity_type"]), int(s["start_position"]), int(s["end_position"]))
            )
        out.append(PiiExample(text, tuple(spans)))
    if not out:
        raise DataError(f"{p}: no rows with 'full_text'")
    return out

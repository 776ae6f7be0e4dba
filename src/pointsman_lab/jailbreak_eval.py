"""``pointsman eval jailbreak FILE...``: the jailbreak detector on labelled data."""

from __future__ import annotations

from collections.abc import Sequence

from pointsman_lab import evaluate


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    return evaluate.main(["jailbreak", *(argv or [])], prog=prog)

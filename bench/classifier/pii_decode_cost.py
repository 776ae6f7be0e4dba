"""What the PII pattern recognisers and the token head's span decoding cost, this tree against a
baseline commit, on the same texts in the same process.

    python -m bench.classifier.pii_decode_cost [--baseline REF] [--reps 300]
        [--pii FILE]      # Presidio-format sentences (default build/pii-data/validation.json)
        [--prompts FILE]  # MMLU-Pro validation JSONL (default ../shared/data/mmlu_pro/...)

The baseline's ``pointsman_classifier/pii.py`` and ``engine.py`` are loaded from ``git show REF``
as modules of their own; the engine of this tree runs each text once and records the arguments
of every ``decode_tags`` call (tag probabilities, offsets, threshold, text), then each text's
pattern pass (``pii.find``) and each recorded decoding are timed with both versions, alternating
text by text, so a busy machine slows both alike; ``found`` counts the calls that returned any
entity. Three sets: PII sentences (most hold entities, so the decoding runs), MMLU-Pro
validation questions as they are, and the same cut to 256 tokens.
Prints a table and writes bench/results/classifier-pii-decode-cost-cpu.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from bench.classifier.__main__ import RESULTS, pct, prompts
from bench.overhead.hot_path import add_baseline, baseline_of, git

SOURCES = {
    "pii": "services/classifier/pointsman_classifier/pii.py",
    "engine": "services/classifier/pointsman_classifier/engine.py",
}


def _load(ref: str, name: str, into: Path) -> ModuleType:
    """``SOURCES[name]`` as it is at ``ref``, as a module named ``baseline_<name>``."""
    path = into / f"baseline_{name}.py"
    path.write_text(git("show", f"{ref}:{SOURCES[name]}") + "\n", encoding="utf-8")
    spec = importlib.util.spec_from_file_location(f"baseline_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _us(fn: Callable[[], Any], found: list[int]) -> float:
    """``fn()``'s time in µs; appends 1 to ``found`` when it returned something, else 0."""
    t0 = time.perf_counter()
    out = fn()
    us = (time.perf_counter() - t0) * 1e6
    found.append(1 if out else 0)
    return us


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.classifier.pii_decode_cost")
    add_baseline(p)
    p.add_argument("--reps", type=int, default=300, help="texts per set")
    p.add_argument("--pii", type=Path, default=Path("build/pii-data/validation.json"))
    p.add_argument("--prompts", type=Path, help="MMLU-Pro JSONL (default: ../shared/data's)")
    args = p.parse_args(argv)

    from pointsman_classifier import engine as engine_mod
    from pointsman_classifier import pii
    from pointsman_classifier.config import ClassifierConfig

    ref = baseline_of(args)
    commit = git("rev-parse", "--short", ref)
    with tempfile.TemporaryDirectory() as tmp:
        base = {name: _load(ref, name, Path(tmp)) for name in SOURCES}
    engine = engine_mod.Engine(ClassifierConfig.model_validate({"threads": 1}))
    engine.warm_up()
    tok = engine.encoder.tokenizer
    long = []
    for t in prompts(args.reps, 256, args.prompts):
        ends = tok(t, return_offsets_mapping=True, add_special_tokens=False)["offset_mapping"]
        long.append(t[: ends[253][1]] if len(ends) > 254 else t)
    sentences = [r["full_text"] for r in json.loads(args.pii.read_text(encoding="utf-8"))]
    sets = {
        "PII sentences": sentences[: args.reps],
        "mmlu-pro question": prompts(args.reps, None, args.prompts),
        "256 tokens": long,
    }
    calls: list[tuple[Any, ...]] = []
    real = engine_mod.decode_tags

    def record(*a: Any) -> Any:
        calls.append(a)
        return real(*a)

    rows: list[dict[str, Any]] = []
    for set_name, texts in sets.items():
        calls.clear()
        engine_mod.decode_tags = record  # type: ignore[assignment]
        try:
            for text in texts:
                engine.run([text])
        finally:
            engine_mod.decode_tags = real
        steps = ("find before", "find after", "decode before", "decode after")
        times: dict[str, list[float]] = {k: [] for k in steps}
        found: dict[str, list[int]] = {k: [] for k in steps}
        for text in texts:
            for k, fn in (("find before", base["pii"].find), ("find after", pii.find)):
                times[k].append(_us(lambda: fn(text), found[k]))  # noqa: B023
        for a in calls:
            for k, fn in (
                ("decode before", base["engine"].decode_tags),
                ("decode after", engine_mod.decode_tags),
            ):
                times[k].append(_us(lambda: fn(*a), found[k]))  # noqa: B023
        for k, ts in times.items():
            rows.append(
                {
                    "prompts": set_name,
                    "step": k,
                    "n": len(ts),
                    "with_findings": sum(found[k]),
                    "p50_us": round(pct(sorted(ts), 0.5), 1),
                    "p90_us": round(pct(sorted(ts), 0.9), 1),
                    "mean_us": round(statistics.fmean(ts), 1) if ts else 0.0,
                }
            )
    print(f"baseline {commit}")
    print(
        f"{'prompts':<20}{'step':<16}{'n':>6}{'found':>7}{'p50 µs':>10}{'p90 µs':>10}"
        f"{'mean µs':>10}"
    )
    for r in rows:
        print(
            f"{r['prompts']:<20}{r['step']:<16}{r['n']:>6}{r['with_findings']:>7}"
            f"{r['p50_us']:>10.1f}{r['p90_us']:>10.1f}{r['mean_us']:>10.1f}"
        )
    result = {
        "run_params": {
            "reps": args.reps,
            "baseline": commit,
            "head": git("rev-parse", "--short", "HEAD"),
            "machine": platform.platform(),
            "command": "python -m bench.classifier.pii_decode_cost",
        },
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "classifier-pii-decode-cost-cpu.json"
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

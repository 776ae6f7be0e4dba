"""Long prompts on the CPU: the PII windows from the batch's own pass against a pass of their own.

    python -m bench.classifier.long_prompts [--reps 5] [--threads 1]

A prompt longer than ``max_length`` tokens is read window by window: the safety branch scores
every window, and the PII token head tags them. ``reuse`` (the shipped engine) takes the windows'
tag probabilities from the batch's own pass; ``own_pass`` runs them through the trunk again, as
the engine did before. Both run in the same process, document by document in turn, so the
machine's load falls on both alike. The documents are those of the demo-stack test
(``tests/integration/e2e/data``): a report, a script to review, and both with the script twice
(3,400 to 7,100 characters). Prints a table; writes JSON to
``bench/results/classifier-long-prompts-cpu.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "integration" / "e2e" / "data"


def documents() -> dict[str, str]:
    report = (DATA / "quarterly_report.txt").read_text()
    script = (DATA / "weather_script.py.txt").read_text()
    return {
        "report": f"Please summarise this report:\n\n{report}",
        "script x2": f"Can you review this Python script?\n\n```python\n{script * 2}```",
        "report + script x2": f"Summarise this.\n\n{report}\n\n```python\n{script * 2}```",
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5, help="runs per document and mode (default 5)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/classifier-long-prompts-cpu.json"))
    args = ap.parse_args(argv)

    from pointsman_classifier.config import ClassifierConfig
    from pointsman_classifier.engine import Engine

    engine = Engine(ClassifierConfig(threads=args.threads))
    engine.warm_up()
    shipped = Engine._pii_windows

    def own_pass(self: Engine, text: str, further: Any = ()) -> Any:
        return shipped(self, text, ())

    modes = {"own_pass": own_pass, "reuse": shipped}
    docs = documents()
    times: dict[tuple[str, str], list[float]] = {}
    same = True
    for _ in range(args.reps):
        for name, text in docs.items():
            found = {}
            for mode, fn in modes.items():
                Engine._pii_windows = fn  # type: ignore[method-assign]
                start = time.perf_counter()
                [out] = engine.run([text])
                times.setdefault((name, mode), []).append((time.perf_counter() - start) * 1000)
                found[mode] = sorted((f.entity_type, f.start, f.end) for f in out.pii)
            same = same and found["reuse"] == found["own_pass"]
    Engine._pii_windows = shipped  # type: ignore[method-assign]

    rows = []
    print(f"{'document':20s} {'chars':>6s} {'own pass ms':>12s} {'reuse ms':>9s} {'ratio':>6s}")
    for name, text in docs.items():
        before = statistics.median(times[(name, "own_pass")])
        after = statistics.median(times[(name, "reuse")])
        rows.append(
            {"document": name, "chars": len(text), "own_pass_ms": before, "reuse_ms": after}
        )
        print(f"{name:20s} {len(text):6d} {before:12.0f} {after:9.0f} {after / before:6.2f}")
    print(f"same entities in both modes: {same}")
    report = {"threads": args.threads, "reps": args.reps, "same_entities": same, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

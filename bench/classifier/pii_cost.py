"""What the PII token head costs one prompt on this machine: the engine with and without it.

    python -m bench.classifier.pii_cost [--reps 200] [--threads 1]

One prompt at a time (low load: the issue's budget case), MMLU-Pro validation questions as they
are (about 40 tokens) and cut or padded to 256 tokens, through ``Engine.run`` (tokenization,
the shared encoder, the category and jailbreak heads, and with ``pii.ner`` the token head and
the span decoding). Both engines run in the same process and alternate prompt by prompt, so a
busy machine slows both alike. Prints a table and writes
bench/results/classifier-pii-cost-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Any

from bench.classifier.__main__ import RESULTS, pct, prompts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.classifier.pii_cost")
    p.add_argument("--reps", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    from pointsman_classifier.config import ClassifierConfig
    from pointsman_classifier.engine import Engine

    engines = {
        name: Engine(
            ClassifierConfig.model_validate(
                {"threads": args.threads, "device": args.device, "pii": {"ner": ner}}
            )
        )
        for name, ner in (("without PII head", False), ("with PII head", True))
    }
    for e in engines.values():
        e.warm_up()
    tok = next(iter(engines.values())).encoder.tokenizer
    # Cut to 256 tokens with the special ones: the longest prompt the budget covers, in one
    # window (a longer one costs the head's windows beyond the first too).
    long = []
    for t in prompts(args.reps, 256):
        ends = tok(t, return_offsets_mapping=True, add_special_tokens=False)["offset_mapping"]
        long.append(t[: ends[253][1]] if len(ends) > 254 else t)
    sets = {"mmlu-pro question": prompts(args.reps, None), "256 tokens": long}
    rows: list[dict[str, Any]] = []
    for set_name, texts in sets.items():
        times: dict[str, list[float]] = {n: [] for n in engines}
        tokens: list[int] = []
        for text in texts[: args.reps]:
            for name, eng in engines.items():
                t0 = time.perf_counter()
                [out] = eng.run([text])
                times[name].append((time.perf_counter() - t0) * 1e3)
            tokens.append(out.tokens)
        for name, ts in times.items():
            rows.append(
                {
                    "prompts": set_name,
                    "engine": name,
                    "tokens_median": statistics.median(tokens),
                    "p50_ms": round(pct(sorted(ts), 0.5), 2),
                    "p90_ms": round(pct(sorted(ts), 0.9), 2),
                    "n": len(ts),
                }
            )
    print(f"{'prompts':<20}{'engine':<20}{'tokens':>8}{'p50 ms':>9}{'p90 ms':>9}")
    for r in rows:
        print(
            f"{r['prompts']:<20}{r['engine']:<20}{r['tokens_median']:>8.0f}"
            f"{r['p50_ms']:>9.2f}{r['p90_ms']:>9.2f}"
        )
    info = next(iter(engines.values())).info()
    result = {
        "run_params": {
            "reps": args.reps,
            "threads": args.threads,
            "device": args.device,
            "machine": platform.platform(),
            "engine": info,
            "command": "python -m bench.classifier.pii_cost",
        },
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"classifier-pii-cost-{args.device}.json"
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

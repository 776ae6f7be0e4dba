"""Where one engine call spends its time: tokenization, the forward pass, the heads, per batch.

    python -m bench.classifier.profile_engine [--model default|bert-base] [--tokens 256]

Prints one JSON object per line:

* ``tokenize``: a batch of ``--batch`` prompts through the Hugging Face call plus ``pad`` (what
  the engine did before), through :class:`~pointsman_classifier.tokens.FastTokenizer`, and
  through ``Encoder.prepare`` (tokens, bucket groups, pinned buffers on a GPU); wall and CPU
  milliseconds (CPU over wall = cores used).
* ``forward`` (GPU only): seconds per forward pass at ``--batch`` x the token bucket, for the
  CUDA graph the engine replays, the same module run eagerly, Hugging Face's eager forward with
  every hidden state, and the graph in bfloat16.
* ``engine``: ``Engine.prepare``, ``launch`` and ``finish`` and a whole ``run``, per batch size.
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.classifier.__main__ import build_bert_base, prompts
from pointsman_classifier.config import ClassifierConfig
from pointsman_classifier.encoder import default_model_path
from pointsman_classifier.engine import Engine


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _ms(fn: Callable[[], Any], n: int = 10) -> dict[str, float]:
    """Median wall ms of ``fn`` (synchronised on a GPU) and CPU ms per call."""
    fn()
    ts = []
    cpu = _cpu_s()
    for _ in range(n):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t)
    return {
        "wall_ms": round(statistics.median(ts) * 1e3, 3),
        "cpu_ms": round((_cpu_s() - cpu) / n * 1e3, 3),
    }


def _event_s(fn: Callable[[], Any], n: int = 10) -> float:
    for _ in range(3):
        fn()
    start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
    end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
    start.record()
    for _ in range(n):
        fn()
    end.record()
    end.synchronize()
    return float(start.elapsed_time(end)) / 1e3 / n


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="default", help="default (MiniLM) or bert-base")
    p.add_argument("--encoder", default=None, help="MiniLM directory (tokenizer for bert-base)")
    p.add_argument("--tokens", type=int, default=0, help="0 = real prompt lengths")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--device", default="auto")
    p.add_argument("--prompts", default=None)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--quantize", default="auto", choices=["auto", "none", "int8"])
    args = p.parse_args()
    over: dict[str, Any] = {
        "encoder": args.encoder,
        "device": args.device,
        "threads": args.threads,
        "quantize": args.quantize,
        "pii": {"enabled": False},
        "batching": {"max_batch": args.batch},
    }
    if args.tokens:
        over["max_length"] = args.tokens
    if args.model == "bert-base":
        tok_dir = Path(args.encoder) if args.encoder else default_model_path()
        enc_dir, heads_dir = build_bert_base(Path(tempfile.mkdtemp()), tok_dir)
        over.update(encoder=str(enc_dir), heads_dir=str(heads_dir))
    eng = Engine(ClassifierConfig.model_validate(over))
    t0 = time.perf_counter()
    eng.warm_up()
    info = {**eng.info(), "warm_up_s": round(time.perf_counter() - t0, 2)}
    print(json.dumps(info), flush=True)
    e = eng.encoder
    texts = prompts(1024, args.tokens or None, Path(args.prompts) if args.prompts else None)
    batch = texts[: args.batch]
    hf = e.tokenizer

    def hf_call_pad() -> Any:
        enc = hf(batch, truncation=True, max_length=e.max_length)
        return hf.pad({"input_ids": enc["input_ids"]}, return_tensors="pt")

    tok: dict[str, Any] = {"what": "tokenize", "batch": args.batch, "hf_call_pad": _ms(hf_call_pad)}
    if e.tokens is not None:
        fast = e.tokens
        tok["fast_encode"] = _ms(lambda: fast.encode(batch))
    tok["encoder_prepare"] = _ms(lambda: e.prepare(batch))
    tok["tokens_mean"] = round(statistics.fmean(o.tokens for o in eng.run(batch)), 1)
    print(json.dumps(tok), flush=True)

    if e.gpu is not None:
        gpu = e.gpu
        depth = None if eng.depth == e.n_layers else eng.depth
        tb = next(t for t in gpu.seq_buckets if t >= (args.tokens or 256))
        fwd: dict[str, Any] = {"what": "forward", "rows": args.batch, "tokens": tb}
        fwd["graph_ms"] = gpu.time_forward(args.batch, tb, depth) * 1e3
        ids = torch.randint(1000, 20000, (args.batch, tb), device=eng.device)
        lens = torch.full((args.batch,), tb, device=eng.device)
        mask = torch.ones_like(ids)
        with torch.inference_mode():
            fwd["pooled_eager_ms"] = _event_s(lambda: gpu._forward(ids, lens, depth)) * 1e3
            fwd["hf_eager_hidden_ms"] = (
                _event_s(
                    lambda: e.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
                )
                * 1e3
            )
            fwd["pooled_eager_cpu_ms"] = _ms(lambda: gpu._forward(ids, lens, depth), 5)["cpu_ms"]
            torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = True
            fwd["pooled_eager_reduced_precision_ms"] = (
                _event_s(lambda: gpu._forward(ids, lens, depth)) * 1e3
            )
            torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
            gpu.module.to(torch.bfloat16)
            fwd["pooled_eager_bf16_ms"] = _event_s(lambda: gpu._forward(ids, lens, depth)) * 1e3
            gpu.module.to(torch.float16)
        fwd["graph_rps"] = args.batch / fwd["graph_ms"] * 1e3
        print(json.dumps(fwd), flush=True)

    for bs in (1, 8, 32, 64, args.batch):
        b = (texts * 8)[:bs]
        row: dict[str, Any] = {"what": "engine", "batch": bs}
        row["prepare"] = _ms(functools.partial(eng.prepare, b))
        prepared = eng.prepare(b)
        row["launch_finish"] = _ms(functools.partial(eng.run_prepared, prepared), 5)
        t = time.perf_counter()
        flight = eng.launch(prepared)
        row["launch_wall_ms"] = round((time.perf_counter() - t) * 1e3, 3)
        t = time.perf_counter()
        _, stats = eng.finish(flight)
        row["finish_wall_ms"] = round((time.perf_counter() - t) * 1e3, 3)
        row["device_ms"] = round(stats["device_s"] * 1e3, 3)
        row["heads_ms"] = round(stats["finish_s"] * 1e3, 3)
        row["run"] = _ms(functools.partial(eng.run, b))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

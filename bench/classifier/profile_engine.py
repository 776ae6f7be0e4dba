"""Where one engine call spends its time (tokenize, encoder, heads), per batch size.

python -m bench.classifier.profile_engine [--encoder DIR] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from pointsman_classifier.config import ClassifierConfig
from pointsman_classifier.engine import Engine


def _ms(fn: Any, n: int = 20) -> float:
    ts = []
    for _ in range(n):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t)
    return round(statistics.median(ts) * 1e3, 3)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--encoder", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--prompts", default=None)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--quantize", default="auto", choices=["auto", "none", "int8"])
    args = p.parse_args()
    eng = Engine(
        ClassifierConfig.model_validate(
            {
                "encoder": args.encoder,
                "device": args.device,
                "threads": args.threads,
                "quantize": args.quantize,
                "pii": {"enabled": False},
            }
        )
    )
    texts = ["What is the process by which plants convert sunlight into chemical energy?"] * 8
    if args.prompts:
        with Path(args.prompts).open() as f:
            texts = [json.loads(line)["question"] for line in f][:256]
    e = eng.encoder
    print(json.dumps(eng.info()))
    for bs in (1, 8, 32, 128):
        batch = (texts * 64)[:bs]
        tok = e.tokenize(batch)
        print(
            json.dumps(
                {
                    "batch": bs,
                    "tokens": int(tok["input_ids"].shape[1]),
                    "run_ms": _ms(lambda b=batch: eng.run(b)),
                    "tokenize_ms": _ms(lambda b=batch: e.tokenize(b)),
                    "encode_ms": _ms(lambda t=tok: e.encode(t)),
                    "grouped_encoder_ms": _ms(lambda b=batch: e(b)),
                }
            ),
            flush=True,
        )
    with torch.inference_mode():
        tok = e.tokenize(texts[:1])
        ids = tok["input_ids"].to(eng.device)
        mask = tok["attention_mask"].to(eng.device)
        if e.fast is not None:
            print(
                "fast path (pooled layers, quantize " + e.quantize + "), batch 1:",
                _ms(lambda: e.fast(ids, mask)),
            )
        print(
            "model forward only, batch 1:", _ms(lambda: e.model(input_ids=ids, attention_mask=mask))
        )
        print(
            "model forward + hidden states, batch 1:",
            _ms(lambda: e.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)),
        )


if __name__ == "__main__":
    main()

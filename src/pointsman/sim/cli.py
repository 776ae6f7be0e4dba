"""``pointsman sim`` / ``python -m pointsman.sim``: flags -> :class:`SimConfig` -> servers."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace

from pointsman.sim.config import SimConfig

_D = SimConfig()


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Simulated vLLM server(s): OpenAI-compatible API (/v1/chat/completions, "
            "/v1/completions, /v1/responses, /v1/models), /tokenize, /detokenize, optionally "
            "the render paths and the Anthropic Messages API, /health and Prometheus /metrics "
            "with vLLM's metric names, in vLLM 0.32's shapes. Continuous batching, a bounded KV "
            "cache with prefix caching, LoRA slots. Defaults model Llama-3.1-8B (bf16) on one "
            "H100; see the pointsman.sim docstring."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("serving")
    g.add_argument("--host", default=_D.host, help="address to listen on")
    g.add_argument(
        "--port",
        type=int,
        default=_D.port,
        help="port of the first replica; replica i listens on PORT+i (0: any free port)",
    )
    g.add_argument(
        "--count",
        type=int,
        default=1,
        help="independent replicas (each its own engine) per model, in this one process",
    )
    g.add_argument(
        "--model",
        "--served-model-name",
        action="append",
        help=f"served model name; repeat it to serve several models from one process, COUNT "
        f"replicas each, on consecutive ports model after model (default: {_D.model})"
        "%(default).0s",
    )
    g.add_argument(
        "--lora-adapters",
        default="",
        help="comma-separated LoRA adapter names, served as extra model names",
    )
    g.add_argument(
        "--max-loras",
        type=int,
        default=_D.max_loras,
        help="adapters resident at once; another one evicts the least recently used",
    )
    g.add_argument(
        "--lora-load-ms",
        type=float,
        default=_D.lora_load_s * 1000,
        help="time to load an adapter that is not resident",
    )
    g.add_argument("--seed", type=int, default=_D.seed, help="seed for request ids")
    g.add_argument(
        "--time-scale",
        type=float,
        default=_D.time_scale,
        help="multiply every simulated duration (0.01: 100x faster than the GPU); /metrics "
        "histograms stay in simulated seconds",
    )
    g.add_argument("--log-level", default="INFO", help="logging level")
    g = p.add_argument_group("APIs (each as vLLM 0.32 serves it)")
    g.add_argument(
        "--anthropic",
        action="store_true",
        help="serve the Anthropic Messages API (/v1/messages, /v1/messages/count_tokens); "
        "without it those paths answer 404, as on a server without the API",
    )
    g.add_argument(
        "--enable-scale-out",
        action="store_true",
        help="serve the render paths (/v1/chat/completions/render, /v1/completions/render, "
        "/v1/responses/render, /v1/messages/render), as vLLM does with this flag; without it "
        "they answer 403, as vLLM's do, and vllm-router's cache_aware builds no prefix key",
    )
    g.add_argument(
        "--enable-responses-store",
        dest="responses_store",
        action="store_true",
        help="keep responses created with store (the default) for GET /v1/responses/{id} and "
        "previous_response_id, as vLLM with VLLM_ENABLE_RESPONSES_API_STORE=1; without it "
        "store is ignored and both answer 404, as vLLM's default",
    )
    g.add_argument(
        "--responses-store-size",
        type=int,
        default=_D.responses_store_size,
        help="most responses kept; the oldest are forgotten first",
    )
    g = p.add_argument_group("capacity")
    g.add_argument("--block-size", type=int, default=_D.block_size, help="tokens per KV block")
    g.add_argument(
        "--num-gpu-blocks", type=int, default=_D.num_gpu_blocks, help="KV cache size in blocks"
    )
    g.add_argument(
        "--max-num-seqs", type=int, default=_D.max_num_seqs, help="most requests in one batch"
    )
    g.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=_D.max_num_batched_tokens,
        help="token budget of one step (prefill chunks + decodes)",
    )
    g.add_argument(
        "--max-model-len",
        type=int,
        default=_D.max_model_len,
        help="longest prompt + output; longer requests get a 400",
    )
    g.add_argument(
        "--no-enable-prefix-caching",
        dest="enable_prefix_caching",
        action="store_false",
        help="turn automatic prefix caching off",
    )
    g = p.add_argument_group("speed")
    g.add_argument(
        "--prefill-tokens-per-s",
        type=float,
        default=_D.prefill_tokens_per_s,
        help="uncached prompt tokens computed per second",
    )
    g.add_argument(
        "--step-base-ms",
        type=float,
        default=_D.step_base_s * 1000,
        help="fixed time of one engine step (a decode step at batch 1)",
    )
    g.add_argument(
        "--step-per-seq-ms",
        type=float,
        default=_D.step_per_seq_s * 1000,
        help="extra step time per request in the batch",
    )
    g.add_argument(
        "--step-per-kv-ktoken-ms",
        type=float,
        default=_D.step_per_kv_ktoken_s * 1000,
        help="extra step time per 1000 KV tokens read by decoding requests",
    )
    g = p.add_argument_group("requests")
    g.add_argument(
        "--default-max-tokens",
        type=int,
        default=_D.default_max_tokens,
        help="output tokens when a request sets no max_tokens (Messages: when max_tokens is "
        "higher)",
    )
    g.add_argument(
        "--chars-per-token",
        type=int,
        default=_D.chars_per_token,
        help="characters per token of the approximate tokenizer",
    )
    return p


def config_from_args(args: argparse.Namespace) -> SimConfig:
    return SimConfig(
        host=args.host,
        port=args.port,
        model=(args.model or [_D.model])[0],
        lora_adapters=[a.strip() for a in args.lora_adapters.split(",") if a.strip()],
        max_loras=args.max_loras,
        lora_load_s=args.lora_load_ms / 1000,
        seed=args.seed,
        time_scale=args.time_scale,
        anthropic=args.anthropic,
        enable_scale_out=args.enable_scale_out,
        responses_store=args.responses_store,
        responses_store_size=args.responses_store_size,
        block_size=args.block_size,
        num_gpu_blocks=args.num_gpu_blocks,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_model_len,
        enable_prefix_caching=args.enable_prefix_caching,
        prefill_tokens_per_s=args.prefill_tokens_per_s,
        step_base_s=args.step_base_ms / 1000,
        step_per_seq_s=args.step_per_seq_ms / 1000,
        step_per_kv_ktoken_s=args.step_per_kv_ktoken_ms / 1000,
        default_max_tokens=args.default_max_tokens,
        chars_per_token=args.chars_per_token,
    )


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = build_parser(prog)
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    config = config_from_args(args)
    models = args.model or [config.model]
    try:
        for model in models:
            replace(config, model=model).validate()
    except ValueError as exc:
        parser.error(str(exc))
    if len(set(models)) != len(models):
        parser.error("each --model may be given once")
    if args.count < 1:
        parser.error("--count must be at least 1")
    from pointsman.runtime import run, setup_logging
    from pointsman.sim.server import serve_until

    setup_logging(args.log_level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)

    async def app(stop: asyncio.Event) -> None:
        await serve_until(config, args.count, stop, models)

    try:
        run(app)
    except OSError as exc:
        logging.getLogger("pointsman.sim").error("cannot start: %s", exc)
        return 1
    return 0

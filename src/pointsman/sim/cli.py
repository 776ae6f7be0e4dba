"""``pointsman sim`` / ``python -m pointsman.sim``: flags -> :class:`SimConfig` -> servers."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from pointsman.sim.config import SimConfig

_D = SimConfig()


@dataclass(frozen=True, slots=True)
class _Knob:
    """A flag that sets one :class:`SimConfig` field: its type and default come from the field
    (a boolean field is a switch away from its default); ``ms``: the flag is in milliseconds,
    the field in seconds."""

    flag: str
    field: str
    help: str
    ms: bool = False

    @property
    def dest(self) -> str:
        return self.field.removesuffix("_s") + "_ms" if self.ms else self.field

    def add(self, group: argparse._ArgumentGroup) -> None:
        default = getattr(_D, self.field)
        if isinstance(default, bool):
            action = "store_false" if default else "store_true"
            group.add_argument(self.flag, dest=self.dest, action=action, help=self.help)
        elif self.ms:
            group.add_argument(self.flag, type=float, default=default * 1000, help=self.help)
        else:
            kind = type(default)
            group.add_argument(self.flag, type=kind, default=default, help=self.help)

    def value(self, args: argparse.Namespace) -> Any:
        value = getattr(args, self.dest)
        return value / 1000 if self.ms else value


@dataclass(frozen=True, slots=True)
class _Flag:
    """A flag that is not one :class:`SimConfig` field (read by :func:`config_from_args` or
    :func:`main` themselves)."""

    flags: tuple[str, ...]
    options: dict[str, Any]

    def add(self, group: argparse._ArgumentGroup) -> None:
        group.add_argument(*self.flags, **self.options)


#: Every flag, by help group, in the order ``--help`` lists them.
_GROUPS: tuple[tuple[str, tuple[_Knob | _Flag, ...]], ...] = (
    (
        "serving",
        (
            _Knob("--host", "host", "address to listen on"),
            _Knob(
                "--port",
                "port",
                "port of the first replica; replica i listens on PORT+i (0: any free port)",
            ),
            _Flag(
                ("--count",),
                {
                    "type": int,
                    "default": 1,
                    "help": "independent replicas (each its own engine) per model, in this one "
                    "process",
                },
            ),
            _Flag(
                ("--model", "--served-model-name"),
                {
                    "action": "append",
                    "help": "served model name; repeat it to serve several models from one "
                    "process, COUNT replicas each, on consecutive ports model after model "
                    f"(default: {_D.model})%(default).0s",
                },
            ),
            _Flag(
                ("--lora-adapters",),
                {
                    "default": "",
                    "help": "comma-separated LoRA adapter names, served as extra model names",
                },
            ),
            _Knob(
                "--max-loras",
                "max_loras",
                "adapters resident at once; another one evicts the least recently used",
            ),
            _Knob(
                "--lora-load-ms",
                "lora_load_s",
                "time to load an adapter that is not resident",
                ms=True,
            ),
            _Knob("--seed", "seed", "seed for request ids"),
            _Knob(
                "--time-scale",
                "time_scale",
                "multiply every simulated duration (0.01: 100x faster than the GPU); /metrics "
                "histograms stay in simulated seconds",
            ),
            _Flag(("--log-level",), {"default": "INFO", "help": "logging level"}),
        ),
    ),
    (
        "APIs (each as vLLM 0.32 serves it)",
        (
            _Knob(
                "--anthropic",
                "anthropic",
                "serve the Anthropic Messages API (/v1/messages, /v1/messages/count_tokens); "
                "without it those paths answer 404, as on a server without the API",
            ),
            _Knob(
                "--enable-scale-out",
                "enable_scale_out",
                "serve the render paths (/v1/chat/completions/render, /v1/completions/render, "
                "/v1/responses/render, /v1/messages/render), as vLLM does with this flag; "
                "without it they answer 403, as vLLM's do, and vllm-router's cache_aware builds "
                "no prefix key",
            ),
            _Knob(
                "--enable-responses-store",
                "responses_store",
                "keep responses created with store (the default) for GET /v1/responses/{id} and "
                "previous_response_id, as vLLM with VLLM_ENABLE_RESPONSES_API_STORE=1; without "
                "it store is ignored and both answer 404, as vLLM's default",
            ),
            _Knob(
                "--responses-store-size",
                "responses_store_size",
                "most responses kept; the oldest are forgotten first",
            ),
        ),
    ),
    (
        "capacity",
        (
            _Knob("--block-size", "block_size", "tokens per KV block"),
            _Knob("--num-gpu-blocks", "num_gpu_blocks", "KV cache size in blocks"),
            _Knob("--max-num-seqs", "max_num_seqs", "most requests in one batch"),
            _Knob(
                "--max-num-batched-tokens",
                "max_num_batched_tokens",
                "token budget of one step (prefill chunks + decodes)",
            ),
            _Knob(
                "--max-model-len",
                "max_model_len",
                "longest prompt + output; longer requests get a 400",
            ),
            _Knob(
                "--no-enable-prefix-caching",
                "enable_prefix_caching",
                "turn automatic prefix caching off",
            ),
        ),
    ),
    (
        "speed",
        (
            _Knob(
                "--prefill-tokens-per-s",
                "prefill_tokens_per_s",
                "uncached prompt tokens computed per second",
            ),
            _Knob(
                "--step-base-ms",
                "step_base_s",
                "fixed time of one engine step (a decode step at batch 1)",
                ms=True,
            ),
            _Knob(
                "--step-per-seq-ms",
                "step_per_seq_s",
                "extra step time per request in the batch",
                ms=True,
            ),
            _Knob(
                "--step-per-kv-ktoken-ms",
                "step_per_kv_ktoken_s",
                "extra step time per 1000 KV tokens read by decoding requests",
                ms=True,
            ),
        ),
    ),
    (
        "requests",
        (
            _Knob(
                "--default-max-tokens",
                "default_max_tokens",
                "output tokens when a request sets no max_tokens (Messages: when max_tokens is "
                "higher)",
            ),
            _Knob(
                "--chars-per-token",
                "chars_per_token",
                "characters per token of the approximate tokenizer",
            ),
        ),
    ),
)
_KNOBS = tuple(e for _, entries in _GROUPS for e in entries if isinstance(e, _Knob))


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
    for title, entries in _GROUPS:
        group = p.add_argument_group(title)
        for entry in entries:
            entry.add(group)
    return p


def config_from_args(args: argparse.Namespace) -> SimConfig:
    return SimConfig(
        model=(args.model or [_D.model])[0],
        lora_adapters=[a.strip() for a in args.lora_adapters.split(",") if a.strip()],
        **{knob.field: knob.value(args) for knob in _KNOBS},
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

"""Every knob of the simulator, with defaults that resemble Llama-3.1-8B (bf16) on one H100.

See the package docstring for where each default comes from.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SimConfig:
    # -- serving ---------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    #: served model name (the base model)
    model: str = "meta-llama/Llama-3.1-8B-Instruct"
    #: served LoRA adapter names (each is also a model name a request may ask for)
    lora_adapters: list[str] = field(default_factory=list)
    #: adapters that fit on the GPU at once (vLLM ``--max-loras``)
    max_loras: int = 1
    #: seconds to load an adapter that is not resident (charged to the step that admits it)
    lora_load_s: float = 0.030
    seed: int = 0
    #: multiplies every simulated duration (0.01 runs 100x faster than the modelled GPU)
    time_scale: float = 1.0

    # -- APIs beyond chat and completions (vLLM 0.32 serves each; see the package docstring) --
    #: serve the Anthropic Messages API (/v1/messages, /v1/messages/count_tokens)
    anthropic: bool = False
    #: serve the render paths (/v1/chat/completions/render, ...): vLLM's --enable-scale-out
    enable_scale_out: bool = False
    #: keep responses with ``store`` for GET and previous_response_id: vLLM with
    #: VLLM_ENABLE_RESPONSES_API_STORE=1
    responses_store: bool = False
    #: most responses kept (the oldest go first)
    responses_store_size: int = 10_000

    # -- capacity --------------------------------------------------------------------------
    block_size: int = 16
    #: KV blocks on the GPU (3072 x 16 = 49,152 tokens)
    num_gpu_blocks: int = 3072
    max_num_seqs: int = 256
    #: token budget of one engine step (prefill chunks + one token per decoding request)
    max_num_batched_tokens: int = 8192
    max_model_len: int = 8192
    enable_prefix_caching: bool = True

    # -- speed -----------------------------------------------------------------------------
    #: prompt tokens computed per second (uncached ones only)
    prefill_tokens_per_s: float = 16000.0
    #: fixed cost of one forward pass (reading the weights): the decode step at batch 1
    step_base_s: float = 0.007
    #: extra step time per request in the batch
    step_per_seq_s: float = 0.00004
    #: extra step time per 1000 tokens held in KV by decoding requests (attention reads)
    step_per_kv_ktoken_s: float = 0.00004

    # -- requests --------------------------------------------------------------------------
    #: output tokens when a request sets no max_tokens (it then ends with finish_reason "stop")
    default_max_tokens: int = 128
    chars_per_token: int = 4

    def served_models(self) -> list[str]:
        return [self.model, *self.lora_adapters]

    def validate(self) -> None:
        if self.time_scale <= 0:
            raise ValueError("--time-scale must be > 0")
        for name in (
            "block_size",
            "num_gpu_blocks",
            "max_num_seqs",
            "max_num_batched_tokens",
            "max_model_len",
            "chars_per_token",
            "default_max_tokens",
            "responses_store_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        if self.prefill_tokens_per_s <= 0:
            raise ValueError("--prefill-tokens-per-s must be > 0")
        if self.lora_adapters and self.max_loras < 1:
            raise ValueError("--max-loras must be at least 1 when --lora-adapters is set")
        if len(set(self.served_models())) != len(self.served_models()):
            raise ValueError("--lora-adapters must differ from each other and from --model")

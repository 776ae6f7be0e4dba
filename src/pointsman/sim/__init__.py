"""A simulated vLLM replica: OpenAI API, continuous batching, prefix caching, vLLM's /metrics.

It exists to benchmark and test routing without GPUs. It behaves like one vLLM (v1 engine)
server closely enough that a router sees what it would see in production: queues that build
when the batch or the KV cache is full, time to first token that grows with uncached prompt
tokens, faster prefills for prompts whose prefix was seen recently, per-token latency that grows
with batch size, LoRA adapters that cost a load, and the same metric names and labels.

The model behind the defaults: Llama-3.1-8B-Instruct in bf16 on one H100 80GB.

- One decode step reads the 16 GB of weights once: about 5 ms at 3.35 TB/s plus overheads, so
  ``--step-base-ms 7`` at batch 1. Each request in the batch adds ``--step-per-seq-ms 0.04`` and
  each 1000 tokens of KV read by decoding requests adds ``--step-per-kv-ktoken-ms 0.04`` (one
  token of KV is 128 KiB: 32 layers x 8 KV heads x 128 dims x 2 (K, V) x 2 bytes). A batch of
  256 requests with 1000 tokens of context each then takes 7 + 10 + 10 = 27 ms a step.
- Prefill computes ``--prefill-tokens-per-s 16000`` uncached prompt tokens per second; a step's
  token budget is ``--max-num-batched-tokens 8192`` (chunked prefill, as vLLM on an H100).
- ``--max-num-seqs 256`` and ``--max-model-len 8192`` are vLLM's serving defaults here.
- KV cache: ``--num-gpu-blocks 3072`` blocks of ``--block-size 16`` tokens (49,152 tokens). A real
  H100 at 0.9 memory utilisation holds about 27,000 blocks; the default is smaller, as for a
  longer-context or larger model, so that KV pressure, queueing and prefix-cache eviction show
  up at loads a laptop can generate. Raise it to model the real card.

Tokens are counted without a tokenizer: one token is ``--chars-per-token 4`` characters of the
prompt as a Llama-3 chat template would render it (see :mod:`pointsman.sim.tokens`); its id, as
``/tokenize`` reports it, is the CRC-32 of those characters, the same on every replica. Output is
``max_tokens`` (or ``max_completion_tokens``) filler words, one per token, ending with
``finish_reason: "length"``; without a limit, ``--default-max-tokens`` words ending with "stop".

``--time-scale F`` multiplies every simulated duration; ``--count N`` runs N independent
replicas on consecutive ports in one process and one event loop (``--model`` repeated: N of
each model, model after model), so a fleet of 8+ replicas fits on two cores.

What a router sees:

- ``POST /v1/chat/completions``, ``POST /v1/completions`` (JSON or SSE: the chunk sequence and
  the keys clients read as vLLM 0.32 sends them, checked against ``tests/fixtures/vllm-0.32``;
  vLLM's null-valued extras are left out), ``GET /v1/models``, ``/health``,
  ``/metrics``, ``POST /reset_prefix_cache``. Every response carries ``x-sim-endpoint:
  host:port``; ``usage.prompt_tokens_details.cached_tokens`` tells the prefix-cache hit.
- ``POST /v1/responses`` (JSON or the typed ``response.*`` events), ``GET`` and
  ``POST .../cancel`` of a response, with vLLM's store semantics (``--enable-responses-store``;
  :mod:`pointsman.sim.responses`); ``POST /v1/messages`` and ``/v1/messages/count_tokens``
  with ``--anthropic`` only (:mod:`pointsman.sim.anthropic`). Both are generations like chat:
  the same scheduler, KV cache and prefix cache.
- ``POST /tokenize``, ``POST /detokenize``, and with ``--enable-scale-out`` the render paths
  routers call to build routing keys (:mod:`pointsman.sim.render`): cheap, never scheduled.
- ``/metrics``: vLLM's names and labels (``engine="0"``, ``model_name``):
  ``vllm:num_requests_running``/``_waiting``, ``vllm:kv_cache_usage_perc`` and the older
  ``vllm:gpu_cache_usage_perc``, ``vllm:prefix_cache_queries_total``/``_hits_total``,
  ``vllm:time_to_first_token_seconds`` and other histograms (in simulated seconds, so buckets
  keep their meaning at any time scale), ``vllm:lora_requests_info`` (with adapters only, as in
  vLLM), ``vllm:cache_config_info``.
- A client that hangs up aborts its request and frees its KV blocks, as in vLLM.

Programmatic use (tests, benchmarks)::

    servers = await start_servers(SimConfig(port=0, time_scale=0.01), count=4)
    servers.addresses  # ["127.0.0.1:41231", ...]
    await servers.close()
"""

from __future__ import annotations

from pointsman.sim.cli import main
from pointsman.sim.config import SimConfig
from pointsman.sim.server import Replica, SimServers, start_servers

__all__ = ["Replica", "SimConfig", "SimServers", "main", "start_servers"]

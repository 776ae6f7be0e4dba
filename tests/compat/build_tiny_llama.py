"""Build a tiny, randomly initialised Llama that real vLLM can serve on a CPU, offline.

Run it with a Python that has ``transformers`` and ``tokenizers`` (the vLLM environment has both)::

    /work/vllm-venv/bin/python tests/compat/build_tiny_llama.py OUT_DIR

The model (2 layers, hidden size 64) produces gibberish; it exists so vLLM's OpenAI server,
scheduler, KV cache and ``/metrics`` run for real and their wire formats can be captured. The
tokenizer is a word-level tokenizer trained on generated text, wrapped in
``PreTrainedTokenizerFast`` with a plain Jinja chat template, so no files are downloaded.
Everything is seeded: two runs give the same weights and vocabulary.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|> {{ message['content'] }} <|end|> "
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)

SPECIAL = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

_TEXT = (
    "the a an of to in on for with by from at as is are was were be been it this that these "
    "those model request token tokens cache queue prefix router pool endpoint server engine "
    "latency throughput batch prompt answer question user assistant system hello world please "
    "write explain summarize translate code python rust function list number one two three four "
    "five six seven eight nine ten quick brown fox jumps over lazy dog river mountain city sun "
    "moon star night day morning evening weather rain snow wind cloud tree flower garden book "
    "story poem song music art science history math physics chemistry biology computer network "
    "memory disk file data table graph time space light sound color red green blue yellow black "
    "white small large fast slow good bad new old first last next previous up down left right"
)


def corpus(lines: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = _TEXT.split()
    return [
        " ".join(rng.choice(words) for _ in range(rng.randint(4, 16))) + " ." for _ in range(lines)
    ]


def build(out: Path, seed: int = 0) -> None:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    raw = Tokenizer(models.WordLevel(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIAL, min_frequency=1)
    raw.train_from_iterator(corpus(seed=seed), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=raw,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=SPECIAL[4:],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = 512
    tokenizer.save_pretrained(out)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        # head_dim 32: vLLM's CPU attention supports 32, 64, 80, ... (16 fails at the first step).
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    # Some loaders read the template from its own file rather than tokenizer_config.json.
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory to write the model and tokenizer to")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    build(args.out, seed=args.seed)
    print(f"tiny llama written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

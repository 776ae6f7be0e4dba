"""Token counting without a tokenizer, and the prompt text the simulator counts.

A real tokenizer is not needed to benchmark routing: what matters is that the same text always
gives the same count, that a shared prefix gives shared leading blocks, and that the cost is a
few microseconds. So one token is ``chars_per_token`` consecutive characters of the rendered
prompt (about 4 for English text with a Llama-3 tokenizer) and one KV block is ``block_size``
tokens. Because tokens are fixed-width slices, the tokens of a prefix are a prefix of the tokens,
and two prompts that share their first ``k * block_size * chars_per_token`` characters share
their first ``k`` block hashes, exactly as two token sequences would in vLLM.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: The first link of every hash chain (vLLM seeds its chain with a fixed value too).
ROOT_HASH = 0x5EED


def count_tokens(text: str, chars_per_token: int = 4) -> int:
    """Tokens in ``text``: ``ceil(len / chars_per_token)``, at least 1 (a BOS token)."""
    return max(1, -(-len(text) // chars_per_token))


def block_hashes(
    text: str, block_size: int = 16, chars_per_token: int = 4, extra: object = None
) -> list[int]:
    """Chained hashes of the FULL blocks of ``text`` (a partial last block is never cached).

    ``extra`` (model or LoRA adapter name) is mixed into the first link, as vLLM mixes the
    adapter into its block keys: the same prompt under two adapters shares no cache.
    Python's ``hash`` is salted per process, which is fine: hashes never leave the process.
    """
    width = block_size * chars_per_token
    full = len(text) // width
    out: list[int] = []
    parent = hash((ROOT_HASH, extra))
    for i in range(full):
        parent = hash((parent, text[i * width : (i + 1) * width]))
        out.append(parent)
    return out


def block_hashes_of_ids(
    ids: Sequence[int], block_size: int = 16, extra: object = None
) -> list[int]:
    """Chained hashes of the full blocks of a prompt given as token ids."""
    out: list[int] = []
    parent = hash((ROOT_HASH, extra))
    for i in range(len(ids) // block_size):
        parent = hash((parent, tuple(ids[i * block_size : (i + 1) * block_size])))
        out.append(parent)
    return out


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, Mapping):
                text = part.get("text")
                if isinstance(text, str):
                    parts.append(text)
            elif isinstance(part, str):
                parts.append(part)
        return "".join(parts)
    return str(content)


def render_chat(messages: Iterable[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
    """The prompt a Llama-3 chat template would produce, close enough for counting.

    Each message becomes ``<|start_header_id|>role<|end_header_id|>\\n\\ncontent<|eot_id|>``
    after a BOS marker, with the assistant header appended (``add_generation_prompt``). A shared
    system prompt therefore gives a shared rendered prefix, as it does with the real template,
    and so does an earlier turn of the same conversation: the prompt of a turn, followed by its
    answer, is a prefix of the next turn's prompt.
    """
    pieces = ["<|begin_of_text|>"]
    for msg in messages:
        role = msg.get("role", "user")
        pieces.append(
            f"<|start_header_id|>{role}<|end_header_id|>\n\n"
            f"{_content_text(msg.get('content'))}<|eot_id|>"
        )
    if add_generation_prompt:
        pieces.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return "".join(pieces)


def render_completion_prompt(
    prompt: str | Sequence[int] | Sequence[str],
) -> tuple[str, list[int] | None]:
    """Text of a ``/v1/completions`` prompt, and its token ids when it was given as ids (then
    the count and the block hashes come from the ids, one token per id)."""
    if isinstance(prompt, str):
        return prompt, None
    if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
        ids = [int(p) for p in prompt]
        return " ".join(str(i) for i in ids), ids
    return "".join(str(p) for p in prompt), None


#: Llama-3's vocabulary: ids below ``SPECIAL_BASE`` are text, the rest special tokens.
VOCAB_SIZE = 128_256
SPECIAL_BASE = 128_000
BOS_ID = 128_000


def token_ids(text: str, chars_per_token: int = 4) -> list[int]:
    """The ids of the tokens :func:`count_tokens` counts: one per ``chars_per_token``-character
    slice, its CRC-32 modulo the text part of the vocabulary.

    CRC-32 (not Python's salted ``hash``) makes the ids the same in every process and on every
    replica, as a real tokenizer's are: routers that key on token ids (vllm-router's
    ``cache_aware`` builds its prefix tree from ``/tokenize``) see the same key for the same
    text on every endpoint, and two prompts sharing a prefix share its leading ids. An empty
    text is the single BOS token, so ``len(token_ids(t)) == count_tokens(t)`` always holds.
    """
    if not text:
        return [BOS_ID]
    crc = zlib.crc32
    return [
        crc(text[i : i + chars_per_token].encode()) % SPECIAL_BASE
        for i in range(0, len(text), chars_per_token)
    ]


def token_slices(text: str, chars_per_token: int = 4) -> list[str]:
    """The text of each token of :func:`token_ids` (``token_strs`` of ``/tokenize``)."""
    if not text:
        return ["<|begin_of_text|>"]
    return [text[i : i + chars_per_token] for i in range(0, len(text), chars_per_token)]


class Detokenizer:
    """Turns ids back into text for ``/detokenize``. Ids are hashes, so only the ids this
    replica has handed out by ``/tokenize`` are known; the table starts over when it holds
    ``capacity`` ids (a bulk ``dict.update`` per request keeps ``/tokenize`` cheap, which
    matters because routers call it once per request). An id never seen, or outside the
    vocabulary, gives no text, as vLLM answers an id outside its vocabulary."""

    def __init__(self, capacity: int = 1 << 17) -> None:
        self.capacity = capacity
        self._text: dict[int, str] = {BOS_ID: "<|begin_of_text|>"}

    def learn(self, ids: Sequence[int], slices: Sequence[str]) -> None:
        if len(self._text) + len(ids) > self.capacity:
            self._text = {BOS_ID: "<|begin_of_text|>"}
        self._text.update(zip(ids, slices, strict=True))

    def text(self, ids: Iterable[int]) -> str:
        table = self._text
        return "".join(table.get(i, "") for i in ids)


# fmt: off
_FILLER = (
    " the", " model", " answers", " with", " plain", " words", " that", " cost", " almost",
    " nothing", " to", " make", " and", " keep", " every", " stream", " moving", " along",
    " while", " routing", " is", " measured", " under", " load", ".",
)
# fmt: on


def filler(start: int, count: int) -> str:
    """``count`` generated tokens, one word each, continuing at output position ``start``."""
    n = len(_FILLER)
    return "".join(_FILLER[(start + i) % n] for i in range(count))

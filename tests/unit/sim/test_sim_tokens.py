"""Token approximation and block hashing: deterministic, prefix-stable, cheap."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pointsman.sim.tokens import (
    BOS_ID,
    SPECIAL_BASE,
    Detokenizer,
    block_hashes,
    block_hashes_of_ids,
    count_tokens,
    filler,
    render_chat,
    render_completion_prompt,
    token_ids,
    token_slices,
)


@pytest.mark.parametrize(
    ("text", "cpt", "expected"),
    [("", 4, 1), ("a", 4, 1), ("abcd", 4, 1), ("abcde", 4, 2), ("x" * 400, 4, 100), ("ab", 1, 2)],
)
def test_count_tokens(text: str, cpt: int, expected: int) -> None:
    assert count_tokens(text, cpt) == expected


def test_only_full_blocks_are_hashed() -> None:
    width = 16 * 4
    assert block_hashes("x" * (width - 1)) == []
    assert len(block_hashes("x" * width)) == 1
    assert len(block_hashes("x" * (3 * width + 5))) == 3


def test_hash_chain_depends_on_everything_before() -> None:
    width = 64
    a = block_hashes("a" * width + "b" * width)
    b = block_hashes("c" * width + "b" * width)
    assert a[1] != b[1]  # same second block, different parent


def test_extra_key_separates_adapters() -> None:
    text = "same prompt " * 50
    assert block_hashes(text, extra="lora-a")[0] != block_hashes(text, extra="lora-b")[0]
    assert block_hashes(text, extra="lora-a") == block_hashes(text, extra="lora-a")


@given(st.text(max_size=600), st.integers(min_value=0, max_value=600))
def test_hashes_of_a_prefix_are_a_prefix(text: str, cut: int) -> None:
    whole = block_hashes(text, block_size=4, chars_per_token=3)
    part = block_hashes(text[:cut], block_size=4, chars_per_token=3)
    assert whole[: len(part)] == part
    assert len(part) <= count_tokens(text[:cut], 3) // 4 + 1


def test_chat_rendering_keeps_shared_system_prompt_as_prefix() -> None:
    system = {"role": "system", "content": "You are a careful assistant. " * 20}
    a = render_chat([system, {"role": "user", "content": "question one"}])
    b = render_chat([system, {"role": "user", "content": "another question"}])
    shared = len(render_chat([system])) - len("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert a[:shared] == b[:shared]
    assert len(block_hashes(a)) > 0
    assert block_hashes(a)[: shared // 64] == block_hashes(b)[: shared // 64]


def test_chat_content_parts_are_text() -> None:
    parts = [{"type": "text", "text": "hello "}, {"type": "image_url", "image_url": {}}, "world"]
    assert "hello world" in render_chat([{"role": "user", "content": parts}])


@pytest.mark.parametrize(
    ("prompt", "ids"),
    [("plain text", None), ([1, 2, 3], [1, 2, 3]), (["a", "b"], None)],
)
def test_completion_prompt(prompt: str | list[int] | list[str], ids: list[int] | None) -> None:
    text, got = render_completion_prompt(prompt)
    assert isinstance(text, str) and got == ids


def test_token_id_blocks() -> None:
    a = block_hashes_of_ids(list(range(40)), block_size=16)
    b = block_hashes_of_ids([*range(32), 99, 98], block_size=16)
    assert len(a) == 2 and a == b  # the partial third block is not hashed
    assert block_hashes_of_ids([7, *range(1, 32)], block_size=16)[0] != a[0]


def test_filler_continues_where_it_stopped() -> None:
    assert filler(0, 5) == filler(0, 2) + filler(2, 3)
    assert filler(3, 0) == ""
    assert len(filler(0, 7).split()) == 7


def test_token_ids_are_the_same_in_every_process() -> None:
    # CRC-32, not Python's salted hash: these numbers hold in any process, on any replica
    assert token_ids("abcdefgh") == [3984772369 % SPECIAL_BASE, 137591733 % SPECIAL_BASE]
    assert token_ids("") == [BOS_ID]


@given(st.text(max_size=300), st.integers(1, 8))
def test_token_ids_match_the_count_and_the_slices(text: str, cpt: int) -> None:
    ids = token_ids(text, cpt)
    assert len(ids) == count_tokens(text, cpt) == len(token_slices(text, cpt))
    assert all(0 <= i < SPECIAL_BASE for i in ids) or ids == [BOS_ID]
    if text:
        assert "".join(token_slices(text, cpt)) == text


@given(st.text(min_size=1, max_size=200), st.text(max_size=200), st.integers(1, 8))
def test_a_shared_prefix_shares_its_full_tokens(head: str, tail: str, cpt: int) -> None:
    full = len(head) // cpt
    assert token_ids(head + tail, cpt)[:full] == token_ids(head, cpt)[:full]


def test_render_chat_without_the_generation_prompt_is_its_prefix() -> None:
    msgs = [{"role": "user", "content": "hi"}]
    assert render_chat(msgs).startswith(render_chat(msgs, add_generation_prompt=False))
    assert not render_chat(msgs, add_generation_prompt=False).endswith("\n\n")


def test_detokenizer_knows_what_it_handed_out() -> None:
    d = Detokenizer(capacity=8)
    text = "hello world!"
    d.learn(token_ids(text), token_slices(text))
    assert d.text(token_ids(text)) == text
    assert d.text([BOS_ID]) == "<|begin_of_text|>"
    assert d.text([SPECIAL_BASE + 200, 10**9]) == ""  # never handed out, or outside the vocab
    other = "0123456789abcdefghijklmnop"  # 7 more ids: past the capacity, the table starts over
    d.learn(token_ids(other), token_slices(other))
    assert d.text(token_ids(other)) == other and d.text(token_ids(text)) == ""

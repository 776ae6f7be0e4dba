"""The OpenAI dialects' body parsers: every bad input maps to one reason and one 4xx."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pointsman_shim.core.dialects import openai_chat, openai_completions
from pointsman_shim.core.dialects.openai import too_deep
from pointsman_shim.core.dialects.registry import DIALECTS
from pointsman_shim.core.errors import RequestError

CHAT = openai_chat.DIALECT
COMPLETIONS = openai_completions.DIALECT

LIMIT = 1024 * 1024


def chat(**fields: object) -> bytes:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/v1/chat/completions", "openai-chat"),
        ("/v1/chat/completions?x=1", "openai-chat"),
        ("/v1/chat/completions/", "openai-chat"),
        ("/v1/completions", "openai-completions"),
        ("/v1/models", None),
        ("/v1/embeddings", None),
        ("/health", None),
        ("", None),
    ],
)
def test_dialect_of_path(path: str, kind: str | None) -> None:
    dialect = DIALECTS.for_path(path)
    assert (dialect.name if dialect else None) == kind


@pytest.mark.parametrize(
    ("raw", "status", "reason"),
    [
        (b"", 400, "empty_body"),
        (b"   ", 400, "empty_body"),
        (b"{not json", 400, "invalid_json"),
        (b"\xff\xfe{}", 400, "invalid_utf8"),
        (b"[1, 2]", 400, "body_not_object"),
        (b'"text"', 400, "body_not_object"),
        (b"null", 400, "body_not_object"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', 400, "missing_model"),
        (b'{"model": 7, "messages": [{"role": "user", "content": "x"}]}', 400, "invalid_model"),
        (b'{"model": null, "messages": []}', 400, "missing_model"),
        (b'{"model": ["a"], "messages": []}', 400, "invalid_model"),
        (b'{"model": "", "messages": [{"role": "user", "content": "x"}]}', 400, "invalid_model"),
        (b'{"model": "m"}', 400, "missing_messages"),
        (b'{"model": "m", "messages": []}', 400, "empty_messages"),
        (b'{"model": "m", "messages": "hi"}', 400, "invalid_messages"),
        (b'{"model": "m", "messages": ["hi"]}', 400, "invalid_messages"),
        (b'{"model": "m", "messages": [{"content": "hi"}]}', 400, "invalid_messages"),
        # issue 12: these got 200 although the README promised 400
        (b'{"model": "m", "messages": [{"role": "user"}]}', 400, "invalid_messages"),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": null}]}',
            400,
            "invalid_messages",
        ),
        (b'{"model": "m", "messages": [{"role": "user", "content": 5}]}', 400, "invalid_messages"),
        (b'{"model": "m", "messages": [{"role": "user", "content": {}}]}', 400, "invalid_messages"),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}]}]}',
            400,
            "invalid_messages",
        ),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": [{"text": "a"}]}]}',
            400,
            "invalid_messages",
        ),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": ["a"]}]}',
            400,
            "invalid_messages",
        ),
        (
            b'{"model": "m", "messages": [' * 1 + b"[" * 200 + b"]" * 200 + b"]}",
            400,
            "json_too_deep",
        ),
        (b"[" * 100_000 + b"]" * 100_000, 400, "json_too_deep"),  # raised RecursionError before
        (b'{"a":' * 5000 + b"1" + b"}" * 5000, 400, "json_too_deep"),
        (
            b'{"model": "a\\u0000b", "messages": [{"role": "user", "content": "x"}]}',
            400,
            "invalid_model",
        ),
        (
            b'{"model": "a\\nb", "messages": [{"role": "user", "content": "x"}]}',
            400,
            "invalid_model",
        ),
        (chat(stream="yes"), 400, "invalid_stream"),
    ],
)
def test_chat_rejects(raw: bytes, status: int, reason: str) -> None:
    with pytest.raises(RequestError) as info:
        CHAT.parse(raw, max_bytes=LIMIT)
    assert (info.value.status, info.value.reason) == (status, reason)
    e = info.value
    error = json.loads(CHAT.error_body(e.message, type=e.type, code=e.code, param=e.param))["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]


def test_messages_that_stay_valid() -> None:
    """What OpenAI's API accepts still parses: an assistant turn with only tool calls, parts of
    other types, deep-enough JSON, brackets inside strings."""
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url"}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
        {"role": "assistant"},
        {"role": "tool", "content": "[[[[" * 100, "tool_call_id": "1"},
    ]
    request = CHAT.parse(chat(messages=messages, meta=[[[[[[[[1]]]]]]]]), max_bytes=LIMIT)
    assert [t.role for t in request.turns] == ["user", "assistant", "assistant", "tool"]
    nested: object = 1
    for _ in range(120):
        nested = [nested]
    CHAT.parse(chat(deep=nested), max_bytes=LIMIT)


def test_body_over_limit_is_413() -> None:
    with pytest.raises(RequestError) as info:
        CHAT.parse(chat(pad="x" * 2000), max_bytes=1000)
    assert (info.value.status, info.value.reason) == (413, "body_too_large")


@pytest.mark.parametrize(
    ("prompt", "text"),
    [("hello", "hello"), (["a", "b"], "a\nb"), ([1, 2, 3], "1 2 3")],
)
def test_completion_prompts(prompt: object, text: str) -> None:
    request = COMPLETIONS.parse(
        json.dumps({"model": "m", "prompt": prompt}).encode(), max_bytes=LIMIT
    )
    assert request.prompt_text() == text


@pytest.mark.parametrize("prompt", [None, 5, [], [1, "a"], {"a": 1}])
def test_completion_bad_prompt(prompt: object) -> None:
    body = {"model": "m"} if prompt is None else {"model": "m", "prompt": prompt}
    with pytest.raises(RequestError) as info:
        COMPLETIONS.parse(json.dumps(body).encode(), max_bytes=LIMIT)
    assert info.value.status == 400


def test_chat_fields() -> None:
    raw = chat(
        stream=True,
        stream_options={"include_usage": True},
        temperature=0.2,
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url"}]},
        ],
    )
    request = CHAT.parse(raw, max_bytes=LIMIT)
    assert request.stream and request.include_usage
    assert [(t.role, t.content) for t in request.turns] == [("system", "be brief"), ("user", "a")]
    # what the classifier sees: the cache renders a hit's usage chunk only when asked for
    assert request.params == {
        "temperature": 0.2,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert request.prompt_text() == "<|system|>be brief\n<|user|>a\n"


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_fail_cleanly(raw: bytes) -> None:
    """No input crashes the parser: it returns a request or raises a RequestError."""
    try:
        CHAT.parse(raw, max_bytes=LIMIT)
    except RequestError as exc:
        assert 400 <= exc.status < 500


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
        max_leaves=20,
    )
)
def test_any_json_parses_or_fails_cleanly(value: object) -> None:
    raw = json.dumps({"model": "m", "messages": value}).encode()
    try:
        CHAT.parse(raw, max_bytes=LIMIT)
    except RequestError as exc:
        assert exc.status == 400


def _depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


@given(
    st.recursive(
        st.none() | st.integers() | st.text(alphabet='[]{}"\\:,ab \n\u00e9'),
        lambda c: (
            st.lists(c, max_size=3) | st.dictionaries(st.text(alphabet='[]{}"\\a'), c, max_size=3)
        ),
        max_leaves=30,
    ),
    st.integers(min_value=0, max_value=6),
    st.booleans(),
)
def test_depth_scan_matches_the_parsed_depth(value: object, limit: int, ascii_only: bool) -> None:
    """The byte scan (brackets outside strings, escapes included) agrees with the real depth."""
    raw = json.dumps(value, ensure_ascii=ascii_only).encode()
    assert too_deep(raw, limit) is (_depth(value) > limit)

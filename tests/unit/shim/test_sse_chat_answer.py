"""Reading events and chat completions answers, the ground both translations stand on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pointsman_shim.core.dialects import chat_answer as chat
from pointsman_shim.core.dialects.sse import EventSplitter
from tests.compat.fixtures import raw

GOLDEN = Path(__file__).resolve().parents[2] / "fixtures" / "golden"


def split(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(body) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(body[last:p])
        last = p
    pieces.append(body[last:])
    return pieces


def events_of(body: bytes, cuts: list[int]) -> list[tuple[str, bytes]]:
    splitter = EventSplitter()
    out = []
    for piece in split(body, cuts):
        out += splitter.feed(piece)
    return out + splitter.finish()


def stream_of(body: bytes, cuts: list[int] | None = None) -> list[chat.Event]:
    reader = chat.ChatStream()
    out: list[chat.Event] = []
    for piece in split(body, cuts or []):
        out += reader.feed(piece)
    return out + reader.finish()


@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_any_chunking_gives_the_same_events(cuts: list[int]) -> None:
    body = raw("responses_stream.sse")
    assert events_of(body, cuts) == events_of(body, [])


def test_event_names_multiline_data_and_crlf() -> None:
    body = b"event: a\r\ndata: 1\r\ndata: 2\r\n\r\n: comment\ndata:3\n\ndata: tail"
    assert events_of(body, []) == [("a", b"1\n2"), ("", b"3"), ("", b"tail")]


def test_a_real_vllm_chat_answer() -> None:
    answer = chat.read_answer(raw("chat.json"))
    body = json.loads(raw("chat.json"))
    assert answer.content == body["choices"][0]["message"]["content"]
    assert answer.finish_reason == "length"
    assert answer.prompt_tokens == body["usage"]["prompt_tokens"]
    assert answer.tool_calls == []


@given(st.lists(st.integers(min_value=0, max_value=4000), max_size=8))
def test_a_real_vllm_chat_stream_in_any_chunks(cuts: list[int]) -> None:
    events = stream_of(raw("chat_stream.sse"), cuts)
    text = "".join(e.text for e in events if isinstance(e, chat.Text))
    chunks = [
        json.loads(line[6:])
        for line in raw("chat_stream.sse").decode().splitlines()
        if line.startswith("data: {")
    ]
    assert text == "".join(
        c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]
    )
    assert isinstance(events[0], chat.Start)
    finish = [e for e in events if isinstance(e, chat.Finish)]
    assert [f.reason for f in finish] == ["length"]
    assert [type(e) for e in events[-2:]] == [chat.UsageSeen, chat.End]


def test_a_stream_without_usage_ends_all_the_same() -> None:
    events = stream_of(raw("chat_stream_no_usage.sse"))
    assert isinstance(events[-1], chat.End)
    assert not any(isinstance(e, chat.UsageSeen) for e in events)


def test_streamed_tool_calls_and_reasoning() -> None:
    events = stream_of((GOLDEN / "openai" / "chat_tool_calls_stream.sse").read_bytes())
    starts = [e for e in events if isinstance(e, chat.ToolStart)]
    assert [(s.index, s.id, s.name) for s in starts] == [
        (0, "call_DdmO9pD3xa9XTPNJ32zg2hcA", "get_weather"),
        (1, "call_Xq2", "get_time"),
    ]
    args = "".join(e.text for e in events if isinstance(e, chat.ToolArguments) and e.index == 0)
    assert json.loads(args) == {"location": "Paris"}
    reasoning = stream_of((GOLDEN / "openai" / "chat_reasoning_stream.sse").read_bytes())
    assert "".join(e.text for e in reasoning if isinstance(e, chat.Reasoning)) == "2+2 is 4."


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'data: {"choices": [{"index": 0, "delta": {"content": "a"}}]}\n\n', "ended before"),
        (
            b'data: {"choices": [{"index": 0, "delta": {"content": "a"}}]}\n\ndata: [DONE]\n\n',
            "without a finish",
        ),
        (b"data: {not json\n\n", "not valid JSON"),
        (b'data: {"error": {"message": "boom", "type": "x"}}\n\n', "boom"),
        (b'data: {"object": "error", "message": "engine died"}\n\n', "engine died"),
        (
            b'data: {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, '
            b'"function": {"arguments": "{}"}}]}}]}\n\n',
            "before the tool's name",
        ),
    ],
)
def test_a_broken_stream_is_one_failure(body: bytes, why: str) -> None:
    events = stream_of(body)
    failures = [e for e in events if isinstance(e, chat.Failure)]
    assert len(failures) == 1 and why in failures[0].message
    assert isinstance(events[-1], chat.Failure)


@pytest.mark.parametrize(
    "body",
    [b"{", b"[]", b'{"error": {"message": "bad"}}', b'{"choices": []}', b'{"choices": [{"x": 1}]}'],
)
def test_a_broken_answer_raises(body: bytes) -> None:
    with pytest.raises(chat.TranslationError):
        chat.read_answer(body)

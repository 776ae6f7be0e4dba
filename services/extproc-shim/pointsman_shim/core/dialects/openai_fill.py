"""Reassemble one OpenAI-format upstream answer for the semantic cache, as its body streams past.

Only single-choice text answers are kept: JSON bodies (``choices[0].message.content`` or
``choices[0].text``) and SSE streams (``delta.content`` / ``text`` of each chunk, the role, the
``finish_reason`` and a usage chunk when present). Anything else (several choices, tool calls,
a body over the bound, a stream without its ``[DONE]``) yields nothing, so only complete answers
are ever stored. The bound keeps a huge answer from being held in memory.
"""

from __future__ import annotations

from typing import Any

import msgspec

from pointsman_shim.core.dialects.base import Filled

_decoder = msgspec.json.Decoder()


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class Reassembler:
    """Feed body chunks, then :meth:`finish`: the answer, or ``None`` when not storable."""

    def __init__(self, *, sse: bool, max_bytes: int = 256 * 1024) -> None:
        self.sse = sse
        self.max_bytes = max_bytes
        self.failed = False
        self._buf = bytearray()
        self._parts: list[str] = []
        self._size = 0
        self._role = "assistant"
        self._finish: str | None = None
        self._usage: dict[str, Any] | None = None
        self._done = False

    def feed(self, data: bytes) -> None:
        if self.failed or not data:
            return
        self._buf += data
        if not self.sse:
            if len(self._buf) > self.max_bytes * 2 + 65536:
                self._fail()
            return
        *lines, rest = self._buf.split(b"\n")
        self._buf = bytearray(rest)
        for line in lines:
            self._line(bytes(line))
            if self.failed:
                return

    def _fail(self) -> None:
        self.failed = True
        self._buf.clear()
        self._parts.clear()

    def _line(self, line: bytes) -> None:
        line = line.rstrip(b"\r")
        if not line.startswith(b"data:"):
            return
        payload = line[5:].strip()
        if not payload:
            return
        if payload == b"[DONE]":
            self._done = True
            return
        try:
            chunk = _decoder.decode(payload)
        except msgspec.DecodeError:
            self._fail()
            return
        if not isinstance(chunk, dict):
            self._fail()
            return
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            if "error" in chunk:
                self._fail()
            return
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                self._fail()
                return
            delta = choice.get("delta")
            if isinstance(delta, dict):
                if delta.get("tool_calls") or delta.get("function_call"):
                    self._fail()
                    return
                if isinstance(delta.get("role"), str):
                    self._role = delta["role"]
                self._add(delta.get("content"))
            else:
                self._add(choice.get("text"))
            if isinstance(choice.get("finish_reason"), str):
                self._finish = choice["finish_reason"]

    def _add(self, text: Any) -> None:
        if isinstance(text, str) and text:
            self._size += len(text)
            if self._size > self.max_bytes:
                self._fail()
                return
            self._parts.append(text)

    def finish(self) -> Filled | None:
        if self.failed:
            return None
        if self.sse:
            if self._buf:
                self._line(bytes(self._buf))
                self._buf.clear()
            if self.failed or not self._done or self._finish is None:
                return None
            usage = self._usage or {}
            return Filled(
                "".join(self._parts),
                self._role,
                self._finish,
                _int(usage.get("prompt_tokens")),
                _int(usage.get("completion_tokens")),
            )
        return _from_json(bytes(self._buf), self.max_bytes)


def _from_json(raw: bytes, max_bytes: int) -> Filled | None:
    try:
        body = _decoder.decode(raw)
    except msgspec.DecodeError:
        return None
    if not isinstance(body, dict):
        return None
    choices = body.get("choices")
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
        return None
    choice = choices[0]
    message = choice.get("message")
    role = "assistant"
    if isinstance(message, dict):
        if message.get("tool_calls") or message.get("function_call"):
            return None
        content = message.get("content")
        if isinstance(message.get("role"), str):
            role = message["role"]
    else:
        content = choice.get("text")
    if not isinstance(content, str) or len(content) > max_bytes:
        return None
    finish = choice.get("finish_reason")
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    assert isinstance(usage, dict)
    return Filled(
        content,
        role,
        finish if isinstance(finish, str) else None,
        _int(usage.get("prompt_tokens")),
        _int(usage.get("completion_tokens")),
    )

"""Read token usage from OpenAI-format responses as they stream past, without holding whole bodies.

Engines report ``usage`` in the JSON body of a non-streaming response, and in the last SSE chunk of
a stream when the client asked for ``stream_options.include_usage``. The reader keeps only what it
needs: the JSON body up to a bound, or the current unfinished SSE line.
"""

from __future__ import annotations

from typing import Any

import msgspec

from pointsman_shim.core.dialects.base import Usage

#: A JSON response larger than this is passed on but not parsed for usage.
MAX_JSON_BYTES = 4 * 1024 * 1024
_decoder = msgspec.json.Decoder()


def usage_of(value: Any) -> Usage | None:
    """OpenAI's ``usage`` object as :class:`Usage` (``None``: not an object)."""
    if not isinstance(value, dict):
        return None

    def number(key: str) -> int | None:
        v = value.get(key)
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    details = value.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Usage(
        number("prompt_tokens"),
        number("completion_tokens"),
        number("total_tokens"),
        cached if isinstance(cached, int) and not isinstance(cached, bool) else None,
    )


class UsageReader:
    """Feed response body chunks; read :attr:`usage` once the body ended."""

    def __init__(self, *, sse: bool) -> None:
        self.sse = sse
        self.usage: Usage | None = None
        self.chunks = 0
        self.overflow = False
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        if not data:
            return
        if self.sse:
            self._buf += data
            *lines, rest = self._buf.split(b"\n")
            self._buf = bytearray(rest)
            for line in lines:
                self._sse_line(bytes(line))
        elif not self.overflow:
            if len(self._buf) + len(data) > MAX_JSON_BYTES:
                self.overflow = True
                self._buf.clear()
            else:
                self._buf += data

    def finish(self) -> Usage | None:
        if self.sse:
            if self._buf:
                self._sse_line(bytes(self._buf))
                self._buf.clear()
        elif self._buf and not self.overflow:
            try:
                body = _decoder.decode(bytes(self._buf))
            except msgspec.DecodeError:
                body = None
            if isinstance(body, dict):
                self.usage = usage_of(body.get("usage"))
            self._buf.clear()
        return self.usage

    def _sse_line(self, line: bytes) -> None:
        line = line.rstrip(b"\r")
        if not line.startswith(b"data:"):
            return
        payload = line[5:].strip()
        if not payload or payload == b"[DONE]":
            return
        self.chunks += 1
        if b'"usage"' not in payload:
            return
        try:
            chunk = _decoder.decode(payload)
        except msgspec.DecodeError:
            return
        if isinstance(chunk, dict):
            usage = usage_of(chunk.get("usage"))
            if usage is not None:
                self.usage = usage

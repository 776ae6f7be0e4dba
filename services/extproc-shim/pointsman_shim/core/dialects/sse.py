"""Server-sent events as the APIs the shim translates use them: split a body into events as it
streams past, and write events.

Chat completions streams are ``data:`` lines only (ending with ``data: [DONE]``); the Responses
and Messages APIs name each event (``event: TYPE`` then ``data: JSON``). The splitter keeps only
the event being read, bounded, so a stream of any length costs little memory.
"""

from __future__ import annotations

from typing import Any

import msgspec

_encoder = msgspec.json.Encoder()

#: One event larger than this is not an event the shim can read (the splitter reports it).
MAX_EVENT_BYTES = 4 * 1024 * 1024


class EventTooLarge(Exception):
    """An event grew past :data:`MAX_EVENT_BYTES` before it ended."""


class EventSplitter:
    """Feed body chunks; get back the complete events, as ``(event name or "", data)``.

    Lines end with ``\\n`` (a ``\\r`` before it is dropped); a blank line ends an event; several
    ``data:`` lines of one event are joined with ``\\n``, as the SSE specification says.
    """

    __slots__ = ("_buf", "_data", "_name", "_size")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._name = ""
        self._data: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        if not chunk:
            return []
        self._buf += chunk
        if b"\n" not in chunk:
            if len(self._buf) > MAX_EVENT_BYTES:
                raise EventTooLarge(f"an event is larger than {MAX_EVENT_BYTES} bytes")
            return []
        *lines, rest = self._buf.split(b"\n")
        self._buf = bytearray(rest)
        out: list[tuple[str, bytes]] = []
        for line in lines:
            self._line(bytes(line), out)
        return out

    def finish(self) -> list[tuple[str, bytes]]:
        """The last event, when the body did not end with a blank line."""
        out: list[tuple[str, bytes]] = []
        if self._buf:
            self._line(bytes(self._buf), out)
            self._buf.clear()
        self._dispatch(out)
        return out

    def _line(self, line: bytes, out: list[tuple[str, bytes]]) -> None:
        line = line.rstrip(b"\r")
        if not line:
            self._dispatch(out)
            return
        field, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            self._data.append(value)
            self._size += len(value)
            if self._size > MAX_EVENT_BYTES:
                raise EventTooLarge(f"an event is larger than {MAX_EVENT_BYTES} bytes")
        elif field == b"event":
            self._name = value.decode("utf-8", "replace")

    def _dispatch(self, out: list[tuple[str, bytes]]) -> None:
        if self._data:
            out.append((self._name, b"\n".join(self._data)))
        self._name = ""
        self._data = []
        self._size = 0


def event(name: str, payload: dict[str, Any]) -> bytes:
    """``event: NAME`` and ``data: JSON``, as the Responses and Messages APIs send each event."""
    return b"event: " + name.encode() + b"\ndata: " + _encoder.encode(payload) + b"\n\n"


def data(payload: dict[str, Any]) -> bytes:
    """A ``data:``-only event, as chat completions send each chunk."""
    return b"data: " + _encoder.encode(payload) + b"\n\n"


DONE = b"data: [DONE]\n\n"

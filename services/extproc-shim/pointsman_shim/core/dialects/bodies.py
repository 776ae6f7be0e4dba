"""Reading one answer body as it streams past, bounded: the shared ground of the translators of
whole (JSON) answers and of the readers of a native pool's answers.

A JSON answer has to be whole before it can be read, so it is buffered, up to
:data:`MAX_ANSWER_BYTES`; an event stream is read event by event (:class:`~.sse.EventSplitter`)
and never held.
"""

from __future__ import annotations

from typing import Any

import msgspec

from pointsman_shim.core.dialects.sse import EventSplitter, EventTooLarge

_decoder = msgspec.json.Decoder()

#: A JSON answer larger than this is not read (a reader gives up; a translator answers an error).
MAX_ANSWER_BYTES = 16 * 1024 * 1024


class BodyReader:
    """Feed the chunks of one answer; a subclass reads each event in :meth:`on_event` (a stream)
    or the whole body from :meth:`json_body` (JSON). ``broken``: too large or malformed."""

    def __init__(self, *, sse: bool) -> None:
        self.sse = sse
        self._splitter = EventSplitter() if sse else None
        self._buf = bytearray()
        self.broken = False

    def feed(self, data: bytes) -> None:
        if self.broken or not data:
            return
        if self._splitter is None:
            if len(self._buf) + len(data) > MAX_ANSWER_BYTES:
                self.broken = True
                self._buf.clear()
            else:
                self._buf += data
            return
        try:
            events = self._splitter.feed(data)
        except EventTooLarge:
            self.broken = True
            return
        for name, payload in events:
            self.on_event(name, payload)

    def end_events(self) -> None:
        """Read the last event of a stream that did not end with a blank line."""
        if self._splitter is not None and not self.broken:
            for name, payload in self._splitter.finish():
                self.on_event(name, payload)

    def on_event(self, name: str, payload: bytes) -> None:
        """One event of a stream (``name`` is ``""`` for a ``data:``-only event)."""

    def json_body(self) -> dict[str, Any] | None:
        """The whole JSON body, when it is an object (``None``: broken or not one)."""
        if self.broken:
            return None
        try:
            body = _decoder.decode(bytes(self._buf))
        except msgspec.DecodeError:
            return None
        return body if isinstance(body, dict) else None


def json_object(payload: bytes) -> dict[str, Any] | None:
    """One event's JSON object, ``None`` when it is not one."""
    try:
        body = _decoder.decode(payload)
    except msgspec.DecodeError:
        return None
    return body if isinstance(body, dict) else None


class WholeAnswer:
    """A translator of whole answers: :meth:`feed` buffers (bounded) and sends nothing yet,
    :meth:`finish` translates the whole body with :meth:`translate`. A body over the bound is
    given to :meth:`translate` as ``None``."""

    def __init__(self) -> None:
        self.failed = False
        self.status: int | None = None
        self._buf = bytearray()
        self._over = False

    @property
    def result(self) -> dict[str, Any] | None:
        return None

    def feed(self, data: bytes) -> bytes:
        if len(self._buf) + len(data) > MAX_ANSWER_BYTES:
            self._over = True
            self._buf.clear()
        elif not self._over:
            self._buf += data
        return b""

    def finish(self) -> bytes:
        return self.translate(None if self._over else bytes(self._buf))

    def translate(self, raw: bytes | None) -> bytes:
        raise NotImplementedError

    def fail(self, status: int, body: bytes) -> bytes:
        """End with an error answer instead, ``status`` replacing the upstream's."""
        self.failed = True
        self.status = status
        return body

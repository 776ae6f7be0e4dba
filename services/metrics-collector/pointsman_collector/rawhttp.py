"""A minimal keep-alive HTTP/1.1 client for ``GET /metrics``, driven by callbacks.

Why not aiohttp here: at 50 ms intervals one replica makes thousands of requests a second, and
aiohttp's per-request machinery (a task, a request object, header parsing in Python, a response
object) costs more than parsing the page. This client keeps one connection per endpoint, writes a
prebuilt request, reads ``Content-Length`` or chunked bodies, and calls back with the page. No task
or future per request. It handles only what ``/metrics`` servers send (status 200 with a body,
keep-alive or ``Connection: close``); anything else is an error for that endpoint.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

#: ``on_result(token, body_or_None, error_or_None, started_monotonic)``
OnResult = Callable[[Any, bytes | None, str | None, float], None]


class _Proto(asyncio.Protocol):
    """One TCP connection; forwards to its :class:`_Conn` until that drops it."""

    def __init__(self, conn: _Conn) -> None:
        self.conn = conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.conn.connection_made(self, transport)

    def data_received(self, data: bytes) -> None:
        if self.conn.proto is self:
            self.conn.data_received(data)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn.proto is self:
            self.conn.connection_lost()


class _Conn:
    """One endpoint: its (re)used connection and the scrape in progress."""

    def __init__(self, owner: RawClient, address: str, request: bytes) -> None:
        self.owner = owner
        self.address = address
        self.request = request
        self.transport: Any = None
        self.proto: _Proto | None = None
        self.connecting = False
        self.buf = bytearray()
        self.token: Any = None
        self.started = 0.0
        self.busy = False
        self._reused = False
        self._retried = False
        self._head_end = -1
        self._length = -1
        self._chunked = False
        self._close = False

    # ----- requests ------------------------------------------------------------------------

    def begin(self, token: Any) -> None:
        self._retried = False
        self.busy = True
        self.token = token
        self.started = time.monotonic()
        self._reset_response()
        if self.transport is not None and self.transport.is_closing():
            self.drop()  # closed by the peer; connection_lost has not run yet
        if self.transport is not None and self.proto is not None:
            try:
                self.transport.write(self.request)
                return
            except (RuntimeError, OSError):
                self.drop()
        if not self.connecting:
            self.connecting = True
            self.owner._connect(self)

    def _reset_response(self) -> None:
        self.buf.clear()
        self._head_end = -1
        self._length = -1
        self._chunked = False
        self._close = False

    def finish(self, body: bytes | None, error: str | None) -> None:
        if not self.busy:
            return
        self.busy = False
        self._reused = error is None
        token, self.token = self.token, None
        if error is not None or self._close:
            self.drop()
        self.owner._on_result(token, body, error, self.started)

    def drop(self) -> None:
        self.proto = None
        if self.transport is not None:
            self.transport.abort()
            self.transport = None
        self.buf.clear()

    # ----- protocol --------------------------------------------------------------------------

    def connection_made(self, proto: _Proto, transport: Any) -> None:
        if self.proto is not None or not self.connecting:
            transport.abort()  # a connection nobody waits for any more
            return
        self.proto = proto
        self.transport = transport
        self.connecting = False
        self._reused = False
        if self.busy:
            transport.write(self.request)

    def connection_lost(self) -> None:
        self.proto = None
        self.transport = None
        if self.busy and self._reused and not self._retried and not self.buf:
            # The server closed an idle kept-alive connection as we reused it (uvicorn does
            # after 5 s idle): not the endpoint's fault; ask again once on a new connection.
            self._retried = True
            self.connecting = True
            self.owner._connect(self)
            return
        if self.busy:
            if self._head_end != -1 and self._length == -1 and not self._chunked:
                self.finish(bytes(self.buf[self._head_end :]), None)  # body ended by close
            else:
                self.finish(None, "connection closed")

    def data_received(self, data: bytes) -> None:
        if not self.busy:
            self.drop()  # bytes nobody asked for: the connection is out of step
            return
        buf = self.buf
        buf += data
        if self._head_end == -1:
            end = buf.find(b"\r\n\r\n")
            if end == -1:
                if len(buf) > 65536:
                    self.finish(None, "response head too large")
                return
            if not self._parse_head(bytes(buf[:end])):
                return
            self._head_end = end + 4
        if len(buf) - self._head_end > self.owner.max_body:
            self.finish(None, f"page larger than {self.owner.max_body} bytes")
            return
        if self._length >= 0:
            if len(buf) - self._head_end >= self._length:
                body = bytes(buf[self._head_end : self._head_end + self._length])
                self.finish(body, None)
        elif self._chunked:
            try:
                chunked = _dechunk(buf, self._head_end)
            except ValueError as exc:
                self.finish(None, str(exc))
                return
            if chunked is not None:
                self.finish(chunked, None)

    def _parse_head(self, head: bytes) -> bool:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            self.finish(None, "not an HTTP/1.x response")
            return False
        if parts[1] != b"200":
            self._close = True
            self.finish(None, f"HTTP {parts[1].decode(errors='replace')}")
            return False
        self._close = parts[0] == b"HTTP/1.0"
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            key = name.strip().lower()
            if key == b"content-length":
                try:
                    self._length = int(value.strip())
                except ValueError:
                    self.finish(None, "bad Content-Length")
                    return False
            elif key == b"transfer-encoding":
                self._chunked = b"chunked" in value.lower()
            elif key == b"connection":
                v = value.strip().lower()
                self._close = v == b"close" or (self._close and v != b"keep-alive")
            elif key == b"content-encoding" and value.strip().lower() not in (b"identity", b""):
                self.finish(None, "compressed response (asked for identity)")
                return False
        if self._length > self.owner.max_body:
            self.finish(None, f"page larger than {self.owner.max_body} bytes")
            return False
        return True


def _dechunk(buf: bytearray, start: int) -> bytes | None:
    """The body of a complete chunked message in ``buf[start:]``, or None if incomplete."""
    out = bytearray()
    pos = start
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol == -1:
            return None
        size_text = bytes(buf[pos:eol]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise ValueError("bad chunk size") from None
        if size == 0:
            return bytes(out) if buf.find(b"\r\n", eol + 2) != -1 else None
        if len(buf) < eol + 2 + size + 2:
            return None
        out += buf[eol + 2 : eol + 2 + size]
        pos = eol + 2 + size + 2


class RawClient:
    """One keep-alive connection per address; ``start`` a scrape, results come to ``on_result``."""

    def __init__(self, *, timeout_s: float, max_body: int, path: str, on_result: OnResult) -> None:
        self.timeout_s = timeout_s
        self.max_body = max_body
        self.path = path
        self._on_result = on_result
        self._conns: dict[str, _Conn] = {}
        self._connects: set[asyncio.Task[None]] = set()

    def start(self, key: str, address: str, token: Any) -> None:
        """Scrape ``address`` over the connection kept for ``key`` (ignored while one is busy)."""
        conn = self._conns.get(key)
        if conn is None:
            request = (
                f"GET {self.path} HTTP/1.1\r\nHost: {address}\r\n"
                "User-Agent: pointsman-collector\r\nAccept: text/plain\r\n"
                "Accept-Encoding: identity\r\n\r\n"
            ).encode()
            conn = self._conns[key] = _Conn(self, address, request)
        if conn.busy:
            return
        try:
            conn.begin(token)
        except Exception as exc:  # one endpoint's trouble must never stop the others
            conn.finish(None, f"{type(exc).__name__}: {exc}"[:200])

    def _connect(self, conn: _Conn) -> None:
        task = asyncio.get_running_loop().create_task(self._open(conn))
        self._connects.add(task)
        task.add_done_callback(self._connects.discard)

    async def _open(self, conn: _Conn) -> None:
        host, _, port = conn.address.rpartition(":")
        host = host.strip("[]")
        loop = asyncio.get_running_loop()
        try:
            # Connecting may take longer than a scrape (a burst of new endpoints at start-up).
            async with asyncio.timeout(max(self.timeout_s, 1.0)):
                await loop.create_connection(lambda: _Proto(conn), host, int(port))
        except TimeoutError:
            conn.connecting = False
            conn.finish(None, "timeout")
        except OSError as exc:
            conn.connecting = False
            conn.finish(None, f"connect failed: {exc.strerror or exc}")

    def expire(self, now: float) -> None:
        """Fail every scrape older than the timeout (called once a tick)."""
        for conn in self._conns.values():
            if conn.busy and not conn.connecting and now - conn.started > self.timeout_s:
                conn.finish(None, "timeout")

    def forget(self, keep: set[str]) -> None:
        """Close the connections of keys no longer scraped."""
        for key in list(self._conns):
            if key not in keep:
                conn = self._conns.pop(key)
                conn.connecting = False  # a connect still under way is closed when it lands
                conn.drop()
                conn.finish(None, "endpoint removed")

    def close(self) -> None:
        for task in self._connects:
            task.cancel()
        for conn in self._conns.values():
            conn.connecting = False
            conn.drop()
        self._conns.clear()

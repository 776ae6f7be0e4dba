"""A light-weight fleet of fake engines for the collector benchmark: one process, N listening
ports, each answering ``GET /metrics`` with a real vLLM page (keep-alive HTTP/1.1, prebuilt
response, no framework), so the collector and not the server is what gets measured.

``python -m bench.collector.server --count N --page FILE --ports-file OUT``
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path


class _Metrics(asyncio.Protocol):
    def __init__(self, response: bytes) -> None:
        self.response = response
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        n = self.buf.count(b"\r\n\r\n")
        if n:
            self.buf = self.buf[self.buf.rfind(b"\r\n\r\n") + 4 :]
            assert self.transport is not None
            self.transport.write(self.response * n)


async def serve(count: int, page: bytes, ports_file: Path) -> None:
    response = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
        b"Content-Length: " + str(len(page)).encode() + b"\r\n\r\n" + page
    )
    loop = asyncio.get_running_loop()
    servers = []
    for _ in range(count):
        server = await loop.create_server(lambda: _Metrics(response), "127.0.0.1", 0, backlog=64)
        servers.append(server)
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    tmp = ports_file.with_suffix(".tmp")
    tmp.write_text("\n".join(str(p) for p in ports))
    tmp.rename(ports_file)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    for s in servers:
        s.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--page", type=Path, required=True)
    ap.add_argument("--ports-file", type=Path, required=True)
    args = ap.parse_args()
    import uvloop

    uvloop.run(serve(args.count, args.page.read_bytes(), args.ports_file))


if __name__ == "__main__":
    main()

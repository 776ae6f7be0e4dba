"""The raw keep-alive client against real HTTP servers: aiohttp (Content-Length, chunked) and a
socket server that answers the odd ways real servers do (close-delimited bodies, HTTP/1.0)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from pointsman_collector.rawhttp import RawClient

pytestmark = pytest.mark.integration

PAGE = b"vllm:num_requests_waiting 3.0\n" * 200


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async def fixed(_: web.Request) -> web.Response:
        return web.Response(body=PAGE, content_type="text/plain")

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(PAGE), 1000):
            await resp.write(PAGE[i : i + 1000])
        await resp.write_eof()
        return resp

    async def missing(_: web.Request) -> web.Response:
        return web.Response(status=404, text="no metrics here")

    app = web.Application()
    app.router.add_get("/metrics", fixed)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/missing", missing)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def fetch(
    address: str, path: str = "/metrics", times: int = 3
) -> list[tuple[bytes | None, str | None]]:
    results: list[tuple[bytes | None, str | None]] = []
    done = asyncio.Event()

    def on_result(token: object, body: bytes | None, error: str | None, started: float) -> None:
        results.append((body, error))
        done.set()

    client = RawClient(timeout_s=2, max_body=1 << 20, path=path, on_result=on_result)
    try:
        for _ in range(times):
            done.clear()
            client.start("k", address, None)
            await asyncio.wait_for(done.wait(), 5)
    finally:
        client.close()
    return results


async def test_content_length_keep_alive(server: str) -> None:
    assert await fetch(server) == [(PAGE, None)] * 3


async def test_chunked(server: str) -> None:
    assert await fetch(server, "/chunked") == [(PAGE, None)] * 3


async def test_http_error_status(server: str) -> None:
    assert await fetch(server, "/missing", times=2) == [(None, "HTTP 404")] * 2


async def test_refused() -> None:
    from tests.helpers.procs import free_port

    [(body, error)] = await fetch(f"127.0.0.1:{free_port()}", times=1)
    assert body is None and error is not None and error.startswith("connect failed")


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + PAGE,  # ends at close
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(PAGE) + PAGE,
    ],
)
async def test_close_delimited_and_connection_close(response: bytes) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(response)
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        assert await fetch(f"127.0.0.1:{port}", times=2) == [(PAGE, None)] * 2
    finally:
        srv.close()
        await srv.wait_closed()


async def test_idle_close_race_is_retried_once_on_a_new_connection() -> None:
    """A server that closes a kept-alive connection just as it is reused (uvicorn's idle
    timeout) must not make the endpoint look down."""
    response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(PAGE) + PAGE

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(response)
        await writer.drain()
        with contextlib.suppress(Exception):
            await reader.readuntil(b"\r\n\r\n")  # the reuse: close without answering
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        assert await fetch(f"127.0.0.1:{port}", times=3) == [(PAGE, None)] * 3
    finally:
        srv.close()


async def test_silent_server_times_out() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        await asyncio.sleep(10)

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    results: list[str | None] = []
    client = RawClient(
        timeout_s=0.2,
        max_body=1 << 20,
        path="/metrics",
        on_result=lambda t, b, e, s: results.append(e),
    )
    try:
        client.start("k", f"127.0.0.1:{port}", None)
        for _ in range(100):
            await asyncio.sleep(0.05)
            client.expire(time.monotonic())
            if results:
                break
        assert results == ["timeout"]
    finally:
        client.close()
        srv.close()


def test_closed_transport_reconnects_instead_of_raising() -> None:
    """Regression: a transport closed before connection_lost ran made write() raise inside the
    tick, which stopped every scrape of the replica (seen at 2,000 endpoints). Runs on uvloop,
    as the service does: its transports raise where asyncio's only log."""
    import uvloop

    response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(PAGE) + PAGE

    async def scenario() -> list[tuple[bytes | None, str | None]]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while True:
                    await reader.readuntil(b"\r\n\r\n")
                    writer.write(response)

        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        address = f"127.0.0.1:{srv.sockets[0].getsockname()[1]}"
        results: list[tuple[bytes | None, str | None]] = []
        done = asyncio.Event()

        def on_result(token: object, body: bytes | None, error: str | None, started: float) -> None:
            results.append((body, error))
            done.set()

        client = RawClient(timeout_s=2, max_body=1 << 20, path="/metrics", on_result=on_result)
        try:
            client.start("k", address, None)
            await asyncio.wait_for(done.wait(), 5)
            client._conns["k"].transport.close()  # closing; connection_lost comes later
            done.clear()
            client.start("k", address, None)  # must not raise
            await asyncio.wait_for(done.wait(), 5)
        finally:
            client.close()
            srv.close()
        return results

    assert uvloop.run(scenario()) == [(PAGE, None), (PAGE, None)]

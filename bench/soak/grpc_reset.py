"""Native memory a grpcio asyncio server keeps per ext_proc stream, by how the client ends it
(``python -m bench.soak.grpc_reset``).

``closed``: the client half-closes and waits for the server's status (the shim ends the stream
itself). ``reset``: the client half-closes, the server answers nothing and the client resets
the stream a moment later, as Envoy does with an observer stream its server leaves open after
``deferred_close_timeout``. ``decision-reset``: one message and its answer, then the client
half-closes and resets at once while the server still reads, as Envoy's ``close()`` does with a
decision stream when its request ends. ``decision-closed``: the server ends the stream after its
answer and the client resets it only after the status came (Envoy's order once the shim ends
its decision streams itself). The server runs in a process of its own; its RSS is read before
and after N streams, after a warm-up. The ``reset`` case keeps several hundred bytes per stream
(grpc/grpc#43360); the shim therefore closes observer streams itself (docs/reliability.md).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pbg

from bench.common.proc import rss_kib


class _Observer(pbg.ExternalProcessorServicer):  # type: ignore[misc]
    async def Process(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        decision = dict(context.invocation_metadata()).get("decision")
        async for _ in requests:
            if decision is None:
                continue  # an observer: answers nothing
            yield pb.ProcessingResponse()
            if decision == "close":
                return  # the shim now: nothing more is needed, the server ends the stream


async def _serve() -> None:
    server = grpc.aio.server()
    pbg.add_ExternalProcessorServicer_to_server(_Observer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


async def _streams(port: int, pid: int, mode: str, n: int) -> tuple[int, int]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pbg.ExternalProcessorStub(channel)

        async def one() -> None:
            if mode.startswith("decision"):
                return await decision()
            call = stub.Process()
            await call.write(pb.ProcessingRequest())
            await call.done_writing()
            if mode == "reset":
                await asyncio.sleep(0.01)
                call.cancel()
            else:
                await call.code()

        async def decision() -> None:
            # Envoy's decision stream: one message, one answer; then Envoy's close() (half-close
            # and reset at once, the server still reading) or the server ends it first.
            kind = "close" if mode == "decision-closed" else "wait"
            call = stub.Process(metadata=(("decision", kind),))
            await call.write(pb.ProcessingRequest())
            await call.read()
            if kind == "close":
                await call.code()
            else:
                await call.done_writing()
            call.cancel()

        async def batch(k: int) -> None:
            await asyncio.gather(*(one() for _ in range(k)), return_exceptions=True)

        for _ in range(20):  # warm-up: pools, arenas
            await batch(100)
        await asyncio.sleep(1)
        before = rss_kib(pid)
        for _ in range(n // 100):
            await batch(100)
        await asyncio.sleep(2)
        return before, rss_kib(pid)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.soak.grpc_reset", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--streams", type=int, default=40_000, help="streams per case (default 40000)")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        asyncio.run(_serve())
        return 0
    print(f"{'case':<16} {'streams':>8} {'RSS before KiB':>15} {'after KiB':>10} {'B/stream':>9}")
    for mode in ("closed", "reset", "decision-reset", "decision-closed"):
        server = subprocess.Popen(
            [sys.executable, "-m", "bench.soak.grpc_reset", "--serve"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline())
            before, after = asyncio.run(_streams(port, server.pid, mode, args.streams))
        finally:
            server.kill()
            server.wait()
        per = (after - before) * 1024 / args.streams
        print(f"{mode:<16} {args.streams:>8} {before:>15} {after:>10} {per:>9.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m bench.overhead.consume``: CPU per message of a service's subscriber, in process.

One real nats-server; a :class:`pointsman.bus.ServiceBus` with a completion-event subscriber
whose handler does nothing. The same encoded event is handed to the subscription's callback
``--messages`` times two ways, alternating: as core NATS delivers it (no headers: the direct
path, :func:`pointsman.bus._direct`) and with a ``correlation_id`` header, which sends it
through FastStream's own ``process_message`` (middlewares, context, parser, decoder), as before
the direct path. Reports the process's CPU time per message of each.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg

from pointsman.bus import NatsConfig, ServiceBus
from pointsman.stack.procs import binary, free_port, port_free, spawn, wait_ready
from pointsman.v1 import CompletionEvent, routes


async def _measure(url: str, messages: int, rounds: int) -> dict[str, float]:
    seen: list[float] = []
    bus = ServiceBus(NatsConfig(url=url), "picker-bench", timers={routes.PICK.subject: seen.append})

    async def handler(_msg: Any) -> None:
        return None

    sub = bus.subscriber(routes.COMPLETIONS)(handler)
    if not await bus.start():
        raise RuntimeError("no NATS")
    event = CompletionEvent(
        request_id="r1", model="m", endpoint="10.0.0.1:8000", status_code=200, stream=False
    )
    data = routes.COMPLETIONS.encode(event)
    paths = {"direct": None, "faststream": {"correlation_id": "c1"}}
    cpu = dict.fromkeys(paths, 0.0)
    try:
        for r in range(rounds + 1):  # the first round warms both paths
            for name, headers in paths.items():
                start = time.process_time()
                for _ in range(messages):
                    msg = Msg(
                        _client=bus.client,  # type: ignore[arg-type]
                        subject=routes.COMPLETIONS.subject,
                        data=data,
                        headers=headers,
                    )
                    await sub.consume(msg)
                if r:
                    cpu[name] += time.process_time() - start
    finally:
        await bus.stop()
    return {name: 1e6 * t / (messages * rounds) for name, t in cpu.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.overhead.consume", description=__doc__)
    p.add_argument("--messages", type=int, default=20000, help="messages per path and round")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="pointsman-bench-consume-"))
    server = spawn("nats-server", [binary("nats-server"), "-a", "127.0.0.1", "-p", str(port)], work)
    try:
        wait_ready(server, lambda: not port_free(port), 15, "nats-server")
        result = asyncio.run(_measure(f"nats://127.0.0.1:{port}", args.messages, args.rounds))
    finally:
        server.stop()
    print(f"CPU per message ({args.rounds} x {args.messages} per path, alternating):")
    for name, us in result.items():
        print(f"  {name:<11}{us:7.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())

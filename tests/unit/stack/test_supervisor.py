"""The stack's supervisor and process primitives, with real child processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pointsman.stack.procs import port_free, spawn, stop_all, wait_ready
from pointsman.stack.supervisor import RestartPolicy, Supervisor, next_backoff

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie still answers kill(0): count it as gone
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().split(") ", 1)[1].startswith("Z")


@pytest.mark.parametrize(
    ("current", "ran", "wait", "after"),
    [
        (0.5, 0.1, 0.5, 1.0),  # first crash
        (8.0, 1.0, 8.0, 16.0),  # keeps crashing: doubles
        (30.0, 1.0, 30.0, 30.0),  # capped
        (30.0, 120.0, 0.5, 1.0),  # ran a long time: starts over
    ],
)
def test_backoff_doubles_up_to_the_cap_and_resets_after_a_long_run(
    current: float, ran: float, wait: float, after: float
) -> None:
    assert next_backoff(current, ran, RestartPolicy()) == (wait, after)


def test_a_killed_child_is_restarted_with_backoff_and_logged(tmp_path: Path) -> None:
    children = {"a": spawn("a", SLEEPER, tmp_path), "b": spawn("b", SLEEPER, tmp_path)}
    logged: list[str] = []
    sup = Supervisor(children, logged.append, RestartPolicy(initial_s=0.2, max_s=5))
    sup.start(interval=0.05)
    try:
        first = children["a"].pid
        b = children["b"].pid
        os.kill(first, signal.SIGKILL)
        wait_ready(None, lambda: children["a"].pid != first and children["a"].alive, 30, "restart")
        assert children["b"].pid == b  # the others keep running
        second = children["a"].pid
        killed_at = time.monotonic()
        os.kill(second, signal.SIGKILL)
        wait_ready(None, lambda: children["a"].pid != second, 30, "second restart")
        # the second restart waited the doubled backoff (0.4 s), not less
        assert time.monotonic() - killed_at >= 0.4
        assert sup.restarts == {"a": 2}
        assert any("exited with code -9" in line for line in logged), logged
        assert any("a restarted" in line for line in logged), logged
    finally:
        sup.stop()
        stop_all(list(children.values()))
    assert all(not c.alive for c in children.values())


def test_a_held_child_stays_down_until_released(tmp_path: Path) -> None:
    children = {"a": spawn("a", SLEEPER, tmp_path)}
    now = [100.0]
    sup = Supervisor(children, lambda _: None, RestartPolicy(initial_s=0.2), clock=lambda: now[0])
    first = children["a"]
    sup.hold("a", 3600.0)
    os.kill(first.pid, signal.SIGKILL)
    first.popen.wait(30)
    assert sup.check() == []  # dead, held: scheduled an hour out
    now[0] += 60.0
    assert sup.check() == []
    sup.release("a")
    try:
        assert sup.check() == ["a"]
        assert children["a"] is not first and children["a"].alive
    finally:
        stop_all(list(children.values()))


def test_stop_all_kills_what_ignores_sigterm(tmp_path: Path) -> None:
    stubborn = spawn(
        "stubborn",
        [
            sys.executable,
            "-c",
            "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(120)",
        ],
        tmp_path,
    )
    polite = spawn("polite", SLEEPER, tmp_path)
    wait_ready(stubborn, lambda: "ready" in stubborn.tail(), 30, "stubborn")
    stop_all([stubborn, polite], timeout=1.0)
    assert not stubborn.alive and not polite.alive
    assert stubborn.popen.returncode == -signal.SIGKILL


def test_children_die_with_their_parent_even_on_sigkill(tmp_path: Path) -> None:
    """The parent spawns a child with die_with_parent and is SIGKILLed: the kernel stops the
    child (no clean-up code of the parent ran)."""
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from pointsman.stack.procs import spawn\n"
        f"child = spawn('c', {SLEEPER!r}, Path({str(tmp_path)!r}), die_with_parent=True)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    assert not _gone(child_pid)
    parent.kill()
    parent.wait(30)
    wait_ready(None, lambda: _gone(child_pid), 30, "the orphaned child to exit")


def test_port_check_ignores_time_wait() -> None:
    """A port whose last connection is in TIME_WAIT (a stack stopped a moment ago) is free
    for a server that binds with SO_REUSEADDR, as every part of the stack does."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    server_side, _ = listener.accept()
    server_side.close()  # the server closes first: its end goes to TIME_WAIT
    client.recv(1)
    client.close()
    assert not port_free(port)  # still listening
    listener.close()
    states = Path("/proc/net/tcp").read_text()
    assert f":{port:04X} " in states  # the TIME_WAIT entry is there
    assert port_free(port)

"""`pointsman up` as a user runs it: prints the gateway, serves, stops everything on Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

from pointsman.stack.procs import free_port

pytestmark = pytest.mark.integration


def test_up_serves_and_stops_cleanly(tmp_path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pointsman.cli",
            "up",
            "--port",
            str(port),
            "--models",
            "m-one,m-two",
            "--sim-arg=--time-scale=0.02",
            "--no-classifier",
            "--debug",
            "--workdir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = ""
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 90
        while "Press Ctrl-C to stop." not in output:
            line = proc.stdout.readline()
            if not line:
                pytest.fail(f"pointsman up exited early:\n{output}")
            output += line
            assert time.monotonic() < deadline, output
        assert f"gateway:  http://127.0.0.1:{port}" in output
        assert re.search(r"models:\s+m-one, m-two", output), output

        models = httpx.get(f"http://127.0.0.1:{port}/v1/models").json()
        assert {m["id"] for m in models["data"]} >= {"m-one", "m-two"}
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={
                "model": "m-two",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 3,
            },
        )
        assert r.status_code == 200, r.text
        assert r.headers["x-selected-model"] == "m-two"
        assert r.headers["x-pointsman-endpoint"] == r.headers["x-sim-endpoint"]
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
        output += rest
    assert proc.returncode == 0, output
    assert "stopped." in output
    # nothing of the stack is left listening
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1)
    leftovers = subprocess.run(
        ["pgrep", "-f", str(tmp_path)], capture_output=True, text=True
    ).stdout.split()
    assert [p for p in leftovers if int(p) != os.getpid()] == []


def test_up_help_explains_every_flag() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pointsman.cli", "up", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for flag in [
        "--port",
        "--models",
        "--replicas",
        "--config",
        "--no-sim",
        "--sim-arg",
        "--pickers",
        "--body-mode",
        "--failure-mode",
        "--classifier",
        "--workdir",
    ]:
        assert flag in out


def test_up_refuses_a_taken_port() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "-m", "pointsman.cli", "up", "--port", str(port), "--no-classifier"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert r.returncode == 1
    assert f"gateway port {port}" in r.stderr


def _start_up(  # type: ignore[no-untyped-def]
    tmp_path, *extra: str, port: int | None = None
) -> tuple[subprocess.Popen[str], int, str]:
    port = port or free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pointsman.cli",
            "up",
            "--port",
            str(port),
            "--models",
            "m-one",
            "--sim-arg=--time-scale=0.02",
            "--no-classifier",
            "--workdir",
            str(tmp_path),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = ""
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    while "Press Ctrl-C to stop." not in output:
        line = proc.stdout.readline()
        if not line:
            proc.kill()
            pytest.fail(f"pointsman up exited early:\n{output}")
        output += line
        assert time.monotonic() < deadline, output
    return proc, port, output


def _stack_pids(tmp_path) -> list[int]:  # type: ignore[no-untyped-def]
    found = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split() if int(p) != os.getpid()]


def _chat(port: int) -> int:
    body = {"model": "m-one", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    try:
        return httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=10
        ).status_code
    except httpx.HTTPError:
        return 0


def test_up_restarts_a_dead_child_shares_picker_state_and_stops_with_a_closed_pipe(
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    """--pickers 2 starts Redis and gives both pickers its URL; a SIGKILLed picker is
    restarted while the rest keep serving; Ctrl-C after the reader of the output went away
    (``pointsman up | tee log``, tee killed by the same Ctrl-C) still stops every child."""
    proc, port, output = _start_up(tmp_path, "--pickers", "2")
    try:
        config = (tmp_path / "pointsman.yaml").read_text()
        assert "shared_state:" in config and "redis_url: redis://127.0.0.1:" in config, config
        assert "redis-server" in {p.stem for p in (tmp_path / "logs").iterdir()}
        assert _chat(port) == 200

        picker = subprocess.run(
            ["pgrep", "-f", f"pointsman_picker --config {tmp_path}/pointsman-picker.yaml"],
            capture_output=True,
            text=True,
        ).stdout.split()
        assert len(picker) == 1, picker
        os.kill(int(picker[0]), signal.SIGKILL)
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while "picker restarted" not in output:
            line = proc.stdout.readline()
            assert line, f"pointsman up exited after a child died:\n{output}"
            output += line
            assert time.monotonic() < deadline, output
        assert "picker (pid" in output and "exited with code -9" in output, output
        # the stack keeps serving (the other picker answers meanwhile, the new one joins)
        wait_until = time.monotonic() + 60
        while _chat(port) != 200:
            assert time.monotonic() < wait_until, "the stack stopped serving"
            time.sleep(0.2)
        assert proc.poll() is None
    finally:
        proc.stdout.close()  # type: ignore[union-attr]  # the pipe's reader is gone
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    deadline = time.monotonic() + 30
    while _stack_pids(tmp_path):
        assert time.monotonic() < deadline, f"left running: {_stack_pids(tmp_path)}"
        time.sleep(0.2)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1)


def test_children_die_with_a_killed_up(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL of ``pointsman up`` itself (no clean-up code runs): its children still stop,
    and the gateway port can be taken again at once (no TIME_WAIT refusal)."""
    proc, port, _ = _start_up(tmp_path)
    assert _chat(port) == 200
    assert len(_stack_pids(tmp_path)) >= 5
    proc.kill()
    proc.wait(30)
    deadline = time.monotonic() + 30
    while _stack_pids(tmp_path):
        assert time.monotonic() < deadline, f"left running: {_stack_pids(tmp_path)}"
        time.sleep(0.2)
    again, _, _ = _start_up(tmp_path / "again", port=port)
    try:
        assert _chat(port) == 200
    finally:
        again.send_signal(signal.SIGTERM)
        again.communicate(timeout=60)
    assert again.returncode == 0

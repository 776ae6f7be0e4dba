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

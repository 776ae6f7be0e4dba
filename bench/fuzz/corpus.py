"""Bad inputs for the gateway, and the judge of what came back. Pure: no I/O.

:func:`cases` draws a reproducible corpus (a seed) of requests in families: bad JSON, deep
nesting, huge bodies, wrong types, bad and many headers, other methods, unknown paths, wrong
content types, malformed HTTP, plus valid controls. :func:`judge` says what is wrong with one
answer: an error that is not JSON in the API's error format (OpenAI's, Anthropic's for the
Messages API), a 2xx for an input that must be refused, a valid control that was refused, or no
answer at all. Shared by the fuzz test (tests/integration/gateway/test_fuzz.py) and the bench
(``python -m bench.fuzz``).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any, Literal

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MESSAGES = "/v1/messages"
RESPONSES = "/v1/responses"

#: ``error``: must be refused (4xx/5xx, JSON error body); ``ok``: a valid control (2xx);
#: ``any``: either, but an error must still be JSON (inputs an API may accept).
Expect = Literal["error", "ok", "any"]


@dataclass(frozen=True)
class Case:
    family: str
    name: str
    method: str
    path: str
    body: bytes | None = None
    headers: tuple[tuple[str, str], ...] = (("content-type", "application/json"),)
    expect: Expect = "error"
    #: Bytes sent as they are instead of an HTTP request built from the fields (malformed HTTP).
    raw: bytes | None = None


@dataclass
class Answer:
    """What came back: ``status`` 0 when the connection failed or closed without an answer."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: str = ""


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _chat(model: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 4,
        **extra,
    }


def _nested(depth: int, kind: str) -> bytes:
    if kind == "array":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


def cases(model: str, max_body: int, seed: int = 0, random_count: int = 200) -> list[Case]:
    """The corpus for a gateway whose pool ``model`` answers and whose shim takes at most
    ``max_body`` bytes (Envoy buffers twice that)."""
    rng = random.Random(seed)
    out: list[Case] = []

    def add(family: str, name: str, body: bytes | None, path: str = CHAT, **kw: Any) -> None:
        out.append(Case(family, name, kw.pop("method", "POST"), path, body, **kw))

    # -- valid controls: the gateway still serves while it is fuzzed --------------------------
    add("control", "chat", _json(_chat(model)), expect="ok")
    add("control", "completion", _json({"model": model, "prompt": "Hi", "max_tokens": 4}),
        COMPLETIONS, expect="ok")  # fmt: skip
    add("control", "models", None, "/v1/models", method="GET", headers=(), expect="ok")
    add("control", "chat tool-call turn", _json({"model": model, "max_tokens": 4, "messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": None, "tool_calls": []},
        {"role": "user", "content": [{"type": "text", "text": "again"}]},
    ]}), expect="ok")  # fmt: skip

    # -- bad JSON --------------------------------------------------------------------------
    for name, body in [
        ("empty", b""), ("spaces", b"   \n"), ("truncated", _json(_chat(model))[:-7]),
        ("not json", b"model=alpha&messages=hi"), ("trailing comma", b'{"model": "a",}'),
        ("single quotes", b"{'model': 'a'}"), ("invalid utf-8", b'{"model": "\xff\xfe"}'),
        ("nul bytes", b"\x00" * 64), ("array", b"[1, 2]"), ("string", b'"chat"'),
        ("number", b"42"), ("null", b"null"), ("true", b"true"), ("bom", b"\xef\xbb\xbf{}"),
        ("two objects", b"{}{}"), ("nan", b'{"model": NaN}'), ("comment", b"{/* c */}"),
    ]:  # fmt: skip
        add("bad_json", name, body)
    for i in range(random_count // 4):
        add("bad_json", f"random bytes {i}", rng.randbytes(rng.randint(1, 400)))
    for i in range(random_count // 4):
        good = bytearray(_json(_chat(model, n=i)))
        for _ in range(rng.randint(1, 4)):  # flip bytes of a valid body
            good[rng.randrange(len(good))] = rng.choice(b'{}[]":,\\\x00\xff ')
        add("bad_json", f"mutated {i}", bytes(good), expect="any")

    # -- deep nesting ----------------------------------------------------------------------
    for depth in (129, 1_000, 10_000, 100_000):
        for kind in ("array", "object"):
            add("deep_nesting", f"top-level {kind} {depth}", _nested(depth, kind))
            inner = _nested(depth, kind).decode()
            text = f'{{"model": "{model}", "messages": [{{"role": "user", "content": "Hi"}}], ' \
                   f'"max_tokens": 4, "x": {inner}}}'  # fmt: skip
            add("deep_nesting", f"in a valid request {kind} {depth}", text.encode())
    add("deep_nesting", "messages nested", (
        f'{{"model": "{model}", "messages": ' + "[" * 5000 + "]" * 5000 + "}"
    ).encode())  # fmt: skip

    # -- huge bodies -----------------------------------------------------------------------
    for name, size in [("just over the shim's limit", max_body + 100),
                       ("over Envoy's buffer", 2 * max_body + 4096)]:  # fmt: skip
        add("huge_body", name, _json(_chat(model, pad="x" * size)))
        add("huge_body", f"{name}, one message", _json(
            {"model": model, "messages": [{"role": "user", "content": "y" * size}]}
        ))  # fmt: skip

    # -- wrong types -----------------------------------------------------------------------
    chat_bad: list[tuple[str, dict[str, Any]]] = [
        ("no model", {"messages": [{"role": "user", "content": "Hi"}]}),
        ("model int", {"model": 7, "messages": [{"role": "user", "content": "Hi"}]}),
        ("model null", {"model": None, "messages": [{"role": "user", "content": "Hi"}]}),
        ("model list", {"model": [model], "messages": [{"role": "user", "content": "Hi"}]}),
        ("model empty", {"model": "", "messages": [{"role": "user", "content": "Hi"}]}),
        ("model object", {"model": {"a": 1}, "messages": [{"role": "user", "content": "Hi"}]}),
        ("model with NUL", {"model": "a\u0000", "messages": [{"role": "user", "content": "Hi"}]}),
        ("model with newline", {"model": "a\nb", "messages": [{"role": "user", "content": "Hi"}]}),
        ("no messages", {"model": model}),
        ("messages empty", {"model": model, "messages": []}),
        ("messages string", {"model": model, "messages": "Hi"}),
        ("messages object", {"model": model, "messages": {"role": "user"}}),
        ("message string", {"model": model, "messages": ["Hi"]}),
        ("message null", {"model": model, "messages": [None]}),
        ("no role", {"model": model, "messages": [{"content": "Hi"}]}),
        ("role int", {"model": model, "messages": [{"role": 1, "content": "Hi"}]}),
        ("no content", {"model": model, "messages": [{"role": "user"}]}),
        ("content null", {"model": model, "messages": [{"role": "user", "content": None}]}),
        ("content int", {"model": model, "messages": [{"role": "user", "content": 5}]}),
        ("content bool", {"model": model, "messages": [{"role": "user", "content": True}]}),
        ("content object", {"model": model, "messages": [{"role": "user", "content": {}}]}),
        ("part without text", {"model": model,
                               "messages": [{"role": "user", "content": [{"type": "text"}]}]}),
        ("part without type", {"model": model,
                               "messages": [{"role": "user", "content": [{"text": "Hi"}]}]}),
        ("part string", {"model": model, "messages": [{"role": "user", "content": ["Hi"]}]}),
        ("part text int", {"model": model,
                           "messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]}),
        ("stream string", {**_chat(model), "stream": "yes"}),
        ("stream int", {**_chat(model), "stream": 1}),
    ]  # fmt: skip
    for name, fields in chat_bad:
        add("wrong_types", f"chat: {name}", _json(fields))
    for name, prompt in [("int", 5), ("null", None), ("empty list", []), ("object", {"a": 1}),
                         ("mixed list", [1, "a"])]:  # fmt: skip
        add("wrong_types", f"completion: prompt {name}", _json({"model": model, "prompt": prompt}),
            COMPLETIONS)  # fmt: skip
    add("wrong_types", "completion: no prompt", _json({"model": model}), COMPLETIONS)
    for name, value in [
        ("no messages", {"model": model, "max_tokens": 4}),
        ("no max_tokens", {"model": model, "messages": [{"role": "user", "content": "Hi"}]}),
        ("messages string", {"model": model, "max_tokens": 4, "messages": "Hi"}),
        ("content int", {"model": model, "max_tokens": 4,
                         "messages": [{"role": "user", "content": 5}]}),
        ("max_tokens string", {"model": model, "max_tokens": "4",
                               "messages": [{"role": "user", "content": "Hi"}]}),
        ("not an object", [1]),
    ]:  # fmt: skip
        add("wrong_types", f"messages: {name}", _json(value), MESSAGES)
    for name, value in [
        ("no input", {"model": model}), ("input int", {"model": model, "input": 5}),
        ("instructions int", {"model": model, "input": "Hi", "instructions": 3}),
        ("store string", {"model": model, "input": "Hi", "store": "yes"}),
    ]:  # fmt: skip
        add("wrong_types", f"responses: {name}", _json(value), RESPONSES)
    for i in range(random_count // 2):  # random JSON values in random fields
        fields = _chat(model)
        key = rng.choice(["model", "messages", "stream", "max_tokens", "temperature", "n"])
        fields[key] = _random_value(rng, 3)
        add("wrong_types", f"random {key} {i}", _json(fields), expect="any")

    # -- headers ---------------------------------------------------------------------------
    body = _json(_chat(model))
    add(
        "headers",
        "many headers (120)",
        body,
        headers=(("content-type", "application/json"), *((f"x-h{i}", "v") for i in range(120))),
    )
    add(
        "headers",
        "one huge header",
        body,
        headers=(("content-type", "application/json"), ("x-big", "y" * 70_000)),
    )
    for count in (60, 80, 90, 95, 99):
        add(
            "headers",
            f"{count} headers",
            body,
            expect="any",
            headers=(
                ("content-type", "application/json"),
                *((f"x-h{i}", "v") for i in range(count)),
            ),
        )
    add(
        "headers",
        "spoofed destination",
        body,
        expect="ok",
        headers=(
            ("content-type", "application/json"),
            ("x-gateway-destination-endpoint", "10.9.9.9:80"),
        ),
    )
    add(
        "headers",
        "spoofed routing headers",
        body,
        expect="ok",
        headers=(
            ("content-type", "application/json"),
            ("x-selected-model", "nope"),
            ("x-pointsman-route", "x"),
            ("x-prefiller-host-port", "10.9.9.9:80"),
        ),
    )
    add(
        "headers",
        "bad priority",
        body,
        expect="any",
        headers=(("content-type", "application/json"), ("x-pointsman-priority", "high")),
    )
    add(
        "headers",
        "odd session id",
        body,
        expect="any",
        headers=(("content-type", "application/json"), ("x-session-id", "\u00e9" * 10)),
    )
    # -- content types (the JSON body is what counts; an API may accept these) ---------------
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                  "application/json; charset=latin-1", "", "application/xml"):  # fmt: skip
        add(
            "content_type",
            f"valid JSON as {ctype or 'no content-type'}",
            body,
            expect="any",
            headers=(("content-type", ctype),) if ctype else (("x-none", "1"),),
        )
    add("content_type", "form body as form", b"model=a&messages=hi",
        headers=(("content-type", "application/x-www-form-urlencoded"),))  # fmt: skip
    # -- methods ---------------------------------------------------------------------------
    for method in ("GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE"):
        for path in (CHAT, COMPLETIONS):
            add("methods", f"{method} {path}", body if method in ("PUT", "PATCH") else None,
                path, method=method)  # fmt: skip
    for method in ("POST", "PUT", "DELETE", "HEAD"):
        add("methods", f"{method} /v1/models", None, "/v1/models", method=method, headers=())
    # -- unknown paths ---------------------------------------------------------------------
    for path in ("/", "/metrics", "/health", "/v1", "/v1/", "/v1/embeddings", "/v2/chat/completions",
                 "/v1/chat/completions/", "/v1//chat/completions", "/v1/chat%2Fcompletions",
                 "/v1/../metrics", "/../../etc/passwd", "/v1/models/../metrics", "/tokenize",
                 "/%00", "/v1/chat/completions%00", "/" + "a" * 4000):  # fmt: skip
        add("unknown_paths", path[:40], body, path)
    for i in range(random_count // 8):
        path = "/" + "".join(rng.choice("abcv1/._-%") for _ in range(rng.randint(1, 30)))
        add("unknown_paths", f"random {i}", body, path, expect="any")
    # -- malformed HTTP (sent as raw bytes) ------------------------------------------------
    for name, raw in [
        ("bad request line", b"POST\r\n\r\n"),
        ("bad version", b"POST /v1/chat/completions HTTP/9.9\r\nhost: x\r\n\r\n"),
        ("space in header name", b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nbad name: 1\r\n"
         b"content-length: 2\r\n\r\n{}"),
        ("bad content-length", b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
         b"content-length: abc\r\n\r\n{}"),
        ("two content-lengths", b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
         b"content-length: 2\r\ncontent-length: 3\r\n\r\n{}"),
        ("bad chunked", b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
         b"transfer-encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"),
        ("nul in header", b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-a: \x00\r\n"
         b"content-length: 2\r\n\r\n{}"),
    ]:  # fmt: skip
        out.append(Case("malformed_http", name, "RAW", "", raw=raw))
    return out


def _random_value(rng: random.Random, depth: int) -> Any:
    kinds = ["null", "bool", "int", "float", "str"] + (["list", "dict"] if depth else [])
    kind = rng.choice(kinds)
    if kind == "null":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice([0, -1, 1, 2**63, -(2**70), rng.randint(-1000, 1000)])
    if kind == "float":
        return rng.choice([0.5, -1e308, 1e-300, rng.random()])
    if kind == "str":
        return rng.choice(["", "auto", "\u0000", "\ud7ff" * 3, "x" * rng.randint(0, 50)])
    if kind == "list":
        return [_random_value(rng, depth - 1) for _ in range(rng.randint(0, 3))]
    return {str(rng.randint(0, 9)): _random_value(rng, depth - 1) for _ in range(rng.randint(0, 3))}


def judge(case: Case, answer: Answer) -> list[str]:
    """What is wrong with ``answer`` to ``case`` (empty: nothing)."""
    if answer.status == 0:
        return [f"no answer ({answer.error})"]
    problems: list[str] = []
    ok = 200 <= answer.status < 300
    if case.expect == "error" and ok:
        problems.append(f"{answer.status} for an input that must be refused")
    if case.expect == "ok" and not ok:
        problems.append(f"{answer.status} for a valid request: {answer.body[:200]!r}")
    if answer.status >= 400:
        problems += error_format(case, answer)
    return problems


def error_format(case: Case, answer: Answer) -> list[str]:
    """An error answer must be JSON in the API's error format (headers only for HEAD)."""
    ctype = answer.headers.get("content-type", "")
    if not ctype.startswith("application/json"):
        return [f"{answer.status} with content-type {ctype!r}: {answer.body[:120]!r}"]
    if case.method == "HEAD":
        return [] if not answer.body else ["a HEAD answer with a body"]
    try:
        data = json.loads(answer.body)
    except ValueError:
        return [f"{answer.status} body is not JSON: {answer.body[:120]!r}"]
    if case.path.split("?")[0].startswith(MESSAGES) and answer.status != 404 and \
            answer.status != 405:  # fmt: skip
        error = data.get("error") if isinstance(data, dict) else None
        if not (data.get("type") == "error" and isinstance(error, dict)
                and isinstance(error.get("type"), str) and isinstance(error.get("message"), str)):  # fmt: skip
            return [f"{answer.status} not an Anthropic error: {answer.body[:120]!r}"]
        return []
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict) or set(data) != {"error"}:
        return [f"{answer.status} not an OpenAI error: {answer.body[:120]!r}"]
    if set(error) != {"message", "type", "param", "code"} or not isinstance(
        error.get("message"), str
    ):
        return [f"{answer.status} OpenAI error with fields {sorted(error)}"]
    return []

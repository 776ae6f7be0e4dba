"""Loading the bytes captured from real vLLM (``tests/fixtures/vllm-0.32``, see its README)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

VLLM_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "vllm-0.32"


def raw(name: str) -> bytes:
    return (VLLM_DIR / name).read_bytes()


def headers(name: str) -> tuple[int, dict[str, str]]:
    """Status and lower-cased headers of a capture (``chat`` reads ``chat.headers.json``)."""
    meta = json.loads((VLLM_DIR / f"{name}.headers.json").read_text())
    return int(meta["status"]), {str(k).lower(): str(v) for k, v in meta["headers"]}


def sse_events(body: bytes) -> list[bytes]:
    """The ``data:`` payloads of an SSE stream, split the plain way (blank line ends an event)."""
    payloads = []
    for event in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = [line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:")]
        if data:
            payloads.append(b"\n".join(data))
    return payloads


def sse_json(body: bytes) -> list[dict[str, Any]]:
    """The JSON chunks of an SSE stream, without the final ``[DONE]``."""
    return [json.loads(p) for p in sse_events(body) if p != b"[DONE]"]


def requests_spec() -> dict[str, dict[str, Any]]:
    """``requests.json``: name -> ``{path, method?, body | raw, server?}``, in capture order."""
    spec: dict[str, dict[str, Any]] = json.loads((VLLM_DIR / "requests.json").read_text())
    return spec


@dataclass
class Captured:
    status: int
    headers: dict[str, str]
    body: bytes


def captured(name: str) -> Captured:
    """A capture from real vLLM: its status, headers and body (``.json``, ``.sse`` or ``.txt``)."""
    status, hdrs = headers(name)
    for suffix in (".json", ".sse", ".txt"):
        if (VLLM_DIR / f"{name}{suffix}").exists():
            return Captured(status, hdrs, raw(name + suffix))
    raise FileNotFoundError(name)


def response_id(body: bytes) -> str | None:
    """The ``id`` of a JSON answer, or of the ``response`` in a stream's first event."""
    try:
        value = json.loads(body)
    except ValueError:
        events = typed_events(body)
        value = events[0][1].get("response") if events else None
    return str(value["id"]) if isinstance(value, dict) and "id" in value else None


async def replay(
    session: aiohttp.ClientSession, base: str, names: list[str]
) -> dict[str, Captured]:
    """Send the captured requests ``names`` (in order) to ``base`` as the capture sent them to
    vLLM, ``{id:NAME}`` in a path or body standing for the id answered to request NAME."""
    spec = requests_spec()
    ids: dict[str, str] = {}
    out: dict[str, Captured] = {}

    def resolve(text: str) -> str:
        for name, rid in ids.items():
            text = text.replace("{id:" + name + "}", rid)
        return text

    for name in names:
        call = spec[name]
        data = call["raw"].encode() if "raw" in call else None
        if "body" in call:
            data = resolve(json.dumps(call["body"])).encode()
        async with session.request(
            call.get("method", "POST"),
            base + resolve(call["path"]),
            data=data,
            headers={"content-type": "application/json"} if data is not None else {},
        ) as resp:
            body = await resp.read()
            out[name] = Captured(resp.status, {k.lower(): v for k, v in resp.headers.items()}, body)
        rid = response_id(body) if out[name].status == 200 else None
        if rid is not None:
            ids[name] = rid
    return out


def typed_events(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    """The ``(event, data)`` pairs of a stream of named events (Responses, Anthropic)."""
    out = []
    for event in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        lines = event.split(b"\n")
        names = [line[6:].strip().decode() for line in lines if line.startswith(b"event:")]
        data = [line[5:].strip() for line in lines if line.startswith(b"data:")]
        if names and data:
            out.append((names[0], json.loads(b"\n".join(data))))
    return out

"""Loading the bytes captured from real vLLM (``tests/fixtures/vllm-0.32``, see its README)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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

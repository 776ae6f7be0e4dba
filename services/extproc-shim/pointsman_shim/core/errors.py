"""Client errors in the OpenAI error format.

Every rejection the shim makes carries a ``reason``: the label of the Prometheus counter and the
value of the ``x-pointsman-error`` response header, so an operator can tell rejections apart
without reading bodies.
"""

from __future__ import annotations

import msgspec


class RequestError(Exception):
    """A request the shim answers itself, with an OpenAI-style JSON error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        reason: str,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason
        self.type = type
        self.code = code or reason
        self.param = param
        self.headers = headers or {}

    def body(self) -> bytes:
        return error_body(self.message, type=self.type, code=self.code, param=self.param)


def error_body(message: str, *, type: str, code: str, param: str | None = None) -> bytes:
    """``{"error": {"message", "type", "param", "code"}}`` as OpenAI and vLLM send it."""
    return msgspec.json.encode(
        {"error": {"message": message, "type": type, "param": param, "code": code}}
    )

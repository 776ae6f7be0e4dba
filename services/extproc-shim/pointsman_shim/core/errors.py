"""Requests the shim answers itself with an error.

Every rejection the shim makes carries a ``reason``: the label of the Prometheus counter and the
value of the ``x-pointsman-error`` response header, so an operator can tell rejections apart
without reading bodies. The body is written by the request's dialect, in its API's own error
format (:meth:`~pointsman_shim.core.dialects.base.Dialect.error_body`).
"""

from __future__ import annotations


class RequestError(Exception):
    """A request the shim answers itself with an error; ``type`` and ``code`` in OpenAI's
    vocabulary, which each dialect maps to its own."""

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


def invalid(message: str, param: str, reason: str | None = None) -> RequestError:
    """A 400 for a bad field: ``reason`` defaults to ``invalid_<param>``."""
    return RequestError(400, message, reason=reason or f"invalid_{param}", param=param)

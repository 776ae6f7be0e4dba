"""Build ext_proc protobuf messages from plain data.

Kept apart from the stream logic so that :mod:`.handlers` reads as decisions, not protobuf
plumbing. Header values go in ``raw_value`` (bytes): Envoy ignores ``value`` when ``raw_value`` is
set and sends ``raw_value`` itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2

ProcessingRequest = pb.ProcessingRequest
ProcessingResponse = pb.ProcessingResponse
ProcessingMode = processing_mode_pb2.ProcessingMode

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def header_map(headers: pb.HttpHeaders) -> dict[str, str]:
    """Envoy's header list as a dict of lower-case names (repeated names joined with ',')."""
    out: dict[str, str] = {}
    for h in headers.headers.headers:
        value = h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value
        key = h.key.lower()
        out[key] = f"{out[key]},{value}" if key in out else value
    return out


def mutation(
    set_headers: Mapping[str, str] | None = None, remove: Iterable[str] = ()
) -> pb.HeaderMutation:
    return pb.HeaderMutation(
        set_headers=[
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key=k, raw_value=v.encode()), append_action=_OVERWRITE
            )
            for k, v in (set_headers or {}).items()
        ],
        remove_headers=list(remove),
    )


def common(
    *,
    set_headers: Mapping[str, str] | None = None,
    remove: Iterable[str] = (),
    body: bytes | None = None,
    streamed_body: bytes | None = None,
    clear_route_cache: bool = False,
) -> pb.CommonResponse:
    """``body`` replaces the body (or, in a streamed mode, this chunk of it); an empty ``body``
    clears it."""
    response = pb.CommonResponse(clear_route_cache=clear_route_cache)
    remove = list(remove)
    if set_headers or remove:
        response.header_mutation.CopyFrom(mutation(set_headers, remove))
    if streamed_body is not None:
        response.body_mutation.streamed_response.body = streamed_body
        response.body_mutation.streamed_response.end_of_stream = True
    elif body == b"":
        response.body_mutation.clear_body = True
    elif body is not None:
        response.body_mutation.body = body
    return response


def request_headers(
    response: pb.CommonResponse | None = None,
    *,
    mode: processing_mode_pb2.ProcessingMode | None = None,
    metadata: Mapping[str, Mapping[str, Any]] | None = None,
) -> pb.ProcessingResponse:
    out = pb.ProcessingResponse(request_headers=pb.HeadersResponse(response=response))
    if mode is not None:
        out.mode_override.CopyFrom(mode)
    if metadata:
        _fill(out.dynamic_metadata, metadata)
    return out


def request_body(
    response: pb.CommonResponse | None = None,
    *,
    metadata: Mapping[str, Mapping[str, Any]] | None = None,
) -> pb.ProcessingResponse:
    out = pb.ProcessingResponse(request_body=pb.BodyResponse(response=response))
    if metadata:
        _fill(out.dynamic_metadata, metadata)
    return out


def response_headers(
    response: pb.CommonResponse | None = None,
    *,
    mode: processing_mode_pb2.ProcessingMode | None = None,
) -> pb.ProcessingResponse:
    out = pb.ProcessingResponse(response_headers=pb.HeadersResponse(response=response))
    if mode is not None:
        out.mode_override.CopyFrom(mode)
    return out


def response_body(response: pb.CommonResponse) -> pb.ProcessingResponse:
    return pb.ProcessingResponse(response_body=pb.BodyResponse(response=response))


def watch_response(
    request_body_mode: int, response_body_mode: int
) -> processing_mode_pb2.ProcessingMode:
    """A ``mode_override`` that sends the response headers (and the response body in
    ``response_body_mode``) to a decision filter configured not to. Envoy reads the header modes
    of an override as "unchanged" when left DEFAULT, but always takes its body modes, so the
    stream's own request body mode is repeated."""
    mode: processing_mode_pb2.ProcessingMode = ProcessingMode(
        request_body_mode=request_body_mode,
        response_header_mode=ProcessingMode.SEND,
        response_body_mode=response_body_mode,
    )
    return mode


RESPONSE_BODY_CONTINUE = pb.ProcessingResponse(response_body=pb.BodyResponse())
RESPONSE_TRAILERS_CONTINUE = pb.ProcessingResponse(response_trailers=pb.TrailersResponse())
REQUEST_TRAILERS_CONTINUE = pb.ProcessingResponse(request_trailers=pb.TrailersResponse())


def immediate(
    status: int, body: bytes, headers: Mapping[str, str] | None = None, details: str = ""
) -> pb.ProcessingResponse:
    """Answer the client now; Envoy does not route the request."""
    all_headers = {"content-type": "application/json", **(headers or {})}
    return pb.ProcessingResponse(
        immediate_response=pb.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=status),
            headers=mutation(all_headers),
            body=body,
            details=details,
        )
    )


def struct(data: Mapping[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    _fill(s, data)
    return s


def _fill(target: struct_pb2.Struct, data: Mapping[str, Any]) -> None:
    """``target.update(data)`` on an empty ``target``, without the protobuf library's generic
    walk (a few microseconds less per decision's metadata); the same types, the same values."""
    fields = target.fields
    for key, value in data.items():
        _set(fields[key], value)


def _set(target: struct_pb2.Value, value: Any) -> None:
    if isinstance(value, str):
        target.string_value = value
    elif value is None:
        target.null_value = 0  # type: ignore[assignment]
    elif isinstance(value, bool):  # before the numbers: a bool is an int
        target.bool_value = value
    elif isinstance(value, (int, float)):
        target.number_value = value
    elif isinstance(value, Mapping):
        nested = target.struct_value
        nested.Clear()  # present even when empty
        _fill(nested, value)
    elif isinstance(value, (list, tuple)):
        items = target.list_value
        items.Clear()  # present even when empty
        for item in value:
            _set(items.values.add(), item)
    else:
        raise ValueError(f"unexpected type in metadata: {type(value).__name__}")


def metadata_namespace(request: pb.ProcessingRequest, namespace: str) -> struct_pb2.Struct | None:
    """One namespace of the request's metadata context, ``None`` if Envoy sent none."""
    if not request.HasField("metadata_context"):
        return None
    ns: struct_pb2.Struct | None = request.metadata_context.filter_metadata.get(namespace)
    return ns


def metadata_value(request: pb.ProcessingRequest, namespace: str, key: str) -> Any:
    """A value of the request's metadata context (``None`` if absent): lists and strings."""
    ns = metadata_namespace(request, namespace)
    if ns is None or key not in ns.fields:
        return None
    value = _plain(ns.fields[key])
    return value if isinstance(value, (str, list)) else None


def struct_fields(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct's top-level fields as Python values (nested structs left out: none are used).

    Cheaper than ``json_format.MessageToDict``, which walks the message through reflection.
    """
    out: dict[str, Any] = {}
    for key, value in struct.fields.items():
        plain = _plain(value)
        if plain is not None:
            out[key] = plain
    return out


def _plain(value: struct_pb2.Value) -> Any:
    """Strings, numbers, booleans and lists of strings; ``None`` for anything else."""
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        return value.number_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "list_value":
        return [
            v.string_value
            for v in value.list_value.values
            if v.WhichOneof("kind") == "string_value"
        ]
    return None


SKIP_BODIES = ProcessingMode(
    request_body_mode=ProcessingMode.NONE,
    response_header_mode=ProcessingMode.SKIP,
    response_body_mode=ProcessingMode.NONE,
)

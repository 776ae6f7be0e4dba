"""Build the ext_proc messages Envoy sends, and feed them to the shim's processor.

Shared by the protocol tests against a real picker and the pinned exchanges of the unit tests, so
both speak exactly the same messages.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import struct_pb2

from pointsman_shim.handlers import Processor


def headers_msg(
    path: str,
    extra: dict[str, str] | None = None,
    *,
    eos: bool = False,
    subset: list[str] | None = None,
    method: str = "POST",
) -> pb.ProcessingRequest:
    hdrs = {":path": path, ":method": method, "content-type": "application/json", **(extra or {})}
    request = pb.ProcessingRequest(
        request_headers=pb.HttpHeaders(
            headers=base_pb2.HeaderMap(
                headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in hdrs.items()]
            ),
            end_of_stream=eos,
        )
    )
    if subset is not None:
        value = struct_pb2.Struct()
        value.update({"x-gateway-destination-endpoint-subset": subset})
        request.metadata_context.filter_metadata["envoy.lb.subset_hint"].CopyFrom(value)
    return request


def body_msg(body: bytes, eos: bool = True) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=eos))


def response_headers_msg(
    status: int, served: str | None = None, content_type: str = "application/json"
) -> pb.ProcessingRequest:
    request = pb.ProcessingRequest(
        response_headers=pb.HttpHeaders(
            headers=base_pb2.HeaderMap(
                headers=[
                    base_pb2.HeaderValue(key=":status", raw_value=str(status).encode()),
                    base_pb2.HeaderValue(key="content-type", raw_value=content_type.encode()),
                ]
            )
        )
    )
    if served:
        value = struct_pb2.Struct()
        value.update({"x-gateway-destination-endpoint-served": served})
        request.metadata_context.filter_metadata["envoy.lb"].CopyFrom(value)
    return request


def response_body_msg(body: bytes, eos: bool = True) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(response_body=pb.HttpBody(body=body, end_of_stream=eos))


async def run(
    processor: Processor, messages: list[pb.ProcessingRequest]
) -> list[pb.ProcessingResponse]:
    """One ext_proc stream: every message in order, every answer the shim gave."""

    async def feed() -> AsyncIterator[pb.ProcessingRequest]:
        for m in messages:
            yield m

    return [r async for r in processor.process(feed())]


def set_headers(response: Any) -> dict[str, str]:
    """The headers a CommonResponse or ImmediateResponse sets, as a dict."""
    return {h.header.key: h.header.raw_value.decode() for h in response.header_mutation.set_headers}

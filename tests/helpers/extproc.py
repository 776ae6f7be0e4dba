"""Build the ext_proc messages Envoy sends, and feed them to the shim's processor.

Shared by the protocol tests against a real picker and the unit tests of the handler, so both
speak exactly the same messages. :class:`ScriptedBus` stands in for the bus in unit tests only:
the integration tests use the real one against real services.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import struct_pb2

from pointsman.v1 import CompletionEvent, ModelsReply, PickReply, PickRequest
from pointsman.v1.cache import CacheStore
from pointsman.v1.classify import ClassifyReply, ClassifyRequest
from pointsman_shim.handlers import Processor

Reply = Any  # a bus reply struct, or a BusUnavailable the call raises


class ScriptedBus:
    """The shim's ``Bus`` interface answering from a script: what the classifier, the picker
    replied, or the ``BusUnavailable`` the call fails with. Every call, publications included,
    goes to ``on_call(name, message)`` and into :attr:`calls`."""

    def __init__(
        self,
        *,
        classify: Reply = None,
        pick: Reply = None,
        models: Reply = None,
        on_call: Callable[[str, msgspec.Struct | None], None] | None = None,
    ) -> None:
        self.replies = {"classify": classify, "pick": pick, "models": models}
        self.on_call = on_call
        self.calls: list[tuple[str, msgspec.Struct | None]] = []

    def _record(self, call: str, message: msgspec.Struct | None) -> None:
        self.calls.append((call, message))
        if self.on_call is not None:
            self.on_call(call, message)

    def _answer(self, call: str, request: msgspec.Struct | None) -> Any:
        self._record(call, request)
        reply = self.replies[call]
        assert reply is not None, f"no {call} reply scripted"
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def pick(self, request: PickRequest, timeout: float) -> PickReply:
        result: PickReply = self._answer("pick", request)
        return result

    async def models(self, timeout: float) -> ModelsReply:
        result: ModelsReply = self._answer("models", None)
        return result

    async def classify(self, request: ClassifyRequest, timeout: float) -> ClassifyReply:
        result: ClassifyReply = self._answer("classify", request)
        return result

    async def publish_completion(self, event: CompletionEvent) -> None:
        self._record("publish completion", event)

    async def publish_cache_store(self, message: CacheStore) -> None:
        self._record("publish cache store", message)


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
    immediate = isinstance(response, pb.ImmediateResponse)
    mutation = response.headers if immediate else response.header_mutation
    return {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}

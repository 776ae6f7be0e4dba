"""A do-nothing ext_proc server: the floor any Python ext_proc pays behind the same Envoy config.

It answers exactly the messages the shim answers, with the smallest answers that still route:
the request headers continue, and at the end of the body it names one fixed endpoint (header
and ``envoy.lb`` metadata, as the shim does) without parsing the body or asking anyone. The
observer's messages are read and dropped; on the inline response path, responses continue.
Like the shim, it ends each stream itself once nothing more is needed on it (the decision
stream once routed, an observer or inline stream once the response has ended): a stream left to
Envoy is reset at the end of its request, and an observer stream only after
``deferred_close_timeout``, which costs more CPU per request (a closed-loop pair on this
machine: 568-599 us against 449-451) and holds thousands of streams open. What the shim adds
over this floor is Pointsman's own work (parsing, the NATS pick, metrics, the response path);
the floor itself is Envoy plus Python gRPC.

    python -m bench.overhead.floor --port 9002 --endpoint 127.0.0.1:8000 [--response-path inline]
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from google.protobuf import struct_pb2

from pointsman.runtime import run

HEADER = "x-gateway-destination-endpoint"
RESPONSE_HEADERS = pb.ProcessingResponse(response_headers=pb.HeadersResponse())
RESPONSE_BODY = pb.ProcessingResponse(response_body=pb.BodyResponse())


def response_ended(request: pb.ProcessingRequest) -> bool:
    """The last message Envoy sends about a response (its trailers are not asked for)."""
    which = request.WhichOneof("request")
    if which == "response_headers":
        return bool(request.response_headers.end_of_stream)
    return which == "response_body" and bool(request.response_body.end_of_stream)


def answers(endpoint: str) -> tuple[pb.ProcessingResponse, pb.ProcessingResponse]:
    """The headers answer and the end-of-body answer, built once."""
    headers = pb.ProcessingResponse(request_headers=pb.HeadersResponse())
    common = pb.CommonResponse(clear_route_cache=True)
    common.header_mutation.set_headers.append(
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=HEADER, raw_value=endpoint.encode())
        )
    )
    metadata = struct_pb2.Struct()
    metadata.update({"envoy.lb": {HEADER: endpoint}})
    body = pb.ProcessingResponse(
        request_body=pb.BodyResponse(response=common), dynamic_metadata=metadata
    )
    return headers, body


class Floor(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(self, endpoint: str, *, inline: bool = False) -> None:
        self.endpoint = endpoint
        #: The inline response path: the decision stream also carries the response.
        self.inline = inline
        self.headers, self.body = answers(endpoint)

    async def Process(
        self,
        request_iterator: AsyncIterator[pb.ProcessingRequest],
        context: grpc.aio.ServicerContext[pb.ProcessingRequest, pb.ProcessingResponse],
    ) -> AsyncIterator[pb.ProcessingResponse]:
        full_duplex = False
        body = bytearray()
        async for request in request_iterator:
            which = request.WhichOneof("request")
            if request.observability_mode:
                if response_ended(request):
                    return
                continue
            if which == "request_headers":
                full_duplex = (
                    request.protocol_config.request_body_mode == ProcessingMode.FULL_DUPLEX_STREAMED
                )
                if not full_duplex:
                    yield self.headers
            elif which == "request_body" and full_duplex:
                # As the endpoint-picker protocol has it: hold the headers answer until the
                # body is complete, then send it and the body back in one piece.
                body += request.request_body.body
                if request.request_body.end_of_stream:
                    yield self._duplex_headers(len(body))
                    yield pb.ProcessingResponse(
                        request_body=pb.BodyResponse(
                            response=pb.CommonResponse(
                                body_mutation=pb.BodyMutation(
                                    streamed_response=pb.StreamedBodyResponse(
                                        body=bytes(body), end_of_stream=True
                                    )
                                )
                            )
                        )
                    )
                    if not self.inline:
                        return
            elif which == "request_body" and request.request_body.end_of_stream:
                yield self.body
                if not self.inline:
                    return
            elif which == "request_body":
                yield pb.ProcessingResponse(request_body=pb.BodyResponse())
            elif which == "response_headers":  # the inline response path
                yield RESPONSE_HEADERS
                if response_ended(request):
                    return
            elif which == "response_body":
                yield RESPONSE_BODY
                if response_ended(request):
                    return

    def _duplex_headers(self, length: int) -> pb.ProcessingResponse:
        common = pb.CommonResponse(clear_route_cache=True)
        for key, value in ((HEADER, self.endpoint), ("content-length", str(length))):
            common.header_mutation.set_headers.append(
                base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(key=key, raw_value=value.encode())
                )
            )
        return pb.ProcessingResponse(request_headers=pb.HeadersResponse(response=common))


async def serve(port: int, endpoint: str, inline: bool, stop: asyncio.Event) -> None:
    server = grpc.aio.server()
    pb_grpc.add_ExternalProcessorServicer_to_server(Floor(endpoint, inline=inline), server)
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        raise OSError(f"cannot listen on 127.0.0.1:{port}")
    await server.start()
    await stop.wait()
    await server.stop(1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.overhead.floor", description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--endpoint", required=True, help="host:port every request is routed to")
    p.add_argument(
        "--response-path",
        choices=["observer", "inline"],
        default="observer",
        help="the Envoy layout it serves (inline: the decision stream carries the response)",
    )
    args = p.parse_args(argv)
    inline = args.response_path == "inline"
    run(lambda stop: serve(args.port, args.endpoint, inline, stop))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

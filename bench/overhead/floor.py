"""A do-nothing ext_proc server: the floor any Python ext_proc pays behind the same Envoy config.

It answers exactly the messages the shim answers, with the smallest answers that still route:
the request headers continue, and at the end of the body it names one fixed endpoint (header
and ``envoy.lb`` metadata, as the shim does) without parsing the body or asking anyone. The
observer's messages are read and dropped; on the inline response path, responses continue. What the shim adds over this floor is Pointsman's own
work (parsing, the NATS pick, metrics, the response path); the floor itself is Envoy plus
Python gRPC.

    python -m bench.overhead.floor --port 9002 --endpoint 127.0.0.1:8000
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
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.headers, self.body = answers(endpoint)

    async def Process(
        self,
        request_iterator: AsyncIterator[pb.ProcessingRequest],
        context: grpc.aio.ServicerContext[pb.ProcessingRequest, pb.ProcessingResponse],
    ) -> AsyncIterator[pb.ProcessingResponse]:
        full_duplex = False
        body = bytearray()
        async for request in request_iterator:
            if request.observability_mode:
                continue
            which = request.WhichOneof("request")
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
            elif which == "request_body" and request.request_body.end_of_stream:
                yield self.body
            elif which == "request_body":
                yield pb.ProcessingResponse(request_body=pb.BodyResponse())
            elif which == "response_headers":  # the inline response path
                yield RESPONSE_HEADERS
            elif which == "response_body":
                yield RESPONSE_BODY

    def _duplex_headers(self, length: int) -> pb.ProcessingResponse:
        common = pb.CommonResponse(clear_route_cache=True)
        for key, value in ((HEADER, self.endpoint), ("content-length", str(length))):
            common.header_mutation.set_headers.append(
                base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(key=key, raw_value=value.encode())
                )
            )
        return pb.ProcessingResponse(request_headers=pb.HeadersResponse(response=common))


async def serve(port: int, endpoint: str, stop: asyncio.Event) -> None:
    server = grpc.aio.server()
    pb_grpc.add_ExternalProcessorServicer_to_server(Floor(endpoint), server)
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        raise OSError(f"cannot listen on 127.0.0.1:{port}")
    await server.start()
    await stop.wait()
    await server.stop(1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.overhead.floor", description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--endpoint", required=True, help="host:port every request is routed to")
    args = p.parse_args(argv)
    run(lambda stop: serve(args.port, args.endpoint, stop))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The gRPC servers: ext_proc for Envoy, and grpc.health.v1 on a port of its own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from pointsman_shim import envoy
from pointsman_shim.config import ExtProcTls
from pointsman_shim.handlers import Processor

SERVICE_NAME = "envoy.service.ext_proc.v3.ExternalProcessor"


class ExternalProcessor(external_processor_pb2_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(self, processor: Processor) -> None:
        self.processor = processor

    async def Process(
        self,
        request_iterator: AsyncIterator[envoy.ProcessingRequest],
        context: grpc.aio.ServicerContext[envoy.ProcessingRequest, envoy.ProcessingResponse],
    ) -> AsyncIterator[envoy.ProcessingResponse]:
        async for response in self.processor.process(request_iterator):
            yield response


def server_credentials(tls: ExtProcTls) -> grpc.ServerCredentials | None:
    """TLS (``cert_file``/``key_file``), mutual when ``client_ca_file`` names the clients' CA."""
    if not tls.cert_file:
        return None
    if not tls.key_file:
        raise ValueError("shim.tls: cert_file needs key_file")
    pair = (Path(tls.key_file).read_bytes(), Path(tls.cert_file).read_bytes())
    roots = Path(tls.client_ca_file).read_bytes() if tls.client_ca_file else None
    return grpc.ssl_server_credentials(
        [pair], root_certificates=roots, require_client_auth=roots is not None
    )


async def start_ext_proc(
    processor: Processor, listen: str, tls: ExtProcTls | None = None
) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        ]
    )
    external_processor_pb2_grpc.add_ExternalProcessorServicer_to_server(
        ExternalProcessor(processor), server
    )
    credentials = server_credentials(tls or ExtProcTls())
    if credentials is None:
        port = server.add_insecure_port(listen)
    else:
        port = server.add_secure_port(listen, credentials)
    if port == 0:
        raise OSError(f"cannot listen for ext_proc on {listen}")
    await server.start()
    return server, port


class Health:
    """grpc.health.v1: ``""`` and the ext_proc service name report the shim's readiness."""

    def __init__(self) -> None:
        self.servicer = HealthServicer()
        self.server: grpc.aio.Server | None = None

    async def start(self, listen: str) -> int:
        self.server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, self.server)
        port = self.server.add_insecure_port(listen)
        if port == 0:
            raise OSError(f"cannot listen for gRPC health on {listen}")
        await self.server.start()
        await self.set(False)
        return port

    async def set(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            await self.servicer.set(name, status)

    async def stop(self) -> None:
        if self.server is not None:
            await self.servicer.enter_graceful_shutdown()
            await self.server.stop(1)

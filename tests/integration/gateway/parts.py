"""Pointsman's services and other routing parts as processes for the gateway-shape tests: a
service from a config dict, vllm-router over given workers, and a minimal round-robin endpoint
picker (the endpoint-picker protocol, written for the tests) standing in for another vendor's."""

from __future__ import annotations

import contextlib
import itertools
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from google.protobuf import struct_pb2

from tests.helpers import procs

READY = 60.0
MODULES = {
    "shim": "pointsman_shim",
    "picker": "pointsman_picker",
    "collector": "pointsman_collector",
    "classifier": "pointsman_classifier",
}


@contextlib.contextmanager
def service(
    kind: str,
    config: dict[str, Any],
    http_port: int,
    *,
    name: str | None = None,
    timeout: float = READY,
) -> Iterator[procs.Proc]:
    """``python -m pointsman_<kind> --config`` with ``config`` until ``/readyz`` answers 200."""
    workdir = Path(tempfile.mkdtemp(prefix=f"pointsman-{name or kind}-"))
    path = workdir / "pointsman.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    argv = [sys.executable, "-m", MODULES[kind], "--config", str(path)]
    env = {"NATS_URL": config["nats"]["url"]}
    proc = procs.spawn(name or kind, argv, env=env, log_dir=workdir)
    try:
        url = f"http://127.0.0.1:{http_port}/readyz"
        procs.wait_until(lambda: procs.http_ok(url), timeout, name or kind, proc)
        yield proc
    finally:
        proc.stop()


def shim_config(nats_url: str, **shim: Any) -> tuple[dict[str, Any], int, int]:
    """A shim section on free ports: (config, ext_proc port, http port)."""
    grpc_port, http_port = procs.free_port(), procs.free_port()
    section = {
        "listen": f"127.0.0.1:{grpc_port}",
        "health_listen": f"127.0.0.1:{procs.free_port()}",
        "http_port": http_port,
        "pick_timeout_ms": 500,
        "responses": {"redis_url": ""},
        **shim,
    }
    return {"nats": {"url": nats_url}, "shim": section}, grpc_port, http_port


@contextlib.contextmanager
def pointsman_picking(
    nats_url: str, pools: dict[str, list[str]], **picker: Any
) -> Iterator[tuple[int, int]]:
    """Pointsman as an endpoint picker: collector + picker + a shim in ``picker`` mode.
    Yields (the shim's ext_proc port, the picker's http port)."""
    collector_port, picker_port = procs.free_port(), procs.free_port()
    base: dict[str, Any] = {"nats": {"url": nats_url}, "pools": pools}
    shim, grpc_port, shim_http = shim_config(nats_url, mode="picker")
    collector = {
        **base,
        "collector": {"http_port": collector_port, "interval_ms": 50, "latest": {"enabled": False}},
    }
    with (
        service("collector", collector, collector_port),
        service("picker", {**base, "picker": {"http_port": picker_port, **picker}}, picker_port),
        service("shim", {**base, **shim}, shim_http, name="pool-picker"),
    ):
        yield grpc_port, picker_port


@contextlib.contextmanager
def vllm_router(workers: list[str], policy: str = "round_robin") -> Iterator[str]:
    """vllm-router (the production stack's router) over ``workers``; yields its ``host:port``."""
    exe = shutil.which("vllm-router") or str(Path(sys.executable).parent / "vllm-router")
    port = procs.free_port()
    argv = [
        exe, "--host", "127.0.0.1", "--port", str(port), "--policy", policy,
        "--worker-urls", *[f"http://{w}" for w in workers], "--log-level", "warning",
        "--prometheus-port", str(procs.free_port()), "--disable-retries",
    ]  # fmt: skip
    proc = procs.spawn(f"vllm-router-{port}", argv)
    try:
        procs.wait_until(
            lambda: procs.http_ok(f"http://127.0.0.1:{port}/health"), READY, "vllm-router", proc
        )
        yield f"127.0.0.1:{port}"
    finally:
        proc.stop()


# -- a minimal endpoint picker: round robin, the endpoint-picker protocol ---------------------------


class RoundRobinPicker(pb_grpc.ExternalProcessorServicer):
    """Picks the next endpoint of its pool for every request, as the endpoint-picker protocol
    says: header and ``envoy.lb`` metadata ``x-gateway-destination-endpoint``, on the answer to
    the end of the body (``BUFFERED``: the headers are answered at once). Knows nothing of
    Pointsman; :attr:`picks` records what it chose."""

    def __init__(self, endpoints: list[str]) -> None:
        self.endpoints = endpoints
        self._next = itertools.cycle(endpoints)
        self._lock = threading.Lock()
        self.picks: list[str] = []

    def Process(
        self, request_iterator: Iterator[pb.ProcessingRequest], context: Any
    ) -> Iterator[pb.ProcessingResponse]:
        for request in request_iterator:
            which = request.WhichOneof("request")
            if which == "request_headers":
                yield pb.ProcessingResponse(request_headers=pb.HeadersResponse())
            elif which == "request_body" and request.request_body.end_of_stream:
                yield self._decide()
            elif which == "request_body":
                yield pb.ProcessingResponse(request_body=pb.BodyResponse())
            elif which == "request_trailers":
                yield pb.ProcessingResponse(request_trailers=pb.TrailersResponse())

    def _decide(self) -> pb.ProcessingResponse:
        with self._lock:
            pick = next(self._next)
            self.picks.append(pick)
        common = pb.CommonResponse()
        common.header_mutation.set_headers.append(
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(
                    key="x-gateway-destination-endpoint", raw_value=pick.encode()
                ),
                append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
            )
        )
        metadata = struct_pb2.Struct()
        metadata.update({"envoy.lb": {"x-gateway-destination-endpoint": pick}})
        return pb.ProcessingResponse(
            request_body=pb.BodyResponse(response=common), dynamic_metadata=metadata
        )


@contextlib.contextmanager
def round_robin_picker(endpoints: list[str]) -> Iterator[tuple[int, RoundRobinPicker]]:
    """The round-robin picker as a real gRPC server in this process: (port, servicer)."""
    servicer = RoundRobinPicker(endpoints)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_ExternalProcessorServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port, servicer
    finally:
        server.stop(None)

"""The gateway as Pointsman renders it, tested from the outside: a real Envoy started from
:func:`pointsman.stack.envoy.render`, real simulated vLLM replicas (one process each, so one can be
SIGKILLed), the real shim on a nats-server of this package's own, and for picked routes a small
ext_proc that names whatever endpoints a test asks for (a compromised shim or bus, as far as Envoy
can tell). Listeners that record every connection stand in for addresses outside the fleet.

Each Envoy gets a JSON access log (test instrumentation only) so a test can read what Envoy did
with one request: the endpoints the ext_proc named, where it went, how many attempts it took.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import socketserver
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from google.protobuf import struct_pb2

from bench.common.envoy_stats import counters
from pointsman.stack.envoy import EnvoyOptions, render
from pointsman.stack.gateway import GatewayConfig
from tests.helpers import procs

#: Fast simulators: every simulated duration x0.02.
SIM_ARGS = ["--time-scale", "0.02", "--max-num-seqs", "8"]
#: Health checks fast enough for a test to wait on them.
FAST_CHECKS: dict[str, Any] = {"health_check": {"interval_ms": 300, "timeout_ms": 1000}}
#: The shim's (and so Envoy's) body limit in these tests: small, so 413s cost little to send.
MAX_BODY = 64 * 1024
READY = 60.0


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 4,
        **extra,
    }


def openai_error(body: bytes) -> dict[str, Any]:
    """The ``error`` object of an OpenAI-style error body; fails the test on anything else."""
    data = json.loads(body)
    assert set(data) == {"error"}, data
    error = data["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and isinstance(error["type"], str), error
    return dict(error)


# -- simulated replicas ---------------------------------------------------------------------------


@dataclass
class Replica:
    endpoint: str
    proc: procs.Proc

    def kill(self) -> None:
        """SIGKILL, no goodbye: the port refuses connections from now on."""
        self.proc.popen.kill()
        self.proc.popen.wait(10)


def start_replica(model: str) -> Replica:
    port = procs.free_port()
    argv = [sys.executable, "-m", "pointsman.sim", "--host", "127.0.0.1", "--port", str(port)]
    proc = procs.spawn(f"sim-{model}-{port}", [*argv, "--model", model, *SIM_ARGS])
    try:
        procs.wait_until(
            lambda: procs.http_ok(f"http://127.0.0.1:{port}/health"), READY, "simulator", proc
        )
    except BaseException:
        proc.stop()
        raise
    return Replica(f"127.0.0.1:{port}", proc)


@contextlib.contextmanager
def replicas(model: str, count: int) -> Iterator[list[Replica]]:
    started: list[Replica] = []
    try:
        for _ in range(count):
            started.append(start_replica(model))
        yield started
    finally:
        for r in started:
            r.proc.stop()


# -- listeners that record ------------------------------------------------------------------------


class Listener:
    """A real TCP listener on a free loopback port that records what reaches it.

    ``answer``: 200 JSON to every request. ``drop``: 200 to ``GET /health`` (so Envoy's health
    check passes), every other request is read and the connection closed without an answer.
    ``silent``: accepts and never answers (an ext_proc server that hangs).
    """

    def __init__(self, mode: str = "answer") -> None:
        self.mode = mode
        self.connections = 0
        self.requests: list[str] = []
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with outer._lock:
                    outer.connections += 1
                    outer._open.append(self.request)
                outer._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            block_on_close = False

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self.endpoint = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(30)
        if self.mode == "silent":
            with contextlib.suppress(OSError):
                while sock.recv(65536):
                    pass
            return
        buffer = b""
        with contextlib.suppress(OSError):
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = sock.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                length = next(
                    (int(v) for k, _, v in (x.partition(":") for x in lines[1:])
                     if k.strip().lower() == "content-length"),
                    0,
                )  # fmt: skip
                while len(buffer) < length:
                    chunk = sock.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                buffer = buffer[length:]
                with self._lock:
                    self.requests.append(lines[0])
                health = lines[0].startswith("GET /health ")
                if self.mode == "drop" and not health:
                    return  # closes the connection: a reset before any response byte
                body = b'{"listener": true}'
                sock.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(body)}\r\n\r\n".encode()
                    + body
                )

    def close(self) -> None:
        """Stop listening and drop every open connection (a peer sees its process gone)."""
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def listener(mode: str = "answer") -> Iterator[Listener]:
    server = Listener(mode)
    try:
        yield server
    finally:
        server.close()


# -- an ext_proc that picks what the test says -----------------------------------------------------


class _Picking(pb_grpc.ExternalProcessorServicer):
    """Sets ``x-selected-model`` from the request's ``x-test-model`` and the picked endpoints from
    ``x-test-pick`` (header and ``envoy.lb`` metadata, as the shim does), on the headers response.
    Observer streams (``observability_mode``) are read and never answered."""

    def Process(
        self, request_iterator: Iterator[pb.ProcessingRequest], context: Any
    ) -> Iterator[pb.ProcessingResponse]:
        for request in request_iterator:
            if request.observability_mode:
                continue
            which = request.WhichOneof("request")
            if which == "request_headers":
                headers = {
                    h.key: (h.raw_value.decode() if h.raw_value else h.value)
                    for h in request.request_headers.headers.headers
                }
                common = pb.CommonResponse(clear_route_cache=True)
                out = pb.ProcessingResponse(request_headers=pb.HeadersResponse(response=common))
                sets = {"x-selected-model": headers.get("x-test-model", "")}
                pick = headers.get("x-test-pick")
                if pick:
                    sets["x-gateway-destination-endpoint"] = pick
                    metadata = struct_pb2.Struct()
                    metadata.update({"envoy.lb": {"x-gateway-destination-endpoint": pick}})
                    out.dynamic_metadata.CopyFrom(metadata)
                out.request_headers.response.header_mutation.set_headers.extend(
                    base_pb2.HeaderValueOption(
                        header=base_pb2.HeaderValue(key=k, raw_value=v.encode()),
                        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
                    )
                    for k, v in sets.items()
                    if v
                )
                yield out
            elif which == "request_body":
                yield pb.ProcessingResponse(request_body=pb.BodyResponse())
            elif which == "request_trailers":
                yield pb.ProcessingResponse(request_trailers=pb.TrailersResponse())
            elif which == "response_headers":
                yield pb.ProcessingResponse(response_headers=pb.HeadersResponse())
            elif which == "response_body":
                yield pb.ProcessingResponse(response_body=pb.BodyResponse())


@pytest.fixture(scope="package")
def picking_extproc() -> Iterator[int]:
    """The picking ext_proc's port (a real gRPC server in this process)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    pb_grpc.add_ExternalProcessorServicer_to_server(_Picking(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(None)


# -- the real shim on its own nats-server, no picker (fail-open) ------------------------------------


@dataclass
class Shim:
    port: int
    http_port: int
    nats_url: str
    proc: procs.Proc


@pytest.fixture(scope="package")
def shim() -> Iterator[Shim]:
    with procs.nats_server() as nats_url:
        workdir = Path(tempfile.mkdtemp(prefix="pointsman-gateway-shim-"))
        port, health, http_port = procs.free_port(), procs.free_port(), procs.free_port()
        config = {
            "nats": {"url": nats_url},
            "shim": {
                "listen": f"127.0.0.1:{port}",
                "health_listen": f"127.0.0.1:{health}",
                "http_port": http_port,
                "default_model": "alpha",
                "failure_mode": "fail-open",
                "pick_timeout_ms": 300,
                "max_body_bytes": MAX_BODY,
            },
        }
        path = workdir / "pointsman.yaml"
        path.write_text(yaml.safe_dump(config))
        argv = [sys.executable, "-m", "pointsman_shim", "--config", str(path)]
        proc = procs.spawn("shim", argv, env={"NATS_URL": nats_url}, log_dir=workdir)
        try:
            procs.wait_until(
                lambda: procs.http_ok(f"http://127.0.0.1:{http_port}/readyz"), READY, "shim", proc
            )
            yield Shim(port, http_port, nats_url, proc)
        finally:
            proc.stop()


# -- Envoy ----------------------------------------------------------------------------------------


@dataclass
class Envoy:
    url: str
    admin: str
    proc: procs.Proc
    access_log: Path
    pools: dict[str, list[str]] = field(default_factory=dict)

    def cluster(self, model: str) -> str:
        """The Envoy cluster of a pool (the renderer numbers them in name order)."""
        return f"pool_{sorted(self.pools).index(model)}"

    def stats(self) -> dict[str, int]:
        return counters(self.admin)

    def stat(self, name: str) -> int:
        return self.stats().get(name, 0)

    def upstream_requests(self) -> int:
        """Requests Envoy sent to any pool's endpoints (health checks are not requests)."""
        return sum(
            v
            for k, v in self.stats().items()
            if k.startswith("cluster.pool_") and k.endswith(".upstream_rq_total")
        )

    def health(self, model: str) -> dict[str, str]:
        """Endpoint -> Envoy's health flags for a pool (``healthy``, ``/failed_active_hc``...)."""
        with urllib.request.urlopen(f"{self.admin}/clusters", timeout=5) as r:
            lines = r.read().decode().splitlines()
        prefix = f"{self.cluster(model)}::"
        out = {}
        for line in lines:
            if line.startswith(prefix) and "::health_flags::" in line:
                _, endpoint, _, flags = line.split("::")
                out[endpoint] = flags
        return out

    def logged(self, request_id: str, timeout: float = 30.0) -> dict[str, Any]:
        """This request's access log entry (Envoy writes the log every 100 ms)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.access_log.exists():
                for line in self.access_log.read_text().splitlines():
                    entry = json.loads(line)
                    if entry.get("request_id") == request_id:
                        return dict(entry)
            assert time.monotonic() < deadline, f"no access log entry for {request_id}"
            time.sleep(0.05)


ACCESS_LOG_FORMAT = {
    "request_id": "%REQ(x-request-id)%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(:PATH)%",
    "status": "%RESPONSE_CODE%",
    "flags": "%RESPONSE_FLAGS%",
    "picked": "%REQ(x-gateway-destination-endpoint)%",
    "model": "%REQ(x-selected-model)%",
    "upstream": "%UPSTREAM_HOST%",
    "served": "%DYNAMIC_METADATA(envoy.lb:x-gateway-destination-endpoint-served)%",
    "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
    "tried": "%UPSTREAM_HOSTS_ATTEMPTED%",
    "failure": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
}


@contextlib.contextmanager
def envoy(
    pools: dict[str, list[str]],
    shim_port: int,
    *,
    gateway: dict[str, Any] | None = None,
    adjust: Callable[[dict[str, Any]], None] | None = None,
    **options: Any,
) -> Iterator[Envoy]:
    """Envoy with Pointsman's rendered config for ``pools``, its ext_proc at ``shim_port``;
    ``adjust`` edits the rendered config first (for a setting the renderer does not offer)."""
    workdir = Path(tempfile.mkdtemp(prefix="pointsman-gateway-envoy-"))
    port, admin = procs.free_port(), procs.free_port()
    opts = EnvoyOptions(
        listen_port=port,
        admin_port=admin,
        shim_host="127.0.0.1",
        shim_port=shim_port,
        pools=pools,
        default_pool=options.pop("default_pool", "alpha" if "alpha" in pools else None),
        max_body_bytes=MAX_BODY,
        gateway=GatewayConfig.model_validate(gateway if gateway is not None else FAST_CHECKS),
        **options,
    )
    config = render(opts)
    if adjust is not None:
        adjust(config)
    access_log = workdir / "access.log"
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    hcm["typed_config"]["access_log"] = [
        {
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": str(access_log),
                "log_format": {"json_format": ACCESS_LOG_FORMAT},
            },
        }
    ]
    path = workdir / "envoy.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    argv = [
        procs.binary("envoy"), "-c", str(path), "--disable-hot-restart", "--log-level", "warning",
        "--concurrency", "1", "--file-flush-interval-msec", "100",
    ]  # fmt: skip
    proc = procs.spawn("envoy", argv, log_dir=workdir)
    try:
        procs.wait_until(
            lambda: procs.http_ok(f"http://127.0.0.1:{admin}/ready"), READY, "envoy", proc
        )
        yield Envoy(
            f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}", proc, access_log, pools
        )
    finally:
        proc.stop()


def wait_health(gw: Envoy, model: str, endpoint: str, healthy: bool) -> None:
    """Until Envoy's health check has marked ``endpoint`` (un)healthy."""

    def done() -> bool:
        flags = gw.health(model).get(endpoint, "")
        return (flags == "healthy") is healthy

    procs.wait_until(done, READY, f"health check of {endpoint} -> healthy={healthy}")


def dead_endpoint() -> str:
    """A loopback address nothing listens on (connections are refused)."""
    return f"127.0.0.1:{procs.free_port()}"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def send(
    url: str,
    method: str,
    path: str,
    body: bytes | dict[str, Any] | None = None,
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
) -> Reply:
    """One request with the path exactly as given (no client-side normalisation of ``..``,
    ``//`` or ``%2F``), on a connection of its own."""
    host, _, port = url.removeprefix("http://").partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        conn.putrequest(method, path, skip_accept_encoding=True)
        items = headers.items() if isinstance(headers, dict) else (headers or [])
        names = {k.lower() for k, _ in items}
        for k, v in items:
            conn.putheader(k, v)
        if body is not None:
            if "content-type" not in names:
                conn.putheader("content-type", "application/json")
            conn.putheader("content-length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        data = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    finally:
        conn.close()

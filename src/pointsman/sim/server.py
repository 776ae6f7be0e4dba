"""The HTTP face of a simulated replica (aiohttp): OpenAI routes, /health, /metrics.

Several replicas share one process and one event loop, each with its own engine and port,
so a benchmark can run a fleet of 8+ replicas on two cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import msgspec
from aiohttp import web

from pointsman.sim.config import SimConfig
from pointsman.sim.engine import Engine, wait_news
from pointsman.sim.openai import DONE, ApiError, ChunkWriter, Parsed, full_response, parse
from pointsman.sim.scheduler import ABORTED, FINISHED, Seq
from pointsman.sim.tokens import block_hashes, block_hashes_of_ids, filler

log = logging.getLogger("pointsman.sim")

_JSON = "application/json"
_METRICS_TYPE = "text/plain; version=1.0.0; charset=utf-8"


class Replica:
    """One simulated vLLM server: an engine and the aiohttp app in front of it."""

    def __init__(self, config: SimConfig, index: int = 0) -> None:
        self.cfg = config
        self.engine = Engine(config)
        self.endpoint = f"{config.host}:{config.port}"
        self._wildcard = config.host in ("0.0.0.0", "::", "")
        self._runner: web.AppRunner | None = None
        rng = random.Random(config.seed * 1_000_003 + index)
        self._id_prefix = f"{rng.getrandbits(32):08x}"
        self._next_id = 0
        self.started = int(time.time())

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> str:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/ping", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/version", self._version)
        app.router.add_post("/reset_prefix_cache", self._reset_prefix_cache)
        app.on_response_prepare.append(self._stamp)
        # handler_cancellation: a client that hangs up aborts its request, as in vLLM
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, handler_cancellation=True
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.cfg.host, self.cfg.port, reuse_address=True)
        await site.start()
        server: Any = site._server
        if self.cfg.port == 0 and server is not None and getattr(server, "sockets", None):
            port = int(server.sockets[0].getsockname()[1])
            self.cfg = replace(self.cfg, port=port)
            self.endpoint = f"{self.cfg.host}:{port}"
        self.engine.start()
        return self.endpoint

    async def close(self) -> None:
        await self.engine.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _stamp(self, request: web.Request, response: web.StreamResponse) -> None:
        endpoint = self.endpoint
        if self._wildcard and request.transport is not None:
            # bound to every address: name the one this connection came in on (the pod IP)
            sock = request.transport.get_extra_info("sockname")
            if sock:
                host = sock[0]
                endpoint = f"[{host}]:{sock[1]}" if ":" in host else f"{host}:{sock[1]}"
        response.headers["x-sim-endpoint"] = endpoint

    # -- OpenAI routes ---------------------------------------------------------------------
    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        cfg = self.cfg
        try:
            p = parse(await request.read(), chat, cfg)
        except ApiError as err:
            return web.Response(status=err.status, body=err.body(), content_type=_JSON)
        sched = self.engine.sched
        if not sched.fits(p.prompt_len, p.max_out):
            too_big = ApiError(
                400,
                f"request needs {p.prompt_len + p.max_out} tokens of KV cache; "
                f"this replica holds {cfg.num_gpu_blocks * cfg.block_size}",
            )
            return web.Response(status=400, body=too_big.body(), content_type=_JSON)
        self._next_id += 1
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{self._id_prefix}{self._next_id:08x}"
        lora = p.model if p.model != cfg.model else None
        if not cfg.enable_prefix_caching:
            hashes: list[int] = []
        elif p.ids is not None:
            hashes = block_hashes_of_ids(p.ids, cfg.block_size, lora)
        else:
            hashes = block_hashes(p.text, cfg.block_size, cfg.chars_per_token, lora)
        seq = Seq(
            rid,
            p.prompt_len,
            p.max_out,
            hashes,
            lora=lora,
            finish_reason=p.finish_reason,
            stream=p.stream,
        )
        created = int(time.time())
        engine = self.engine
        engine.submit(seq)
        try:
            if not p.stream:
                while seq.status != FINISHED:
                    if seq.status == ABORTED:
                        gone = ApiError(503, "the server is shutting down", "ServiceUnavailable")
                        return web.Response(status=503, body=gone.body(), content_type=_JSON)
                    await wait_news(seq)
                body = full_response(
                    p,
                    rid,
                    created,
                    filler(0, seq.out),
                    seq.out,
                    seq.cached_tokens,
                    seq.finish_reason,
                )
                return web.Response(body=body, content_type=_JSON)
            return await self._stream(request, p, seq, rid, created)
        finally:
            engine.abort(seq)  # no-op once finished; frees the KV of a client that went away

    async def _stream(
        self, request: web.Request, p: Parsed, seq: Seq, rid: str, created: int
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
            }
        )
        await resp.prepare(request)
        w = ChunkWriter(p, rid, created)
        # headers go out now; the role chunk only with the first token, as vLLM sends it, so
        # a client timing the first body byte measures the time to first token
        pending = [w.role()] if p.chat else []
        sent = 0
        while True:
            if seq.out == sent and seq.status != FINISHED:
                if seq.status == ABORTED:
                    break
                await wait_news(seq)
                continue
            out = seq.out
            if seq.status == FINISHED:  # its last tokens and the finish reason in one chunk
                pending.append(w.content(filler(sent, out - sent), seq.finish_reason))
                if p.include_usage:
                    pending.append(w.usage(out, seq.cached_tokens))
                pending.append(DONE)
                await resp.write(b"".join(pending))
                break
            pending.append(w.content(filler(sent, out - sent)))
            sent = out
            await resp.write(b"".join(pending))
            pending.clear()
        await resp.write_eof()
        return resp

    async def _models(self, request: web.Request) -> web.Response:
        cfg = self.cfg
        data = [
            {
                "id": cfg.model,
                "object": "model",
                "created": self.started,
                "owned_by": "vllm",
                "root": cfg.model,
                "parent": None,
                "max_model_len": cfg.max_model_len,
            }
        ]
        for name in cfg.lora_adapters:
            data.append(
                {
                    "id": name,
                    "object": "model",
                    "created": self.started,
                    "owned_by": "vllm",
                    "root": name,
                    "parent": cfg.model,
                    "max_model_len": cfg.max_model_len,
                }
            )
        return web.Response(
            body=msgspec.json.encode({"object": "list", "data": data}), content_type=_JSON
        )

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response()

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": "0.0.0+pointsman-sim"})

    async def _metrics(self, request: web.Request) -> web.Response:
        text = self.engine.metrics.render(self.engine.sched)
        # the content type vLLM 0.32 sends (tests/fixtures/vllm-0.32)
        return web.Response(body=text.encode(), headers={"Content-Type": _METRICS_TYPE})

    async def _reset_prefix_cache(self, request: web.Request) -> web.Response:
        self.engine.sched.kv.reset_prefix_cache()
        return web.Response()


@dataclass
class SimServers:
    """Running replicas; ``addresses`` are ``host:port`` in start order."""

    replicas: list[Replica] = field(default_factory=list)

    @property
    def addresses(self) -> list[str]:
        return [r.endpoint for r in self.replicas]

    async def close(self) -> None:
        for r in self.replicas:
            await r.close()

    async def __aenter__(self) -> SimServers:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def start_servers(
    config: SimConfig, count: int = 1, models: Sequence[str] | None = None
) -> SimServers:
    """Start ``count`` replicas of each model in ``models`` (default: ``config.model``) in the
    running event loop, on consecutive ports from ``config.port`` (model by model; port 0: each
    gets a free port from the OS). Each replica has its own engine and KV cache."""
    names = list(models) if models else [config.model]
    servers = SimServers()
    try:
        i = 0
        for model in names:
            for _ in range(count):
                port = 0 if config.port == 0 else config.port + i
                cfg = replace(config, model=model, port=port, seed=config.seed + i)
                cfg.validate()
                replica = Replica(cfg, i)
                await replica.start()
                servers.replicas.append(replica)
                i += 1
    except BaseException:
        await servers.close()
        raise
    return servers


async def serve_until(
    config: SimConfig,
    count: int,
    stop: asyncio.Event,
    models: Sequence[str] | None = None,
) -> None:
    servers = await start_servers(config, count, models)
    try:
        for r in servers.replicas:
            loras = f" + LoRA {','.join(r.cfg.lora_adapters)}" if r.cfg.lora_adapters else ""
            log.info(
                "simulated vLLM replica on http://%s serving %s%s", r.endpoint, r.cfg.model, loras
            )
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await servers.close()

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import msgspec
from aiohttp import web

from pointsman.sim.anthropic import MessageWriter, count_tokens_body, parse_messages
from pointsman.sim.config import SimConfig
from pointsman.sim.engine import Engine, wait_news
from pointsman.sim.openai import ApiError, ChunkWriter, Parsed, parse
from pointsman.sim.render import (
    SCALE_OUT_DISABLED,
    detokenize_body,
    render_chat_body,
    render_completions_body,
    render_parsed_body,
    tokenize_body,
)
from pointsman.sim.responses import (
    ResponseStore,
    ResponseWriter,
    Stored,
    cannot_cancel,
    not_found,
    parse_responses,
)
from pointsman.sim.scheduler import ABORTED, FINISHED, Seq
from pointsman.sim.tokens import Detokenizer, block_hashes, block_hashes_of_ids, filler

log = logging.getLogger("pointsman.sim")

_JSON = "application/json"
_METRICS_TYPE = "text/plain; version=1.0.0; charset=utf-8"


class Writer(Protocol):
    """One API's answer to a generation: whole (``full``) or as a stream, whose pieces the
    server writes as the engine produces tokens: ``opening`` with the headers, ``first``
    before the first tokens, ``delta`` per engine step, ``closing`` with the last tokens."""

    def full(self, text: str, completion: int, cached: int, finish_reason: str) -> bytes: ...
    def opening(self) -> bytes: ...
    def first(self) -> bytes: ...
    def delta(self, text: str) -> bytes: ...
    def closing(self, tail: str, completion: int, cached: int, finish_reason: str) -> bytes: ...


def _error(err: ApiError, anthropic: bool = False) -> web.Response:
    body = err.anthropic_body() if anthropic else err.body()
    return web.Response(status=err.status, body=body, content_type=_JSON)


def _answer(
    build: Callable[[bytes, SimConfig, Any], bytes], body: bytes, cfg: SimConfig, extra: Any
) -> web.Response:
    """A cheap JSON answer computed in the handler, or its error."""
    try:
        return web.Response(body=build(body, cfg, extra), content_type=_JSON)
    except ApiError as err:
        return _error(err)


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
        self.store = ResponseStore(config.responses_store_size) if config.responses_store else None
        self.detok = Detokenizer()

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
        self._add_api_routes(app)
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

    def _add_api_routes(self, app: web.Application) -> None:
        """Responses, tokenize and render as vLLM 0.32 serves them; Messages with --anthropic;
        the render paths with --enable-scale-out (vLLM answers 403 on them without it)."""
        cfg, r = self.cfg, app.router
        r.add_post("/v1/responses", self._responses)
        r.add_get("/v1/responses/{rid}", self._get_response)
        r.add_delete("/v1/responses/{rid}", self._method_not_allowed)  # vLLM 0.32 has no DELETE
        r.add_post("/v1/responses/{rid}/cancel", self._cancel_response)
        r.add_post("/tokenize", self._tokenize)
        r.add_post("/detokenize", self._detokenize)
        render = {
            "/v1/chat/completions/render": self._render_chat,
            "/v1/completions/render": self._render_completions,
            "/v1/responses/render": self._render_responses,
        }
        if cfg.anthropic:
            r.add_post("/v1/messages", self._messages)
            r.add_post("/v1/messages/count_tokens", self._count_tokens)
            render["/v1/messages/render"] = self._render_messages
        else:
            for path in ("/v1/messages", "/v1/messages/count_tokens", "/v1/messages/render"):
                r.add_post(path, self._not_found)
        for path, handler in render.items():
            r.add_post(path, handler if cfg.enable_scale_out else self._scale_out_disabled)

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

    # -- generation: chat, completions, responses, messages ------------------------------
    def _new_id(self, prefix: str) -> str:
        self._next_id += 1
        return f"{prefix}{self._id_prefix}{self._next_id:08x}"

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        try:
            p = parse(await request.read(), chat, self.cfg)
        except ApiError as err:
            return _error(err)
        rid = self._new_id("chatcmpl-" if chat else "cmpl-")
        return await self._run(request, p, ChunkWriter(p, rid, int(time.time())), rid)

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        try:
            req = parse_responses(await request.read(), self.cfg, self.store)
        except ApiError as err:
            return _error(err)
        rid = self._new_id("resp_")
        writer = ResponseWriter(req, rid, int(time.time()))
        answer = await self._run(request, req.parsed, writer, rid)
        if req.store and self.store is not None and writer.final is not None:
            self.store.put(rid, Stored(writer.final, req.messages))
        return answer

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        try:
            req = parse_messages(await request.read(), self.cfg)
        except ApiError as err:
            return _error(err, anthropic=True)
        rid = self._new_id("chatcmpl-")
        writer = MessageWriter(req, rid, int(time.time()))
        return await self._run(request, req.parsed, writer, rid, anthropic=True)

    async def _run(
        self, request: web.Request, p: Parsed, w: Writer, rid: str, anthropic: bool = False
    ) -> web.StreamResponse:
        """Schedule one generation on the engine and answer it, whole or streamed."""
        cfg = self.cfg
        if not self.engine.sched.fits(p.prompt_len, p.max_out):
            too_big = ApiError(
                400,
                f"request needs {p.prompt_len + p.max_out} tokens of KV cache; "
                f"this replica holds {cfg.num_gpu_blocks * cfg.block_size}",
            )
            return _error(too_big, anthropic)
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
        engine = self.engine
        engine.submit(seq)
        try:
            if not p.stream:
                while seq.status != FINISHED:
                    if seq.status == ABORTED:
                        gone = ApiError(503, "the server is shutting down", "ServiceUnavailable")
                        return _error(gone, anthropic)
                    await wait_news(seq)
                body = w.full(filler(0, seq.out), seq.out, seq.cached_tokens, seq.finish_reason)
                return web.Response(body=body, content_type=_JSON)
            return await self._stream(request, seq, w)
        finally:
            engine.abort(seq)  # no-op once finished; frees the KV of a client that went away

    async def _stream(self, request: web.Request, seq: Seq, w: Writer) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
            }
        )
        await resp.prepare(request)
        # headers go out now, with the events vLLM sends before generating (Responses:
        # response.created, response.in_progress); the opening of the answer (chat's role
        # chunk) only with the first token, as vLLM sends it, so a client timing the first
        # content byte measures the time to first token
        opening = w.opening()
        if opening:
            await resp.write(opening)
        pending = [w.first()]
        sent = 0
        while True:
            if seq.out == sent and seq.status != FINISHED:
                if seq.status == ABORTED:
                    break
                await wait_news(seq)
                continue
            out = seq.out
            if seq.status == FINISHED:  # its last tokens and the end in one write
                tail = filler(sent, out - sent)
                pending.append(w.closing(tail, out, seq.cached_tokens, seq.finish_reason))
                await resp.write(b"".join(pending))
                break
            pending.append(w.delta(filler(sent, out - sent)))
            sent = out
            await resp.write(b"".join(pending))
            pending.clear()
        await resp.write_eof()
        return resp

    # -- stored responses ------------------------------------------------------------------
    async def _get_response(self, request: web.Request) -> web.Response:
        rid = request.match_info["rid"]
        kept = self.store.get(rid) if self.store is not None else None
        if kept is None:
            return _error(not_found(rid))
        return web.Response(body=msgspec.json.encode(kept.response), content_type=_JSON)

    async def _cancel_response(self, request: web.Request) -> web.Response:
        rid = request.match_info["rid"]
        kept = self.store.get(rid) if self.store is not None else None
        return _error(not_found(rid) if kept is None else cannot_cancel())

    # -- cheap CPU calls: tokenize, render, count ------------------------------------------
    async def _tokenize(self, request: web.Request) -> web.Response:
        return _answer(tokenize_body, await request.read(), self.cfg, self.detok)

    async def _detokenize(self, request: web.Request) -> web.Response:
        return _answer(detokenize_body, await request.read(), self.cfg, self.detok)

    async def _count_tokens(self, request: web.Request) -> web.Response:
        try:
            body = count_tokens_body(await request.read(), self.cfg)
        except ApiError as err:
            return _error(err, anthropic=True)
        return web.Response(body=body, content_type=_JSON)

    async def _render_chat(self, request: web.Request) -> web.Response:
        return _answer(render_chat_body, await request.read(), self.cfg, self._new_id("chatcmpl-"))

    async def _render_completions(self, request: web.Request) -> web.Response:
        return _answer(
            render_completions_body, await request.read(), self.cfg, self._new_id("cmpl-")
        )

    async def _render_responses(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            req = parse_responses(body, self.cfg, self.store)
            rid = self._new_id("resp_")
            out = render_parsed_body(body, req.parsed, "max_output_tokens", rid, self.cfg, True)
        except ApiError as err:
            return _error(err)
        return web.Response(body=out, content_type=_JSON)

    async def _render_messages(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            req = parse_messages(body, self.cfg)
            rid = self._new_id("chatcmpl-")
            out = render_parsed_body(body, req.parsed, "max_tokens", rid, self.cfg)
        except ApiError as err:
            return _error(err)
        return web.Response(body=out, content_type=_JSON)

    # -- what a real server answers on paths it does not serve -----------------------------
    async def _scale_out_disabled(self, request: web.Request) -> web.Response:
        return _error(SCALE_OUT_DISABLED)

    async def _not_found(self, request: web.Request) -> web.Response:
        return web.Response(status=404, body=b'{"detail":"Not Found"}', content_type=_JSON)

    async def _method_not_allowed(self, request: web.Request) -> web.Response:
        return web.Response(
            status=405,
            body=b'{"detail":"Method Not Allowed"}',
            content_type=_JSON,
            headers={"Allow": "GET"},
        )

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

"""Wire the classifier: ops server, models, batcher, then the bus handlers (FastStream).

The ops server answers first (alive, not ready); the models load; then the replica joins the
classify queue group and waits for NATS if it is not up yet. Ready = models loaded and connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
from typing import Any

from pointsman import bus, configfile, redisconf
from pointsman.debug import DebugConfig
from pointsman.runtime import OpsServer, cancel_and_wait, retry
from pointsman.v1 import routes
from pointsman_classifier.batcher import Batcher
from pointsman_classifier.cache.service import SemanticCache
from pointsman_classifier.config import ClassifierConfig, cpu_threads, long_lane
from pointsman_classifier.core import Outputs
from pointsman_classifier.handlers import ClassifyHandler, Infer
from pointsman_classifier.metrics import Metrics
from pointsman_classifier.sessions import SessionStore
from pointsman_classifier.subproc import EngineDied, load_engine

log = logging.getLogger("pointsman_classifier")


def served_models(data: dict[str, Any], cfg: ClassifierConfig) -> frozenset[str]:
    """``classifier.served_models``, else the names of the config's ``pools``."""
    if cfg.served_models:
        return frozenset(cfg.served_models)
    pools = data.get("pools") or {}
    return frozenset(str(k) for k in pools) if isinstance(pools, dict) else frozenset()


class ClassifierApp:
    """One classifier replica. ``ready`` once the models are loaded and NATS is connected."""

    def __init__(self, data: dict[str, Any], cfg: ClassifierConfig) -> None:
        self.data = data
        self.cfg = cfg
        self.metrics = Metrics()
        self.http = OpsServer(
            cfg.http_port, self.ready, host=cfg.http_host, registry=self.metrics.registry
        )
        self.bus: bus.ServiceBus | None = None
        self.batcher: Batcher[str, Outputs] | None = None
        #: The long lane (``batching.long_prompt_chars``): its own batcher and engine.
        self.long_batcher: Batcher[str, Outputs] | None = None
        #: Each lane's current engine (``main``, and ``long`` once loaded); a dead one is replaced.
        self._engines: dict[str, Any] = {}
        self._long_loading: asyncio.Task[None] | None = None
        self._watching: asyncio.Task[None] | None = None
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self._models_ready = False
        self.cache: SemanticCache | None = None
        self.sessions: SessionStore | None = None

    def ready(self) -> tuple[bool, str]:
        if not self._models_ready:
            return False, "loading models"
        if not any(_alive(e) for e in self._engines.values()):
            return False, "restarting the engine process"
        if self.bus is None or not self.bus.connected:
            return False, "not connected to NATS"
        return True, "ok"

    async def start(self, stop: asyncio.Event | None = None) -> bool:
        """Serve; ``False`` when ``stop`` was set while waiting for NATS."""
        await self.http.start()
        engine = self._engines["main"] = await _load(self._lane_config("main"))
        b = self.cfg.batching
        self.batcher = self._batcher(engine, "main")
        self.metrics.lanes.set(1)
        infer: Infer = self.batcher.submit
        long_chars = long_lane(b, _device_type(engine))
        if long_chars:
            # Loaded in the background: the replica serves at once, long prompts on the main
            # lane until the long one is up.
            self._long_loading = asyncio.create_task(self._start_long_lane())

            async def by_length(text: str, deadline: float | None = None) -> Outputs:
                main, long = self.batcher, self.long_batcher
                assert main is not None
                lane = long if long is not None and len(text) > long_chars else main
                return await lane.submit(text, deadline)

            infer = by_length
        self._watching = asyncio.create_task(self._watch_engines())
        self.metrics.watch_queue(
            lambda: sum(x.depth() for x in (self.batcher, self.long_batcher) if x is not None)
        )
        self.name = f"{self.name}/{engine.name}"
        served = served_models(self.data, self.cfg)
        if self.cfg.cache.enabled:
            self.cache = SemanticCache(
                self.cfg.cache, self.metrics.registry, self.name, redisconf.security(self.data)
            )
        if self.cfg.sessions.enabled:
            self.sessions = SessionStore(self.cfg.sessions, redisconf.security(self.data))
        debug = configfile.section(self.data, "debug", DebugConfig).enabled
        handler = ClassifyHandler(
            self.cfg,
            infer,
            lambda: served,
            self.metrics,
            self.name,
            self.cache,
            self.sessions,
            debug=debug,
        )
        self._models_ready = True

        self.bus = bus.ServiceBus(
            bus.nats_config(self.data),
            f"classifier-{self.name}",
            timers={routes.CLASSIFY.subject: self.metrics.request_seconds.observe},
        )
        # Requests are handled concurrently, so they reach the batcher together; the bound
        # leaves room for a full batching queue plus the batches in flight, so an overload is
        # answered by the batcher ("overloaded") instead of queueing in the client.
        workers = b.queue_size + engine.in_flight * b.max_batch
        self.bus.subscriber(routes.CLASSIFY, max_workers=workers, pending_msgs_limit=65536)(handler)
        if self.cache is not None:
            self.cache.subscribe(self.bus)
            self.cache.start()
        if not await self.bus.start(stop):
            return False
        log.info(
            "classifier %s ready on %s (queue group %s), served models: %s",
            self.name,
            routes.CLASSIFY.subject,
            routes.CLASSIFY.queue,
            ", ".join(sorted(served)) or "any",
        )
        return True

    async def stop(self) -> None:
        if self.bus is not None:
            await self.bus.stop()
        if self.cache is not None:
            await self.cache.close()
        if self.sessions is not None:
            await self.sessions.close()
        await cancel_and_wait([t for t in (self._long_loading, self._watching) if t is not None])
        for batcher in (self.batcher, self.long_batcher):
            if batcher is not None:
                await asyncio.to_thread(batcher.stop)
        for engine in self._engines.values():
            if hasattr(engine, "close"):
                await asyncio.to_thread(engine.close)
        await self.http.stop()

    async def _start_long_lane(self) -> None:
        try:
            engine = await _load(self._lane_config("long"))
        except Exception as exc:
            log.warning("the long lane did not start (%s); long prompts share the main lane", exc)
            return
        self._engines["long"] = engine
        self.long_batcher = self._batcher(engine, "long")
        self.metrics.lanes.set(2)
        log.info("long lane ready: prompts over %d characters", self.cfg.batching.long_prompt_chars)

    async def _watch_engines(self) -> None:
        """Restart an engine process that died (killed, out of memory), so the replica heals
        instead of answering "internal" for ever. Meanwhile the other lane, when there is one,
        serves every prompt; without one the replica is not ready."""
        while True:
            await asyncio.sleep(0.5)
            for lane, engine in list(self._engines.items()):
                if _alive(engine):
                    continue
                log.error("the %s lane's engine process died; restarting it", lane)
                self.metrics.engine_restarts.labels(lane).inc()
                self._engines[lane] = await retry(
                    f"restart of the {lane} lane's engine",
                    functools.partial(_load, self._lane_config(lane)),
                    max_delay=30,
                )
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(engine.close)
                log.info("the %s lane's engine process is back", lane)

    def _lane_config(self, lane: str) -> ClassifierConfig:
        """The config of ``lane``'s engine: the same models; for the long lane with
        ``threads: 0``, half the torch threads of the main engine (both run at once), at least
        one."""
        if lane == "main" or self.cfg.threads:
            return self.cfg
        return self.cfg.model_copy(update={"threads": max(1, cpu_threads() // 2)})

    def _batcher(self, engine: Any, lane: str) -> Batcher[str, Outputs]:
        """A batcher of ``lane`` that runs its batches on the lane's current engine (replaced
        when its process dies)."""
        b = self.cfg.batching

        def run(texts: list[str]) -> Any:
            try:
                return self._engines[lane].run(texts)
            except EngineDied:
                # The batch did not run: the other lane's engine runs it while this one restarts.
                other = self._engines.get("long" if lane == "main" else "main")
                if other is None or not _alive(other):
                    raise
                return other.run(texts)

        name = "classifier-batcher" if lane == "main" else "classifier-long-batcher"
        batcher: Batcher[str, Outputs] = Batcher(
            run,
            max_batch=b.max_batch,
            max_wait_s=b.max_wait_ms / 1e3,
            queue_size=b.queue_size,
            on_batch=self.metrics.on_batch,
            name=name,
            workers=engine.in_flight,
            budget_s=b.budget_ms / 1e3,
        )
        batcher.start()
        return batcher


def _alive(engine: Any) -> bool:
    """Whether ``engine`` serves: an engine in this process always does."""
    return engine is not None and bool(getattr(engine, "alive", True))


async def _load(cfg: ClassifierConfig) -> Any:
    return await asyncio.to_thread(load_engine, cfg)


def _device_type(engine: Any) -> str:
    """``cpu`` or ``cuda``, for the engine in a child process (``info`` a dict) or in this one."""
    info = engine.info if isinstance(engine.info, dict) else engine.info()
    return str(info["device"]).split(":")[0]


async def run(data: dict[str, Any], cfg: ClassifierConfig, stop: asyncio.Event) -> None:
    app = ClassifierApp(data, cfg)
    try:
        if await app.start(stop):
            await stop.wait()
        log.info("stopping")
    finally:
        await app.stop()

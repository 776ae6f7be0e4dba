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
import threading
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

#: How much lower the spare engine's loading runs on a CPU (``subproc._load``): loaded while
#: the other engines serve, it must not take their cores. A restart of a lane with no spare left
#: is urgent and loads at the normal priority.
SPARE_LOAD_NICE = 10


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
        #: The spare engine (``engine_spare``): loaded and idle until a lane's engine dies (the
        #: gauge ``pointsman_classifier_spare_engines`` reads it).
        self._spare: Any = None
        #: Engines that died and were replaced, closed by the watchdog.
        self._retired: list[Any] = []
        #: Guards ``_engines``, ``_spare`` and ``_retired``: the batchers' worker threads swap
        #: the spare in, the event loop's watchdog restarts and reloads.
        self._swap = threading.Lock()
        #: The long lane's and the first spare's load, later each new spare's.
        self._extras_loading: asyncio.Task[None] | None = None
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
        # Loaded in the background, one after the other (they share the cores with the main
        # engine): the replica serves at once, long prompts on the main lane until the long one
        # is up.
        self._extras_loading = asyncio.create_task(self._start_extras(long_lane=bool(long_chars)))
        if long_chars:

            async def by_length(text: str, deadline: float | None = None) -> Outputs:
                main, long = self.batcher, self.long_batcher
                assert main is not None
                lane = long if long is not None and len(text) > long_chars else main
                return await lane.submit(text, deadline)

            infer = by_length
        self._watching = asyncio.create_task(self._watch_engines())
        # 1 while a spare is loaded and alive, read from the state itself at each scrape
        self.metrics.spare_engines.set_function(lambda: float(_alive(self._spare)))
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
        await cancel_and_wait([t for t in (self._extras_loading, self._watching) if t is not None])
        for batcher in (self.batcher, self.long_batcher):
            if batcher is not None:
                await asyncio.to_thread(batcher.stop)
        with self._swap:
            engines = [*self._engines.values(), self._spare, *self._retired]
        for engine in engines:
            if hasattr(engine, "close"):
                await asyncio.to_thread(engine.close)
        await self.http.stop()

    def _wants_spare(self) -> bool:
        return self.cfg.engine_spare and self.cfg.engine_process

    async def _start_extras(self, long_lane: bool) -> None:
        """Load the long lane's engine (``long_lane``), then the spare (``engine_spare``)."""
        if long_lane:
            try:
                engine = await _load(self._lane_config("long"))
            except Exception as exc:
                log.warning(
                    "the long lane did not start (%s); long prompts share the main lane", exc
                )
            else:
                with self._swap:
                    self._engines["long"] = engine
                self.long_batcher = self._batcher(engine, "long")
                self.metrics.lanes.set(2)
                log.info(
                    "long lane ready: prompts over %d characters",
                    self.cfg.batching.long_prompt_chars,
                )
        if self._wants_spare():
            await self._load_spare()

    async def _load_spare(self) -> None:
        # On a GPU the host's cores are not what the serving engine waits for, and the engine is
        # built on the process's main thread as every other one (its CUDA graphs included).
        on_cpu = _device_type(self._engines["main"]) == "cpu"
        spare = await retry(
            "the spare engine",
            functools.partial(_load, self._lane_config("main"), SPARE_LOAD_NICE if on_cpu else 0),
            max_delay=30,
        )
        with self._swap:
            self._spare = spare
        log.info("spare engine ready")

    def _replace(self, lane: str, dead: Any) -> Any:
        """The engine to run ``lane``'s batches now that ``dead`` died, or ``None``.

        The spare, when one is loaded, takes the lane over for good (called from a batcher's
        worker thread, the batch that failed is then run on it at once); otherwise the other
        lane's engine runs the batch while the watchdog restarts this one.
        """
        with self._swap:
            current = self._engines.get(lane)
            if current is not dead and _alive(current):
                return current  # another thread (or the watchdog) replaced it already
            if _alive(self._spare):
                self._engines[lane], self._spare = self._spare, None
                self._retired.append(dead)
                self.metrics.engine_restarts.labels(lane).inc()
                log.error("the %s lane's engine process died; the spare engine took over", lane)
                return self._engines[lane]
            other = self._engines.get("long" if lane == "main" else "main")
            return other if _alive(other) else None

    async def _watch_engines(self) -> None:
        """Heal the replica: a lane whose engine died (killed, out of memory) gets the spare,
        or else a restarted engine, so the replica does not answer "internal" for ever; a spare
        that was used is loaded again. Until a dead lane's engine is back, the other lane, when
        there is one, serves every prompt; without one the replica is not ready."""
        while True:
            await asyncio.sleep(0.5)
            with self._swap:
                if self._spare is not None and not _alive(self._spare):
                    log.error("the spare engine process died; loading another")
                    self._retired.append(self._spare)
                    self._spare = None
            for lane, engine in list(self._engines.items()):
                if _alive(engine) or self._replace(lane, engine) is self._engines.get(lane):
                    continue
                log.error("the %s lane's engine process died; restarting it", lane)
                self.metrics.engine_restarts.labels(lane).inc()
                fresh = await retry(
                    f"restart of the {lane} lane's engine",
                    functools.partial(_load, self._lane_config(lane)),
                    max_delay=30,
                )
                with self._swap:
                    if self._engines.get(lane) is engine:
                        self._engines[lane] = fresh
                        self._retired.append(engine)
                        log.info("the %s lane's engine process is back", lane)
                    elif self._spare is None and self._wants_spare():
                        self._spare = fresh  # a spare took the lane over meanwhile
                    else:
                        self._retired.append(fresh)
            with self._swap:
                retired, self._retired = self._retired, []
            for engine in retired:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(engine.close)
            if (
                self._wants_spare()
                and self._spare is None
                and (self._extras_loading is None or self._extras_loading.done())
            ):
                # In the background: a load that keeps failing is retried for ever, and the
                # watchdog must still restart a lane whose engine dies meanwhile.
                self._extras_loading = asyncio.create_task(self._load_spare())

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
            engine = self._engines[lane]
            try:
                return engine.run(texts)
            except EngineDied:
                # The batch did not run: the spare (or the other lane's engine) runs it.
                replacement = self._replace(lane, engine)
                if replacement is None:
                    raise
                return replacement.run(texts)

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


async def _load(cfg: ClassifierConfig, load_nice: int = 0) -> Any:
    return await asyncio.to_thread(load_engine, cfg, load_nice)


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

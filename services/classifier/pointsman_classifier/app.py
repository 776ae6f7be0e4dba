"""Wire the classifier: models, batcher, NATS queue-group responder, HTTP health and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from typing import Any

import nats
from nats.aio.msg import Msg

from pointsman import configfile
from pointsman.runtime import OpsServer
from pointsman.v1.classify import CLASSIFIER_QUEUE, CLASSIFY
from pointsman_classifier.batcher import Batcher
from pointsman_classifier.cache.service import SemanticCache
from pointsman_classifier.config import ClassifierConfig
from pointsman_classifier.core import Outputs
from pointsman_classifier.handlers import ClassifyHandler
from pointsman_classifier.metrics import Metrics
from pointsman_classifier.sessions import SessionStore
from pointsman_classifier.subproc import load_engine

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
        self.http = OpsServer(cfg.http_port, self.ready, registry=self.metrics.registry)
        self.nc: Any = None
        self.batcher: Batcher[str, Outputs] | None = None
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self._tasks: set[asyncio.Task[None]] = set()
        self._models_ready = False
        self._engine: Any = None
        self.cache: SemanticCache | None = None
        self.sessions: SessionStore | None = None

    def ready(self) -> bool:
        return self._models_ready and self.nc is not None and bool(self.nc.is_connected)

    async def start(self) -> None:
        await self.http.start()
        engine = await asyncio.to_thread(load_engine, self.cfg)
        self._engine = engine
        b = self.cfg.batching
        self.batcher = Batcher(
            engine.run,
            max_batch=b.max_batch,
            max_wait_s=b.max_wait_ms / 1e3,
            queue_size=b.queue_size,
            on_batch=self.metrics.on_batch,
            name="classifier-batcher",
            workers=engine.in_flight,
            budget_s=b.budget_ms / 1e3,
        )
        self.batcher.start()
        self.metrics.watch_queue(self.batcher.depth)
        self.name = f"{self.name}/{engine.name}"
        served = served_models(self.data, self.cfg)
        if self.cfg.cache.enabled:
            self.cache = SemanticCache(self.cfg.cache, self.metrics.registry, self.name)
        if self.cfg.sessions.enabled:
            self.sessions = SessionStore(self.cfg.sessions)
        handler = ClassifyHandler(
            self.cfg,
            self.batcher.submit,
            lambda: served,
            self.metrics,
            self.name,
            self.cache,
            self.sessions,
        )
        self._models_ready = True

        url = configfile.nats_url(self.data)
        self.nc = await nats.connect(
            url,
            name=f"pointsman-classifier {self.name}",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
        )

        async def on_msg(msg: Msg) -> None:
            # nats-py runs a subscription's callbacks one after another: hand each message to
            # its own task so concurrent requests reach the batcher together.
            task = asyncio.create_task(self._answer(handler, msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        if self.cache is not None:
            await self.cache.start(self.nc)
        await self.nc.subscribe(
            CLASSIFY, queue=CLASSIFIER_QUEUE, cb=on_msg, pending_msgs_limit=65536
        )
        log.info(
            "classifier %s ready on %s (queue group %s), served models: %s",
            self.name,
            CLASSIFY,
            CLASSIFIER_QUEUE,
            ", ".join(sorted(served)) or "any",
        )

    async def _answer(self, handler: ClassifyHandler, msg: Msg) -> None:
        reply = await handler(msg.data, msg.headers)
        if msg.reply:
            with contextlib.suppress(Exception):
                await msg.respond(reply)

    async def stop(self) -> None:
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.drain()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        if self.cache is not None:
            await self.cache.close()
        if self.sessions is not None:
            await self.sessions.close()
        if self.batcher is not None:
            await asyncio.to_thread(self.batcher.stop)
        if self._engine is not None and hasattr(self._engine, "close"):
            await asyncio.to_thread(self._engine.close)
        await self.http.stop()


async def run(data: dict[str, Any], cfg: ClassifierConfig) -> None:
    app = ClassifierApp(data, cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await app.start()
        await stop.wait()
        log.info("stopping")
    finally:
        await app.stop()

"""Wiring: NATS subscriptions, the health/metrics server, housekeeping, shared state.

Start-up order matters: the replica subscribes to snapshots and completions first and joins
the pick queue group only once it has seen a snapshot (or ``warmup_ms`` passed), so a new
replica does not answer "unknown model" for pools it simply has not heard of yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from typing import Any

import nats

from pointsman.runtime import OpsServer
from pointsman.v1 import subjects
from pointsman_picker.config import PickerConfig
from pointsman_picker.handlers import Handlers
from pointsman_picker.redis_state import RedisSync
from pointsman_picker.scheduler import Scheduler
from pointsman_picker.telemetry import Telemetry

log = logging.getLogger(__name__)


class PickerApp:
    def __init__(self, config: PickerConfig, nats_url: str) -> None:
        self.config = config
        self.nats_url = nats_url
        self.telemetry = Telemetry()
        self.scheduler = Scheduler(config, self.telemetry, clock=time.time)
        self.handlers = Handlers(self.scheduler)
        self.http = OpsServer(
            config.http_port, self.ready, host=config.http_host, registry=self.telemetry.registry
        )
        self._nc: Any = None
        self._serving = False
        self._tasks: list[asyncio.Task[None]] = []
        self._first_snapshot = asyncio.Event()
        self.shared: RedisSync | None = None
        redis_url = os.environ.get("POINTSMAN_REDIS_URL") or config.shared_state.redis_url
        if redis_url:
            self.shared = RedisSync(
                redis_url,
                config.shared_state,
                config.replica_id,
                self.scheduler.on_remote,
                self.telemetry,
            )
            self.scheduler.sink = self.shared.submit

    def ready(self) -> bool:
        return self._serving and self._nc is not None and self._nc.is_connected

    async def start(self) -> None:
        await self.http.start()
        self._nc = await nats.connect(
            self.nats_url,
            name=f"pointsman-picker-{self.config.replica_id}",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
        )
        await self._nc.subscribe(subjects.METRICS_ALL, cb=self._on_snapshot)
        await self._nc.subscribe(subjects.COMPLETIONS, cb=self.handlers.completion)
        if self.shared is not None:
            await self.shared.start(self.scheduler.on_remote)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_snapshot.wait(), self.config.warmup_ms / 1000)
        await self._nc.subscribe(subjects.PICK, queue=subjects.PICKER_QUEUE, cb=self.handlers.pick)
        await self._nc.subscribe(
            subjects.MODELS, queue=subjects.PICKER_QUEUE, cb=self.handlers.models
        )
        await self._nc.flush()
        self._tasks.append(asyncio.create_task(self._housekeeping()))
        # Start-up objects (modules, config, plugins) never die: keep them out of every
        # collection, so a full collection only walks what picks created.
        gc.freeze()
        self._serving = True
        log.info(
            "picker %s serving on %s (http :%d, shared state: %s)",
            self.config.replica_id, self.nats_url, self.http.port,
            "redis" if self.shared else "none",
        )  # fmt: skip

    async def _on_snapshot(self, msg: Any) -> None:
        await self.handlers.snapshot(msg)
        self._first_snapshot.set()

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                self.scheduler.housekeeping()
            except Exception:
                log.exception("housekeeping failed")

    async def stop(self) -> None:
        self._serving = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.drain()
        if self.shared is not None:
            await self.shared.stop()
        await self.http.stop()
        log.info("picker %s stopped", self.config.replica_id)


async def run(config: PickerConfig, nats_url: str, stop: asyncio.Event) -> None:
    app = PickerApp(config, nats_url)
    await app.start()
    try:
        await stop.wait()
    finally:
        await app.stop()

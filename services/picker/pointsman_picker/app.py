"""Wiring: the bus subscribers, the ops server, housekeeping, shared state.

Start-up order matters: the replica subscribes to snapshots and completions first and joins
the pick queue group only once it has seen a snapshot (or ``warmup_ms`` passed), so a new
replica does not answer "unknown model" for pools it simply has not heard of yet. NATS need not
be up first: the ops server answers at once (alive, not ready) and the replica waits for NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time

from pointsman.bus import NatsConfig, Received, ServiceBus
from pointsman.redisconf import RedisSecurity
from pointsman.runtime import OpsServer, cancel_and_wait
from pointsman.v1 import PoolSnapshot, routes
from pointsman_picker.config import PickerConfig
from pointsman_picker.flow import CounterSync, FlowControl, tick
from pointsman_picker.handlers import Handlers
from pointsman_picker.redis_state import RedisSync
from pointsman_picker.scheduler import Scheduler
from pointsman_picker.telemetry import Telemetry

log = logging.getLogger(__name__)


class PickerApp:
    def __init__(
        self,
        config: PickerConfig,
        nats: NatsConfig,
        *,
        debug: bool = False,
        redis: RedisSecurity | None = None,
    ) -> None:
        self.config = config
        self.telemetry = Telemetry()
        self.scheduler = Scheduler(config, self.telemetry, clock=time.time)
        redis_url = os.environ.get("POINTSMAN_REDIS_URL") or config.shared_state.redis_url
        self.flow = FlowControl(self.scheduler, config.flow_control, shared=bool(redis_url))
        self.handlers = Handlers(self.scheduler, debug=debug, flow=self.flow)
        self.http = OpsServer(
            config.http_port, self.ready, host=config.http_host, registry=self.telemetry.registry
        )
        self.bus = ServiceBus(
            nats,
            f"picker-{config.replica_id}",
            timers={routes.PICK.subject: self.telemetry.decision_seconds.observe},
        )
        self.bus.subscriber(routes.SNAPSHOTS)(self._on_snapshot)
        self.bus.subscriber(routes.COMPLETIONS)(self.handlers.completion)
        self.bus.subscriber(routes.POLICY)(self.handlers.policy)
        self._serving = False
        self._tasks: list[asyncio.Task[None]] = []
        self._first_snapshot = asyncio.Event()
        self.shared: RedisSync | None = None
        self.counter_sync: CounterSync | None = None
        if redis_url:
            self.shared = RedisSync(
                redis_url,
                config.shared_state,
                config.replica_id,
                self.scheduler.on_remote,
                self.telemetry,
                redis,
            )
            self.scheduler.sink = self.shared.submit
            self.counter_sync = CounterSync(
                self.shared.client, config.shared_state.key_prefix, self.flow,
                config.flow_control.sync_interval_ms / 1000,
            )  # fmt: skip

    def ready(self) -> tuple[bool, str]:
        if not self.bus.connected:
            return False, "not connected to NATS"
        return (True, "ok") if self._serving else (False, "starting")

    async def start(self, stop: asyncio.Event | None = None) -> bool:
        """Serve; ``False`` when ``stop`` was set while waiting for NATS."""
        await self.http.start()
        if not await self.bus.start(stop):
            return False
        if self.shared is not None:
            await self.shared.start(self.scheduler.on_remote)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.warmup_ms / 1000):
                await self._first_snapshot.wait()
        for route, handler in (
            (routes.PICK, self.handlers.pick),
            (routes.MODELS, self.handlers.models),
        ):
            subscriber = self.bus.subscriber(route)(handler)
            await subscriber.start()
        if self.bus.client is not None:
            await self.bus.client.flush()
        self._tasks.append(asyncio.create_task(self._housekeeping()))
        if self.config.flow_control.enabled:
            interval = self.config.flow_control.sync_interval_ms / 1000
            self._tasks.append(asyncio.create_task(tick(self.flow, interval)))
            if self.counter_sync is not None:
                self._tasks.append(asyncio.create_task(self.counter_sync.run()))
        # Start-up objects (modules, config, plugins) never die: keep them out of every
        # collection, so a full collection only walks what picks created.
        gc.freeze()
        self._serving = True
        log.info(
            "picker %s serving on %s (http :%d, shared state: %s)",
            self.config.replica_id, self.bus.config.url, self.http.port,
            "redis" if self.shared else "none",
        )  # fmt: skip
        return True

    async def _on_snapshot(self, msg: Received[PoolSnapshot]) -> None:
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
        await cancel_and_wait(self._tasks)
        self._tasks.clear()
        await self.handlers.close()
        await self.bus.stop()
        if self.shared is not None:
            await self.shared.stop()
        await self.http.stop()
        log.info("picker %s stopped", self.config.replica_id)


async def run(
    config: PickerConfig,
    nats: NatsConfig,
    stop: asyncio.Event,
    *,
    debug: bool = False,
    redis: RedisSecurity | None = None,
) -> None:
    app = PickerApp(config, nats, debug=debug, redis=redis)
    try:
        if await app.start(stop):
            await stop.wait()
    finally:
        await app.stop()

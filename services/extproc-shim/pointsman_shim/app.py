"""Wire the shim: config -> ext_proc and health servers -> ops HTTP -> NATS (in the background:
the shim serves, fail-open or fail-closed, before NATS is there)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from pointsman import bus, configfile, redisconf
from pointsman.bus import NatsConfig
from pointsman.debug import DebugConfig
from pointsman.runtime import OpsServer
from pointsman.tracing import TracingConfig
from pointsman_shim.bus import Bus
from pointsman_shim.config import ShimConfig, safety_blocks
from pointsman_shim.handlers import Processor
from pointsman_shim.membership import Membership, static_pools
from pointsman_shim.server import Health, start_ext_proc
from pointsman_shim.state import ResponsesState

log = logging.getLogger(__name__)


def load_config(path: str | None) -> tuple[ShimConfig, NatsConfig, TracingConfig]:
    data: dict[str, Any] = configfile.read(path)
    config = configfile.section(data, "shim", ShimConfig)
    if config.classifier.safety_blocks is None:
        blocks = safety_blocks(data.get("classifier"))
        call = config.classifier.model_copy(update={"safety_blocks": blocks})
        config = config.model_copy(update={"classifier": call})
    return (
        config,
        bus.nats_config(data),
        configfile.section(data, "tracing", TracingConfig),
    )


def load_extra(
    path: str | None,
) -> tuple[DebugConfig, dict[str, frozenset[str]], redisconf.RedisSecurity]:
    """The shared sections the shim also reads: ``debug``, the static ``pools``, ``redis``."""
    data: dict[str, Any] = configfile.read(path)
    return (
        configfile.section(data, "debug", DebugConfig),
        static_pools(data),
        redisconf.security(data),
    )


async def serve(
    config: ShimConfig,
    nats: NatsConfig,
    stop: asyncio.Event,
    *,
    debug: DebugConfig | None = None,
    pools: dict[str, frozenset[str]] | None = None,
    redis: redisconf.RedisSecurity | None = None,
) -> None:
    shim_bus = Bus(nats)
    membership = Membership(pools or {}, config.forget_after_s)
    membership.subscribe(shim_bus.service)
    processor = Processor(
        config,
        shim_bus,
        known=membership.pools,
        debug_config=debug,
        state=ResponsesState(config.responses, redis),
    )
    shim_bus.on_policy(processor.apply_policy)
    health = Health()
    health_port = await health.start(config.health_listen)
    server, port = await start_ext_proc(processor, config.listen, config.tls)

    def ready() -> bool:
        return shim_bus.connected or config.failure_mode == "fail-open"

    ops = OpsServer(config.http_port, ready, host=config.http_host)
    http_port = await ops.start()
    log.info(
        "shim (%s) listening: ext_proc %s (port %d, %s), health port %d, http port %d; failure mode %s",
        config.mode,
        config.listen,
        port,
        "mutual TLS"
        if config.tls.client_ca_file
        else "TLS"
        if config.tls.cert_file
        else "plaintext",
        health_port,
        http_port,
        config.failure_mode,
    )
    connector = asyncio.create_task(shim_bus.start(stop))
    # A refused credential (CredentialError) ends the shim as it ends every service.
    connector.add_done_callback(lambda t: _stop_if_failed(t, stop))

    async def track_readiness() -> None:
        last: bool | None = None
        while not stop.is_set():
            now = ready()
            if now != last:
                await health.set(now)
                last = now
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await stop.wait()

    tracker = asyncio.create_task(track_readiness())
    await stop.wait()
    log.info("shim stopping")
    await health.set(False)
    await server.stop(2)
    connector.cancel()
    tracker.cancel()
    await shim_bus.close()
    await processor.state.close()
    await health.stop()
    await ops.stop()
    if connector.done() and not connector.cancelled() and connector.exception() is not None:
        raise connector.exception()  # type: ignore[misc]


def _stop_if_failed(task: asyncio.Task[bool], stop: asyncio.Event) -> None:
    if not task.cancelled() and task.exception() is not None:
        stop.set()

"""Wiring: discovery -> shard assignment -> scrape ticks -> pool snapshots on NATS.

NATS need not be up first: the ops server answers at once (alive, not ready) and the collector
waits for NATS through the shared bus shell (:mod:`pointsman.bus`), as every service does.

One tick every ``interval_ms``: start a scrape of every owned endpoint whose previous scrape has
ended (a slow endpoint is skipped, never queued, so it cannot delay the others), wait for the
tick's scrapes up to a deadline inside the interval, then publish one snapshot per pool with
whatever is known. Each snapshot goes to the pool's subject and, for late joiners, into a
JetStream KV bucket (``<pool-token>.<replica-id>``, written with a plain publish, no ack wait).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nats.js.api import StorageType

from pointsman.bus import NatsConfig, ServiceBus
from pointsman.runtime import OpsServer, cancel_and_wait
from pointsman.v1 import routes, subjects
from pointsman.v1.policy import InferencePolicy
from pointsman_collector.config import CollectorConfig
from pointsman_collector.core import engines
from pointsman_collector.core.endpoints import Endpoint, merge
from pointsman_collector.core.prom import ParseError
from pointsman_collector.core.shard import owner
from pointsman_collector.core.snapshot import (
    CONNECT_FAILED,
    EndpointState,
    build_snapshots,
    record_error,
    record_ok,
    split,
)
from pointsman_collector.discovery import Source
from pointsman_collector.discovery.static import StaticFileSource
from pointsman_collector.membership import Membership
from pointsman_collector.rawhttp import RawClient
from pointsman_collector.telemetry import Telemetry

log = logging.getLogger("pointsman_collector")


def view_digest(endpoints: dict[str, Endpoint]) -> str:
    """A short digest of the discovered endpoint keys, compared between replicas."""
    h = hashlib.blake2b(digest_size=8)
    for key in sorted(endpoints):
        h.update(key.encode())
        h.update(b"\n")
    return h.hexdigest()


def build_sources(cfg: CollectorConfig, config_path: str | None) -> list[Source]:
    """Static sources (config file, ``static_file``) and Kubernetes sources from the config."""
    poll_s = cfg.reload_ms / 1000
    sources: list[Source] = []
    base = Path(config_path).parent if config_path else Path.cwd()
    if config_path:
        sources.append(StaticFileSource(config_path, top_level_key=True, poll_s=poll_s))
    if cfg.static_file:
        path = Path(cfg.static_file)
        if not path.is_absolute():
            path = base / path
        sources.append(StaticFileSource(path, top_level_key=False, poll_s=poll_s))
    if cfg.kubernetes.sources or cfg.kubernetes.policy.enabled:
        from pointsman_collector.discovery.kubernetes import KubernetesDiscovery

        sources.append(KubernetesDiscovery(cfg.kubernetes, base_dir=base))
    return sources


class Collector:
    def __init__(
        self,
        cfg: CollectorConfig,
        *,
        nats: NatsConfig,
        sources: Sequence[Source],
        http: bool = True,
    ) -> None:
        self.cfg = cfg
        self.id = cfg.replica_id()
        self.specs = cfg.specs()
        self.telemetry = Telemetry()
        self.bus = ServiceBus(nats, f"collector-{self.id}")
        self._sources = list(sources)
        self._http = http
        self._interval_s = cfg.interval_ms / 1000
        self._wait_s = min(cfg.timeout_ms / 1000, self._interval_s * 0.8)
        self._stale_s = cfg.stale_ms / 1000
        self._unhealthy_after = cfg.unhealthy_after
        self._views: dict[str, list[Endpoint]] = {}
        self._states: dict[str, EndpointState] = {}
        self._owned: list[EndpointState] = []
        self._members: list[str] = []
        self._inflight: set[str] = set()
        #: pool -> the collector names (this id, or its parts) published under last tick.
        self._published: dict[str, set[str]] = {}
        self._discovered = False
        self._tasks: list[asyncio.Task[Any]] = []
        self._kv_prefix: str | None = None
        self._kv: Any = None
        self._membership: Membership | None = None
        if cfg.sharding.enabled:
            self._membership = Membership(
                self.bus,
                me=self.id,
                subject=cfg.sharding.subject,
                heartbeat_s=cfg.sharding.heartbeat_ms / 1000,
                lease_s=cfg.sharding.lease_ms / 1000,
                on_change=self.set_members,
                owned=lambda: len(self._owned),
            )
        self._ops = OpsServer(
            cfg.http_port, self.ready, host=cfg.http_host, registry=self.telemetry.registry
        )
        self._raw: RawClient | None = None
        self._tick_no = 0
        self._pending = 0
        self._tick_done: asyncio.Future[None] | None = None
        self._policy: InferencePolicy | None = None
        self._policy_changed = asyncio.Event()
        for source in self._sources:
            if hasattr(source, "on_policy"):  # Kubernetes: InferenceObjectives and rewrites
                source.on_policy = self.set_policy

    # ----- lifecycle -------------------------------------------------------------------------

    async def start(self, stop: asyncio.Event | None = None) -> bool:
        """Serve HTTP at once (live, not ready), then wait for NATS, so start-up order in a
        stack does not matter. ``False`` when ``stop`` was set while waiting."""
        cfg = self.cfg
        if self._http:
            await self._ops.start()
        if not await self.bus.start(stop):
            return False
        if cfg.latest.enabled:
            await self._open_kv()
        self._raw = RawClient(
            timeout_s=cfg.timeout_ms / 1000,
            max_body=cfg.max_body_bytes,
            path=cfg.path,
            on_result=self._on_raw,
        )
        if self._membership is not None:
            await self._membership.start()
            membership = self._membership
            self.telemetry.disagreeing.set_function(lambda: membership.disagreeing)
        else:
            self.set_members([self.id])
        for source in self._sources:
            self._tasks.append(asyncio.create_task(self._run_source(source), name=source.name))
        self._tasks.append(asyncio.create_task(self._tick_loop(), name="collector-ticks"))
        if cfg.kubernetes.policy.enabled:
            self._tasks.append(asyncio.create_task(self._policy_loop(), name="policy"))
        log.info(
            "collector %s started: interval %d ms, %d discovery sources, sharding %s",
            self.id,
            cfg.interval_ms,
            len(self._sources),
            "on" if cfg.sharding.enabled else "off",
        )
        return True

    async def _open_kv(self) -> None:
        lc = self.cfg.latest
        assert self.bus.client is not None
        js = self.bus.client.jetstream()
        try:
            try:
                self._kv = await js.key_value(lc.bucket)
            except Exception:
                storage = StorageType.MEMORY if lc.storage == "memory" else StorageType.FILE
                self._kv = await js.create_key_value(
                    bucket=lc.bucket, history=1, ttl=lc.ttl_s, storage=storage
                )
            self._kv_prefix = f"$KV.{lc.bucket}."
        except Exception as exc:  # no JetStream on this server: pub/sub still works
            log.warning(
                "latest-state bucket %s unavailable, late joiners wait a tick: %s", lc.bucket, exc
            )

    async def stop(self) -> None:
        if self._membership is not None:
            await self._membership.stop()
        await cancel_and_wait(self._tasks)
        if self._kv is not None:
            kv = self._kv
            keys = [
                self._kv_key(pool, name)
                for pool, names in self._published.items()
                for name in names
            ]
            # Best effort and bounded: the keys' TTL removes them anyway.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await asyncio.gather(*(kv.delete(k) for k in keys), return_exceptions=True)
        await self.bus.stop()
        if self._raw is not None:
            self._raw.close()
        await self._ops.stop()
        log.info("collector %s stopped", self.id)

    def ready(self) -> tuple[bool, str]:
        if not self.bus.connected:
            return False, "not connected to NATS"
        if not self._discovered:
            return False, "no discovery source has reported yet"
        if self._membership is not None and not self._membership.active:
            return False, "joining the collector replicas"
        return True, f"ok: {len(self._owned)} of {len(self._states)} endpoints"

    # ----- discovery and sharding -------------------------------------------------------------

    async def _run_source(self, source: Source) -> None:
        try:
            await source.run(self.report)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("discovery source %s failed", source.name)

    def report(self, source: str, endpoints: Sequence[Endpoint]) -> None:
        """A discovery source's full current view."""
        self._views[source] = list(endpoints)
        self._discovered = True
        merged = merge(*self._views.values())
        for key in list(self._states):
            if key not in merged:
                del self._states[key]
        for key, ep in merged.items():
            st = self._states.get(key)
            if st is None:
                self._states[key] = EndpointState(ep)
            elif st.endpoint != ep:
                st.endpoint = ep
        if self._membership is not None:
            self._membership.view = view_digest(merged)
        self._reassign()

    def set_members(self, members: list[str]) -> None:
        self._members = list(members)
        self.telemetry.members.set(len(members))
        self._reassign()

    def _reassign(self) -> None:
        members = self._members
        if not members or self.id not in members:
            self._owned = []
        elif len(members) == 1:
            self._owned = list(self._states.values())
        else:
            self._owned = [st for key, st in self._states.items() if owner(key, members) == self.id]
        if self._raw is not None:
            self._raw.forget({st.endpoint.key for st in self._owned})
        log.info("scraping %d of %d endpoints", len(self._owned), len(self._states))
        self.telemetry.endpoints.labels("discovered").set(len(self._states))
        self.telemetry.endpoints.labels("owned").set(len(self._owned))

    @property
    def owned(self) -> list[Endpoint]:
        return [st.endpoint for st in self._owned]

    # ----- the inference policy ---------------------------------------------------------------

    def set_policy(self, policy: InferencePolicy) -> None:
        """The InferenceObjectives and InferenceModelRewrites changed: publish them now."""
        self._policy = policy
        self._policy_changed.set()

    async def _policy_loop(self) -> None:
        """Publish the policy on a change and every ``kubernetes.policy.interval_s`` (a shim or
        picker that starts later gets it within that)."""
        every = self.cfg.kubernetes.policy.interval_s
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(every):
                    await self._policy_changed.wait()
            self._policy_changed.clear()
            if self._policy is not None:
                await self.bus.publish(routes.POLICY.subject, routes.POLICY.encode(self._policy))

    # ----- scraping and publishing ------------------------------------------------------------

    def _record(
        self, st: EndpointState, body: bytes | None, error: str | None, started: float
    ) -> None:
        """Turn one fetch's outcome into the endpoint's state."""
        result = "ok"
        was_healthy = st.healthy
        if body is None:
            result = "timeout" if error == "timeout" else "error"
            record_error(
                st, error or "failed", (time.perf_counter() - started) * 1000, self._unhealthy_after
            )
        else:
            engine = st.endpoint.engine or st.detected or self.cfg.engine
            try:
                reading = engines.read_page(body, self.specs, engine)
            except (engines.NoEngineMetrics, ParseError) as exc:
                result = "parse_error"
                st.detected = None  # detect again next time (the engine may have changed)
                record_error(
                    st, str(exc)[:200], (time.perf_counter() - started) * 1000,
                    self._unhealthy_after,
                )  # fmt: skip
            else:
                record_ok(st, reading, time.time(), (time.perf_counter() - started) * 1000)
        self.telemetry.result(result).inc()
        self.telemetry.scrape_seconds.observe(time.perf_counter() - started)
        if was_healthy and not st.healthy:
            reason = "connect" if (st.error or "").startswith(CONNECT_FAILED) else "failures"
            self.telemetry.marked_unhealthy.labels(reason).inc()
            log.warning(
                "endpoint %s marked unhealthy (%s: %s)", st.endpoint.address, reason, st.error
            )

    def _on_raw(self, token: Any, body: bytes | None, error: str | None, started: float) -> None:
        st, tick_no, started_perf = token
        self._inflight.discard(st.endpoint.key)
        self._record(st, body, error, started_perf)
        if tick_no == self._tick_no:
            self._pending -= 1
            if self._pending <= 0 and self._tick_done is not None and not self._tick_done.done():
                self._tick_done.set_result(None)

    async def tick(self) -> None:
        """One interval's work: scrape what is owned and free, then publish."""
        await self._scrape_owned()
        await self.publish()

    async def _scrape_owned(self) -> None:
        raw = self._raw
        assert raw is not None
        raw.expire(time.monotonic())
        self._tick_no += 1
        self._pending = 0
        self._tick_done = asyncio.get_running_loop().create_future()
        now = time.perf_counter()
        for st in self._owned:
            key = st.endpoint.key
            if key in self._inflight:
                self.telemetry.skipped.inc()
                continue
            self._inflight.add(key)
            self._pending += 1
            raw.start(key, st.endpoint.address, (st, self._tick_no, now))
        if self._pending > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._wait_s):
                    await asyncio.shield(self._tick_done)
        self._tick_done = None

    async def publish(self) -> None:
        """One snapshot per owned pool (split when too big for one NATS message), and an empty
        one under every name this replica published before but holds nothing under now."""
        nc = self.bus.client
        if nc is None or not nc.is_connected:
            return
        now = time.time()
        snaps = build_snapshots(
            self._owned,
            collector=self.id,
            now=now,
            stale_s=self._stale_s,
            members=self._members,
            interval_ms=self.cfg.interval_ms,
        )
        limit = self._snapshot_limit()
        published: dict[str, set[str]] = {}
        count = 0
        for pool, snap in snaps.items():
            data = routes.SNAPSHOTS.encode(snap)
            parts = [(snap, data)]
            if len(data) > limit:
                parts = [
                    (p, routes.SNAPSHOTS.encode(p)) for p in split(snap, len(data) // limit + 1)
                ]
            names = published[pool] = set()
            for part, part_data in parts:
                names.add(part.collector)
                await nc.publish(subjects.metrics(pool), part_data)
                if self._kv_prefix is not None:
                    key = self._kv_prefix + self._kv_key(pool, part.collector)
                    await nc.publish(key, part_data)
            count += len(parts)
        for pool, names in self._published.items():
            for name in names - published.get(pool, set()):
                empty = build_snapshots(
                    [],
                    collector=name,
                    now=now,
                    stale_s=self._stale_s,
                    members=self._members,
                    interval_ms=self.cfg.interval_ms,
                    pools=[pool],
                )[pool]
                await nc.publish(subjects.metrics(pool), routes.SNAPSHOTS.encode(empty))
                count += 1
                if self._kv is not None:
                    with contextlib.suppress(Exception):
                        await self._kv.delete(self._kv_key(pool, name))
        self.telemetry.publishes.inc(count)
        self._published = published

    def _snapshot_limit(self) -> int:
        if self.cfg.max_snapshot_bytes:
            return self.cfg.max_snapshot_bytes
        server_max = int(getattr(self.bus.client, "max_payload", 0) or 1024 * 1024)
        return int(server_max * 0.9)

    def _kv_key(self, pool: str, collector: str | None = None) -> str:
        return f"{subjects.token(pool)}.{collector or self.id}"

    async def _tick_loop(self) -> None:
        next_at = time.monotonic()
        while True:
            now = time.monotonic()
            lag = now - next_at
            if lag > 0:
                self.telemetry.tick_lag.observe(lag)
            if lag > self._interval_s:
                next_at = now  # behind by more than a tick: skip, do not burst
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("collector tick failed")
            next_at += self._interval_s
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)


async def run(
    cfg: CollectorConfig,
    *,
    nats: NatsConfig,
    config_path: str | None,
    stop: asyncio.Event,
) -> None:
    collector = Collector(cfg, nats=nats, sources=build_sources(cfg, config_path))
    try:
        if await collector.start(stop):
            await stop.wait()
    finally:
        await collector.stop()

"""Collector replicas announce themselves on a NATS subject; each derives the live member list.

Every replica publishes a heartbeat every ``heartbeat_ms`` and treats a replica not heard from for
``lease_ms`` as dead. A new replica announces itself as inactive for one lease (it listens and
learns the others) before it takes endpoints, so the others keep scraping until it is ready. A
replica that stops cleanly says it is leaving, and the others take its endpoints at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from pointsman.bus import Received, ServiceBus
from pointsman.runtime import cancel_and_wait
from pointsman.v1 import CollectorAnnounce, routes
from pointsman_collector.core.shard import Heartbeat, live_members

log = logging.getLogger(__name__)

#: Discovery sources reload at their own pace; a short difference between replicas is normal.
VIEW_GRACE_S = 10.0


class Membership:
    """One replica's view of the others. The heartbeat handler is declared on the replica's bus
    at construction (before the bus starts); :meth:`start` begins announcing."""

    def __init__(
        self,
        bus: ServiceBus,
        *,
        me: str,
        subject: str,
        heartbeat_s: float,
        lease_s: float,
        on_change: Callable[[list[str]], None],
        owned: Callable[[], int] = lambda: 0,
    ) -> None:
        self._bus = bus
        self._route = routes.COLLECTOR_HEARTBEAT.on(subject)
        self.me = me
        self._heartbeat_s = heartbeat_s
        self._lease_s = lease_s
        self._on_change = on_change
        self._owned = owned
        self._seen: dict[str, Heartbeat] = {}
        self._started = time.monotonic()
        self.active = False
        self.members: list[str] = []
        self._task: asyncio.Task[None] | None = None
        #: Digest of this replica's discovered endpoints (set by the app).
        self.view = ""
        self._mismatch_since: dict[str, float] = {}
        self._warned: set[tuple[str, str]] = set()
        self._announcing = False
        bus.subscriber(self._route)(self._on_message)

    async def start(self) -> None:
        self._started = time.monotonic()
        self._announcing = True
        await self._announce()
        self._task = asyncio.create_task(self._loop(), name="collector-heartbeat")

    async def _on_message(self, msg: Received[CollectorAnnounce]) -> None:
        ann = msg.body
        if ann is None:
            log.warning("ignoring malformed heartbeat on %s", self._route.subject)
            return
        if not self._announcing:  # connected, not started yet: learn nothing before our lease
            return
        if ann.member == self.me:
            return
        self._check_view(ann)
        prev = self._seen.get(ann.member)
        self._seen[ann.member] = Heartbeat(ann.member, time.monotonic(), ann.active, ann.leaving)
        if prev is None and not ann.leaving:
            log.info("collector replica %s joined (active=%s)", ann.member, ann.active)
            # Answer at once so a new replica learns us without waiting a full beat.
            await self._announce()
        if ann.leaving or prev is None or prev.active != ann.active or prev.leaving:
            self._recompute()

    def _check_view(self, ann: CollectorAnnounce) -> None:
        if not ann.view or not self.view or ann.view == self.view or ann.leaving:
            self._mismatch_since.pop(ann.member, None)
            return
        now = time.monotonic()
        since = self._mismatch_since.setdefault(ann.member, now)
        key = (ann.member, ann.view + self.view)
        if now - since > VIEW_GRACE_S and key not in self._warned:
            self._warned.add(key)
            log.warning(
                "collector replica %s has discovered other endpoints than %s for %.0f s: "
                "endpoints only one of us knows may go unscraped; check both replicas' "
                "discovery config",
                ann.member,
                self.me,
                now - since,
            )

    @property
    def disagreeing(self) -> int:
        """Replicas whose discovered endpoints have differed from ours for a while."""
        now = time.monotonic()
        return sum(1 for t in self._mismatch_since.values() if now - t > VIEW_GRACE_S)

    async def _announce(self, leaving: bool = False) -> None:
        ann = CollectorAnnounce(
            member=self.me,
            active=self.active,
            leaving=leaving,
            endpoints=self._owned(),
            view=self.view,
        )
        await self._bus.publish(self._route.subject, self._route.encode(ann))

    def _recompute(self) -> None:
        now = time.monotonic()
        if not self.active and now - self._started >= self._lease_s:
            self.active = True
            log.info("collector replica %s active", self.me)
        for member, hb in list(self._seen.items()):
            if now - hb.seen_at > self._lease_s * 4:
                del self._seen[member]
        members = live_members(self._seen, now, self._lease_s, self.me, self.active)
        if members != self.members:
            gone = set(self.members) - set(members)
            if gone:
                log.info("collector replicas gone: %s", ", ".join(sorted(gone)))
            self.members = members
            log.info("collector replicas now: %s", ", ".join(members) or "none")
            self._on_change(members)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_s)
            try:
                self._recompute()
            except Exception:  # a bug here must not silence our heartbeats
                log.exception("membership update failed")
            await self._announce()

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
        if self._announcing:
            self._announcing = False
            await self._announce(leaving=True)

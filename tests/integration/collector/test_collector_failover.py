"""Several collector processes share a pool through NATS: one owner per endpoint in steady
state, takeover when a replica is killed, rebalance when one joins."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import nats
import pytest
import yaml

from pointsman.v1 import PoolSnapshot, decode, subjects
from pointsman_collector.core.shard import owner
from tests.helpers import procs

pytestmark = pytest.mark.integration

ENDPOINTS = 12


class Fleetview:
    """The picker's way of merging: latest snapshot per collector, union of their endpoints."""

    def __init__(self) -> None:
        self.latest: dict[str, PoolSnapshot] = {}
        #: (collector, address) -> scraped_at values seen, to find who is scraping what.
        self.scrapes: dict[tuple[str, str], list[tuple[float, float]]] = {}

    async def cb(self, msg: object) -> None:
        snap = decode(msg.data, PoolSnapshot)  # type: ignore[attr-defined]
        self.latest[snap.collector] = snap
        now = time.time()
        for e in snap.endpoints:
            seen = self.scrapes.setdefault((snap.collector, e.address), [])
            if e.healthy and (not seen or seen[-1][0] != e.scraped_at):
                seen.append((e.scraped_at, now))

    def owners(self, live: set[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for collector, snap in self.latest.items():
            if collector in live:
                for e in snap.endpoints:
                    out.setdefault(e.address, []).append(collector)
        return out

    def scraped_since(self, since: float) -> dict[str, set[str]]:
        """Address -> collectors that produced a new scrape of it after ``since``."""
        out: dict[str, set[str]] = {}
        for (collector, address), seen in self.scrapes.items():
            if any(at > since for at, _ in seen):
                out.setdefault(address, set()).add(collector)
        return out


async def until(
    cond: Callable[[], bool], what: str, detail: Callable[[], str], timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} not reached in {timeout}s: {detail()}")


async def test_replicas_split_take_over_and_rebalance(
    nats_url: str, fleet: object, unique: str, tmp_path: Path
) -> None:
    engines = [await fleet.add(waiting=i) for i in range(ENDPOINTS)]  # type: ignore[attr-defined]
    pool = f"shared-{unique}"
    addresses = {e.address for e in engines}
    running: dict[str, procs.Proc] = {}

    def start(name: str) -> None:
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(
            yaml.safe_dump(
                {
                    "pools": {pool: sorted(addresses)},
                    "collector": {
                        "id": name,
                        "http_port": procs.free_port(),
                        "interval_ms": 50,
                        "sharding": {
                            "subject": f"test.{unique}.hb",
                            "heartbeat_ms": 50,
                            "lease_ms": 250,
                        },
                        "latest": {"bucket": f"m-{unique}"},
                    },
                }
            )
        )
        running[name] = procs.spawn(
            name,
            [sys.executable, "-m", "pointsman_collector", "--config", str(cfg)],
            env={"NATS_URL": nats_url},
        )

    nc = await nats.connect(nats_url)
    view = Fleetview()
    await nc.subscribe(subjects.metrics(pool), cb=view.cb)

    def logs() -> str:
        owners = view.owners(set(running))
        now = time.time()
        latest = {
            c: (s.members, len(s.endpoints), round(now - s.published_at, 2))
            for c, s in view.latest.items()
        }
        return f"owners={owners}\nlatest={latest}\n" + "\n".join(
            p.output(1500) for p in running.values()
        )

    def steady(live: set[str]) -> Callable[[], bool]:
        """Every endpoint owned by exactly the replica rendezvous hashing names, all agreeing."""
        expected = {a: [owner(f"{pool}|{a}", sorted(live))] for a in addresses}

        def check() -> bool:
            owning = {cs[0] for cs in expected.values() if cs[0] is not None}
            return view.owners(live) == expected and all(
                view.latest[c].members == sorted(live) for c in owning
            )

        return check

    try:
        for name in ("c1", "c2", "c3"):
            start(name)
        await until(steady({"c1", "c2", "c3"}), "three-way split", logs)

        # Steady state: over a window, every endpoint gets fresh scrapes from one replica only.
        t0 = time.time()
        await asyncio.sleep(0.6)
        window = view.scraped_since(t0)
        assert set(window) == addresses
        assert all(len(cs) == 1 for cs in window.values()), window

        # Kill one replica without warning: the others take its endpoints.
        victim = view.owners({"c1", "c2", "c3"})
        lost = {a for a, cs in victim.items() if cs == ["c2"]}
        assert lost
        running["c2"].popen.send_signal(signal.SIGKILL)
        running["c2"].popen.wait(30)
        killed_at = time.time()
        del running["c2"]
        await until(steady({"c1", "c3"}), "takeover after kill", logs)

        def taken_over() -> bool:
            return all(
                any(
                    at > killed_at - 0.5
                    for c in ("c1", "c3")
                    for at, _ in view.scrapes.get((c, a), [])
                )
                for a in lost
            )

        await until(taken_over, "fresh scrapes of the dead replica's endpoints", logs)
        gaps = []
        for address in lost:
            firsts = [
                at
                for c in ("c1", "c3")
                for at, _ in view.scrapes.get((c, address), [])
                if at > killed_at - 0.5
            ]
            last_by_victim = max(at for at, _ in view.scrapes[("c2", address)])
            gaps.append(min(firsts) - last_by_victim)
        print(f"takeover: {len(lost)} endpoints, longest unscraped gap {max(gaps) * 1000:.0f} ms")

        # A new replica joins: it takes a share and nobody scrapes twice once settled.
        start("c4")
        await until(steady({"c1", "c3", "c4"}), "rebalance on join", logs)
        t0 = time.time()
        await asyncio.sleep(0.6)
        window = view.scraped_since(t0)
        assert set(window) == addresses
        assert all(len(cs) == 1 for cs in window.values()), window

        # A clean stop hands over at once (the replica says it is leaving).
        running["c4"].popen.send_signal(signal.SIGTERM)
        assert running["c4"].popen.wait(30) == 0
        del running["c4"]
        await until(steady({"c1", "c3"}), "hand-over on clean stop", logs)
    finally:
        for p in running.values():
            p.stop()
        await nc.close()

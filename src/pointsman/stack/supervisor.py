"""Keep the local stack's children running: a dead child is restarted with backoff, logged,
and the rest keep serving (``pointsman up`` is a supervisor, not a domino).

Restart policy (:class:`RestartPolicy`): the first restart comes ``initial_s`` (0.5 s) after
the exit is seen, each further one waits twice as long, up to ``max_s`` (30 s); a child that
ran ``reset_after_s`` (60 s) before it died starts again from ``initial_s``. A restarted child
runs the same command with the same ports and config, so nothing else needs to be told.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pointsman.stack.procs import Child


@dataclass(frozen=True)
class RestartPolicy:
    initial_s: float = 0.5
    max_s: float = 30.0
    reset_after_s: float = 60.0


@dataclass
class _Track:
    started: float
    backoff: float
    due: float | None = None
    restarts: int = 0


def next_backoff(current: float, ran_s: float, policy: RestartPolicy) -> tuple[float, float]:
    """(wait before this restart, wait before the next one) for a child that ran ``ran_s``."""
    wait = policy.initial_s if ran_s >= policy.reset_after_s else current
    return wait, min(max(wait * 2, policy.initial_s), policy.max_s)


class Supervisor:
    """Watches ``children`` (the stack's own dict, changed in place on restart).

    Call :meth:`check` from one loop (``pointsman up``'s main loop), or :meth:`start` for a
    background thread (tests). Children restarted here are started with ``die_with_parent`` as
    before; with a thread, that thread is their parent for the kernel's death signal, so it must
    run as long as the stack does (:meth:`stop` ends both together)."""

    def __init__(
        self,
        children: dict[str, Child],
        log: Callable[[str], None],
        policy: RestartPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.children = children
        self.log = log
        self.policy = policy or RestartPolicy()
        self.clock = clock
        self._tracks: dict[str, _Track] = {}
        self._holds: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def restarts(self) -> dict[str, int]:
        """Restarts so far, per child name."""
        return {name: t.restarts for name, t in self._tracks.items() if t.restarts}

    def hold(self, name: str, seconds: float) -> None:
        """Restart ``name`` no sooner than ``seconds`` from now, if it dies (fault injection:
        an outage of a known length)."""
        self._holds[name] = self.clock() + seconds

    def release(self, name: str) -> None:
        """End a :meth:`hold` early: ``name``, if it is down, is restarted on the next pass (an
        outage that ends when a test has seen what it needed, not after a guessed length)."""
        self._holds.pop(name, None)
        track = self._tracks.get(name)
        if track is not None and track.due is not None:
            track.due = min(track.due, self.clock())

    def check(self) -> list[str]:
        """One pass: schedule a restart for each newly dead child, restart those due. Returns
        the names restarted in this pass."""
        now = self.clock()
        restarted: list[str] = []
        for name, child in list(self.children.items()):
            track = self._tracks.setdefault(name, _Track(now, self.policy.initial_s))
            if child.alive:
                continue
            if track.due is None:
                ran = now - track.started
                wait, track.backoff = next_backoff(track.backoff, ran, self.policy)
                track.due = max(now + wait, self._holds.pop(name, 0.0))
                self.log(
                    f"{name} (pid {child.pid}) exited with code {child.popen.returncode} after "
                    f"{ran:.1f} s; restarting in {wait:.1f} s. Its last output:\n"
                    f"{child.tail(1500)}"
                )
            if now >= track.due:
                try:
                    fresh = child.respawn()
                except OSError as exc:
                    track.due = now + track.backoff
                    self.log(f"{name}: restart failed ({exc}); next try in {track.backoff:.1f} s")
                    continue
                self.children[name] = fresh
                track.restarts += 1
                track.started = now
                track.due = None
                restarted.append(name)
                self.log(f"{name} restarted (pid {fresh.pid}, restart {track.restarts})")
        return restarted

    def start(self, interval: float = 0.1) -> None:
        def loop() -> None:
            while not self._stop.wait(interval):
                self.check()

        self._thread = threading.Thread(target=loop, name="pointsman-supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop restarting (before the stack stops its children)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)

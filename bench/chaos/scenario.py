"""Single faults under a steady load through Envoy, and what the clients saw.

One :class:`SteadyLoad` sends chat completions (some streamed, some ``model: auto`` when the
classifier runs) at a fixed rate through the gateway of a :class:`~pointsman.stack.Stack` whose
supervisor restarts dead children. :func:`run_fault` SIGKILLs one part (its process group, as a
container runtime would), keeps it down ``hold_s`` seconds, waits for it to be back, and returns
a :class:`Row` of the chaos table: requests sent during the phase, failed, the longest error
window, the recovery time. ``tests/chaos`` asserts on the rows; ``python -m bench.chaos``
prints and keeps them.

A request *fails* when it gets no 200, a transport error, or a stream that breaks off before
``data: [DONE]``; a request Envoy served without a pick (``x-pointsman-route: fail-open``) or on
the default pool while the shim was down is not a failure, and is counted as ``fail_open``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import aiohttp

from pointsman.stack import Stack, StackOptions
from pointsman.stack.procs import http_status, port_free

Promise = Literal["zero", "not-started", "bounded"]


def chaos_options(classifier: bool) -> StackOptions:
    """The stack under test: two pools of two simulated replicas (one process each, fast:
    durations x0.02), Redis, the classifier (model selection only: with no safety check
    configured a request with no verdict may fail open), supervised by the caller."""
    return StackOptions(
        models=["alpha", "beta"],
        replicas=2,
        gateway_port=0,
        sim_args=["--time-scale", "0.02", "--max-num-seqs", "4"],
        sim_process_per_replica=True,
        classifier=classifier,
        redis=True,
        ready_timeout=120.0,
        overrides={
            # classifier + pick stay well inside Envoy's ext_proc message_timeout (2 s): a
            # request whose answer is lost with NATS must fail open in the shim, not in Envoy
            "shim": {"pick_timeout_ms": 300, "classifier": {"timeout_ms": 800}},
            "classifier": {
                "default_model": "alpha",
                "categories": {"math": {"models": [{"model": "beta", "score": 0.9}]}},
                "jailbreak": {"enabled": False},
                "pii": {"enabled": False},
            },
        },
    )


@dataclass
class Call:
    start: float
    end: float
    model: str
    stream: bool
    status: int
    error: str = ""
    route: str = ""
    #: The client hung up on purpose (``disconnect_every``): neither failed nor served.
    disconnected: bool = False

    @property
    def failed(self) -> bool:
        return not self.disconnected and (self.status != 200 or bool(self.error))


class SteadyLoad:
    """Open-loop load at ``rate`` requests per second from its own thread and event loop."""

    def __init__(
        self,
        gateway_url: str,
        models: list[str],
        rate: float = 10.0,
        stream_every: int = 3,
        timeout_s: float = 30.0,
        disconnect_every: int = 0,
        prompt: Callable[[int], str] | None = None,
    ) -> None:
        """``disconnect_every`` N > 0: every Nth request the client hangs up early (a streamed
        one after its first chunk, a plain one 5 ms after it was sent). ``prompt``: the user
        message of request N (default: a short line naming it)."""
        self.prompt = prompt or (lambda n: f"chaos request {n}: say something")
        self.url = f"{gateway_url}/v1/chat/completions"
        self.models = models
        self.rate = rate
        self.stream_every = stream_every
        self.disconnect_every = disconnect_every
        self.timeout_s = timeout_s
        self.calls: list[Call] = []
        self.pending: dict[int, float] = {}  # id -> start
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout_s + 10)

    def calls_between(self, t0: float, t1: float, wait_s: float = 60.0) -> list[Call]:
        """The finished calls started in [t0, t1), after those still running have ended."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            with self._lock:
                if not any(t0 <= s < t1 for s in self.pending.values()):
                    return sorted(
                        (c for c in self.calls if t0 <= c.start < t1), key=lambda c: c.start
                    )
            time.sleep(0.05)
        raise TimeoutError(f"calls started in the window still running after {wait_s} s")

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            tasks: set[asyncio.Task[None]] = set()
            n = 0
            began = time.monotonic()
            while not self._stop.is_set():
                model = self.models[n % len(self.models)]
                stream = n % self.stream_every == self.stream_every - 1
                task = asyncio.create_task(self._one(session, n, model, stream))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                n += 1
                await asyncio.sleep(max(0.0, began + n / self.rate - time.monotonic()))
            if tasks:
                await asyncio.wait(tasks)

    async def _one(self, session: aiohttp.ClientSession, n: int, model: str, stream: bool) -> None:
        start = time.monotonic()
        with self._lock:
            self.pending[n] = start
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": self.prompt(n)}],
            "max_tokens": 8,
            "stream": stream,
        }
        call = Call(start, 0.0, model, stream, 0)
        every = self.disconnect_every
        try:
            if every > 0 and n % every == every - 1:
                await self._hang_up(session, body, call)
                return
            async with session.post(self.url, json=body) as response:
                call.status = response.status
                call.route = response.headers.get("x-pointsman-route", "")
                text = await response.text()
                if stream and response.status == 200 and "data: [DONE]" not in text:
                    call.error = "stream ended before [DONE]"
                elif response.status != 200:
                    call.error = text[:200]
        except Exception as exc:
            call.error = f"{type(exc).__name__}: {exc}"[:200]
        finally:
            call.end = time.monotonic()
            with self._lock:
                self.calls.append(call)
                del self.pending[n]

    async def _hang_up(
        self, session: aiohttp.ClientSession, body: dict[str, Any], call: Call
    ) -> None:
        """A client that leaves: after the first chunk of a stream, or 5 ms into a plain
        request (mostly before its answer, often before the routing decision)."""
        call.disconnected = True

        async def streamed() -> None:
            async with session.post(self.url, json=body) as response:
                call.status = response.status
                await response.content.readany()
                response.close()  # drop the connection mid-answer

        async def plain() -> None:
            async with session.post(self.url, json=body) as response:
                call.status = response.status
                await response.read()

        if call.stream:
            await streamed()
        else:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.005):
                    await plain()


@dataclass
class Fault:
    """One part to SIGKILL: the stack's child names (all killed together) and how to tell it is
    back; ``promise`` is what the docs promise clients meanwhile."""

    name: str
    children: list[str]
    ready: Callable[[Stack], bool]
    promise: Promise
    #: How long the supervisor leaves it down before restarting it.
    hold_s: float = 2.0
    recover_timeout_s: float = 90.0


@dataclass
class Row:
    fault: str
    promise: str
    sent: int
    failed: int
    fail_open: int
    #: Failed among the requests that started after the kill (a replica's promise).
    failed_after_kill: int
    longest_error_window_s: float
    recovery_s: float
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ok(url: str) -> bool:
    return http_status(url, timeout=1.0) == 200


def _service_ready(stack: Stack, port_key: str) -> Callable[[Stack], bool]:
    return lambda s: _ok(f"http://127.0.0.1:{s.ports[port_key]}/readyz")


def all_services_ready(stack: Stack) -> bool:
    keys = ["collector_http", "picker_http", "shim_http"]
    if "classifier" in stack.children:
        keys.append("classifier_http")
    return all(_ok(f"http://127.0.0.1:{stack.ports[k]}/readyz") for k in keys)


def faults(stack: Stack) -> list[Fault]:
    """Every single fault the suite injects, in order (the slow classifier last)."""
    nats_port = int(stack.nats_url.rsplit(":", 1)[1])
    redis_port = int(stack.redis_url.rsplit(":", 1)[1].split("/")[0]) if stack.redis_url else 0
    model = next(iter(stack.pools))
    replica = f"sim-{model}-0"
    endpoint = stack.pools[model][0]
    out = [
        Fault("picker", ["picker"], lambda s: _ok(_url(s, "picker_http")), "zero", hold_s=3.0),
        Fault(
            "collector",
            ["collector"],
            lambda s: _ok(_url(s, "collector_http")),
            "zero",
            hold_s=5.0,
        ),
        Fault(
            "nats-server (restarted)",
            ["nats-server"],
            lambda s: not port_free(nats_port) and all_services_ready(s),
            "zero",
            hold_s=2.0,
        ),
        Fault(
            f"one replica ({endpoint})",
            [replica],
            lambda s: _ok(f"http://{endpoint}/health"),
            "not-started",
            hold_s=5.0,
        ),
        Fault("shim", ["shim"], lambda s: _ok(_url(s, "shim_http")), "bounded", hold_s=2.0),
    ]
    if redis_port:
        out.insert(
            3,
            Fault("redis-server", ["redis-server"], lambda s: not port_free(redis_port), "zero"),
        )
    if "classifier" in stack.children:
        out.append(
            Fault(
                "classifier",
                ["classifier"],
                lambda s: _ok(_url(s, "classifier_http")),
                "zero",
                hold_s=2.0,
                recover_timeout_s=180.0,
            )
        )
    return out


def _url(stack: Stack, key: str) -> str:
    return f"http://127.0.0.1:{stack.ports[key]}/readyz"


def error_windows(calls: list[Call], gap_s: float = 1.0) -> list[float]:
    """Windows of failures: failed calls (in start order) less than ``gap_s`` apart belong to
    one window, successes between them or not (with the shim down, requests for the default
    pool succeed between failing ones); a window runs from its first failed call's start to the
    latest end among its failed calls."""
    windows: list[float] = []
    first: float | None = None
    last_start = last_end = 0.0
    for call in (c for c in calls if c.failed):
        if first is not None and call.start - last_start >= gap_s:
            windows.append(last_end - first)
            first = None
        if first is None:
            first, last_end = call.start, call.end
        last_start = call.start
        last_end = max(last_end, call.end)
    if first is not None:
        windows.append(last_end - first)
    return windows


def run_fault(
    stack: Stack, load: SteadyLoad, fault: Fault, before_s: float = 1.0, after_s: float = 2.0
) -> Row:
    """Kill, hold down, wait until back (the part ready, then one request served through the
    gateway), keep the load on ``after_s`` more, and summarise the phase."""
    assert stack.supervisor is not None, "run the stack with stack.supervise()"
    t0 = time.monotonic()
    time.sleep(before_s)
    old = [stack.children[name] for name in fault.children]
    for name in fault.children:
        stack.supervisor.hold(name, fault.hold_s)
    killed_at = time.monotonic()
    for child in old:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
    for child in old:
        child.popen.wait(30)
    deadline = killed_at + fault.hold_s + fault.recover_timeout_s
    while True:
        replaced = all(stack.children[n] is not o for n, o in zip(fault.children, old, strict=True))
        if replaced and fault.ready(stack) and _served(stack, next(iter(stack.pools))):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{fault.name} not back {fault.recover_timeout_s:.0f} s after kill")
        time.sleep(0.05)
    recovery = time.monotonic() - killed_at
    time.sleep(after_s)
    t1 = time.monotonic()
    calls = load.calls_between(t0, t1)
    failed = [c for c in calls if c.failed]
    windows = error_windows(calls)
    return Row(
        fault=fault.name,
        promise=fault.promise,
        sent=len(calls),
        failed=len(failed),
        fail_open=sum(1 for c in calls if c.route == "fail-open"),
        failed_after_kill=sum(1 for c in failed if c.start >= killed_at),
        longest_error_window_s=round(max(windows, default=0.0), 2),
        recovery_s=round(recovery, 2),
        errors=sorted({f"{c.status} {c.error[:120]}" for c in failed})[:5],
    )


def _served(stack: Stack, model: str) -> bool:
    import urllib.request

    body = (
        b'{"model": "' + model.encode() + b'", "max_tokens": 2, '
        b'"messages": [{"role": "user", "content": "probe"}]}'
    )
    request = urllib.request.Request(
        f"{stack.gateway_url}/v1/chat/completions",
        data=body,
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status) == 200
    except Exception:
        return False


def table(rows: list[Row]) -> str:
    head = (
        f"{'fault':<34} {'promise':<12} {'sent':>5} {'failed':>6} {'fail-open':>9} "
        f"{'err window s':>12} {'recovery s':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.fault:<34} {r.promise:<12} {r.sent:>5} {r.failed:>6} {r.fail_open:>9} "
            f"{r.longest_error_window_s:>12.2f} {r.recovery_s:>10.2f}"
        )
    return "\n".join(lines)


SERVICES = ("collector", "picker", "classifier", "shim")


def sigterm_exit_times(stack: Stack, nats_gone: bool, timeout_s: float = 60.0) -> dict[str, float]:
    """SIGTERM every service at once (to its process group, as ``Stack.stop`` and a container
    runtime do) and time each one's exit; with ``nats_gone``, nats-server is SIGKILLed (and kept
    down) first. The supervisor restarts the services 1 s after they exit (not nats-server)."""
    assert stack.supervisor is not None, "run the stack with stack.supervise()"
    names = [n for n in SERVICES if n in stack.children]
    if nats_gone:
        nats = stack.children["nats-server"]
        stack.supervisor.hold("nats-server", 10**6)
        os.killpg(nats.pid, signal.SIGKILL)
        nats.popen.wait(30)
        time.sleep(1.0)  # the services notice: their connections drop, reconnects start
    children = {n: stack.children[n] for n in names}
    for name in names:
        stack.supervisor.hold(name, 1.0)
    sent = time.monotonic()
    for child in children.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGTERM)
    exited: dict[str, float] = {}
    while len(exited) < len(children) and time.monotonic() - sent < timeout_s:
        for name, child in children.items():
            if name not in exited and not child.alive:
                exited[name] = round(time.monotonic() - sent, 2)
        time.sleep(0.02)
    for name, child in children.items():
        if name not in exited:
            exited[name] = float("inf")
            child.stop()
    return exited

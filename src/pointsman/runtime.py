"""What every Pointsman process needs around its own logic: logging, the ops HTTP endpoint,
signal handling and the event loop.

Shared as a library, not a service: it knows nothing of any service's messages or decisions.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, TypeVar

import prometheus_client
from aiohttp import web
from prometheus_client.metrics import MetricWrapperBase

from pointsman.tracing import current_trace_id

log = logging.getLogger(__name__)
T = TypeVar("T")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        trace_id = current_trace_id()
        if trace_id:
            out["trace_id"] = trace_id
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def service_parser(prog: str, description: str, section: str) -> argparse.ArgumentParser:
    """The command line every service takes (``--config``, ``--log-level``, ``--json-logs``);
    ``section`` names the part of the config file it reads."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument(
        "--config",
        default=None,
        help="the Pointsman YAML config file (default: $POINTSMAN_CONFIG); "
        f"reads its '{section}' section and nats.url ($NATS_URL wins)",
    )
    p.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    p.add_argument(
        "--json-logs", action="store_true", help="log one JSON object per line, with the trace id"
    )
    return p


def setup_logging(level: str = "INFO", *, json_logs: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_logs:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class Fatal(Exception):
    """An error that retrying cannot fix (a credential the server refuses): :func:`run` ends
    the process with the message, exit code 2, and no traceback."""


#: A readiness check: ready or not, optionally with the reason shown on ``/readyz``.
Readiness = Callable[[], bool | tuple[bool, str]]


M = TypeVar("M", bound=MetricWrapperBase)


class Children:
    """The children of labelled metrics, remembered: ``children(metric, *values)`` is
    ``metric.labels(*values)``, which validates its arguments and takes a lock on every call
    (about 1 us), while a hot path asks for the same few children each time. Label values
    must be strings. Past ``limit`` label sets it stops remembering new ones (it never holds
    more than the metrics themselves)."""

    def __init__(self, limit: int = 10_000) -> None:
        self._found: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self._limit = limit

    def __call__(self, metric: M, *values: str) -> M:
        key = (metric, values)
        found = self._found.get(key)
        if found is None:
            found = metric.labels(*values)
            if len(self._found) < self._limit:
                self._found[key] = found
        return found


class OpsServer:
    """The ops HTTP endpoint of every service: ``/metrics`` (Prometheus text of the service's
    registry), ``/healthz`` (alive: answers as soon as the process runs) and ``/readyz`` (ready
    to serve: 200 or 503, JSON ``{"ready": ..., "reason": ...}``).

    Services start it before anything that may wait (NATS, models), so a probe can tell a
    process that is alive but not ready yet from one that is gone.

    It runs on a thread of its own with its own event loop, not on the service's: a saturated
    service loop (a flood of requests, a handler that blocks, CPU-bound work holding the loop)
    cannot starve the probes, so a kubelet does not restart a service for being busy. The
    ``ready`` callable is therefore called from that thread: it must only read state.
    """

    def __init__(
        self,
        port: int,
        ready: Readiness,
        host: str = "0.0.0.0",
        registry: prometheus_client.CollectorRegistry = prometheus_client.REGISTRY,
    ) -> None:
        self.port = port
        self.host = host
        self.ready = ready
        #: Services that run several instances in one process (tests) give each its own registry.
        self.registry = registry
        self.started = time.time()
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    async def start(self) -> int:
        """Start serving on the ops thread; returns the bound port (``port: 0`` picks one)."""
        started: concurrent.futures.Future[int] = concurrent.futures.Future()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                started.set_result(loop.run_until_complete(self._serve()))
            except BaseException as exc:
                started.set_exception(exc)
                loop.close()
                return
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=serve, name="pointsman-ops", daemon=True)
        self._thread.start()
        self.port = await asyncio.wrap_future(started)
        return self.port

    async def _serve(self) -> int:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        sockets = getattr(site._server, "sockets", None)
        return int(sockets[0].getsockname()[1]) if sockets else self.port

    async def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or loop.is_closed():
            return
        if self._runner is not None:
            done = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await asyncio.wrap_future(done)
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join, 5)

    async def _metrics(self, request: web.Request) -> web.Response:
        body = prometheus_client.generate_latest(self.registry)
        return web.Response(
            body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST}
        )

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "uptime_s": round(time.time() - self.started, 1)})

    async def _readyz(self, request: web.Request) -> web.Response:
        state = self.ready()
        ok, reason = state if isinstance(state, tuple) else (state, "ok" if state else "not ready")
        return web.json_response({"ready": ok, "reason": reason}, status=200 if ok else 503)


#: Seconds between the stop signal and a forced exit, when clean-up has not finished.
EXIT_DEADLINE_S = 8.0


def _exit_late() -> None:
    log.error("clean-up still running %.0f s after the stop signal: exiting", EXIT_DEADLINE_S)
    logging.shutdown()
    os._exit(0)


def run(
    main: Callable[[asyncio.Event], Coroutine[Any, Any, None]], *, use_uvloop: bool = True
) -> None:
    """Run ``main(stop_event)`` until SIGINT/SIGTERM sets the event; then let it clean up.

    Clean-up is bounded: :data:`EXIT_DEADLINE_S` after the first signal the process exits
    whatever it is waiting on (a drain with NATS gone, a KV delete on a loaded server, a
    handler stuck in a thread), so every service exits within 10 s of SIGTERM. A second
    signal exits at once."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            if stop.is_set():
                log.warning("second signal: exiting now")
                os._exit(1)
            stop.set()
            timer = threading.Timer(EXIT_DEADLINE_S, _exit_late)
            timer.daemon = True
            timer.start()

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, on_signal)
        await main(stop)

    try:
        if use_uvloop and os.environ.get("POINTSMAN_UVLOOP", "1") != "0":
            try:
                import uvloop
            except ImportError:
                pass
            else:
                uvloop.run(runner())
                return
        asyncio.run(runner())
    except Fatal as exc:
        log.error("%s", exc)
        raise SystemExit(2) from None


async def retry(
    what: str,
    attempt: Callable[[], Awaitable[T]],
    *,
    stop: asyncio.Event | None = None,
    delay: float = 0.5,
    max_delay: float | None = None,
    on_error: Callable[[BaseException], None] | None = None,
) -> T | None:
    """The one retry loop of Pointsman: await ``attempt()`` until it returns (its result) or
    ``stop`` is set (``None``). A failure is counted through ``on_error``, logged once per
    distinct error (a dependency that stays down does not flood the log), and retried after
    ``delay`` seconds, doubling up to ``max_delay`` when given.

    A loop that must keep running (a subscription, a watch) is an ``attempt`` that only ever
    ends by failing: ``retry`` restarts it after each failure. NATS connections are the
    exception: nats-py's own reconnect loop, configured in :mod:`pointsman.bus`, covers them.
    """
    last = ""
    wait = delay
    while stop is None or not stop.is_set():
        started = time.monotonic()
        try:
            return await attempt()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if on_error is not None:
                on_error(exc)
            text = f"{type(exc).__name__}: {exc}"
            if text != last:
                log.warning("%s failed, retrying: %s", what, text)
                last = text
            if time.monotonic() - started > wait:  # it had been up a while: start over
                wait = delay
        if stop is None:
            await asyncio.sleep(wait)
        else:
            with contextlib.suppress(asyncio.TimeoutError):
                async with asyncio.timeout(wait):
                    await stop.wait()
        if max_delay is not None:
            wait = min(wait * 2, max_delay)
    return None


async def cancel_and_wait(
    tasks: Iterable[asyncio.Future[Any]], *, every_s: float = 0.2, limit_s: float = 10.0
) -> None:
    """The one way Pointsman stops its background tasks: cancel them and wait until they end,
    cancelling again every ``every_s`` seconds those still running, for at most ``limit_s``.

    One cancel is not enough. A cancel that lands in the same loop iteration as the result a
    task waits on can be dropped: by ``asyncio.wait_for`` on Python 3.11 (nats-py's request
    uses it) and by nats-py's publish, which catches ``CancelledError`` while it flushes. The
    task then runs on, and a plain ``await task`` after ``cancel()`` waits for ever (the
    collector's stop hung a CI run this way). A task that outlives ``limit_s`` is logged and
    left to the event loop's end. Exceptions of the tasks are consumed: they are stopping.
    """
    tasks = list(tasks)
    pending = {t for t in tasks if not t.done()}
    deadline = time.monotonic() + limit_s
    while pending:
        for task in pending:
            task.cancel()
        left = deadline - time.monotonic()
        if left <= 0:
            log.warning("%d task(s) ignored cancellation: %s", len(pending), pending)
            break
        _, pending = await asyncio.wait(pending, timeout=min(every_s, left))
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: a stopping task's error is not news

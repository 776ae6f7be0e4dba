"""Dynamic batching: concurrent requests share one forward pass.

Requests from the event loop go into a bounded queue; one worker thread takes the first waiting
item and everything queued behind it (up to ``max_batch``; when others were queued it also waits
at most ``max_wait`` for more), runs the whole batch through the model, and hands each result
back to the event loop. A request that finds the queue empty runs at once. A transformer forward
pass costs about the same for 1 and for 32 short texts on a GPU, so batching multiplies
throughput; the wait bounds what one request pays for it. When the queue is full a request is
refused at once (:class:`Overloaded`) so the caller can answer within its deadline instead of
timing out.

The worker is a thread, not a coroutine: torch releases the GIL inside its kernels, so the event
loop keeps receiving and answering messages while a batch runs. With ``workers=2`` a second
batch is formed and handed to ``run`` while the first is still running: the engine tokenizes it
meanwhile (see ``Engine.run`` and ``subproc.EngineProcess``).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class Overloaded(Exception):
    """The queue is full: the request was shed without waiting."""


@dataclass
class _Item(Generic[T, R]):
    value: T
    future: asyncio.Future[R]
    loop: asyncio.AbstractEventLoop
    enqueued: float


@dataclass(frozen=True)
class BatchStats:
    """Reported after each batch, for metrics."""

    size: int
    queue_wait_s: float  # longest wait in the queue of any item of the batch
    run_s: float  # the model's time for the batch


_STOP = object()


class Batcher(Generic[T, R]):
    """Gathers concurrent :meth:`submit` calls into batches for ``run``.

    ``run`` takes a list of inputs and returns one result per input, in order; it runs on the
    worker thread. An exception from ``run`` fails every request of that batch.
    """

    def __init__(
        self,
        run: Callable[[list[T]], Sequence[R]],
        *,
        max_batch: int = 64,
        max_wait_s: float = 0.002,
        queue_size: int = 1024,
        on_batch: Callable[[BatchStats], None] | None = None,
        name: str = "batcher",
        workers: int = 1,
    ) -> None:
        self._run = run
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._on_batch = on_batch
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(workers)
        ]
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._started = True
            for t in self._threads:
                t.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Finish the queued work, then stop the workers."""
        if self._started:
            for _ in self._threads:
                self._queue.put(_STOP)
            for t in self._threads:
                t.join(timeout)
            self._started = False

    def depth(self) -> int:
        return self._queue.qsize()

    async def submit(self, value: T) -> R:
        """The result for ``value``; raises :class:`Overloaded` at once when the queue is full."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[R] = loop.create_future()
        try:
            self._queue.put_nowait(_Item(value, fut, loop, time.perf_counter()))
        except queue.Full:
            raise Overloaded(f"classifier queue full ({self._queue.maxsize} waiting)") from None
        return await fut

    def _take(self) -> tuple[list[_Item[T, R]], bool]:
        first = self._queue.get()
        if first is _STOP:
            return [], True
        items: list[_Item[T, R]] = [first]  # type: ignore[list-item]
        # Wait for company only when there is evidence of concurrency: others already queued.
        # A request that finds the queue empty runs at once; at low load the wait would be pure
        # latency (2 ms of a 12 ms CPU classification), and under load requests pile up while
        # the previous batch runs, so batches still form.
        wait = self.max_wait_s if not self._queue.empty() else 0.0
        deadline = time.perf_counter() + wait
        stop = False
        while len(items) < self.max_batch:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    nxt = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if nxt is _STOP:
                stop = True
                break
            items.append(nxt)  # type: ignore[arg-type]
        return items, stop

    def _work(self) -> None:
        while True:
            items, stop = self._take()
            # Requests whose caller gave up (deadline passed, cancelled) are not worth a forward
            # pass: under overload that work would only delay the requests still waiting.
            items = [it for it in items if not it.future.done()]
            if items:
                self._process(items)
            if stop:
                return

    def _process(self, items: list[_Item[T, R]]) -> None:
        start = time.perf_counter()
        try:
            results = list(self._run([it.value for it in items]))
            if len(results) != len(items):
                raise RuntimeError(f"batch of {len(items)} gave {len(results)} results")
        except BaseException as exc:
            log.exception("batch of %d failed", len(items))
            for it in items:
                it.loop.call_soon_threadsafe(_fail, it.future, exc)
            return
        end = time.perf_counter()
        # One wake-up of each event loop per batch, not one per request.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[R], R]]] = {}
        for it, res in zip(items, results, strict=True):
            by_loop.setdefault(it.loop, []).append((it.future, res))
        for loop, pairs in by_loop.items():
            loop.call_soon_threadsafe(_resolve_all, pairs)
        if self._on_batch is not None:
            wait = max(start - it.enqueued for it in items)
            self._on_batch(BatchStats(len(items), wait, end - start))


def _resolve_all(pairs: list[tuple[asyncio.Future[R], R]]) -> None:
    for fut, value in pairs:
        if not fut.done():
            fut.set_result(value)


def _fail(fut: asyncio.Future[R], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)

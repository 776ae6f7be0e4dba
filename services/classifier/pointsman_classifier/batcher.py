"""Dynamic batching: concurrent requests share one forward pass.

Requests from the event loop go into a bounded queue; one worker thread takes the first waiting
item and everything queued behind it (up to ``max_batch``; when others were queued it also waits
at most ``max_wait`` for more), runs the whole batch through the model, and hands each result
back to the event loop. A request that finds the queue empty runs at once. A transformer forward
pass costs about the same for 1 and for 32 short texts on a GPU, so batching multiplies
throughput; the wait bounds what one request pays for it. When the queue is full a request is
refused at once (:class:`Overloaded`) so the caller can answer within its deadline instead of
timing out.

**Deadlines.** A request may carry the time by which its answer is needed (``deadline``, on the
``time.monotonic`` clock; the bus request's budget, issue 12) or get ``budget_s`` from the
config. The batcher predicts when a new request would finish, from what it measured (a batch's
time in the model, and the model's time per prompt when saturated) and the queue ahead of it,
and refuses at once (:class:`Overloaded`) what would finish too late. Past capacity the queue
then stays as long as the deadline allows: the model keeps serving at its full rate, every
admitted request is answered in time, and the rest get an immediate "overloaded" instead of a
timeout (measured on the H200: see the classifier README). A request whose deadline passes while
it waits is dropped with :class:`Overloaded` before it takes a place in a batch.

The worker is a thread, not a coroutine: torch releases the GIL inside its kernels, so the event
loop keeps receiving and answering messages while a batch runs. With ``workers=2`` a second
batch is formed and handed to ``run`` while the first is still running: the engine tokenizes it
meanwhile (see ``Engine.run`` and ``subproc.EngineProcess``).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


#: The interpreter's GIL switch interval in a process that batches (the default is 5 ms).
SWITCH_INTERVAL_S = 0.00025


def quick_handoffs() -> None:
    """Shorten the GIL switch interval of this process to :data:`SWITCH_INTERVAL_S`.

    Batching hands work between threads: the event loop, the batcher's workers, the engine
    process's reply reader, and inside the engine process its three stages. A thread that blocked
    on a pipe, a queue or the GPU needs the GIL back to go on, and while another thread runs
    Python it waits up to the switch interval. Measured on the H200, together with three batches
    in flight and BERT batches of at most 64 (the separate effects were not measured): BERT-base
    at 256 tokens and 5,000 requests/s went from p50 62 ms / p99 91 ms to 25 ms / 39 ms.
    """
    if sys.getswitchinterval() > SWITCH_INTERVAL_S:
        sys.setswitchinterval(SWITCH_INTERVAL_S)


class Overloaded(Exception):
    """The request was shed without waiting: the queue is full (``reason`` ``queue_full``) or it
    cannot be answered by its deadline (``deadline``)."""

    def __init__(self, message: str, reason: str = "queue_full") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class _Item(Generic[T, R]):
    value: T
    future: asyncio.Future[R]
    loop: asyncio.AbstractEventLoop
    enqueued: float  # time.monotonic()
    deadline: float | None
    predicted: float  # when admission expected the answer (0: not predicted)


class Pace:
    """What the batcher measured of the model, to predict when a request would be answered.

    * ``latency_s``: a batch's time in the model, from hand-over to results (moving average).
    * ``per_item_s``: the model's time per prompt when it is saturated: the gap between
      consecutive batch completions while another batch was already in flight (else the batch's
      own time), over the batch's size (moving average). Batches of at least half ``max_batch``
      move it either way; smaller ones carry a fixed cost per batch and only lower it (until a
      batch of that size has been seen, the largest batch so far sets it).
    * ``late_s``: how much later than that prediction answers reach the caller's event loop: the
      moving average of each batch's worst miss. It covers what the model's pace leaves out: a
      busy event loop runs the hand-back late, GIL hand-offs, the variance of batch times. The
      admission adds it, so that at overload the requests admitted are answered in time and the
      rest are refused at once. On the H200 at twice MiniLM's capacity, before it: 16% of the
      answers came after their deadline (see the classifier README).
    """

    def __init__(self, max_batch: int, workers: int) -> None:
        self.max_batch = max_batch
        self.workers = workers
        self.latency_s = 0.0
        self.per_item_s = 0.0
        self.late_s = 0.0
        self._ref_size = 0
        self._last_done = 0.0
        self._lock = threading.Lock()

    def record(self, size: int, handed: float, done: float) -> None:
        with self._lock:
            gap = done - max(handed, self._last_done)
            self._last_done = max(self._last_done, done)
            took = done - handed
            self.latency_s = took if not self.latency_s else 0.8 * self.latency_s + 0.2 * took
            sample = max(gap, 0.0) / size
            if not self.per_item_s or (size >= self._ref_size and size < self.max_batch // 2):
                self.per_item_s = sample
                self._ref_size = size
            elif size >= self.max_batch // 2 or sample < self.per_item_s:
                # A small batch overstates the time per prompt (its fixed cost), so it may only
                # lower the figure: else one slow spell could keep the queue short by shedding,
                # the batches small, and the figure high for good.
                self.per_item_s = 0.8 * self.per_item_s + 0.2 * sample
                self._ref_size = max(self._ref_size, size)

    def delivered(self, miss: float, size: int) -> None:
        """Record a batch's worst miss (delivery minus the prediction made at admission, on the
        event loop; negative when early). As with ``per_item_s``, only batches of at least half
        ``max_batch`` (a saturated engine, where the queue runs up to the deadline) may raise
        the figure; smaller ones may only lower it. At low load one slow answer on a busy CPU
        would otherwise make the batcher refuse requests it could serve in time: with this
        rule, a batcher that never saw a full batch admits exactly as it did before.
        """
        sample = max(miss, 0.0)
        if size >= self.max_batch // 2 or sample < self.late_s:
            self.late_s = 0.8 * self.late_s + 0.2 * sample

    def finish_time(self, now: float, queued: int) -> float:
        """When a request arriving now, behind ``queued`` others, would be answered: the queue
        ahead drains at the saturated rate, then a free place in the pipeline (one batch of
        ``workers`` at most) and the batch's own time."""
        return now + queued * self.per_item_s + self.latency_s * (1 + 1 / self.workers)


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
        budget_s: float = 0.0,
    ) -> None:
        self._run = run
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.budget_s = budget_s
        self.pace = Pace(max_batch, workers)
        self.shed: dict[str, int] = {"queue_full": 0, "deadline": 0}
        self._shed_lock = threading.Lock()
        # A deque, not a queue.Queue: appending and popping need no lock of their own (the GIL
        # makes each one atomic), so the event loop never waits for a worker that holds the
        # queue's mutex. On the H200 at 39,000 offered MiniLM requests/s, the batcher with a
        # queue.Queue and an estimator that could stay stuck high (see Pace) served 1,100/s;
        # with both changed, 17,500/s (measured together).
        self._items: deque[object] = deque()
        self._queue_size = queue_size
        self._waiting = threading.Event()  # set when items may be waiting
        self._running = 0  # batches in the model now
        self._on_batch = on_batch
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(workers)
        ]
        self._started = False

    def start(self) -> None:
        if not self._started:
            quick_handoffs()
            self._started = True
            for t in self._threads:
                t.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Finish the queued work, then stop the workers."""
        if self._started:
            for _ in self._threads:
                self._put(_STOP)
            for t in self._threads:
                t.join(timeout)
            self._started = False

    def depth(self) -> int:
        return len(self._items)

    def _put(self, item: object) -> None:
        self._items.append(item)
        if not self._waiting.is_set():
            self._waiting.set()

    def _pop(self, timeout: float | None) -> object | None:
        """The oldest item; waits up to ``timeout`` (``None``: forever) when there is none."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                return self._items.popleft()
            except IndexError:
                pass
            self._waiting.clear()
            if self._items:  # appended between the pop and the clear: no wake-up is lost
                continue
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                return None
            self._waiting.wait(left)

    async def submit(self, value: T, deadline: float | None = None) -> R:
        """The result for ``value``; raises :class:`Overloaded` at once when the queue is full or
        the answer cannot come by ``deadline`` (``time.monotonic()`` seconds; ``None``: now plus
        ``budget_s``, or no deadline when that is 0), and later when the deadline passes while
        the request still waits for a batch."""
        return await self.submit_nowait(value, deadline)

    def submit_nowait(self, value: T, deadline: float | None = None) -> asyncio.Future[R]:
        """:meth:`submit` without the wait: the future of the result (call on the event loop)."""
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        if deadline is None and self.budget_s > 0:
            deadline = now + self.budget_s
        queued = len(self._items)
        if queued >= self._queue_size:
            self._count_shed("queue_full")
            raise Overloaded(f"classifier queue full ({self._queue_size} waiting)")
        # With nothing queued or running the request goes at once, whatever the estimate says:
        # the estimate only learns from batches that run.
        busy = queued or self._running
        predicted = 0.0
        if deadline is not None and busy:
            predicted = self.pace.finish_time(now, queued)
            if predicted + self.pace.late_s > deadline:
                self._count_shed("deadline")
                raise Overloaded("classifier cannot answer by the deadline", "deadline")
        fut: asyncio.Future[R] = loop.create_future()
        self._put(_Item(value, fut, loop, now, deadline, predicted))
        return fut

    def _take(self) -> tuple[list[_Item[T, R]], bool]:
        first = self._pop(None)
        if first is _STOP:
            return [], True
        items: list[_Item[T, R]] = [first]  # type: ignore[list-item]
        # Wait for company only when there is evidence of concurrency: others already queued.
        # A request that finds the queue empty runs at once; at low load the wait would be pure
        # latency (2 ms of a 12 ms CPU classification), and under load requests pile up while
        # the previous batch runs, so batches still form.
        wait = self.max_wait_s if self._items else 0.0
        deadline = time.monotonic() + wait
        stop = False
        while len(items) < self.max_batch:
            try:
                nxt = self._items.popleft()
            except IndexError:
                nxt = self._pop(deadline - time.monotonic())
                if nxt is None:
                    break
            if nxt is _STOP:
                stop = True
                break
            items.append(nxt)  # type: ignore[arg-type]
        return items, stop

    def _work(self) -> None:
        while True:
            items, stop = self._take()
            # Requests whose caller gave up (cancelled) or whose deadline has passed are not worth
            # a forward pass: under overload that work would only delay the requests still
            # waiting. The late ones are told at once.
            now = time.monotonic()
            keep: list[_Item[T, R]] = []
            late: list[_Item[T, R]] = []
            for it in items:
                if it.deadline is not None and now > it.deadline:
                    late.append(it)
                elif not it.future.done():
                    keep.append(it)
            if late:
                self._drop_late(late)
            items = keep
            if items:
                self._running += 1
                try:
                    self._process(items)
                finally:
                    self._running -= 1
            if stop:
                return

    def _count_shed(self, reason: str) -> None:
        with self._shed_lock:
            self.shed[reason] += 1

    def _drop_late(self, late: list[_Item[T, R]]) -> None:
        with self._shed_lock:
            self.shed["deadline"] += len(late)
        exc = Overloaded("classifier deadline passed in the queue", "deadline")
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[R]]] = {}
        for it in late:
            by_loop.setdefault(it.loop, []).append(it.future)
        for loop, futs in by_loop.items():
            loop.call_soon_threadsafe(_fail_all, futs, exc)

    def _process(self, items: list[_Item[T, R]]) -> None:
        start = time.monotonic()
        try:
            results = list(self._run([it.value for it in items]))
            if len(results) != len(items):
                raise RuntimeError(f"batch of {len(items)} gave {len(results)} results")
        except BaseException as exc:
            log.exception("batch of %d failed", len(items))
            for it in items:
                it.loop.call_soon_threadsafe(_fail, it.future, exc)
            return
        end = time.monotonic()
        self.pace.record(len(items), start, end)
        # One wake-up of each event loop per batch, not one per request.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[R], R]]] = {}
        for it, res in zip(items, results, strict=True):
            by_loop.setdefault(it.loop, []).append((it.future, res))
        # The earliest prediction of the batch: its miss is the batch's worst.
        predicted = min((it.predicted for it in items if it.predicted), default=0.0)
        for loop, pairs in by_loop.items():
            loop.call_soon_threadsafe(_resolve_all, pairs, self.pace, predicted, len(items))
        if self._on_batch is not None:
            wait = max(start - it.enqueued for it in items)
            self._on_batch(BatchStats(len(items), wait, end - start))


def _resolve_all(
    pairs: list[tuple[asyncio.Future[R], R]], pace: Pace, predicted: float, size: int
) -> None:
    if predicted:
        pace.delivered(time.monotonic() - predicted, size)
    for fut, value in pairs:
        if not fut.done():
            fut.set_result(value)


def _fail(fut: asyncio.Future[R], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


def _fail_all(futs: list[asyncio.Future[R]], exc: BaseException) -> None:
    for fut in futs:
        _fail(fut, exc)

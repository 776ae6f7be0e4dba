"""Run the engine in a child process, so the model never competes with the bus for the GIL.

Measured on the H100: with the model in the service's own process, a busy event loop (NATS
messages, thousands of requests per second) and the batcher thread fight over the GIL. A PyTorch
forward pass releases and re-takes the GIL around each of its hundreds of kernel launches, and
each re-take waits for the loop thread's switch interval (5 ms): a 3 ms MiniLM batch took
100-600 ms and throughput collapsed to about 1,000 prompts/s. In a child process the model has
an interpreter of its own; the parent's batcher thread only sends a batch of texts through a
pipe and blocks (GIL released) until the outputs come back.

The child is a pipeline, one thread per stage: one tokenizes what arrives, one launches the
encoder on the device, and on a GPU a third waits for the device, runs the heads and sends the
answers back (on a CPU the launching thread does that itself: the launch already computed).
Measured on the H100 with a BERT-base-sized encoder at 256 tokens, tokenizing and converting a
batch of 128 took about 45 of its 66 ms, in series with the forward pass; with several batches
in flight (``batching.in_flight``) that work overlaps. On a GPU the launch only enqueues work
(``gpu.py``), so the next batch is queued on the device while the heads of the current one run.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import queue
import signal
import threading
from collections import deque
from multiprocessing.connection import Connection
from typing import Any

from pointsman_classifier.batcher import quick_handoffs
from pointsman_classifier.config import ClassifierConfig
from pointsman_classifier.config import in_flight as resolved_in_flight
from pointsman_classifier.core import ENGINE_STATS, Outputs

log = logging.getLogger(__name__)


class EngineDied(RuntimeError):
    """The engine's child process is gone (killed, out of memory): its batch was not run."""


class _Slot:
    """One batch in flight: the receiver thread fills ``reply`` and sets ``done``."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.reply: tuple[Any, ...] = ("error", "no reply")


class EngineProcess:
    """The engine in a spawned child; :meth:`run` has the same contract as ``Engine.run``.

    Up to ``in_flight`` batches (default ``batching.in_flight``, resolved for the device) may be
    in the child at once (callers beyond wait their turn):
    the child tokenizes the next batch on a thread of its own while the current one runs, so on
    a GPU the CPU's tokenization no longer adds to the forward pass. Replies come back in the
    order the batches were sent.
    """

    def __init__(
        self,
        cfg: ClassifierConfig,
        start_timeout: float = 600.0,
        in_flight: int | None = None,
        load_nice: int = 0,
    ) -> None:
        """``load_nice`` > 0: the child loads the models at that lower CPU priority (see
        :func:`_load`), then serves at the normal one."""
        ctx = mp.get_context("spawn")
        # One pipe each way: the parent's callers send while its receiver thread reads.
        self._req_child, self._req = ctx.Pipe(duplex=False)
        self._res, self._res_child = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(
            target=_serve,
            args=(self._req_child, self._res_child, cfg.model_dump(), load_nice),
            name="classifier-engine",
            daemon=True,
        )
        self._proc.start()
        self._req_child.close()
        self._res_child.close()
        self._send_lock = threading.Lock()
        self._pending: deque[_Slot] = deque()
        self._dead = False
        if not self._res.poll(start_timeout):
            self.close()
            raise RuntimeError(f"classifier engine process not ready after {start_timeout:.0f}s")
        status, payload = self._res.recv()
        if status != "ready":
            self.close()
            raise RuntimeError(f"classifier engine process failed to start: {payload}")
        self.name: str = payload["name"]
        self.info: dict[str, Any] = payload
        device_type = str(payload["device"]).split(":")[0]
        self.in_flight = in_flight or resolved_in_flight(cfg.batching, device_type)
        self._window = threading.BoundedSemaphore(self.in_flight)
        self._stats = dict.fromkeys(ENGINE_STATS, 0.0)
        self._receiver = threading.Thread(
            target=self._receive, name="classifier-engine-replies", daemon=True
        )
        self._receiver.start()

    def run(self, texts: list[str]) -> list[Outputs]:
        with self._window:
            slot = _Slot()
            with self._send_lock:  # the order of _pending is the order of the sends
                if self._dead:
                    raise EngineDied(self._died())
                self._pending.append(slot)
                try:
                    self._req.send(texts)
                except (EOFError, OSError) as exc:
                    self._pending.remove(slot)
                    raise EngineDied(self._died()) from exc
            slot.done.wait()
        status, payload = slot.reply[:2]
        if status == "died":
            raise EngineDied(self._died())
        if status != "ok":
            raise RuntimeError(f"classifier engine failed: {payload}")
        out: list[Outputs] = payload
        return out

    def _receive(self) -> None:
        while True:
            try:
                reply = self._res.recv()
            except (EOFError, OSError):
                break
            with self._send_lock:
                slot = self._pending.popleft() if self._pending else None
                if reply[0] == "ok":
                    for k, v in reply[2].items():
                        self._stats[k] += v
            if slot is not None:
                slot.reply = reply
                slot.done.set()
        with self._send_lock:
            self._dead = True
            pending, self._pending = list(self._pending), deque()
        for slot in pending:
            slot.reply = ("died", None)
            slot.done.set()

    @property
    def alive(self) -> bool:
        """Whether the child still serves (``False`` once it died: killed, out of memory)."""
        return not self._dead and self._proc.is_alive()

    def stats(self) -> dict[str, float]:
        """The engine's counters (``Engine.stats``), summed from its replies."""
        with self._send_lock:
            return dict(self._stats)

    def _died(self) -> str:
        return f"classifier engine process died (exit code {self._proc.exitcode})"

    def warm_up(self) -> None:
        self.run(["warm-up"])

    def close(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self._req.send(None)
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        self._req.close()
        self._res.close()


def load_engine(cfg: ClassifierConfig, load_nice: int = 0) -> Any:
    """The engine, in a child process unless ``engine_process`` is off; warmed up.
    ``load_nice``: see :class:`EngineProcess` (a child process only)."""
    if cfg.engine_process:
        return EngineProcess(cfg, load_nice=load_nice)
    from pointsman_classifier.engine import Engine

    engine = Engine(cfg)
    engine.warm_up()
    return engine


def _load(cfg: ClassifierConfig, nice: int) -> Any:
    """The engine, built (torch imported, models loaded and quantized) on a thread whose CPU
    priority is lowered by ``nice`` when that is > 0.

    A spare engine loads while the others serve: on the 2-core machine its 5 s of CPU (half
    imports, half loading) took a core from the serving engines, and long documents missed their
    deadlines for as long (``python -m bench.chaos.engine_kill``). On Linux a nice value belongs
    to a thread, and the threads a thread starts inherit it: only this loading thread is
    lowered, and it ends before the caller warms the engine up and starts the serving threads;
    those, and the thread pools the warm-up starts (torch's, the tokenizer's), keep the normal
    priority, without the privilege that raising a priority again would need. What the loading
    thread started stays lowered and idle: the progress bar's monitor, the thread pools of the libraries
    imported meanwhile (SciPy's BLAS, for transformers' object-detection losses) and, with more
    than one torch thread, that thread's own OpenMP workers (each thread that starts a parallel
    region has its own). ``tests/integration/classifier`` checks that every thread that works
    while the engine serves runs at the normal priority.
    """
    if nice <= 0:
        from pointsman_classifier.engine import Engine

        return Engine(cfg)
    built: list[Any] = []
    failed: list[BaseException] = []

    def build() -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, nice)  # 0: this thread (Linux)
            from pointsman_classifier.engine import Engine

            built.append(Engine(cfg))
        except BaseException as exc:
            failed.append(exc)

    loader = threading.Thread(target=build, name="classifier-engine-load")
    loader.start()
    loader.join()
    if failed:
        raise failed[0]
    return built[0]


def _serve(req: Connection, res: Connection, cfg_data: dict[str, Any], load_nice: int) -> None:
    # Ctrl-C in a terminal reaches the whole process group: the parent stops this child itself
    # (``close``), after the batches in flight, so the child does not die under it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        engine = _load(ClassifierConfig.model_validate(cfg_data), load_nice)
        engine.warm_up()
        info = engine.info()
    except BaseException as exc:
        res.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    res.send(("ready", info))
    quick_handoffs()
    # Stages, each a thread: tokenize what arrives, launch it on the device (this thread), and on
    # a GPU finish (wait for the device, heads, send) in a third, so the next batch is queued on
    # the GPU while the heads of this one run. On a CPU the launch computes the features itself:
    # a third thread would only add a hand-over per batch, so this thread also finishes. Errors
    # travel down the stages in order, so the replies keep the order of the requests. The
    # parent's window bounds what is in flight.
    prepared: queue.Queue[tuple[str, Any] | None] = queue.Queue()
    launched: queue.Queue[tuple[str, Any] | None] = queue.Queue()

    def read() -> None:
        while True:
            try:
                texts = req.recv()
            except (EOFError, OSError):
                texts = None
            if texts is None:
                prepared.put(None)
                return
            try:
                prepared.put(("ok", engine.prepare(texts)))
            except Exception as exc:
                prepared.put(("error", f"{type(exc).__name__}: {exc}"))

    def launch(item: tuple[str, Any]) -> tuple[str, Any]:
        status, batch = item
        if status != "ok":
            return item
        try:
            return ("ok", engine.launch(batch))
        except Exception as exc:
            return ("error", f"{type(exc).__name__}: {exc}")

    def finish(item: tuple[str, Any]) -> None:
        status, flight = item
        if status != "ok":
            res.send(item)
            return
        try:
            outs, stats = engine.finish(flight)
            res.send(("ok", outs, stats))
        except Exception as exc:
            res.send(("error", f"{type(exc).__name__}: {exc}"))

    def finish_all() -> None:
        while (item := launched.get()) is not None:
            finish(item)

    threading.Thread(target=read, name="classifier-tokenize", daemon=True).start()
    finisher: threading.Thread | None = None
    if engine.encoder.gpu is not None:
        finisher = threading.Thread(target=finish_all, name="classifier-finish", daemon=True)
        finisher.start()
    while (item := prepared.get()) is not None:
        if finisher is None:
            finish(launch(item))
        else:
            launched.put(launch(item))
    if finisher is not None:
        launched.put(None)
        finisher.join()

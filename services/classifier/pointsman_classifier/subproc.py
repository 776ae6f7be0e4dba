"""Run the engine in a child process, so the model never competes with the bus for the GIL.

Measured on the H100: with the model in the service's own process, a busy event loop (NATS
messages, thousands of requests per second) and the batcher thread fight over the GIL. A PyTorch
forward pass releases and re-takes the GIL around each of its hundreds of kernel launches, and
each re-take waits for the loop thread's switch interval (5 ms): a 3 ms MiniLM batch took
100-600 ms and throughput collapsed to about 1,000 prompts/s. In a child process the model has
an interpreter of its own; the parent's batcher thread only sends a batch of texts through a
pipe and blocks (GIL released) until the outputs come back.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import threading
from multiprocessing.connection import Connection
from typing import Any

from pointsman_classifier.config import ClassifierConfig
from pointsman_classifier.core import Outputs

log = logging.getLogger(__name__)


class EngineProcess:
    """The engine in a spawned child; :meth:`run` has the same contract as ``Engine.run``."""

    def __init__(self, cfg: ClassifierConfig, start_timeout: float = 600.0) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_serve, args=(child, cfg.model_dump()), name="classifier-engine", daemon=True
        )
        self._proc.start()
        child.close()
        self._lock = threading.Lock()
        if not self._conn.poll(start_timeout):
            self.close()
            raise RuntimeError(f"classifier engine process not ready after {start_timeout:.0f}s")
        status, payload = self._conn.recv()
        if status != "ready":
            self.close()
            raise RuntimeError(f"classifier engine process failed to start: {payload}")
        self.name: str = payload["name"]
        self.info: dict[str, Any] = payload

    def run(self, texts: list[str]) -> list[Outputs]:
        with self._lock:  # one batch in flight; the pipe carries one request at a time
            try:
                self._conn.send(texts)
                status, payload = self._conn.recv()
            except (EOFError, OSError) as exc:
                raise RuntimeError(
                    f"classifier engine process died (exit code {self._proc.exitcode})"
                ) from exc
        if status != "ok":
            raise RuntimeError(f"classifier engine failed: {payload}")
        out: list[Outputs] = payload
        return out

    def warm_up(self) -> None:
        self.run(["warm-up"])

    def close(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self._conn.send(None)
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        self._conn.close()


def load_engine(cfg: ClassifierConfig) -> Any:
    """The engine, in a child process unless ``engine_process`` is off; warmed up."""
    if cfg.engine_process:
        return EngineProcess(cfg)
    from pointsman_classifier.engine import Engine

    engine = Engine(cfg)
    engine.warm_up()
    return engine


def _serve(conn: Connection, cfg_data: dict[str, Any]) -> None:
    try:
        from pointsman_classifier.engine import Engine

        engine = Engine(ClassifierConfig.model_validate(cfg_data))
        engine.warm_up()
        info = {
            "name": engine.name,
            "device": str(engine.device),
            "layers": engine.encoder.n_layers,
            "hidden": engine.encoder.hidden_size,
        }
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", info))
    while True:
        try:
            texts = conn.recv()
        except (EOFError, OSError):
            return
        if texts is None:
            return
        try:
            conn.send(("ok", engine.run(texts)))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))

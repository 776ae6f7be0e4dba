"""The encoder's forward pass on a CUDA device: fixed bucket shapes, one CUDA graph per shape.

Measured on the H200 (issue 15) before this module: the engine reached 2,183 BERT-base
classifications/s at 256 tokens while the forward pass alone ran about 8,150/s, the GPU busy
about 30% of the time: the CPU side was the limit. With this module, the engine process's
three-stage pipeline (``subproc.py``), the Rust tokenizer (``tokens.py``) and the batcher's quick
hand-overs, the same run serves 7,430/s at p99 49 ms with the GPU busy 98% of the time (the
classifier README has the table). What this module does:

* **Shapes.** A batch is padded to a bucket shape: rows to a power of two up to 16, then a
  multiple of 16; tokens to one of ``seq_buckets``. A batch of mixed lengths is cut, by length,
  into the groups that cost the fewest padded tokens (:func:`plan_groups`), each at its own shape.
* **CUDA graphs.** Every bucket shape is captured once at start-up (:meth:`GpuRunner.capture`,
  3-6 s for the 60 shapes of ``max_batch`` 128 and 256 tokens). A replay is one launch instead of
  the eager pass's hundreds, each of which takes the GIL that the tokenizer and heads threads
  need; enqueueing a whole batch (copies, replays, event) took 0.1-0.7 ms of the launching thread.
  All graphs share one memory pool; they run one at a time.
* **Launch, then collect.** :meth:`GpuRunner.launch` only enqueues: the copy of the ids to the
  device, the replays and the copy of the pooled features back into pinned host memory, then an
  event. :meth:`GpuRunner.collect` waits for that event. The engine's child process launches the
  next batch before it collects the current one, so the GPU does not wait while the CPU runs the
  heads and pickles the answers.
* **The same kernels for every batch.** The attention always takes the mask (no unmasked fast
  path for a batch without padding) and padded rows attend to one token, so a prompt's features
  do not depend on its neighbours beyond the rounding of the bucket's matrix shapes (a GPU test
  checks 1e-3 on the scores). The mask costs about 8% of BERT-base's forward pass at 256 tokens
  (15.8 ms per 128 prompts against 14.5 ms for Hugging Face's unmasked pass).

The module wraps ``fastbert.PooledBert``: any encoder it supports runs here, with the safety
branch and the PII token head when attached (their layers are part of each captured graph; a long
prompt's further safety windows are more rows of the batch). The GPU time of each batch is
measured with CUDA events (``device_s``), for the benchmark's busy share.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from pointsman_classifier.tokens import TokenBatch

log = logging.getLogger(__name__)

#: A replay's fixed cost, counted in padded tokens, when cutting a batch into groups.
GROUP_OVERHEAD_TOKENS = 1024


def batch_buckets(max_batch: int) -> list[int]:
    """Row counts a batch is padded to: 1, 2, 4, 8, 16, then multiples of 16, and ``max_batch``."""
    out = {b for b in (1, 2, 4, 8, 16) if b < max_batch}
    out.update(range(32, max_batch, 16))
    out.add(max_batch)
    return sorted(out)


def _bucket(buckets: Sequence[int], n: int) -> int:
    i = bisect.bisect_left(buckets, n)
    if i == len(buckets):
        raise ValueError(f"{n} is beyond the largest bucket {buckets[-1]}")
    return buckets[i]


def _padded_rows(rows: Sequence[int], n: int) -> int:
    """Rows actually run for ``n`` texts: full batches of the largest bucket, then a bucket."""
    full, rest = divmod(n, rows[-1])
    return full * rows[-1] + (_bucket(rows, rest) if rest else 0)


def plan_groups(
    lens: npt.NDArray[np.int64],
    seq_buckets: Sequence[int],
    rows: Sequence[int],
    overhead: int = GROUP_OVERHEAD_TOKENS,
) -> list[tuple[list[int], int]]:
    """Cut a batch into ``(text indices, token bucket)`` groups with the fewest padded tokens.

    Texts are sorted by length; a group is a run of consecutive token buckets, costing its row
    bucket times its token bucket plus ``overhead`` (dynamic programming over the few bucket
    boundaries). A batch of equal lengths stays one group.
    """
    order = np.argsort(lens, kind="stable")
    sorted_lens = lens[order]
    # Cut points: where the token bucket changes, in the sorted order.
    tb = np.array([_bucket(seq_buckets, max(int(x), 1)) for x in sorted_lens])
    cuts = [0, *[i for i in range(1, len(tb)) if tb[i] != tb[i - 1]], len(tb)]
    best: dict[int, tuple[float, list[tuple[int, int]]]] = {0: (0.0, [])}
    for j in cuts[1:]:
        options = []
        for i in cuts:
            if i >= j or i not in best:
                continue
            cost = _padded_rows(rows, j - i) * int(tb[j - 1]) + overhead
            options.append((best[i][0] + cost, [*best[i][1], (i, j)]))
        best[j] = min(options, key=lambda o: o[0])
    return [([int(k) for k in order[i:j]], int(tb[j - 1])) for i, j in best[len(tb)][1]]


def _event() -> torch.cuda.Event:
    return torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]


@dataclass
class Group:
    """Some texts of a batch at one bucket shape, in pinned host memory."""

    index: list[int]  # positions of these rows in the batch
    tokens: list[int]  # tokens of each of those texts
    ids: torch.Tensor  # [rows bucket, token bucket] int64, pinned
    lens: torch.Tensor  # [rows bucket] int64, pinned; padded rows count 1 token

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.ids.shape[0]), int(self.ids.shape[1])


@dataclass
class Launched:
    """A batch whose work is enqueued on the device: :meth:`GpuRunner.collect` waits for it."""

    n: int
    #: (batch positions, pinned host features, pinned host branch output or None)
    parts: list[tuple[list[int], torch.Tensor, torch.Tensor | None]]
    tokens: list[int]
    start: torch.cuda.Event
    end: torch.cuda.Event
    keep: list[Group] = field(default_factory=list)  # pinned inputs, alive until collected


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    ids: torch.Tensor
    lens: torch.Tensor
    out: torch.Tensor
    side: torch.Tensor | None


class GpuRunner:
    """Runs a pooled-features module (``module.run(ids, mask, depth) -> ([rows, layers, hidden],
    branch output or None)``, as ``fastbert.PooledBert``) over tokenized batches on one CUDA
    device, through CUDA graphs where captured."""

    def __init__(
        self,
        module: nn.Module,
        device: torch.device,
        seq_buckets: Sequence[int],
        max_batch: int,
        graphs: bool = True,
    ) -> None:
        self.module: Any = module
        self.vocab = int(getattr(module, "vocab_size", 100))
        self.device = device
        self.seq_buckets = list(seq_buckets)
        self.rows = batch_buckets(max_batch)
        self.use_graphs = graphs
        self._graphs: dict[tuple[int | None, int, int], _Graph] = {}
        self._pool: Any = None
        # Full-precision reductions in float16/bfloat16 matrix products: split-K kernels may
        # otherwise reduce in half precision, and which kernel runs depends on the batch's shape.
        torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False

    def shapes(self) -> list[tuple[int, int]]:
        """Every bucket shape, ``(rows, tokens)``."""
        return [(bb, tb) for bb in self.rows for tb in self.seq_buckets]

    # -- CPU side (any thread) ---------------------------------------------------------------

    def prepare(self, tokens: TokenBatch) -> list[Group]:
        """Pinned, bucket-shaped inputs for a tokenized batch (CPU work; the tokenizer thread)."""
        out = []
        most = self.rows[-1]
        for whole, tb in plan_groups(tokens.lens, self.seq_buckets, self.rows):
            for k in range(0, len(whole), most):  # beyond the largest batch: in pieces
                out.append(self._group(tokens, whole[k : k + most], tb))
        return out

    def _group(self, tokens: TokenBatch, index: list[int], tb: int) -> Group:
        bb = _bucket(self.rows, len(index))
        ids = torch.empty((bb, tb), dtype=torch.int64, pin_memory=True)
        lens = torch.ones((bb,), dtype=torch.int64, pin_memory=True)
        ids.numpy()[:] = tokens.padded(index, tb, bb)
        lens.numpy()[: len(index)] = tokens.lens[index]
        return Group(index, tokens.lens[index].tolist(), ids, lens)

    # -- device side (one thread launches, another may collect) ------------------------------

    def _forward(
        self, ids: torch.Tensor, lens: torch.Tensor, depth: int | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        t = ids.shape[1]
        mask = torch.arange(t, device=ids.device)[None, :] < lens[:, None]
        out, side = self.module.run(ids, mask, depth, masked=True)
        return out.float(), None if side is None else side.float()

    @torch.inference_mode()
    def capture(self, depth: int | None) -> float:
        """Capture every bucket shape for ``depth`` (largest first, one shared memory pool).

        Returns the seconds it took. Without graphs, runs each shape once instead (the first
        run of a shape costs 70-190 ms on an H100: kernel selection and the allocator).
        """
        start = time.perf_counter()
        with torch.cuda.device(self.device):
            stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
            for bb in reversed(self.rows):
                for tb in reversed(self.seq_buckets):
                    ids = torch.full((bb, tb), 100, dtype=torch.int64, device=self.device)
                    lens = torch.full((bb,), tb, dtype=torch.int64, device=self.device)
                    stream.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(stream):
                        for _ in range(2):
                            self._forward(ids, lens, depth)
                    torch.cuda.current_stream().wait_stream(stream)
                    if not self.use_graphs:
                        continue
                    if self._pool is None:
                        self._pool = torch.cuda.graph_pool_handle()
                    g = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(g, pool=self._pool):
                        out, side = self._forward(ids, lens, depth)
                    self._graphs[(depth, bb, tb)] = _Graph(g, ids, lens, out, side)
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start

    def launch(self, groups: list[Group], n: int, depth: int | None) -> Launched:
        """Enqueue a batch: copies in, replays (or eager passes), copies out. Returns at once."""
        parts: list[tuple[list[int], torch.Tensor, torch.Tensor | None]] = []
        tokens = [0] * n
        with torch.cuda.device(self.device), torch.inference_mode():
            stream = torch.cuda.current_stream()
            start = _event()
            end = _event()
            start.record(stream)
            for grp in groups:
                bb, tb = grp.shape
                g = self._graphs.get((depth, bb, tb))
                if g is not None:
                    g.ids.copy_(grp.ids, non_blocking=True)
                    g.lens.copy_(grp.lens, non_blocking=True)
                    g.graph.replay()
                    out, side = g.out, g.side
                else:
                    ids = grp.ids.to(self.device, non_blocking=True)
                    lens = grp.lens.to(self.device, non_blocking=True)
                    out, side = self._forward(ids, lens, depth)
                host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
                host.copy_(out, non_blocking=True)
                host_side = None
                if side is not None:
                    host_side = torch.empty(side.shape, dtype=side.dtype, pin_memory=True)
                    host_side.copy_(side, non_blocking=True)
                parts.append((grp.index, host, host_side))
                for i, t in zip(grp.index, grp.tokens, strict=True):
                    tokens[i] = t
            end.record(stream)
        return Launched(n, parts, tokens, start, end, groups)

    def collect(
        self, launched: Launched
    ) -> tuple[npt.NDArray[np.float32], list[npt.NDArray[np.float32]] | None, float]:
        """Wait for a launched batch: ``(pooled features [n, layers, hidden], the branch's
        output per text ([tokens, labels]) or None, GPU seconds)``."""
        launched.end.synchronize()
        first = launched.parts[0][1]
        layers = np.empty((launched.n, *first.shape[1:]), dtype=np.float32)
        side: list[Any] | None = None
        for index, host, host_side in launched.parts:
            layers[index] = host.numpy()[: len(index)]
            if host_side is not None:
                side = side if side is not None else [None] * launched.n
                arr = host_side.numpy()
                for j, i in enumerate(index):
                    side[i] = arr[j, : launched.tokens[i]]
        return layers, side, launched.start.elapsed_time(launched.end) / 1e3

    def time_forward(self, rows: int, tokens: int, depth: int | None, reps: int = 20) -> float:
        """Seconds per forward pass at one captured shape (replays only, timed with events)."""
        g = self._graphs.get((depth, rows, tokens))
        if g is None:
            raise KeyError(f"no graph captured for depth {depth}, shape {rows}x{tokens}")
        with torch.cuda.device(self.device), torch.inference_mode():
            g.ids.random_(0, self.vocab)
            g.lens.fill_(tokens)
            for _ in range(3):
                g.graph.replay()
            start = _event()
            end = _event()
            start.record()
            for _ in range(reps):
                g.graph.replay()
            end.record()
            end.synchronize()
        return float(start.elapsed_time(end)) / 1e3 / reps

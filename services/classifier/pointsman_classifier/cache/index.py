"""The in-process vector index of one classifier replica, one sub-index per partition.

Vectors are normalised, so cosine similarity is the inner product. Two backends with one
interface: ``exact`` (a float32 matrix per partition, brute force with numpy) and ``hnsw``
(hnswlib's graph index, approximate; a partition is exact until it holds ``hnsw_from`` entries).
bench/cache measures both; at 100k entries in one partition only hnsw meets the p99 < 5 ms target
on this machine's 2 cores (see services/classifier/README.md).
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]


class _Part(Protocol):
    def add(self, key: str, vec: Vector) -> None: ...
    def remove(self, key: str) -> None: ...
    def search(self, vec: Vector, k: int) -> list[tuple[str, float]]: ...
    def __len__(self) -> int: ...


class ExactPart:
    """Brute force over a growing float32 matrix; removal swaps the last row in."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.mat = np.zeros((16, dim), dtype=np.float32)
        self.keys: list[str] = []
        self.rows: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, key: str, vec: Vector) -> None:
        row = self.rows.get(key)
        if row is None:
            row = len(self.keys)
            if row == self.mat.shape[0]:
                grown = np.zeros((row * 2, self.dim), dtype=np.float32)
                grown[:row] = self.mat
                self.mat = grown
            self.keys.append(key)
            self.rows[key] = row
        self.mat[row] = vec

    def remove(self, key: str) -> None:
        row = self.rows.pop(key, None)
        if row is None:
            return
        last = len(self.keys) - 1
        if row != last:
            moved = self.keys[last]
            self.mat[row] = self.mat[last]
            self.keys[row] = moved
            self.rows[moved] = row
        self.keys.pop()

    def search(self, vec: Vector, k: int) -> list[tuple[str, float]]:
        n = len(self.keys)
        if n == 0:
            return []
        sims = self.mat[:n] @ vec
        if k == 1 or n <= k:
            order = [int(np.argmax(sims))] if k == 1 else list(np.argsort(-sims)[:k])
        else:
            top = np.argpartition(-sims, k)[:k]
            order = list(top[np.argsort(-sims[top])])
        return [(self.keys[int(i)], float(sims[int(i)])) for i in order]


class HnswPart:
    """hnswlib's HNSW graph (inner product); deleted labels are reused by new entries."""

    def __init__(self, dim: int, ef: int = 128, m: int = 16) -> None:
        import hnswlib  # type: ignore[import-untyped]

        self.dim = dim
        self.capacity = 1024
        self.idx: Any = hnswlib.Index(space="ip", dim=dim)
        self.idx.init_index(
            max_elements=self.capacity, ef_construction=100, M=m, allow_replace_deleted=True
        )
        self.idx.set_ef(ef)
        self.labels: dict[str, int] = {}
        self.keys: dict[int, str] = {}
        self.free: list[int] = []
        self.next = 0

    def __len__(self) -> int:
        return len(self.labels)

    def add_many(self, keys: list[str], mat: Vector) -> None:
        """Bulk insert (one hnswlib call, its own threads): how an exact partition converts."""
        fresh = [k for k in keys if k not in self.labels]
        if len(fresh) != len(keys):
            for k, v in zip(keys, mat, strict=True):
                self.add(k, v)
            return
        while self.next + len(keys) > self.capacity:
            self.capacity *= 2
        self.idx.resize_index(self.capacity)
        labels = list(range(self.next, self.next + len(keys)))
        self.idx.add_items(mat, labels)
        self.next += len(keys)
        for k, lab in zip(keys, labels, strict=True):
            self.labels[k] = lab
            self.keys[lab] = k

    def add(self, key: str, vec: Vector) -> None:
        if key in self.labels:
            return
        if self.free:
            label = self.free.pop()
            self.idx.add_items(vec[None, :], [label], replace_deleted=True)
        else:
            if self.next >= self.capacity:
                self.capacity *= 2
                self.idx.resize_index(self.capacity)
            label = self.next
            self.next += 1
            self.idx.add_items(vec[None, :], [label])
        self.labels[key] = label
        self.keys[label] = key

    def remove(self, key: str) -> None:
        label = self.labels.pop(key, None)
        if label is None:
            return
        del self.keys[label]
        self.idx.mark_deleted(label)
        self.free.append(label)

    def search(self, vec: Vector, k: int) -> list[tuple[str, float]]:
        n = len(self.labels)
        if n == 0:
            return []
        labels, dists = self.idx.knn_query(vec[None, :], k=min(k, n))
        return [
            (self.keys[int(lab)], 1.0 - float(d))
            for lab, d in zip(labels[0], dists[0], strict=True)
            if int(lab) in self.keys
        ]


def hnsw_available() -> bool:
    try:
        import hnswlib  # noqa: F401
    except ImportError:
        return False
    return True


class VectorIndex:
    """Partitions of entries; each entry has an id, a vector and an expiry (Unix time)."""

    def __init__(
        self, dim: int | None = None, backend: str = "auto", hnsw_from: int = 4096, ef: int = 128
    ) -> None:
        if backend == "auto":
            backend = "hnsw" if hnsw_available() else "exact"
        self.backend = backend
        #: With the hnsw backend a partition starts exact and becomes a graph at this many
        #: entries: an HNSW index costs its preallocated memory even for one entry, and most
        #: partitions (tenant x model x parameters) stay small, where brute force is fastest.
        self.hnsw_from = hnsw_from
        self.ef = ef
        self.dim = dim
        self.parts: dict[str, _Part] = {}
        self.where: dict[str, tuple[str, float]] = {}  # id -> (partition, expires_at)

    def __len__(self) -> int:
        return len(self.where)

    def _new_part(self, dim: int) -> _Part:
        return (
            HnswPart(dim, self.ef)
            if self.backend == "hnsw" and self.hnsw_from <= 1
            else ExactPart(dim)
        )

    def add(self, key: str, partition: str, vec: Vector, expires_at: float) -> None:
        vec = np.ascontiguousarray(vec, dtype=np.float32)
        if self.dim is None:
            self.dim = int(vec.shape[0])
        if vec.shape != (self.dim,):
            raise ValueError(f"vector of shape {vec.shape}, index dimension {self.dim}")
        old = self.where.get(key)
        if old is not None and old[0] != partition:
            self.remove(key)
        part = self.parts.get(partition)
        if part is None:
            part = self.parts[partition] = self._new_part(self.dim)
        part.add(key, vec)
        self.where[key] = (partition, expires_at)
        if self.backend == "hnsw" and isinstance(part, ExactPart) and len(part) >= self.hnsw_from:
            graph = HnswPart(self.dim, self.ef)
            graph.add_many(list(part.keys), part.mat[: len(part)])
            self.parts[partition] = graph

    def remove(self, key: str) -> bool:
        found = self.where.pop(key, None)
        if found is None:
            return False
        part = self.parts.get(found[0])
        if part is not None:
            part.remove(key)
            if len(part) == 0:
                del self.parts[found[0]]
        return True

    def search(
        self, partition: str, vec: Vector, now: float | None = None
    ) -> tuple[str, float] | None:
        """The most similar live entry of the partition: (id, cosine similarity), or None.

        Expired entries met on the way are removed.
        """
        part = self.parts.get(partition)
        if part is None or self.dim is None or vec.shape != (self.dim,):
            return None
        now = time.time() if now is None else now
        vec = np.ascontiguousarray(vec, dtype=np.float32)
        for k in (1, 8):
            expired: list[str] = []
            for key, sim in part.search(vec, k):
                if self.where[key][1] > now:
                    for e in expired:
                        self.remove(e)
                    return key, sim
                expired.append(key)
            for e in expired:
                self.remove(e)
            if partition not in self.parts:
                return None
        return None

    def build(self, keys: list[str], mat: Vector) -> _Part:
        """A new partition from many vectors at once; touches no shared state, so it may run on
        a worker thread (hnswlib inserts in bulk on its own threads)."""
        dim = int(mat.shape[1])
        if self.backend == "hnsw" and len(keys) >= self.hnsw_from:
            graph = HnswPart(dim, self.ef)
            graph.add_many(keys, np.ascontiguousarray(mat, dtype=np.float32))
            return graph
        part = ExactPart(dim)
        for k, v in zip(keys, mat, strict=True):
            part.add(k, v)
        return part

    def install(
        self, partition: str, part: _Part, keys: list[str], mat: Vector, expires: list[float]
    ) -> None:
        """Put a :meth:`build` result in place. A partition that appeared meanwhile (entries
        announced during the rebuild) keeps its entries and gets the missing ones added."""
        if partition in self.parts:
            for key, vec, exp in zip(keys, mat, expires, strict=True):
                if key not in self.where:
                    self.add(key, partition, vec, exp)
            return
        if self.dim is None:
            self.dim = int(mat.shape[1])
        if mat.shape[1] != self.dim:
            return
        for key, exp in zip(keys, expires, strict=True):
            if key in self.where:
                self.remove(key)
            self.where[key] = (partition, exp)
        self.parts[partition] = part

    def sweep(self, now: float | None = None) -> int:
        """Drop every expired entry; returns how many."""
        now = time.time() if now is None else now
        dead = [k for k, (_, exp) in self.where.items() if exp <= now]
        for k in dead:
            self.remove(k)
        return len(dead)

"""The in-process vector index: both backends find the nearest live entry of a partition only."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from pointsman_classifier.cache.index import ExactPart, HnswPart, VectorIndex, hnsw_available

BACKENDS = ["exact", *(["hnsw"] if hnsw_available() else [])]


def unit(rng: np.random.Generator, n: int, dim: int = 32) -> npt.NDArray[np.float32]:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    out: npt.NDArray[np.float32] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_nearest_within_partition(backend: str) -> None:
    rng = np.random.default_rng(1)
    vecs = unit(rng, 300)
    idx = VectorIndex(backend=backend, hnsw_from=1)
    for i, v in enumerate(vecs):
        idx.add(f"e{i}", "p1" if i % 2 == 0 else "p2", v, expires_at=1e12)
    assert len(idx) == 300
    found = idx.search("p1", vecs[10], now=0)
    assert found is not None and found[0] == "e10" and found[1] == pytest.approx(1.0, abs=1e-4)
    other = idx.search("p2", vecs[10], now=0)  # the same vector in another partition
    assert other is not None and other[0] != "e10" and other[1] < 0.99
    assert idx.search("nope", vecs[10], now=0) is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_remove_expire_and_reuse(backend: str) -> None:
    rng = np.random.default_rng(2)
    vecs = unit(rng, 50)
    idx = VectorIndex(backend=backend, hnsw_from=1)
    for i, v in enumerate(vecs):
        idx.add(f"e{i}", "p", v, expires_at=100.0 if i == 3 else 1e12)
    assert idx.remove("e5") and not idx.remove("e5")
    found = idx.search("p", vecs[5], now=0)
    assert found is not None and found[0] != "e5"
    # e3 is expired at now=200: never returned, and dropped on the way
    found = idx.search("p", vecs[3], now=200)
    assert found is not None and found[0] != "e3" and "e3" not in idx.where
    idx.add("new", "p", vecs[5], expires_at=1e12)  # reuses the freed slot
    found = idx.search("p", vecs[5], now=0)
    assert found is not None and found[0] == "new"
    assert idx.sweep(now=2e12) > 0 and len(idx) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_grows_past_initial_capacity(backend: str) -> None:
    rng = np.random.default_rng(3)
    vecs = unit(rng, 2100)
    idx = VectorIndex(backend=backend, hnsw_from=1)
    for i, v in enumerate(vecs):
        idx.add(f"e{i}", "p", v, expires_at=1e12)
    hits = sum(
        1 for i in range(0, 2100, 50) if (f := idx.search("p", vecs[i], now=0)) and f[0] == f"e{i}"
    )
    assert hits >= 40  # approximate backend: near-perfect recall on exact duplicates


@pytest.mark.skipif(not hnsw_available(), reason="hnswlib not installed")
def test_small_partitions_stay_exact_and_convert_when_large() -> None:
    rng = np.random.default_rng(4)
    vecs = unit(rng, 300)
    idx = VectorIndex(backend="hnsw", hnsw_from=200)
    for i, v in enumerate(vecs[:199]):
        idx.add(f"e{i}", "p", v, expires_at=1e12)
    idx.add("other", "q", vecs[299], expires_at=1e12)
    assert isinstance(idx.parts["p"], ExactPart) and isinstance(idx.parts["q"], ExactPart)
    for i in range(199, 299):
        idx.add(f"e{i}", "p", vecs[i], expires_at=1e12)
    assert isinstance(idx.parts["p"], HnswPart) and len(idx.parts["p"]) == 299
    for i in (0, 150, 298):
        found = idx.search("p", vecs[i], now=0)
        assert found is not None and found[0] == f"e{i}"
    assert idx.remove("e150")
    found = idx.search("p", vecs[150], now=0)
    assert found is not None and found[0] != "e150"


@pytest.mark.parametrize("backend", BACKENDS)
def test_bulk_build_and_install(backend: str) -> None:
    rng = np.random.default_rng(5)
    vecs = unit(rng, 120)
    keys = [f"e{i}" for i in range(100)]
    idx = VectorIndex(backend=backend, hnsw_from=50)
    part = idx.build(keys, vecs[:100])
    assert isinstance(part, HnswPart if backend == "hnsw" else ExactPart)
    idx.install("p", part, keys, vecs[:100], [1e12] * 100)
    found = idx.search("p", vecs[42], now=0)
    assert found is not None and found[0] == "e42" and len(idx) == 100
    # a partition that got entries meanwhile keeps them and gains the rebuilt ones
    idx.add("late", "q", vecs[110], 1e12)
    idx.install("q", idx.build(["r1"], vecs[111:112]), ["r1"], vecs[111:112], [1e12])
    assert {k for k, (p, _) in idx.where.items() if p == "q"} == {"late", "r1"}

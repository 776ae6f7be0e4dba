"""Fast tokenization gives the Hugging Face call's ids; GPU batches are cut into bucket groups."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("torch")

from pointsman_classifier.gpu import batch_buckets, plan_groups
from pointsman_classifier.tokens import CHECK_TEXTS, FastTokenizer


@pytest.fixture(scope="module")
def hf_tokenizer() -> object:
    from transformers import AutoTokenizer

    from pointsman_classifier.encoder import default_model_path

    return AutoTokenizer.from_pretrained(str(default_model_path()))


def test_fast_tokenizer_gives_the_hugging_face_ids(hf_tokenizer: object) -> None:
    fast = FastTokenizer(hf_tokenizer, 64)
    assert fast.check(CHECK_TEXTS)
    batch = fast.encode(CHECK_TEXTS)
    assert batch.lens.tolist() == [len(x) for x in batch.ids]
    assert max(batch.lens) == 64  # the long text is truncated, [SEP] kept
    ids = batch.padded()
    assert ids.shape == (len(CHECK_TEXTS), 64)
    assert ids[0, batch.lens[0] :].tolist() == [fast.pad_id] * (64 - batch.lens[0])
    assert batch.padded([3, 0], 70, 4).shape == (4, 70)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(min_size=0, max_size=300), min_size=1, max_size=6))
def test_fast_tokenizer_matches_on_any_text(hf_tokenizer: object, texts: list[str]) -> None:
    assert FastTokenizer(hf_tokenizer, 32).check(texts)


def test_batch_buckets() -> None:
    assert batch_buckets(128) == [1, 2, 4, 8, 16, 32, 48, 64, 80, 96, 112, 128]
    assert batch_buckets(64) == [1, 2, 4, 8, 16, 32, 48, 64]
    assert batch_buckets(10) == [1, 2, 4, 8, 10]
    assert batch_buckets(1) == [1]


@given(st.lists(st.integers(min_value=1, max_value=256), min_size=1, max_size=200))
def test_plan_groups_covers_every_text_once_at_a_bucket_that_fits(lens: list[int]) -> None:
    seq = [16, 32, 64, 128, 256]
    rows = batch_buckets(128)
    arr = np.array(lens, dtype=np.int64)
    groups = plan_groups(arr, seq, rows)
    assert sorted(i for g, _ in groups for i in g) == list(range(len(lens)))
    for index, tb in groups:
        assert tb in seq
        assert all(lens[i] <= tb for i in index)
    # Never more padded tokens (plus the per-group cost) than one group at the longest bucket.
    single = plan_groups(arr, seq, rows, overhead=10**9)
    assert len(single) == 1


def test_plan_groups_splits_a_few_long_texts_from_many_short_ones() -> None:
    lens = np.array([20] * 100 + [250] * 3, dtype=np.int64)
    groups = plan_groups(lens, [16, 32, 64, 128, 256], batch_buckets(128))
    assert sorted((len(g), tb) for g, tb in groups) == [(3, 256), (100, 32)]
    same = plan_groups(np.full(70, 256, dtype=np.int64), [16, 32, 64, 128, 256], batch_buckets(128))
    assert [(len(g), tb) for g, tb in same] == [(70, 256)]

"""The store's pure layout helpers: row blocks, CSR of sorted pair keys, block merging,
stacking, and attribute validation (the history included)."""

from __future__ import annotations

import numpy as np
import pytest

from streamsolve.store.attributes import validate_meta
from streamsolve.store.layout import (StoreConfigError, count_block_path, csr_of_rows,
                                      live_paths, merge_csr_block, row_blocks,
                                      stack_row_blocks)


def test_row_blocks_cover_the_vocabulary_once():
    assert row_blocks(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert row_blocks(4, 4) == [(0, 4)]
    assert count_block_path(3, 0, 2) == "counts/g3/r1/b2"


def test_csr_blocks_stack_and_merge_like_dense_sums():
    V = 7
    rng = np.random.default_rng(0)
    dense_a, dense_b = rng.integers(0, 3, (V, V)), rng.integers(0, 3, (V, V))

    def blocks_of(dense):
        rows, cols = np.nonzero(dense)
        keys = rows.astype(np.int64) * V + cols
        return [csr_of_rows(keys, dense[rows, cols].astype(np.int64), V, start, stop)
                for start, stop in row_blocks(V, 3)]

    a, b = blocks_of(dense_a), blocks_of(dense_b)
    np.testing.assert_array_equal(stack_row_blocks(a, V, np.int64).toarray(), dense_a)
    merged = [merge_csr_block(x, y) for x, y in zip(a, b)]
    np.testing.assert_array_equal(stack_row_blocks(merged, V, np.int64).toarray(),
                                  dense_a + dense_b)


def test_live_paths_name_the_generation_weights_and_blocks():
    meta = {"counts": {"generation": 2}, "weights": {"id": "abc", "blocks": [["k1", "k2"]]}}
    assert live_paths(meta) == {"counts/g2", "weights/vabc", "weights/blocks/k1",
                                "weights/blocks/k2"}


def _meta(**extra) -> dict:
    return {"format": "streamsolve", "format_version": 1, "rows_per_block": 4,
            "config": {"vocab_size": 10, "radius": 2, "aggregation": "cat", "bos_id": 0},
            "tokenizer": {"vocab_size": 10, "sha256": "0" * 64}, **extra}


def test_validate_meta_accepts_with_and_without_history():
    validate_meta(_meta(), "s.zarr")
    validate_meta(_meta(history=[{"event": "created", "time": "t"}]), "s.zarr")


@pytest.mark.parametrize("history", [{"event": "created"}, ["created"], [{"time": "t"}]])
def test_validate_meta_names_a_malformed_history(history):
    with pytest.raises(StoreConfigError, match="history is not a list of events"):
        validate_meta(_meta(history=history), "s.zarr")

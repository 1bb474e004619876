"""The store's pure layout helpers: row blocks, CSR of sorted pair keys, block merging,
stacking, and attribute validation (the history included)."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from streamsolve.store.attributes import validate_meta
from streamsolve.store.layout import (DiskFullError, StoreConfigError, count_block_path,
                                      csr_of_rows, live_paths, merge_csr_block, row_blocks,
                                      stack_row_blocks, write_failure)


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


@pytest.mark.parametrize("code, words", [
    (errno.ENOSPC, ("the disk is full (ENOSPC", "free space")),
    (errno.EDQUOT, ("the disk is full (EDQUOT", "free space")),
    (errno.EFBIG, ("file-size limit (EFBIG", "ulimit -f")),
    (errno.EACCES, ("permission denied (EACCES", "fix the permissions")),
    (errno.EROFS, ("read-only (EROFS", "remount")),
    (errno.EIO, ("(EIO", "fix that")),
])
def test_a_failed_write_is_one_line_naming_its_errno(code, words):
    exc = OSError(code, os.strerror(code), "/data/m.zarr/zarr.json")
    error = write_failure(exc, "writing the counts to /data/m.zarr", "The store is unchanged")
    message = str(error)
    assert isinstance(error, DiskFullError) == (code in (errno.ENOSPC, errno.EDQUOT))
    assert "\n" not in message and message.startswith("writing the counts to /data/m.zarr failed")
    assert "on /data/m.zarr/zarr.json" in message and "The store is unchanged" in message
    for word in words:
        assert word in message, message
    short = write_failure(OSError("17172 requested and 12784 written"), "spilling", "Nothing")
    assert isinstance(short, DiskFullError) and "(ENOSPC)" in str(short)


def _weights(**extra) -> dict:
    weights = {"id": "abc", "counts_id": "c1", "blocks": [["k1", "k2", "k3"], ["k4", "k5", "k6"]],
               "form": "row", "smoothing": "dirichlet", "mu": 10.0, "alpha": None,
               "calibration": {"beta": [0.9, 0.8], "gamma": -0.5}}
    return {**weights, **extra}


def test_validate_meta_accepts_a_finalized_store():
    validate_meta(_meta(counts={"generation": 1, "id": "c1", "tokens": 5, "nnz": [3, 4]},
                        weights=_weights(), retired={"counts/g1": "2026-01-01T00:00:00+00:00"},
                        calibration_source={"kind": "files", "paths": ["a.txt"]}), "s.zarr")


@pytest.mark.parametrize("extra, message", [
    ({"weights": _weights(calibration={"beta": [float("nan"), 1.0], "gamma": 0.0})},
     "weights.calibration.beta"),
    ({"weights": _weights(calibration={"beta": [1.0], "gamma": 0.0})}, "not 2 finite numbers"),
    ({"weights": _weights(calibration={"beta": [1.0, 1.0], "gamma": "x"})}, "gamma"),
    ({"weights": _weights(blocks=[["k1", "k2", "k3"]])}, "weights.blocks is not 2 list(s)"),
    ({"weights": _weights(mu=-1.0)}, "weights.mu"),
    ({"weights": _weights(smoothing="magic")}, "weights.smoothing"),
    ({"retired": {"counts/g1": "yesterday"}}, "retired time of counts/g1"),
    ({"retired": {"counts": "2026-01-01T00:00:00+00:00"}}, "retired names 'counts'"),
    ({"retired": ["counts/g1"]}, "retired is not an object"),
    ({"shards": [{"path": "a", "sha256": "short"}]}, "shards is not a list of entries"),
    ({"totals": {"tokens": -1}}, "totals is not an object of integers"),
    ({"read_options": {"documents": 3}}, "read_options"),
    ({"calibration_source": {"kind": "heldout", "fraction": 2}}, "calibration_source"),
    ({"created": "monday"}, "created 'monday'"),
])
def test_validate_meta_names_every_bad_attribute(extra, message):
    meta = _meta(counts={"generation": 1, "id": "c1", "tokens": 5, "nnz": [3, 4]},
                 weights=_weights())
    meta.update(extra)
    with pytest.raises(StoreConfigError, match="s.zarr has invalid attributes") as info:
        validate_meta(meta, "s.zarr")
    assert message in str(info.value) and "\n" not in str(info.value)

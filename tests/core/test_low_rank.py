"""Randomized truncated SVD of a sparse + rank-one block against numpy.linalg.svd."""

from __future__ import annotations

import random

import numpy as np
import pytest

from streamsolve.core.counting import CountConfig, count_sequences
from streamsolve.core.low_rank import block_matmat, block_rmatmat, low_rank_factors
from streamsolve.core.warm_start import min_norm_weights
from streamsolve.core.weights import finalize

V = 60


@pytest.fixture(scope="module")
def centred_block():
    rng = random.Random(0)
    docs = [[rng.randrange(1, V) for _ in range(rng.randrange(1, 50))] for _ in range(150)]
    counts = count_sequences([(np.asarray(d, dtype=np.int64), True) for d in docs],
                             CountConfig(V, 2, "cat", bos_id=0))
    return min_norm_weights(finalize(counts)).blocks[1]


def test_products_equal_dense(centred_block):
    W = centred_block.dense()
    X = np.random.default_rng(0).standard_normal((V, 5))
    np.testing.assert_allclose(block_matmat(centred_block, X), W @ X, atol=1e-10)
    np.testing.assert_allclose(block_rmatmat(centred_block, X), W.T @ X, atol=1e-10)


@pytest.mark.parametrize("rank", [1, 5, 20, 45])
def test_randomized_truncation_is_the_best_rank_d(centred_block, rank):
    W = centred_block.dense()
    s = np.linalg.svd(W, compute_uv=False)
    best = np.sqrt(np.sum(s[rank:] ** 2))
    E, B = low_rank_factors(centred_block, rank, n_iter=30)
    assert E.shape == (V, rank) and B.shape == (rank, V)
    error = np.linalg.norm(W - E @ B)
    assert error >= best * (1 - 1e-9)
    assert error <= best * (1 + 1e-6)


def test_full_rank_is_exact(centred_block):
    W = centred_block.dense()
    rank = int(np.linalg.matrix_rank(W))    # centred: at most V - 1
    assert rank < V
    E, B = low_rank_factors(centred_block, rank, n_iter=2)
    assert np.linalg.norm(W - E @ B) <= 1e-9 * np.linalg.norm(W)
    with pytest.raises(ValueError, match="rank must be an integer"):
        low_rank_factors(centred_block, 0)

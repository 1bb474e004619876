"""The minimum-norm warm start (DESIGN 3b): same predictions, least norm, O(nnz + V) algebra
equal to dense double-centring."""

from __future__ import annotations


import numpy as np
import pytest
from scipy.special import log_softmax

from streamsolve.core.warm_start import block_squared_norm, centre_block, min_norm_weights

from ..conftest import random_explicit_weights

V = 23


def weights_of(radius, aggregation="cat", form="row", smoothing="dirichlet", seed=0):
    return random_explicit_weights(V, radius, aggregation, form, smoothing, seed)


def all_contexts(radius, n=300, seed=1):
    return np.random.default_rng(seed).integers(0, V, size=(n, radius))


@pytest.mark.parametrize("radius,aggregation,form,smoothing,calibrated", [
    (1, "cat", "row", "dirichlet", False), (2, "cat", "row", "dirichlet", True),
    (3, "cat", "column", "dirichlet", True), (3, "cat", "row", "additive", False),
    (2, "sum", "row", "dirichlet", True), (3, "cat", "row", "kneser-ney", True)])
def test_min_norm_predicts_identically_with_least_norm(radius, aggregation, form, smoothing,
                                                       calibrated):
    weights = weights_of(radius, aggregation, form, smoothing)
    if calibrated:
        weights = weights.with_calibration(np.linspace(0.4, 0.9, len(weights.blocks)), -0.3)
    warm = min_norm_weights(weights)
    ctx = all_contexts(radius)
    explicit = weights.logits(ctx)
    # exact logits with the per-sample offsets, identical log-probabilities without them
    np.testing.assert_allclose(warm.logits(ctx), explicit, rtol=0, atol=1e-9)
    np.testing.assert_allclose(log_softmax(warm.logits(ctx, with_offsets=False), axis=1),
                               log_softmax(explicit, axis=1), rtol=0, atol=1e-9)
    # least norm: no smaller than the raw (beta-scaled) blocks, every row and column sums to 0
    raw = sum(float(np.sum((b * d) ** 2)) for b, d in zip(weights.beta, weights.dense_blocks()))
    assert warm.squared_norm() <= raw
    for block in warm.blocks:
        dense = block.dense()
        np.testing.assert_allclose(dense.sum(axis=0), 0, atol=1e-9)
        np.testing.assert_allclose(dense.sum(axis=1), 0, atol=1e-9)
    assert abs(warm.bias.sum()) < 1e-9


def test_centre_block_is_dense_double_centring_and_norm_is_exact():
    weights = weights_of(1)
    block = weights.blocks[0]
    W = block.dense()
    centred, row_part, col_means = centre_block(block)
    expected = W - W.mean(axis=1, keepdims=True) - W.mean(axis=0, keepdims=True) + W.mean()
    np.testing.assert_allclose(centred.dense(), expected, rtol=0, atol=1e-10)
    np.testing.assert_allclose(row_part, W.mean(axis=1) - W.mean(), atol=1e-10)
    np.testing.assert_allclose(col_means, W.mean(axis=0), atol=1e-10)
    assert block_squared_norm(block) == pytest.approx(float(np.sum(W ** 2)), rel=1e-12)
    assert block_squared_norm(centred) == pytest.approx(float(np.sum(expected ** 2)), rel=1e-10)
    # the raw log-probabilities carry a large offset that centring removes
    assert block_squared_norm(centred) < 0.5 * block_squared_norm(block)

"""Scoring with n-gram blocks in O(|union|): equal to dense logits of the same calibrated
blocks (with and without offset blocks), the N-gram model itself at beta = e_N, and the
calibration gradient equal to finite differences."""

from __future__ import annotations

import numpy as np
import pytest

from streamsolve.core.counting import CountConfig, count_token_documents
from streamsolve.core.ngram_counts import NgramConfig, count_ngram_documents
from streamsolve.core.ngram_kneser_ney import estimate_kneser_ney
from streamsolve.core.ngram_scoring import NgramCalibration, NgramScorer, NgramScoringParts
from streamsolve.core.scoring import ScoringParts
from streamsolve.core.weights import finalize

from .test_ngram_kneser_ney import positions, zipf_documents

V = 20


def build(N, radius=None, seed=0):
    train = zipf_documents(seed, 500, V)
    model = estimate_kneser_ney(count_ngram_documents(train, NgramConfig(V, N, bos_id=0)))
    weights = None
    if radius:
        weights = finalize(count_token_documents(train, CountConfig(V, radius, "cat", 0)),
                           smoothing="kneser-ney")
    held = zipf_documents(seed + 50, 80, V)
    contexts, _, targets = positions(held, max(N, (radius or 0) + 1), 0)
    return model, weights, contexts, targets


def dense_log_probs(model, contexts, targets, beta, gamma, weights=None, offset_beta=()):
    """log softmax of the calibrated logits, built densely from each block's distribution."""
    N = model.config.order
    logits = sum(b * np.log(model.distribution(contexts, k))
                 for b, k in zip(beta, range(2, N + 1)))
    prior = np.log(model.unigram)
    if weights is not None:
        prior = weights.log_unigram
        logits = logits + sum(b * weights.blocks[r].rows(contexts[:, r])
                              for r, b in enumerate(offset_beta))
    logits = logits + gamma * prior
    peak = logits.max(axis=1, keepdims=True)
    log_z = peak[:, 0] + np.log(np.exp(logits - peak).sum(axis=1))
    return logits[np.arange(targets.size), targets] - log_z


@pytest.mark.parametrize("N", [2, 3, 5])
def test_top_block_alone_is_the_ngram_model(N):
    model, _, contexts, targets = build(N)
    beta = np.zeros(N - 1)
    beta[-1] = 1.0
    scorer = NgramScorer(NgramScoringParts(model), beta, 0.0)
    np.testing.assert_allclose(scorer.log_probs(contexts, targets),
                               model.log_probs(contexts, targets), atol=1e-10)


@pytest.mark.parametrize("N, beta, gamma", [
    (3, [0.4, 0.7], 0.2), (4, [1.3, -0.4, 0.8], -0.5), (5, [0.2, 0.3, 0.1, 0.9], 0.0),
    (4, [-2.0, -3.0, -1.0], 9.0)])   # strongly negative: the cancellation path
def test_calibrated_blocks_equal_dense_logits(N, beta, gamma):
    model, _, contexts, targets = build(N, seed=N)
    parts = NgramScoringParts(model)
    expected = dense_log_probs(model, contexts, targets, beta, gamma)
    for cache_size in (0, 64):
        scorer = NgramScorer(parts, beta, gamma, cache_size=cache_size)
        np.testing.assert_allclose(scorer.log_probs(contexts, targets), expected, atol=1e-9)
        np.testing.assert_allclose(scorer.log_probs(contexts, targets), expected, atol=1e-9)


def test_ngram_and_offset_blocks_together():
    model, weights, contexts, targets = build(4, radius=3, seed=7)
    offsets = ScoringParts.from_weights(weights)
    beta, offset_beta, gamma = [0.3, 0.2, 0.6], [0.5, -0.2, 0.3], -0.4
    scorer = NgramScorer(NgramScoringParts(model), beta, gamma, offsets, offset_beta)
    expected = dense_log_probs(model, contexts, targets, beta, gamma, weights, offset_beta)
    np.testing.assert_allclose(scorer.log_probs(contexts, targets), expected, atol=1e-9)


def test_union_holds_every_found_rows_successors():
    model, _, contexts, _ = build(5, seed=3)
    parts = NgramScoringParts(model)
    rows = parts.rows(contexts)
    union = parts.union(rows)
    for n in range(0, contexts.shape[0], 17):
        mine = set(union.targets[union.owner == n].tolist())
        for k in range(2, 6):
            level, row = model.level(k), rows[n, k - 2]
            if row >= 0:
                assert set(level.targets[level.indptr[row]:level.indptr[row + 1]].tolist()) <= mine
        assert (rows[n, 0] < 0) == (not mine)


@pytest.mark.parametrize("with_offsets", [False, True])
def test_calibration_gradient_and_fit(with_offsets):
    model, weights, contexts, targets = build(3, radius=2 if with_offsets else None, seed=11)
    offsets = ScoringParts.from_weights(weights) if with_offsets else None
    objective = NgramCalibration(NgramScoringParts(model), contexts, targets, offsets)
    theta = np.r_[[0.4, 0.8], [0.3, 0.1] if with_offsets else [], -0.2]
    loss, grad = objective(theta)
    step = 1e-6
    numeric = [(objective(theta + step * e)[0] - objective(theta - step * e)[0]) / (2 * step)
               for e in np.eye(theta.size)]
    np.testing.assert_allclose(grad, numeric, atol=1e-6)
    scorer = objective.scorer(theta)
    assert loss == pytest.approx(-scorer.log_probs(contexts, targets).mean(), abs=1e-10)
    start = np.r_[[0.0, 1.0], [0.0, 0.0] if with_offsets else [], 0.0]
    fit = objective.fit(start)
    assert fit.loss_before == pytest.approx(-model.log_probs(contexts, targets).mean())
    assert fit.loss_after < fit.loss_before

"""NgramWeights: n-gram and offset blocks scored by the offsets' C kernel on joined parts,
equal to the dense calibrated logits; the fit lowers the loss; stored arrays rebuild the
derived ones."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from streamsolve.core import ngram_weights
from streamsolve.core.ngram_weights import NgramWeights, derive
from streamsolve.core.scoring import ScoringParts

from .test_ngram_scoring import build, dense_log_probs


@pytest.mark.parametrize("theta", [
    [0.3, 0.2, 0.6, 0.5, -0.2, 0.3, -0.4],
    [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0],
    [-2.0, -1.0, -1.5, 0.2, 0.1, 0.0, 6.0]])   # negative scalars: the cancellation path
def test_joined_scoring_equals_dense_logits(theta, monkeypatch):
    monkeypatch.setattr(ngram_weights, "JOINED_POSITIONS", 97)  # several batches
    model, weights, contexts, targets = build(4, radius=3, seed=7)
    lm = NgramWeights(weights, model, theta)
    expected = dense_log_probs(model, contexts, targets, theta[:3], theta[-1], weights,
                               theta[3:6])
    np.testing.assert_allclose(lm.target_log_probs(contexts, targets), expected, atol=1e-9)
    logits = lm.logits(contexts[:40])
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(log_p[np.arange(40), targets[:40]], expected[:40], atol=1e-9)


def test_joined_parts_per_order_equal_the_weighted_block():
    model, weights, contexts, targets = build(5, radius=2, seed=3)
    lm = NgramWeights(weights, model)
    offsets = ScoringParts.from_weights(weights)
    per_order, joined = ngram_weights.joined_parts(lm.ngram_parts(), offsets, contexts)
    assert per_order.n_blocks == 4 + 2 and joined.shape == (contexts.shape[0], 4 + 2)
    beta = np.array([0.1, 0.2, 0.3, 0.4])
    one, joined_one = ngram_weights.joined_parts(lm.ngram_parts(), offsets, contexts, beta)
    assert one.n_blocks == 1 + 2
    np.testing.assert_allclose(one.data[0], sum(b * d for b, d in zip(beta, per_order.data[:4])),
                               atol=1e-12)


def test_fit_lowers_the_loss_and_derive_rebuilds_the_model():
    model, weights, contexts, targets = build(3, radius=2, seed=11)
    lm = NgramWeights(weights, model)
    docs = [np.r_[row[::-1], t] for row, t in zip(contexts[:400], targets[:400])]
    fitted = lm.fit_calibration(docs, 10_000)
    assert fitted.calibrated and fitted.theta.size == 2 + 2 + 1
    before = -lm.target_log_probs(contexts, targets).mean()
    after = -fitted.target_log_probs(contexts, targets).mean()
    assert after < before
    stripped = dataclasses.replace(model, levels=[dataclasses.replace(level, probs=None,
                                                                      roots=None)
                                                  for level in model.levels])
    rebuilt = derive(stripped)
    for a, b in zip(rebuilt.levels, model.levels):
        np.testing.assert_array_equal(a.probs, b.probs)
        np.testing.assert_array_equal(a.roots, b.roots)

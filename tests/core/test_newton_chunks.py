"""A Newton pass split into chunks of distinct contexts (issue 16): the chunks' sums add up
to the single pass (one chunk: bit for bit), and a fit whose passes are evaluated chunk by
chunk reaches the same theta."""

from __future__ import annotations

import numpy as np
import pytest

from streamsolve.core import newton, score_native
from streamsolve.core.scoring import CalibrationObjective, ScoringParts

from .test_scoring import positions, random_docs, weights_of

pytestmark = pytest.mark.skipif(not score_native.available(),
                                reason="C scoring kernel not built")


def chunked(pieces):
    """An evaluator summing `context_sums` over ``pieces`` chunks (as a cluster would)."""
    def evaluate(objective, theta):
        scorer = newton.hessian_scorer(objective.scorer(theta, native=True))
        cuts = np.linspace(0, objective.unique.shape[0], pieces + 1).astype(int)
        sums = [newton.context_sums(scorer, objective.unique[a:b], objective.counts[a:b])
                for a, b in zip(cuts[:-1], cuts[1:])]
        return newton.combine_sums(objective, theta, sums)
    return evaluate


@pytest.mark.parametrize("aggregation,radius", [("cat", 3), ("sum", 2)])
def test_chunk_sums_add_up_to_the_single_pass(monkeypatch, aggregation, radius):
    V = 24
    monkeypatch.setattr(newton, "DENSE_ROW_MIN_NNZ", 1)
    monkeypatch.setattr(newton, "DENSE_ROW_BYTES", 16 * V * 3)
    docs = random_docs(5, V, n_docs=400)
    weights = weights_of(docs[:300], V, radius, aggregation)
    ctx, tgt = positions(docs[300:], radius)
    objective = CalibrationObjective(ScoringParts.from_weights(weights), ctx, tgt, native=True)
    theta = np.r_[np.linspace(0.6, 1.1, objective.parts.n_blocks), -0.3]
    loss, grad, hessian = newton.loss_gradient_hessian(objective, theta)
    one = chunked(1)(objective, theta)
    assert one[0] == loss and np.array_equal(one[1], grad) and np.array_equal(one[2], hessian)
    three = chunked(3)(objective, theta)
    assert three[0] == pytest.approx(loss, abs=1e-12)
    np.testing.assert_allclose(three[1], grad, atol=1e-12)
    np.testing.assert_allclose(three[2], hessian, atol=1e-12)
    theta0 = np.r_[weights.beta, weights.gamma]
    local = newton.fit_newton(CalibrationObjective(objective.parts, ctx, tgt, native=True),
                              theta0)
    split = newton.fit_newton(CalibrationObjective(objective.parts, ctx, tgt, native=True),
                              theta0, evaluate=chunked(4))
    np.testing.assert_allclose(split.theta, local.theta, atol=1e-9)
    assert split.loss_after == pytest.approx(local.loss_after, abs=1e-12)

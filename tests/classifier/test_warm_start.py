"""The classifier's minimum-norm warm start and ``l2`` against LogisticRegression's ``C``."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import log_softmax
from sklearn.linear_model import LogisticRegression

from streamsolve.classifier.estimator import ExplicitSoftmaxClassifier
from streamsolve.core.warm_start import min_norm_classifier


@pytest.mark.parametrize("form", ["column", "row"])
def test_min_norm_classifier_predicts_identically(digits_split, form):
    (X, y), (Xc, yc), (Xt, yt) = digits_split
    model = ExplicitSoftmaxClassifier(form=form).fit(X, y).calibrate(Xc, yc)
    coef, intercept = min_norm_classifier(model.coef_, model.intercept_)
    np.testing.assert_allclose(log_softmax(Xt @ coef.T + intercept, axis=1),
                               model.predict_log_proba(Xt), rtol=0, atol=1e-9)
    np.testing.assert_allclose(coef.sum(axis=0), 0, atol=1e-9)
    assert np.sum(coef ** 2) <= np.sum(model.coef_ ** 2)


def test_refine_from_explicit_starts_at_min_norm_calibrated_point(digits_split):
    (X, y), (Xc, yc), _ = digits_split
    model = ExplicitSoftmaxClassifier().fit(X, y).calibrate(Xc, yc)
    calibrated_loss = model.log_loss(X, y)
    coef, _ = min_norm_classifier(model.coef_, model.intercept_)
    l2 = 1e-2
    model.refine(X, y, passes=0, init="explicit", l2=l2)
    first = model.refine_history_[0]
    assert first["loss"] == pytest.approx(calibrated_loss, rel=1e-10)   # same predictions
    assert first["objective"] == pytest.approx(calibrated_loss + 0.5 * l2 * np.sum(coef ** 2),
                                               rel=1e-10)
    np.testing.assert_allclose(model.coef_, coef, atol=1e-12)


def test_l2_is_one_over_c_n_of_logistic_regression(digits_split):
    (X, y), _, _ = digits_split
    X = X[:400] / 16.0
    y = y[:400]
    C = 0.5
    reference = LogisticRegression(C=C, tol=1e-12, max_iter=5000).fit(X, y)
    model = ExplicitSoftmaxClassifier().fit(X, y)
    model.refine(X, y, passes=400, init="zeros", l2=1.0 / (C * len(y)))
    ours = model.refine_history_[-1]
    best = min(h["objective"] for h in model.refine_history_)
    P = reference.predict_log_proba(X)
    ref_objective = (-P[np.arange(len(y)), y].mean()
                     + 0.5 / (C * len(y)) * float(np.sum(reference.coef_ ** 2)))
    assert best == pytest.approx(ref_objective, rel=1e-6)
    assert ours["objective"] >= best
    np.testing.assert_allclose(model.coef_ - model.coef_.mean(axis=0),
                               reference.coef_ - reference.coef_.mean(axis=0), atol=1e-3)


def test_default_refine_starts_fresh_weights_at_their_min_norm_point(digits_split):
    """Issue 25: refine() on freshly fitted (or calibrated) weights starts from their
    minimum-norm representative; on refined weights it continues from them."""
    (X, y), (Xc, yc), (Xt, yt) = digits_split
    for calibrate in (False, True):
        def fresh():
            model = ExplicitSoftmaxClassifier().fit(X, y)
            return model.calibrate(Xc, yc) if calibrate else model

        default, explicit, current = fresh(), fresh(), fresh()
        default.refine(X, y, passes=5)
        explicit.refine(X, y, passes=5, init="explicit")
        current.refine(X, y, passes=5, init="current")
        np.testing.assert_array_equal(default.coef_, explicit.coef_)
        assert default.refine_history_ == explicit.refine_history_
        # the raw start pays the L2 penalty for offsets that predict nothing
        assert default.refine_history_[-1]["objective"] < current.refine_history_[-1]["objective"]
    refined_coef = default.coef_.copy()
    default.refine(X, y, passes=0)  # a second refine continues from the refined weights
    np.testing.assert_array_equal(default.coef_, refined_coef)

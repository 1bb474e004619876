"""Calibration and refinement of the classifier (streamsolve.core.calibration,
streamsolve.classifier.refine): never worse on the calibration sample, refinement is a
map-reduce over row blocks and keeps the best point."""

import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
from scipy.special import log_softmax

from streamsolve.classifier import refine as classifier_refine
from streamsolve.classifier.estimator import ExplicitSoftmaxClassifier

from .conftest import random_counts_data


@pytest.mark.parametrize("form,smoothing", [("column", "additive"), ("column", "dirichlet"),
                                            ("row", "additive"), ("row", "dirichlet")])
def test_calibration_never_worse_on_its_sample(digits_split, form, smoothing):
    (X, y), (Xc, yc), (Xt, yt) = digits_split
    model = ExplicitSoftmaxClassifier(form=form, smoothing=smoothing).fit(X, y)
    before, test_before = model.log_loss(Xc, yc), model.log_loss(Xt, yt)
    model.calibrate(Xc, yc)
    after = model.log_loss(Xc, yc)
    assert after <= before
    assert model.calibration_["loss_before"] == pytest.approx(before, rel=1e-12)
    assert model.calibration_["loss_after"] == pytest.approx(after, rel=1e-12)
    assert len(model.calibration_["theta"]) == (2 if form == "column" else 3)
    # naive Bayes on digit pixels is grossly over-confident; calibration fixes most of it
    assert model.log_loss(Xt, yt) < 0.5 * test_before


def test_calibration_keeps_uncalibrated_point_when_it_cannot_improve():
    # a sample where the explicit solution is already perfect and confident: theta = 1 wins
    # or the result is at least as good; never a loss increase
    X, y = random_counts_data(seed=4, n=200, rate=30.0)
    model = ExplicitSoftmaxClassifier().fit(X, y)
    before = model.log_loss(X[:5], y[:5])
    model.calibrate(X[:5], y[:5])
    assert model.log_loss(X[:5], y[:5]) <= before


def test_block_loss_grad_is_the_dense_formula():
    rng = np.random.default_rng(0)
    X, y = rng.random((40, 7)), rng.integers(0, 3, size=40)
    coef, intercept = rng.standard_normal((3, 7)), rng.standard_normal(3)
    Y = np.eye(3)[y]
    P = np.exp(log_softmax(X @ coef.T + intercept, axis=1))
    for block in (X, sp.csr_matrix(X)):
        result = classifier_refine.block_loss_grad(block, y, coef, intercept)
        np.testing.assert_allclose(result.grad_coef, (X.T @ (P - Y)).T, rtol=1e-12)
        np.testing.assert_allclose(result.grad_intercept, (P - Y).sum(axis=0), rtol=1e-12)
        assert result.loss == pytest.approx(-np.log(P[np.arange(40), y]).sum(), rel=1e-12)


def test_refinement_decreases_loss_and_explicit_start_beats_zeros(digits_split):
    (X, y), (Xc, yc), _ = digits_split
    explicit = ExplicitSoftmaxClassifier().fit(X, y).calibrate(Xc, yc)
    start_loss = explicit.log_loss(X, y)
    explicit.refine(X, y, passes=10, l2=0.0)
    history = explicit.refine_history_
    assert [h["pass"] for h in history] == list(range(11))
    assert history[0]["loss"] == pytest.approx(start_loss, rel=1e-10)
    best_so_far = np.minimum.accumulate([h["objective"] for h in history])
    assert best_so_far[-1] < 0.6 * best_so_far[0]
    # "monotonically-ish": L-BFGS line-search trials may overshoot, but most steps go down
    losses = np.array([h["loss"] for h in history])
    assert np.mean(np.diff(losses) <= 0) >= 0.7
    assert explicit.log_loss(X, y) == pytest.approx(best_so_far[-1], rel=1e-10)
    assert explicit.weights_source_ == "refined"

    zeros = ExplicitSoftmaxClassifier().fit(X, y).refine(X, y, passes=1, init="zeros")
    from_explicit = ExplicitSoftmaxClassifier().fit(X, y).calibrate(Xc, yc).refine(X, y, passes=1)
    assert zeros.refine_history_[0]["loss"] == pytest.approx(np.log(10), rel=1e-12)
    assert from_explicit.log_loss(X, y) < zeros.log_loss(X, y)


def test_refinement_is_a_map_reduce_independent_of_chunking(digits_split):
    (X, y), _, (Xt, yt) = digits_split
    one = ExplicitSoftmaxClassifier(chunk_size=10_000).fit(X, y)
    one.refine(X, y, passes=3, init="zeros", X_val=Xt, y_val=yt)
    many = ExplicitSoftmaxClassifier(chunk_size=64).fit(X, y)
    many.refine(da.from_array(X, chunks=(128, 64)), y, passes=3, init="zeros", X_val=Xt,
                y_val=yt)
    for a, b in zip(one.refine_history_, many.refine_history_):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-9)


def test_refine_early_stopping_keeps_best_validation_point(digits_split):
    (X, y), (Xc, yc), (Xt, yt) = digits_split
    model = ExplicitSoftmaxClassifier().fit(X, y).calibrate(Xc, yc)
    model.refine(X, y, passes=15, X_val=Xt, y_val=yt, early_stopping=True)
    history = model.refine_history_
    best = min(history, key=lambda entry: entry["val_loss"])
    assert [entry["pass"] for entry in history if entry["kept"]] == [best["pass"]]
    assert model.log_loss(Xt, yt) == pytest.approx(best["val_loss"], rel=1e-10)
    with pytest.raises(ValueError, match="early_stopping=True needs validation data"):
        model.refine(X, y, passes=1, early_stopping=True)


def test_l2_auto_is_logistic_regression_default_c(digits_split):
    (X, y), _, _ = digits_split
    auto = ExplicitSoftmaxClassifier().fit(X, y).refine(X, y, passes=0, init="zeros")
    given = ExplicitSoftmaxClassifier().fit(X, y).refine(X, y, passes=0, init="zeros",
                                                         l2=1.0 / len(y))
    explicit = ExplicitSoftmaxClassifier().fit(X, y)
    explicit.refine(X, y, passes=0, init="explicit")
    penalised = explicit.refine_history_[0]
    explicit.refine(X, y, passes=0, init="explicit", l2=0.0)
    unpenalised = explicit.refine_history_[0]
    assert auto.refine_history_ == given.refine_history_
    assert penalised["objective"] > unpenalised["objective"] == pytest.approx(
        unpenalised["loss"], rel=1e-12)
    for bad in ("C=1", -1.0, float("nan")):
        with pytest.raises(ValueError, match="l2 must be a number >= 0 or 'auto'"):
            explicit.refine(X, y, passes=0, l2=bad)


def test_refine_start_points_and_finalize_restores_explicit(digits_split):
    (X, y), _, _ = digits_split
    model = ExplicitSoftmaxClassifier().fit(X, y)
    explicit_coef = model.coef_.copy()
    model.refine(X, y, passes=0, init="current")
    np.testing.assert_array_equal(model.coef_, explicit_coef)
    model.refine(X, y, passes=2, init="random", random_state=0, l2=1e-3)
    assert not np.array_equal(model.coef_, explicit_coef)
    given = (np.zeros_like(explicit_coef), np.zeros(10))
    model.refine(X, y, passes=0, init=given)
    np.testing.assert_array_equal(model.coef_, 0.0)
    model.finalize()
    np.testing.assert_array_equal(model.coef_, explicit_coef)
    assert model.weights_source_ == "explicit"
    with pytest.raises(ValueError, match="init must be"):
        model.refine(X, y, init="ones")
    with pytest.raises(ValueError, match="passes must be an integer >= 0"):
        model.refine(X, y, passes=-1)

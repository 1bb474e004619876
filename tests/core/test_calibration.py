"""The calibration fit of DESIGN §3 (`streamsolve.core.calibration`), shared by the language
model and the classifier: convex scalars fitted by L-BFGS, never worse on their sample."""

from __future__ import annotations

import doctest

import numpy as np
from scipy.special import log_softmax

from streamsolve.core import calibration
from streamsolve.core.calibration import calibration_loss, fit_calibration


def test_loss_and_gradient_are_the_dense_formulas():
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((2, 50, 4))
    U = rng.standard_normal((1, 4))
    y = rng.integers(0, 4, size=50)
    theta = np.array([0.7, 1.3, -0.4])
    logp = log_softmax(np.tensordot(theta[:2], Z, axes=1) + theta[2] * U[0], axis=1)
    loss, grad = calibration_loss(theta, Z, U, y, batch_rows=7)
    assert np.isclose(loss, -logp[np.arange(50), y].mean(), rtol=1e-13, atol=0)
    step = 1e-6
    for k in range(3):
        e = np.zeros(3)
        e[k] = step
        numeric = (calibration_loss(theta + e, Z, U, y)[0]
                   - calibration_loss(theta - e, Z, U, y)[0]) / (2 * step)
        assert np.isclose(grad[k], numeric, rtol=1e-6, atol=1e-9)


def test_fit_never_worse_and_dead_classes_stay_dead():
    rng = np.random.default_rng(1)
    Z = rng.standard_normal((1, 300, 3))
    y = np.argmax(0.5 * Z[0] + rng.gumbel(size=(300, 3)), axis=1)
    y[y == 2] = 1                                          # class 2 never the target
    mask = np.array([0.0, 0.0, -np.inf])
    fit = fit_calibration(Z, np.zeros((1, 3)), y, class_mask=mask)
    assert fit.loss_after <= fit.loss_before and fit.improved
    assert np.isfinite(fit.loss_after) and fit.n_samples == 300
    # the start point already optimal: kept, loss unchanged
    again = fit_calibration(Z, np.zeros((1, 3)), y, theta0=fit.theta, class_mask=mask)
    assert again.loss_after <= again.loss_before


def test_docstring_examples():
    result = doctest.testmod(calibration, verbose=False)
    assert result.attempted > 0 and result.failed == 0

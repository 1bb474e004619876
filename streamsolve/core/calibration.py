"""Calibration of DESIGN §3, once: a few convex scalars fitted by L-BFGS on a held-out sample.

The explicit logits are a sum of components, each scaled by one scalar:

    logit_nj = sum_k theta_k Z_k[n, j] + sum_l theta_{K+l} u_l[j]

``Z_k`` are per-sample components (the language model's per-offset log-probabilities
``log P_r(j | c_r)``; the classifier's ``x . log P(. | j)``), ``u_l`` are per-class
components shared by every sample (``log p_j``). The mean cross-entropy is convex in theta
(the logits are linear in it). For the language model theta is DESIGN's ``(beta, gamma)``;
for the classifier it starts at 1. L-BFGS starts at ``theta0`` and its result is kept only if
it does not raise the loss on the sample, so calibration never makes the sample worse.

Pure numpy/scipy: no I/O, nothing else of ours. Used by
`streamsolve.language_model.LanguageModel.calibrate` and
`streamsolve.classifier.estimator.ExplicitSoftmaxClassifier.calibrate`.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
from scipy.optimize import minimize

logger = logging.getLogger(__name__)

#: Samples per batch when summing the loss (bounds the float64 working copy of Z).
DEFAULT_BATCH_ROWS = 4096


def logsumexp(x: np.ndarray, axis: int | None = None) -> np.ndarray:
    """``log(sum(exp(x)))`` along ``axis`` (a lean version of scipy's, for hot loops).

    Entries of ``-inf`` are allowed (they contribute nothing); an all ``-inf`` slice gives
    ``-inf``.

    Examples
    --------
    >>> float(logsumexp(np.log(np.array([1.0, 3.0]))))
    1.3862943611198906
    """
    peak = np.max(x, axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    out = np.log(np.sum(np.exp(x - peak), axis=axis, keepdims=True)) + peak
    return out.squeeze(axis) if axis is not None else out.reshape(())


@dataclasses.dataclass
class CalibrationFit:
    """Result of `fit_calibration`.

    Attributes
    ----------
    theta : ndarray of shape (n_components,)
        The scalars kept (``theta0`` when L-BFGS did not lower the loss).
    loss_before, loss_after : float
        Mean cross-entropy on the sample at ``theta0`` and at ``theta``.
    n_samples : int
        Samples in the calibration set.
    """

    theta: np.ndarray
    loss_before: float
    loss_after: float
    n_samples: int

    @property
    def improved(self) -> bool:
        """True when the kept theta has a strictly lower loss than ``theta0``."""
        return self.loss_after < self.loss_before


def calibration_loss(theta: np.ndarray, sample_components: np.ndarray,
                     shared_components: np.ndarray, targets: np.ndarray,
                     class_mask: np.ndarray | None = None,
                     batch_rows: int = DEFAULT_BATCH_ROWS) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of the calibrated logits and its gradient in theta.

    Parameters
    ----------
    theta : ndarray of shape (K + L,)
        Scalars of the K per-sample components, then of the L shared ones.
    sample_components : ndarray of shape (K, n, M)
        Per-sample components (float32 or float64; read ``batch_rows`` samples at a time).
    shared_components : ndarray of shape (L, M)
        Components shared by every sample (finite).
    targets : ndarray of shape (n,), int
        Target class of each sample.
    class_mask : ndarray of shape (M,), optional
        Added to every logit: ``-inf`` for classes that can never be predicted, else 0.
    batch_rows : int
        Samples per batch.

    Returns
    -------
    loss : float
    grad : ndarray of shape (K + L,)
    """
    n_sample = sample_components.shape[0]
    n = targets.size
    beta, gamma = theta[:n_sample], theta[n_sample:]
    shared = gamma[0] * shared_components[0]
    for scale, component in zip(gamma[1:], shared_components[1:]):
        shared = shared + scale * component
    if class_mask is not None:
        shared = shared + class_mask
    rows = np.arange(min(n, batch_rows))
    loss = 0.0
    grad = np.zeros_like(theta)
    for s in range(0, n, batch_rows):
        Z = sample_components[:, s:s + batch_rows].astype(np.float64)
        y = targets[s:s + batch_rows]
        r = rows[:y.size]
        logits = np.tensordot(beta, Z, axes=1) + shared
        lse = logsumexp(logits, axis=1)
        loss += float(np.sum(lse - logits[r, y]))
        p = np.exp(logits - lse[:, None])
        grad[:n_sample] += (Z.reshape(n_sample, -1) @ p.reshape(-1)) - Z[:, r, y].sum(axis=1)
        for k, component in enumerate(shared_components):
            grad[n_sample + k] += float(np.sum(p @ component) - component[y].sum())
    return loss / n, grad / n


def fit_calibration(sample_components: np.ndarray, shared_components: np.ndarray,
                    targets: np.ndarray, theta0: np.ndarray | None = None,
                    class_mask: np.ndarray | None = None, max_iter: int = 100,
                    batch_rows: int = DEFAULT_BATCH_ROWS) -> CalibrationFit:
    """Fit the calibration scalars by L-BFGS; keep them only if the loss does not go up.

    Parameters
    ----------
    sample_components : ndarray of shape (K, n, M)
        Per-sample logit components (see `calibration_loss`).
    shared_components : ndarray of shape (L, M)
        Per-class components shared by every sample (L >= 1).
    targets : ndarray of shape (n,), int
        Target class indices.
    theta0 : ndarray of shape (K + L,), optional
        Start point, the uncalibrated solution (default: all ones).
    class_mask : ndarray of shape (M,), optional
        ``-inf`` for classes that are never predicted, else 0.
    max_iter : int
        L-BFGS iterations.
    batch_rows : int
        Samples per batch of the loss.

    Returns
    -------
    CalibrationFit

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> Z = rng.standard_normal((1, 200, 3))
    >>> y = np.argmax(2.0 * Z[0] + rng.gumbel(size=(200, 3)), axis=1)   # true scale 2
    >>> fit = fit_calibration(Z, np.zeros((1, 3)), y)
    >>> fit.improved, bool(1.5 < fit.theta[0] < 3.0)
    (True, True)
    """
    targets = np.asarray(targets)
    n_components = sample_components.shape[0] + shared_components.shape[0]
    theta0 = np.ones(n_components) if theta0 is None else np.asarray(theta0, dtype=np.float64)

    def loss_and_grad(theta):
        return calibration_loss(theta, sample_components, shared_components, targets,
                                class_mask, batch_rows)

    return minimize_kept(loss_and_grad, theta0, max_iter, targets.size)


def minimize_kept(loss_and_grad, theta0: np.ndarray, max_iter: int,
                  n_samples: int) -> CalibrationFit:
    """L-BFGS from ``theta0`` on ``loss_and_grad(theta) -> (loss, grad)``; the result is kept
    only if its loss is finite and not above the start's (else ``theta0`` is kept)."""
    start_loss = loss_and_grad(theta0)[0]
    result = minimize(loss_and_grad, theta0, jac=True, method="L-BFGS-B",
                      options={"maxiter": max_iter})
    if np.isfinite(result.fun) and result.fun <= start_loss:
        return CalibrationFit(result.x, float(start_loss), float(result.fun), n_samples)
    logger.info("calibration did not lower the loss (%.6g -> %.6g): kept the start point",
                start_loss, result.fun)
    return CalibrationFit(theta0, float(start_loss), float(start_loss), n_samples)

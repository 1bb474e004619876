"""Iterative parts of the explicit softmax classifier: refinement and calibration.

Both optimise the convex softmax cross-entropy of DESIGN §1 with scipy's L-BFGS:

- `block_loss_grad` is the *map* step of one refinement pass: the loss and the gradient
  ``X_b^T (Yhat_b - Y_b)`` of one row block. The results of all blocks add (`LossGrad` is a
  monoid), so a pass is a map-reduce over row chunks and X never has to be in memory.
- `minimize_in_passes` runs L-BFGS with a hard budget of full-data evaluations ("passes").
- `fit_calibration` fits the few scalars that rescale the components of the explicit logits
  (logit scale, prior weight) on a held-out sample; it starts from the uncalibrated point and
  only accepts a result that lowers the loss on that sample.

Nothing here knows about input formats or the estimator: callers pass blocks and callables.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import numpy as np
import scipy.optimize
import scipy.sparse as sp
from scipy.special import logsumexp

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class LossGrad:
    """Sums over a set of samples of the cross-entropy, its gradient and the hits.

    Attributes
    ----------
    loss : float
        ``-sum_n log yhat_n[y_n]``.
    grad_coef : ndarray of shape (n_classes, n_features)
        ``(X^T (Yhat - Y))^T``, i.e. the gradient with respect to ``coef`` (class x feature).
    grad_intercept : ndarray of shape (n_classes,)
        ``sum_n (yhat_n - e_{y_n})``.
    n_correct : int
        Samples whose arg-max class is the target.
    n_samples : int
        Samples summed.
    """

    loss: float
    grad_coef: np.ndarray
    grad_intercept: np.ndarray
    n_correct: int
    n_samples: int

    def __add__(self, other: LossGrad) -> LossGrad:
        return LossGrad(self.loss + other.loss, self.grad_coef + other.grad_coef,
                        self.grad_intercept + other.grad_intercept,
                        self.n_correct + other.n_correct, self.n_samples + other.n_samples)


def block_logits(X_block, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    """Logits ``X_b coef^T + intercept`` of one dense or CSR row block (float64)."""
    return np.asarray(X_block @ coef.T) + intercept


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise ``log softmax``; classes with logit ``-inf`` get ``-inf``."""
    return logits - logsumexp(logits, axis=1, keepdims=True)


def block_loss_grad(X_block, y_index: np.ndarray, coef: np.ndarray,
                    intercept: np.ndarray) -> LossGrad:
    """Cross-entropy and its gradient summed over one row block.

    Parameters
    ----------
    X_block : ndarray or scipy.sparse CSR matrix of shape (n, n_features), float64
    y_index : ndarray of shape (n,), int
        Target class indices into ``0..n_classes-1``.
    coef : ndarray of shape (n_classes, n_features)
    intercept : ndarray of shape (n_classes,)

    Returns
    -------
    LossGrad
    """
    logp = log_softmax(block_logits(X_block, coef, intercept))
    rows = np.arange(len(y_index))
    residual = np.exp(logp)
    residual[rows, y_index] -= 1.0                      # Yhat - Y
    if sp.issparse(X_block):
        grad_coef = np.asarray((X_block.T @ residual).T)
    else:
        grad_coef = residual.T @ X_block
    return LossGrad(loss=float(-logp[rows, y_index].sum()), grad_coef=grad_coef,
                    grad_intercept=residual.sum(axis=0),
                    n_correct=int(np.count_nonzero(logp.argmax(axis=1) == y_index)),
                    n_samples=len(y_index))


class _BudgetSpent(Exception):
    """Raised inside the objective to stop L-BFGS when the pass budget is used up."""


def minimize_in_passes(evaluate: Callable[[np.ndarray], tuple[float, np.ndarray]],
                       theta0: np.ndarray, n_evaluations: int) -> int:
    """Run L-BFGS on ``evaluate`` for at most ``n_evaluations`` calls of it.

    ``evaluate(theta) -> (objective, gradient)`` is one full pass over the data; the caller
    records what it needs (history, best point) inside it. L-BFGS-B runs with zero tolerances
    so that only the budget (or a failed line search at numerical convergence) stops it.

    Returns
    -------
    int
        The number of evaluations made.
    """
    calls = 0

    def budgeted(theta):
        nonlocal calls
        if calls >= n_evaluations:
            raise _BudgetSpent
        calls += 1
        return evaluate(theta)

    try:
        result = scipy.optimize.minimize(
            budgeted, theta0, jac=True, method="L-BFGS-B",
            options={"maxiter": 10 * n_evaluations + 10, "maxfun": 10 * n_evaluations + 10,
                     "ftol": 0.0, "gtol": 0.0, "maxcor": 10})
        logger.info("L-BFGS stopped before the pass budget: %s", result.message)
    except _BudgetSpent:
        pass
    return calls


def fit_calibration(components: np.ndarray, y_index: np.ndarray,
                    dead: np.ndarray | None = None, max_iter: int = 200):
    """Fit one scalar per logit component on a held-out sample (convex in the scalars).

    The logits are ``sum_k theta_k components[:, :, k]``; ``theta = 1`` is the uncalibrated
    explicit solution. The loss is the mean cross-entropy, convex in ``theta`` because the
    logits are linear in it. L-BFGS starts at ``theta = 1`` and the result is kept only if it
    lowers the loss, so calibration is never worse on its own sample.

    Parameters
    ----------
    components : ndarray of shape (n_samples, n_classes, n_components)
        Finite logit components.
    y_index : ndarray of shape (n_samples,)
        Target class indices.
    dead : ndarray of bool, shape (n_classes,), optional
        Classes whose logit is ``-inf`` whatever theta (e.g. a declared class never seen).
    max_iter : int
        L-BFGS iterations.

    Returns
    -------
    theta : ndarray of shape (n_components,)
    loss_before, loss_after : float
        Mean cross-entropy on the sample at ``theta = 1`` and at the returned theta.
    """
    n, n_classes, n_components = components.shape
    rows = np.arange(n)
    mask = np.zeros(n_classes) if dead is None else np.where(dead, -np.inf, 0.0)

    def loss_grad(theta):
        logp = log_softmax(components @ theta + mask)
        residual = np.exp(logp)
        residual[rows, y_index] -= 1.0
        grad = np.einsum("nj,njk->k", residual, components) / n
        return float(-logp[rows, y_index].mean()), grad

    theta0 = np.ones(n_components)
    loss0, _ = loss_grad(theta0)
    result = scipy.optimize.minimize(loss_grad, theta0, jac=True, method="L-BFGS-B",
                                     options={"maxiter": max_iter})
    loss1, _ = loss_grad(result.x)
    if not np.isfinite(loss1) or loss1 >= loss0:
        logger.info("calibration did not lower the loss (%.6g -> %.6g): kept theta = 1",
                    loss0, loss1)
        return theta0, loss0, loss0
    return result.x, loss0, loss1

"""Refinement of the explicit softmax classifier: full-batch L-BFGS passes over row blocks.

It optimises the convex softmax cross-entropy of DESIGN §1 with scipy's L-BFGS:

- `block_loss_grad` is the *map* step of one refinement pass: the loss and the gradient
  ``X_b^T (Yhat_b - Y_b)`` of one row block. The results of all blocks add (`LossGrad` is a
  monoid), so a pass is a map-reduce over row chunks and X never has to be in memory.
- `minimize_in_passes` runs L-BFGS with a hard budget of full-data evaluations ("passes").
- `refine_weights` runs those passes from a start point (`start_point`) and keeps the best
  point seen.

Calibration (a few scalars on a held-out sample) is `streamsolve.core.calibration`, shared
with the language model.

Nothing here knows about input formats or the estimator: callers pass blocks and callables.
"""

from __future__ import annotations

import dataclasses
import logging
import numbers
from collections.abc import Callable

import numpy as np
import scipy.optimize
import scipy.sparse as sp
from scipy.special import logsumexp

from ..core.warm_start import min_norm_classifier

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


def refine_weights(train_pass: Callable[[np.ndarray, np.ndarray], LossGrad],
                   coef0: np.ndarray, intercept0: np.ndarray, passes: int, l2: float = 0.0,
                   validation_pass: Callable[[np.ndarray, np.ndarray], LossGrad] | None = None,
                   early_stopping: bool = False) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Full-batch L-BFGS from ``(coef0, intercept0)``, keeping the best point evaluated.

    Objective: ``loss / N + l2/2 ||coef||^2``. ``train_pass(coef, intercept)`` is one pass
    over the training data (a `LossGrad` summed over all its row blocks); at most
    ``passes + 1`` passes are made (the first at the start point).

    Parameters
    ----------
    train_pass : callable
        ``(coef, intercept) -> LossGrad`` over the training data.
    coef0 : ndarray of shape (n_classes, n_features)
    intercept0 : ndarray of shape (n_classes,), finite
    passes : int
        Gradient passes (>= 0).
    l2 : float
        L2 penalty on ``coef`` (not on the intercept).
    validation_pass : callable, optional
        ``(coef, intercept) -> LossGrad`` over held-out data: adds ``val_loss`` and
        ``val_accuracy`` to each history entry (not counted in ``passes``).
    early_stopping : bool
        Keep the entry with the lowest ``val_loss`` instead of the lowest objective.

    Returns
    -------
    coef, intercept : ndarray
        The kept point.
    history : list of dict
        One entry per pass: ``pass``, ``objective``, ``loss``, ``accuracy`` (+ ``val_loss``,
        ``val_accuracy``), and ``kept`` (True for the returned point).
    """
    n_classes, n_features = coef0.shape

    def split(theta):
        return (theta[:n_classes * n_features].reshape(n_classes, n_features),
                theta[n_classes * n_features:])

    history, best = [], {}

    def evaluate(theta):
        coef, intercept = split(theta)
        total = train_pass(coef, intercept)
        n = total.n_samples
        objective = total.loss / n + 0.5 * l2 * float(np.sum(coef * coef))
        grad = np.concatenate([(total.grad_coef / n + l2 * coef).ravel(),
                               total.grad_intercept / n])
        entry = {"pass": len(history), "objective": objective, "loss": total.loss / n,
                 "accuracy": total.n_correct / n}
        if validation_pass is not None:
            val = validation_pass(coef, intercept)
            entry.update(val_loss=val.loss / val.n_samples,
                         val_accuracy=val.n_correct / val.n_samples)
        history.append(entry)
        key = entry["val_loss"] if early_stopping else objective
        if not best or key < best["key"]:
            best.update(key=key, coef=coef.copy(), intercept=intercept.copy(),
                        entry=entry["pass"])
        logger.info("refine pass %d: objective %.6f, accuracy %.4f%s", entry["pass"],
                    objective, entry["accuracy"],
                    f", val loss {entry['val_loss']:.6f}" if validation_pass else "")
        return objective, grad

    minimize_in_passes(evaluate, np.concatenate([coef0.ravel(), intercept0]), passes + 1)
    for entry in history:
        entry["kept"] = entry["pass"] == best["entry"]
    return best["coef"], best["intercept"], history


def resolve_l2(l2, n_samples: int) -> float:
    """The L2 penalty of `refine`: ``"auto"`` is ``1 / n_samples`` (LogisticRegression's C = 1).

    Parameters
    ----------
    l2 : float or "auto"
    n_samples : int
        Training samples N; a LogisticRegression ``C`` corresponds to ``l2 = 1 / (C N)``.

    Returns
    -------
    float
    """
    if isinstance(l2, str):
        if l2 != "auto":
            raise ValueError(f"l2 must be a number >= 0 or 'auto', got {l2!r}.")
        return 1.0 / max(int(n_samples), 1)
    if not isinstance(l2, numbers.Real) or not np.isfinite(l2) or l2 < 0:
        raise ValueError(f"l2 must be a number >= 0 or 'auto', got {l2!r}.")
    return float(l2)


def start_point(init, current: tuple, explicit: tuple, random_state=None,
                source: str = "refined"):
    """The start ``(coef, intercept)`` of `refine_weights`, copies that may be changed.

    Parameters
    ----------
    init : {"auto", "current", "explicit", "zeros", "random"} or (coef, intercept)
        ``"auto"`` is ``"explicit"`` while the weights in use are explicit or calibrated
        (``source``), ``"current"`` once they were refined.
    current, explicit : (coef, intercept)
        The weights in use, and the explicit ones (calibrated if calibration ran).
        ``init="explicit"`` starts from the minimum-norm representative of ``explicit``
        (`streamsolve.core.warm_start.min_norm_classifier`: each feature centred across
        classes), which predicts identically but carries no per-feature offset for an L2
        penalty to pay for.
    random_state : int or None
        Seed for ``init="random"``.
    source : {"explicit", "calibrated", "refined"}
        Where the weights in use come from (resolves ``init="auto"``).
    """
    shape = current[0].shape
    if isinstance(init, str):
        if init == "auto":
            init = "current" if source == "refined" else "explicit"
        if init == "current":
            return current[0].copy(), current[1].copy()
        if init == "explicit":
            return min_norm_classifier(*explicit)
        if init == "zeros":
            return np.zeros(shape), np.zeros(shape[0])
        if init == "random":
            rng = np.random.default_rng(random_state)
            return 0.01 * rng.standard_normal(shape), np.zeros(shape[0])
        raise ValueError(f"init must be 'auto', 'current', 'explicit', 'zeros', 'random' or a "
                         f"(coef, intercept) pair, got {init!r}.")
    coef, intercept = (np.array(a, dtype=np.float64) for a in init)
    if coef.shape != shape or intercept.shape != (shape[0],):
        raise ValueError(f"init arrays must have shapes {shape} and ({shape[0]},), got "
                         f"{coef.shape} and {intercept.shape}.")
    return coef, intercept

"""Calibration by Newton's method on the O(nnz) kernel: the exact (R+1) x (R+1) Hessian of
the mean cross-entropy comes from the same pass as the loss and gradient.

With ``theta = (beta_1..beta_B, gamma)`` the logits of a context are affine in theta with
per-target features ``F_b(j) = Sraw_b(c, j) + uses_b c^(b)_j`` and ``F_B(j) = log p_j``
(the row terms cancel), so

    d^2 CE / d theta^2 = mean_n Cov_{p(.|c_n)}[F]

which the C kernel ``score_contexts_product_hess`` computes per distinct context in
O(its rows' nnz), with the O(V) part ``sum_j u_j x_k x_l`` once per theta. The loss is
convex in theta, so a damped Newton iteration (step halved until the loss goes down)
reaches the L-BFGS optimum in a handful of passes (tested to 1e-6). Only on the product
path of the C kernel; `newton_available` says when, else the caller uses L-BFGS.

Pure numpy (and ctypes through `score_native`).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os

import numpy as np

from . import score_native
from .calibration import CalibrationFit

logger = logging.getLogger(__name__)

#: Newton passes at most, and the gradient norm (max abs) at which the fit stops.
NEWTON_ITERATIONS = 20
NEWTON_TOLERANCE = 1e-10
#: The fit stops once the Newton decrement ``g^T H^-1 g / 2`` (the loss still to gain, in
#: nats per token, near the optimum) is below this: no pass is spent to confirm it.
NEWTON_DECREMENT = 1e-10
#: Distinct contexts per call of the Hessian kernel (calls run on a thread pool).
HESSIAN_CHUNK = 2048


def _eager(scorer):
    """The scorer whose parts are whole (a lazy scorer's resident one), or None."""
    if hasattr(scorer, "eager"):
        scorer.parts.scored = max(scorer.parts.scored, 1 << 62)  # the fit reads it all
        return scorer.eager()
    return scorer


def newton_available(objective) -> bool:
    """Whether the objective's parts can take Newton steps (C kernel, product path)."""
    probe = _scorer(objective, np.r_[np.ones(objective.parts.n_blocks), 0.0])
    return probe is not None


def _scorer(objective, theta):
    lib = score_native.library() if objective.native in (None, True) else None
    if lib is None or not hasattr(lib, "score_contexts_product_hess"):
        return None
    scorer = _eager(objective.scorer(theta, native=True))
    if scorer is None or scorer._product_factors() is None:
        return None
    return scorer


def loss_gradient_hessian(objective, theta: np.ndarray):
    """``(loss, gradient, Hessian)`` of a `CalibrationObjective` at ``theta`` (one pass)."""
    theta = np.asarray(theta, dtype=np.float64)
    beta, gamma = theta[:-1], theta[-1]
    scorer = _scorer(objective, theta)
    p, B = scorer.parts, theta.size - 1
    x, totals = scorer._dense_features()
    second_totals = np.ascontiguousarray((x * scorer.u[:, None]).T @ x)
    contexts = objective.unique
    n, R = contexts.shape
    log_zhat, e_sparse, e_dense = np.empty(n), np.empty((n, B)), np.empty((n, B + 1))
    second = np.empty((n, B + 1, B + 1))
    factors = scorer._product_factors()

    def run(start: int) -> int:
        stop = min(n, start + HESSIAN_CHUNK)
        return scorer.lib.score_contexts_product_hess(
            R, B, p.pointers.indptr, p.pointers.indices, p.pointers.data, factors,
            p.block_of.ctypes.data, scorer.u.ctypes.data, float(scorer.U), p.vocab_size, B + 1,
            x.ctypes.data, totals.ctypes.data, second_totals.ctypes.data, stop - start,
            contexts[start:stop].ctypes.data, log_zhat[start:].ctypes.data,
            e_sparse[start:].ctypes.data, e_dense[start:].ctypes.data, second[start:].ctypes.data)

    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        if any(status != 0 for status in pool.map(run, range(0, n, HESSIAN_CHUNK))):
            raise MemoryError("the scoring kernel could not allocate its buffers")
    counts = objective.counts
    target_logits = objective.target_dense[:-1] @ beta + gamma * objective.target_dense[-1] \
        + objective.target_raw @ beta - objective.n * scorer.a_max
    loss = (counts @ log_zhat - target_logits) / objective.n
    mean_f = e_dense.copy()
    mean_f[:, :-1] += e_sparse
    targets_f = np.r_[objective.target_dense[:-1] + objective.target_raw,
                      objective.target_dense[-1]]
    grad = (counts @ mean_f - targets_f) / objective.n
    hessian = (np.einsum("n,nkl->kl", counts, second)
               - np.einsum("n,nk,nl->kl", counts, mean_f, mean_f)) / objective.n
    return float(loss), grad, (hessian + hessian.T) / 2


def fit_newton(objective, theta0: np.ndarray) -> CalibrationFit:
    """Damped Newton from ``theta0`` (one kernel pass per iteration); kept only if the loss
    went down (as `minimize_kept`)."""
    theta = np.asarray(theta0, dtype=np.float64)
    loss, grad, hessian = loss_gradient_hessian(objective, theta)
    objective.evaluations += 1
    start = loss
    for _ in range(NEWTON_ITERATIONS):
        if np.max(np.abs(grad)) < NEWTON_TOLERANCE:
            break
        try:
            step = -np.linalg.solve(hessian + 1e-12 * np.eye(theta.size), grad)
        except np.linalg.LinAlgError:
            step = -grad
        if -grad @ step / 2 < NEWTON_DECREMENT:
            break
        for _ in range(30):  # halve until the (convex) loss goes down
            trial = theta + step
            t_loss, t_grad, t_hess = loss_gradient_hessian(objective, trial)
            objective.evaluations += 1
            if np.isfinite(t_loss) and t_loss <= loss:
                break
            step = step / 2
        else:
            break
        converged = loss - t_loss < 1e-15 * max(1.0, abs(loss))
        theta, loss, grad, hessian = trial, t_loss, t_grad, t_hess
        if converged:
            break
    if not (np.isfinite(loss) and loss <= start):
        return CalibrationFit(np.asarray(theta0, dtype=np.float64), start, start, objective.n)
    return CalibrationFit(theta, start, loss, objective.n)

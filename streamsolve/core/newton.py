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
#: The decrement at which a calibration fit (`streamsolve.core.scoring.fit_calibration_scored`)
#: stops: 1e-6 nats per token is far below the sample's own statistical error, about
#: (R + 1) / (2 n) = 6e-5 nats for R = 3 and n = 2^15 positions.
FIT_DECREMENT = 1e-6
#: Positions of the coarse stage of a calibration fit (a uniform subsample): the first
#: Newton steps, far from the optimum, need no more (see `fit_newton`).
COARSE_POSITIONS = 1 << 12
#: Positions of a coarser level before it (a uniform subset of the coarse subsample): the
#: first, largest steps cost a quarter there.
COARSE_FIRST_POSITIONS = 1 << 10
#: A coarse level stops at this fraction of its own statistical error, (R + 1) / (2 n)
#: nats: converging it further would not bring the next level's start any closer to that
#: level's optimum (measured: one Hessian pass fewer per level).
COARSE_DECREMENT_FRACTION = 0.1
#: Bytes of long rows held densely for the Hessian kernel (``exp(beta S)`` and ``S``, V
#: each, plus the row's own sums): a context's longest row then costs O(1); rows with
#: fewer entries than the minimum are not worth it.
DENSE_ROW_BYTES = 32 << 20
DENSE_ROW_MIN_NNZ = 256
#: Distinct contexts per call of the Hessian kernel (calls run on a thread pool).
HESSIAN_CHUNK = 2048


def _eager(scorer):
    """The scorer whose parts are whole (a lazy scorer's resident one), or None."""
    if hasattr(scorer, "eager"):
        return scorer.eager(now=True)  # the fit reads all of S, pass after pass
    return scorer


def newton_available(objective) -> bool:
    """Whether the objective's parts can take Newton steps (C kernel, product path)."""
    probe = _scorer(objective, np.r_[np.ones(objective.parts.n_blocks), 0.0])
    return probe is not None


def _scorer(objective, theta):
    """The Hessian scorer of an objective at theta (see `hessian_scorer`), or None."""
    if objective.native not in (None, True):
        return None
    return hessian_scorer(objective.scorer(theta, native=True))


def _order_by_longest_row(objective, parts) -> None:
    """Reorder the objective's distinct contexts (and their counts) by their longest row,
    once: consecutive contexts then read the same dense row (`_dense_rows`), which stays in
    cache (a Hessian pass measured ~8% cheaper). Each context's terms are independent of
    the order, and the loss sums them with their counts, so only rounding can change."""
    if getattr(objective, "_ordered_by_longest_row", False):
        return
    contexts = objective.unique
    lengths = np.stack([np.diff(parts.indptr[b])[contexts[:, r]]
                        for r, b in enumerate(parts.block_of)], axis=1)
    longest = np.argmax(lengths, axis=1)
    key = parts.block_of[longest].astype(np.int64) * (1 << 40) \
        + contexts[np.arange(contexts.shape[0]), longest]
    order = np.argsort(key, kind="stable")
    objective.unique = np.ascontiguousarray(contexts[order])
    objective.counts = np.ascontiguousarray(objective.counts[order])
    objective._ordered_by_longest_row = True


def loss_gradient_hessian(objective, theta: np.ndarray):
    """``(loss, gradient, Hessian)`` of a `CalibrationObjective` at ``theta`` (one pass):
    `context_sums` over all its distinct contexts, then `combine_sums`."""
    theta = np.asarray(theta, dtype=np.float64)
    scorer = _scorer(objective, theta)
    _order_by_longest_row(objective, scorer.parts)
    return combine_sums(objective, theta,
                        [context_sums(scorer, objective.unique, objective.counts)])


def hessian_scorer(scorer):
    """The scorer `context_sums` runs on (a lazy scorer's resident one), or None when the
    C kernel's product path is not available for it."""
    lib = score_native.library()
    if lib is None or not hasattr(lib, "score_contexts_product_hess"):
        return None
    scorer = _eager(scorer)
    if scorer is None or scorer._product_factors() is None:
        return None
    return scorer


def context_sums(scorer, contexts: np.ndarray, counts: np.ndarray) -> dict:
    """The sums over distinct contexts one Hessian pass needs, for a chunk of them.

    ``scorer`` is at theta (see `hessian_scorer`), ``contexts`` (k, R) distinct contexts and
    ``counts`` (k,) their multiplicities. Returns the sums over the chunk of ``c log_zhat``
    (``"log_z"``), ``c E[F]`` (``"mean_f"``, D = B + 1), ``c E[F F^T]`` (``"second"``) and
    ``c E[F] E[F]^T`` (``"outer"``), with the scorer's ``"a_max"``: chunks of one sample
    add up (`combine_sums`), so a pass can be split across workers.
    """
    contexts = np.ascontiguousarray(contexts, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.float64)
    p, B = scorer.parts, scorer.parts.n_blocks
    x, totals = scorer._dense_features()
    second_totals = np.ascontiguousarray((x * scorer.u[:, None]).T @ x)
    n, R = contexts.shape
    log_zhat, e_sparse, e_dense = np.empty(n), np.empty((n, B)), np.empty((n, B + 1))
    second = np.empty((n, B + 1, B + 1))
    factors = scorer._product_factors()

    def run(start: int) -> int:
        stop = min(n, start + HESSIAN_CHUNK)
        return kernel(
            R, B, p.pointers.indptr, p.pointers.indices, p.pointers.data, factors,
            p.block_of.ctypes.data, scorer.u.ctypes.data, float(scorer.U), p.vocab_size, B + 1,
            x.ctypes.data, totals.ctypes.data, second_totals.ctypes.data, stop - start,
            contexts[start:stop].ctypes.data, log_zhat[start:].ctypes.data,
            e_sparse[start:].ctypes.data, e_dense[start:].ctypes.data, second[start:].ctypes.data,
            *extra)

    dense_rows = _dense_rows(scorer, x)
    if dense_rows is not None and hasattr(scorer.lib, "score_contexts_product_hess_dense"):
        kernel = scorer.lib.score_contexts_product_hess_dense
        extra = (dense_rows.slots, dense_rows.rows, dense_rows.raw, dense_rows.sums)
    else:
        kernel, extra = scorer.lib.score_contexts_product_hess, ()

    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        if any(status != 0 for status in pool.map(run, range(0, n, HESSIAN_CHUNK))):
            raise MemoryError("the scoring kernel could not allocate its buffers")
    mean_f = e_dense.copy()
    mean_f[:, :-1] += e_sparse
    return {"log_z": counts @ log_zhat, "mean_f": counts @ mean_f,
            "second": np.einsum("n,nkl->kl", counts, second),
            "outer": np.einsum("n,nk,nl->kl", counts, mean_f, mean_f),
            "a_max": float(scorer.a_max)}


def combine_sums(objective, theta: np.ndarray, sums: list) -> tuple:
    """``(loss, gradient, Hessian)`` from the `context_sums` of chunks covering all the
    objective's distinct contexts, and its target terms (one chunk: bit-identical to a
    single pass)."""
    theta = np.asarray(theta, dtype=np.float64)
    beta, gamma = theta[:-1], theta[-1]
    total = dict(sums[0])
    for more in sums[1:]:
        for name in ("log_z", "mean_f", "second", "outer"):
            total[name] = total[name] + more[name]
    target_logits = objective.target_dense[:-1] @ beta + gamma * objective.target_dense[-1] \
        + objective.target_raw @ beta - objective.n * total["a_max"]
    loss = (total["log_z"] - target_logits) / objective.n
    targets_f = np.r_[objective.target_dense[:-1] + objective.target_raw,
                      objective.target_dense[-1]]
    grad = (total["mean_f"] - targets_f) / objective.n
    hessian = (total["second"] - total["outer"]) / objective.n
    return float(loss), grad, (hessian + hessian.T) / 2


class _DenseRows:
    """Pointer tables (per block) of the rows the Hessian kernel reads whole."""

    def __init__(self, slots, rows, raw, sums):
        import ctypes

        self._keep = (slots, rows, raw, sums)
        table = lambda arrays: (ctypes.c_void_p * len(arrays))(*[a.ctypes.data for a in arrays])
        self.slots, self.rows, self.raw, self.sums = map(table, (slots, rows, raw, sums))


def _dense_rows(scorer, x: np.ndarray) -> _DenseRows | None:
    """The longest rows, densely (``exp(beta S)``, ``S``) with their own sums: corr, the
    expectations' numerators and the second moments of the row alone (see `_score.c`)."""
    p, V = scorer.parts, scorer.parts.vocab_size
    B, D = p.n_blocks, p.n_blocks + 1
    lengths = [np.diff(ip) for ip in p.indptr]
    chosen = sorted(((int(n_b[row]), b, int(row)) for b, n_b in enumerate(lengths)
                     for row in np.flatnonzero(n_b >= DENSE_ROW_MIN_NNZ)), reverse=True)
    chosen = chosen[:DENSE_ROW_BYTES // (16 * V)]
    if not chosen:
        return None
    exp_data = scorer._exp_data[0]
    slots, rows, raw, sums = [], [], [], []
    for b in range(B):
        mine = np.asarray(sorted(row for _, bb, row in chosen if bb == b), dtype=np.int64)
        slot = np.full(p.indptr[b].size - 1, -1, dtype=np.int32)
        slot[mine] = np.arange(mine.size, dtype=np.int32)
        P, S = np.ones((max(1, mine.size), V)), np.zeros((max(1, mine.size), V))
        H = np.zeros((max(1, mine.size), 1 + D + B + D * D))
        for k, row in enumerate(mine):
            lo, hi = p.indptr[b][row], p.indptr[b][row + 1]
            j, e, d = p.indices[b][lo:hi], exp_data[b][lo:hi], p.data[b][lo:hi]
            P[k, j], S[k, j] = e, d
            uj, xj = scorer.u[j], x[j]
            fl = xj.copy()
            fl[:, b] += d
            H[k, 0] = np.sum(uj * (e - 1.0))
            H[k, 1:1 + D] = (uj * (e - 1.0)) @ xj
            H[k, 1 + D + b] = np.sum(uj * e * d)
            H[k, 1 + D + B:] = ((fl * (uj * e)[:, None]).T @ fl - (xj * uj[:, None]).T @ xj).ravel()
        slots.append(slot), rows.append(P), raw.append(S), sums.append(np.ascontiguousarray(H))
    return _DenseRows(slots, rows, raw, sums)


def loss_only(objective, theta: np.ndarray) -> float:
    """The mean cross-entropy of a `CalibrationObjective` at ``theta`` from the eval kernel
    (``log Z`` only, the context's longest row held densely): a fraction of a Hessian pass."""
    theta = np.asarray(theta, dtype=np.float64)
    scorer = _scorer(objective, theta)
    _order_by_longest_row(objective, scorer.parts)
    log_zhat = scorer.context_terms(objective.unique)
    beta, gamma = theta[:-1], theta[-1]
    target_logits = objective.target_dense[:-1] @ beta + gamma * objective.target_dense[-1] \
        + objective.target_raw @ beta - objective.n * scorer.a_max
    return float((objective.counts @ log_zhat - target_logits) / objective.n)


def _newton_steps(objective, theta, tolerance: float, first=None, evaluate=None,
                  check_last: bool = True):
    """Damped Newton from ``theta`` until the decrement is below ``tolerance``; returns
    ``(theta, loss)``. ``first`` is ``(loss, grad, hessian)`` at ``theta`` when known;
    ``evaluate`` makes the Hessian passes (default `loss_gradient_hessian`).

    The decrement ``d`` falls quadratically near the optimum (about ``d^2`` after a full
    step, measured), so once ``d < sqrt(tolerance)`` the step is taken and only its loss
    is checked (`loss_only`, no Hessian pass is spent to confirm the next decrement).
    Without ``check_last`` (a coarse level, whose result is only the next level's start
    point, itself damped and checked; or a caller that checks the loss itself) that step
    is taken unchecked, and the loss returned is the quadratic model's prediction."""
    evaluate = loss_gradient_hessian if evaluate is None else evaluate
    loss, grad, hessian = first if first is not None else evaluate(objective, theta)
    objective.evaluations += int(first is None)
    for _ in range(NEWTON_ITERATIONS):
        if np.max(np.abs(grad)) < NEWTON_TOLERANCE:
            break
        try:
            step = -np.linalg.solve(hessian + 1e-12 * np.eye(theta.size), grad)
        except np.linalg.LinAlgError:
            step = -grad
        decrement = -grad @ step / 2
        logger.debug("Newton: loss %.10f, decrement %.3g", loss, decrement)
        if decrement < tolerance:
            break
        if decrement < np.sqrt(tolerance) and not check_last:
            return theta + step, loss - decrement
        if decrement < np.sqrt(tolerance):
            t_loss = loss_only(objective, theta + step)
            objective.evaluations += 1
            if np.isfinite(t_loss) and t_loss <= loss:
                return theta + step, t_loss
        for _ in range(30):  # halve until the (convex) loss goes down
            trial = theta + step
            t_loss, t_grad, t_hess = evaluate(objective, trial)
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
    return theta, loss


def coarse_tolerance(objective, dimension: int, tolerance: float) -> float:
    """The decrement at which a coarse level of ``objective.n`` positions stops:
    `COARSE_DECREMENT_FRACTION` of its statistical error ``dimension / (2 n)``, and never
    below the fit's own ``tolerance``."""
    return max(tolerance, COARSE_DECREMENT_FRACTION * dimension / (2 * objective.n))


def fit_newton(objective, theta0: np.ndarray, coarse=None, tolerance: float | None = None,
               start: float | None = None, check: bool = True,
               evaluate=None) -> CalibrationFit:
    """Damped Newton from ``theta0`` (one kernel pass per iteration); kept only if the loss
    went down (as `minimize_kept`).

    With ``coarse`` (the objective of a uniform subsample of the positions, or a list of
    them, coarsest first) the iterations far from the optimum run on it, each level
    stopping at `coarse_tolerance`, and the full sample starts at the last level's
    optimum: there the decrement is of the order of the subsample's statistical error
    ((R + 1) / (2 n_coarse) nats), so one Hessian pass and one `loss_only` check usually
    finish the fit. ``tolerance`` is the decrement at which it stops (default
    `NEWTON_DECREMENT`). ``start``: the loss at ``theta0`` on all positions when the
    caller knows it (e.g. from the uncalibrated evaluation), which saves a loss-only pass.
    ``check=False`` (with ``coarse``): the last step on all positions is not confirmed by a
    loss-only pass; ``loss_after`` is then the quadratic model's prediction and the caller
    must check the loss (`streamsolve.api.calibrate_checked` reads it off its calibrated
    evaluation). ``evaluate(objective, theta) -> (loss, grad, hessian)`` makes the Hessian
    passes on ``objective`` (default `loss_gradient_hessian`; e.g. `context_sums` of chunks
    mapped over a cluster's workers, then `combine_sums`); the coarse levels run locally."""
    theta0 = np.asarray(theta0, dtype=np.float64)
    tolerance = NEWTON_DECREMENT if tolerance is None else tolerance
    if coarse is None:
        first = (loss_gradient_hessian if evaluate is None else evaluate)(objective, theta0)
        objective.evaluations += 1
        start = first[0]
        theta, loss = _newton_steps(objective, theta0, tolerance, first, evaluate)
    else:
        levels = list(coarse) if isinstance(coarse, (list, tuple)) else [coarse]
        if start is None:
            start = loss_only(objective, theta0)
            objective.evaluations += 1
        theta_c = theta0
        for level in levels:
            theta_c, _ = _newton_steps(level, theta_c,
                                       coarse_tolerance(level, theta0.size, tolerance),
                                       check_last=False)
        theta, loss = _newton_steps(objective, theta_c, tolerance, evaluate=evaluate,
                                    check_last=check)
        logger.info("Newton: %s passes on %s positions, then %d on all %d",
                    "+".join(str(c.evaluations) for c in levels),
                    "+".join(str(c.n) for c in levels), objective.evaluations, objective.n)
        objective.evaluations += sum(c.evaluations for c in levels)
    if not (np.isfinite(loss) and loss <= start):
        return CalibrationFit(theta0, start, start, objective.n)
    return CalibrationFit(theta, start, loss, objective.n)

"""The smoothing strength of each offset block, chosen on held-out positions (issue 17).

One scalar ``s > 0`` per weight block scales its smoothing:

- Dirichlet: ``mu_b = s * mu`` (``mu`` the default, V);
- Kneser–Ney: ``D_k(s) = min(s * D_k, k)`` for the Chen–Goodman estimates ``(D1, D2, D3+)``
  of the block (`scaled_discounts`; the upper clip keeps ``F - D >= 0``, ``s > 0`` keeps
  ``D > 0``, so the scaled triple passes `check_discount`).

``s`` is chosen per block by minimising the held-out cross-entropy of that block's own
row-normalised model ``P_b(t | c)``: the R = 1 model of offset r for ``cat`` (each offset
scored at its own context token ``c_r``), the pooled model for ``sum`` (every offset's
position). Its rows sum to one, so ``-log P_b(t | c)`` needs no normaliser: it is a closed
form of five numbers per position (`PositionStatistics`: ``F_ct``, ``f_c``, the row's
``N1, N2, N3+`` and the background probability of ``t``), gathered in the same pass over
the block's count rows that Kneser–Ney's statistics need anyway. One evaluation of the
loss is then O(positions), so a full search costs a few milliseconds per block after the
gathering pass; no V-sized work, no scorer.

The search (`search_scale`): a coarse grid in ``log s`` (always including ``s = 1``),
then golden-section refinement in the bracket around the grid's best point. The value
kept is the best of *every* evaluated point, so the chosen strength is never worse on the
positions than the default (``s = 1``). The calibration of the R + 1 scalars then runs on
top of the searched weights, unchanged.

Pure numpy: no I/O.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .smoothing import DISCOUNT_LIMITS

#: ``log2 s`` ranges searched: Dirichlet's best ``mu`` is often far below V (issue 17:
#: ``mu = 256`` at V = 8192, ``s = 2^-5``); Kneser–Ney's estimates are close already.
SEARCH_RANGES = {"dirichlet": (-12.0, 4.0), "kneser-ney": (-3.0, 2.0)}
#: Points of the coarse grid (``s = 1`` is added when the grid misses it).
GRID_POINTS = 9
#: Golden-section steps inside the bracket of the grid's best point.
GOLDEN_STEPS = 10
_INV_PHI = (np.sqrt(5.0) - 1.0) / 2.0


@dataclasses.dataclass
class PositionStatistics:
    """Per held-out position of one block, what its ``P_b(t | c)`` needs.

    Attributes
    ----------
    pair : ndarray of shape (n,)
        ``F_ct``, the count of (context, target).
    row_total : ndarray of shape (n,)
        ``f_c``, the context row's total.
    row_counts_of_counts : ndarray of shape (n, 3)
        ``N1(c), N2(c), N3+(c)``: cells of row c holding 1, 2, >= 3.
    """

    pair: np.ndarray
    row_total: np.ndarray
    row_counts_of_counts: np.ndarray

    @classmethod
    def empty(cls, n: int) -> "PositionStatistics":
        """Statistics of ``n`` positions whose contexts have no counts (yet)."""
        return cls(np.zeros(n), np.zeros(n), np.zeros((n, 3)))


def gather_positions(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, start: int,
                     contexts: np.ndarray, targets: np.ndarray,
                     out: PositionStatistics) -> None:
    """Fill ``out`` for the positions whose context lies in the CSR row block at ``start``.

    Parameters
    ----------
    indptr, indices, data : ndarray
        One count row block (rows ``start .. start + len(indptr) - 2``).
    start : int
        Its first row.
    contexts, targets : ndarray of shape (n,)
        The positions' context rows and targets (all positions; others are left alone).
    out : PositionStatistics
        Written in place.
    """
    indptr = np.asarray(indptr, dtype=np.int64)
    n_rows = indptr.size - 1
    mine = np.flatnonzero((contexts >= start) & (contexts < start + n_rows))
    if mine.size == 0:
        return
    data = np.asarray(data, dtype=np.float64)
    rows = contexts[mine] - start
    lengths = np.diff(indptr)
    row_of = np.repeat(np.arange(n_rows), lengths)
    totals = np.bincount(row_of, weights=data, minlength=n_rows)
    out.row_total[mine] = totals[rows]
    from .kneser_ney import row_counts_of_counts

    out.row_counts_of_counts[mine] = row_counts_of_counts(indptr, data)[rows]
    keys = row_of * np.int64(1 << 32) + np.asarray(indices, dtype=np.int64)
    if np.any(keys[1:] < keys[:-1]):  # stored count blocks are sorted within rows already
        order = np.argsort(keys, kind="stable")
        keys, data = keys[order], data[order]
    wanted = rows * np.int64(1 << 32) + targets[mine]
    at = np.searchsorted(keys, wanted)
    found = at < keys.size
    found[found] = keys[at[found]] == wanted[found]
    pair = np.zeros(mine.size)
    pair[found] = data[at[found]]
    out.pair[mine] = pair


def scaled_discounts(discounts, scale: float) -> tuple[float, float, float]:
    """``D_k(s) = min(s * D_k, k)``: Kneser–Ney discounts scaled by ``s > 0``.

    Examples
    --------
    >>> scaled_discounts((0.5, 1.0, 1.5), 2.5)
    (1.0, 2.0, 3.0)
    """
    return tuple(float(min(scale * d, limit)) for d, limit in zip(discounts, DISCOUNT_LIMITS))


def kneser_ney_cross_entropy(stats: PositionStatistics, log_background: np.ndarray,
                             discounts) -> float:
    """Mean ``-log P(t | c)`` of interpolated modified Kneser–Ney (`core.smoothing`'s form).

    ``log_background``: ``log q_t`` per position (the continuation distribution).
    """
    D1, D2, D3 = discounts
    F, f = stats.pair, stats.row_total
    cell = np.select([F == 1, F == 2, F >= 3], [D1, D2, D3], 0.0)
    mass = stats.row_counts_of_counts @ np.array([D1, D2, D3])
    q = np.exp(log_background)
    seen = f > 0
    p = q.copy()
    p[seen] = (np.maximum(F[seen] - cell[seen], 0.0) + mass[seen] * q[seen]) / f[seen]
    return float(-np.mean(np.log(p)))


def dirichlet_cross_entropy(stats: PositionStatistics, log_background: np.ndarray,
                            mu: float) -> float:
    """Mean ``-log P(t | c)`` with ``P = (F_ct + mu p_t) / (f_c + mu)``.

    ``log_background``: ``log p_t`` per position (the smoothed unigram).
    """
    p = np.exp(log_background)
    return float(-np.mean(np.log(stats.pair + mu * p) - np.log(stats.row_total + mu)))


@dataclasses.dataclass
class ScaleSearch:
    """Result of `search_scale` (JSON-able with `summary`).

    Attributes
    ----------
    scale : float
        The chosen ``s`` (the best evaluated point).
    cross_entropy : float
        Held-out cross-entropy (nats/token) at ``scale``.
    default_cross_entropy : float
        At ``s = 1``.
    curve : list of (float, float)
        Every evaluated ``(s, cross_entropy)``, in ``s`` order.
    """

    scale: float
    cross_entropy: float
    default_cross_entropy: float
    curve: list

    def summary(self) -> dict:
        """What the store records: the choice, the default, and the coarse curve."""
        return {"scale": self.scale, "cross_entropy": self.cross_entropy,
                "default_cross_entropy": self.default_cross_entropy,
                "evaluations": len(self.curve),
                "curve": [[float(f"{s:.6g}"), float(f"{ce:.6g}")] for s, ce in self.curve]}


def search_scale(loss, low: float, high: float, grid_points: int = GRID_POINTS,
                 golden_steps: int = GOLDEN_STEPS) -> ScaleSearch:
    """Minimise ``loss(s)`` over ``log2 s`` in ``[low, high]``: grid, then golden section.

    Parameters
    ----------
    loss : callable
        ``s -> float`` (held-out cross-entropy).
    low, high : float
        ``log2 s`` bounds of the grid.
    grid_points, golden_steps : int
        Coarse grid size (``s = 1`` is always evaluated too) and refinement steps.

    Returns
    -------
    ScaleSearch
        The best of all evaluated points, so never worse than ``s = 1``.

    Examples
    --------
    >>> found = search_scale(lambda s: (np.log2(s) - 1.3) ** 2, -4.0, 4.0)
    >>> round(float(np.log2(found.scale)), 2)
    1.3
    """
    seen: dict[float, float] = {}

    def at(x: float) -> float:
        if x not in seen:
            value = float(loss(float(2.0 ** x)))
            seen[x] = value if np.isfinite(value) else np.inf
        return seen[x]

    grid = sorted(set(np.linspace(low, high, grid_points).tolist()) | {0.0})
    values = [at(x) for x in grid]
    best = int(np.argmin(values))
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    c, d = b - _INV_PHI * (b - a), a + _INV_PHI * (b - a)
    for _ in range(golden_steps):
        if at(c) <= at(d):
            b, d = d, c
            c = b - _INV_PHI * (b - a)
        else:
            a, c = c, d
            d = a + _INV_PHI * (b - a)
    x_best = min(seen, key=seen.get)
    curve = [(float(2.0 ** x), seen[x]) for x in sorted(seen)]
    return ScaleSearch(float(2.0 ** x_best), seen[x_best], seen[0.0], curve)


def choose_strength(stats: PositionStatistics, targets: np.ndarray, smoothing: str, mu: float,
                    log_p: np.ndarray, block_stats=None):
    """Search the strength of one block from its gathered position statistics.

    Parameters
    ----------
    stats : PositionStatistics
        Of the positions the block scores (`gather_positions`).
    targets : ndarray of shape (n,)
        Their targets.
    smoothing : {"dirichlet", "kneser-ney"}
    mu : float
        Dirichlet's default strength (``s = 1``; ignored for Kneser–Ney).
    log_p : ndarray of shape (V,)
        Log smoothed unigram (Dirichlet's background).
    block_stats : KneserNeyStatistics, optional
        The whole block's (Kneser–Ney only).

    Returns
    -------
    (ScaleSearch, discounts or None, log background (V,), mu or None)
        What the block's weights are then computed with.
    """
    from .kneser_ney import kneser_ney_parameters

    low, high = SEARCH_RANGES[smoothing]
    if smoothing == "kneser-ney":
        estimated, log_q = kneser_ney_parameters(block_stats)
        bg = log_q[targets]
        found = search_scale(lambda s: kneser_ney_cross_entropy(
            stats, bg, scaled_discounts(estimated, s)), low, high)
        return found, scaled_discounts(estimated, found.scale), log_q, None
    bg = log_p[targets]
    found = search_scale(lambda s: dirichlet_cross_entropy(stats, bg, s * mu), low, high)
    return found, None, log_p, float(found.scale * mu)


def search_block_strength(F, smoothing: str, mu: float, log_p: np.ndarray,
                          contexts: np.ndarray, targets: np.ndarray):
    """`choose_strength` for a whole in-memory CSR count block ``F`` (V x V) and positions
    ``(contexts, targets)`` (one context token each)."""
    from .kneser_ney import block_statistics

    contexts = np.asarray(contexts, dtype=np.int64)
    targets = np.asarray(targets, dtype=np.int64)
    stats = PositionStatistics.empty(targets.size)
    gather_positions(F.indptr, F.indices, F.data, 0, contexts, targets, stats)
    block_stats = (block_statistics(F.indptr, F.indices, F.data, F.shape[1])
                   if smoothing == "kneser-ney" else None)
    return choose_strength(stats, targets, smoothing, mu, log_p, block_stats)

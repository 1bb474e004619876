"""Statistics of modified Kneser–Ney smoothing (Chen & Goodman 1998), from a block's counts.

The row-form formula itself is `streamsolve.core.smoothing.kneser_ney_row_terms`; it needs
two statistics of the *whole* count block besides each row's own counts:

- the counts-of-counts ``n_k = #{(i, j) : F_ij == k}``, k = 1..4, which give the discounts
  (Chen & Goodman's estimates)::

      Y = n1 / (n1 + 2 n2),   D1 = 1 - 2 Y n2 / n1,   D2 = 2 - 3 Y n3 / n2,   D3+ = 3 - 4 Y n4 / n3

- the continuation counts ``N1+(. j) = #{i : F_ij > 0}`` (the column nnz), which give the
  continuation distribution ``q``.

Both are sums over rows, so they are computed row block by row block (`block_statistics`)
and added (`KneserNeyStatistics.__add__`, a monoid like `Counts`): a store's finalize makes
one pass over the row blocks of an offset for them, then computes each weight row block from
its own counts plus ``(discounts, log q)`` (`kneser_ney_parameters`). Being functions of the
stored counts only, incremental updates and re-finalize stay exact.

Choices (documented in docs/design.md §4):

- ``q`` is add-one smoothed: ``q_j = (N1+(. j) + 1) / (sum_j N1+(. j) + V)``, the same
  `smoothed_unigram` as the Dirichlet background, applied to continuation counts; no
  ``q_j`` is zero, so every unseen cell has a finite weight.
- Degenerate blocks: when any of n1..n4 is zero, or an estimate falls outside
  ``(0, k]`` for ``D_k``, the estimates are meaningless (tiny or deduplicated corpora), and
  the block falls back to `FALLBACK_DISCOUNTS` = (0.5, 1.0, 1.5), KenLM's
  ``--discount_fallback`` defaults, with a warning.

Pure numpy: no I/O.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from .smoothing import DISCOUNT_LIMITS, check_discount, smoothed_unigram

logger = logging.getLogger(__name__)

#: Discounts of a block whose counts-of-counts cannot give estimates (KenLM's fallback).
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)
#: Pseudo-count of the continuation distribution (add-one).
CONTINUATION_ALPHA = 1.0


@dataclasses.dataclass(frozen=True)
class KneserNeyStatistics:
    """Whole-block statistics of Kneser–Ney smoothing; ``a + b`` adds row blocks' statistics.

    Attributes
    ----------
    counts_of_counts : ndarray of shape (4,), int64
        ``n1, n2, n3, n4``: how many cells hold the count 1, 2, 3, 4.
    continuation : ndarray of shape (n_cols,), int64
        ``N1+(. j)``: how many rows have ``F_ij > 0``.
    """

    counts_of_counts: np.ndarray
    continuation: np.ndarray

    @classmethod
    def empty(cls, n_cols: int) -> "KneserNeyStatistics":
        """The identity of ``+``."""
        return cls(np.zeros(4, dtype=np.int64), np.zeros(n_cols, dtype=np.int64))

    def __add__(self, other: "KneserNeyStatistics") -> "KneserNeyStatistics":
        if not isinstance(other, KneserNeyStatistics):
            return NotImplemented
        return KneserNeyStatistics(self.counts_of_counts + other.counts_of_counts,
                                   self.continuation + other.continuation)


def block_statistics(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray,
                     n_cols: int) -> KneserNeyStatistics:
    """Counts-of-counts and continuation counts of a CSR count block (or a row block of it).

    Parameters
    ----------
    indptr, indices, data : ndarray
        The CSR arrays (``data``: integer counts; explicit zeros are ignored).
    n_cols : int
        Number of columns (targets).

    Returns
    -------
    KneserNeyStatistics

    Examples
    --------
    >>> import numpy as np
    >>> s = block_statistics(np.array([0, 2, 3]), np.array([0, 1, 1]), np.array([1, 3, 1]), 2)
    >>> s.counts_of_counts.tolist(), s.continuation.tolist()
    ([2, 0, 1, 0], [1, 2])
    """
    data = np.asarray(data)
    small = data[(data >= 1) & (data <= 4)].astype(np.int64)
    counts_of_counts = np.bincount(small - 1, minlength=4)[:4].astype(np.int64)
    continuation = np.bincount(np.asarray(indices)[data > 0], minlength=n_cols).astype(np.int64)
    return KneserNeyStatistics(counts_of_counts, continuation)


def row_counts_of_counts(indptr: np.ndarray, data: np.ndarray) -> np.ndarray:
    """Per row ``(N1(i), N2(i), N3+(i))``: how many cells of row i hold 1, 2, >= 3.

    Returns
    -------
    ndarray of shape (n_rows, 3), int64
    """
    data = np.asarray(data)
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    out = np.zeros((len(indptr) - 1, 3), dtype=np.int64)
    for k, mask in enumerate((data == 1, data == 2, data >= 3)):
        out[:, k] = np.bincount(rows[mask], minlength=len(indptr) - 1)
    return out


def estimate_discounts(counts_of_counts) -> tuple[float, float, float] | None:
    """Chen & Goodman's ``(D1, D2, D3+)`` from ``n1..n4``; None when the block is degenerate.

    Degenerate: some ``n_k`` (k = 1..4) is zero, or an estimate is outside ``(0, k]``.

    Examples
    --------
    >>> [round(d, 4) for d in estimate_discounts([10, 4, 2, 1])]   # Y = 10/18
    [0.5556, 1.1667, 1.8889]
    >>> estimate_discounts([10, 4, 0, 1]) is None
    True
    """
    n1, n2, n3, n4 = (float(n) for n in counts_of_counts)
    if min(n1, n2, n3, n4) <= 0:
        return None
    Y = n1 / (n1 + 2 * n2)
    discounts = (1 - 2 * Y * n2 / n1, 2 - 3 * Y * n3 / n2, 3 - 4 * Y * n4 / n3)
    if not all(0 < d <= limit for d, limit in zip(discounts, DISCOUNT_LIMITS)):
        return None
    return discounts


def block_discounts(statistics: KneserNeyStatistics, discount=None) -> tuple[float, float, float]:
    """The discounts a block uses: ``discount`` if given (see `check_discount`), else the
    estimates from its counts-of-counts, else `FALLBACK_DISCOUNTS` (with a warning)."""
    given = check_discount(discount)
    if given is not None:
        return given
    estimated = estimate_discounts(statistics.counts_of_counts)
    if estimated is None:
        logger.warning("kneser-ney: counts-of-counts n1..n4 = %s give no valid discount "
                       "estimates; using the fallback discounts %s (pass --discount to choose)",
                       statistics.counts_of_counts.tolist(), FALLBACK_DISCOUNTS)
        return FALLBACK_DISCOUNTS
    return estimated


def continuation_log_q(statistics: KneserNeyStatistics) -> np.ndarray:
    """``log q_j``, the add-one smoothed continuation distribution ``q_j ∝ N1+(. j) + 1``."""
    return np.log(smoothed_unigram(statistics.continuation, CONTINUATION_ALPHA))


def kneser_ney_parameters(statistics: KneserNeyStatistics, discount=None):
    """``(discounts, log_q)``: the global inputs of each of the block's weight row blocks."""
    return block_discounts(statistics, discount), continuation_log_q(statistics)

"""Interpolated modified Kneser–Ney across n-gram orders (Chen & Goodman 1998), as KenLM's
``lmplz`` builds it, from `streamsolve.core.ngram_counts.NgramCounts`.

For a suffix ``s`` of order k (k - 1 tokens, most recent last) and its back-off suffix ``s'``
(``s`` without its oldest token)::

    P_k(j | s) = max(a_k(s, j) - D_k(a), 0) / c_k(s) + b_k(s) P_{k-1}(j | s')
    c_k(s) = sum_j a_k(s, j),   b_k(s) = (D1 N1(s.) + D2 N2(s.) + D3+ N3+(s.)) / c_k(s)

and a suffix without a row at order k backs off entirely: ``P_k(j | s) = P_{k-1}(j | s')``.
The unigram level is the continuation unigram interpolated with the uniform distribution over
all V ids (the BOS id included: the layer's softmax is over V ids)::

    P_1(j) = max(a_1(j) - D_1(a), 0) / c_1 + b_1 / V

**Adjusted counts** ``a_k`` (KenLM's conventions, which make this equal ``lmplz -o N``):

- the top order N: the raw counts;
- a suffix whose oldest token is BOS (it starts at a document start): the raw counts, since
  nothing can precede the start (KenLM: "anything that begins with <s> has full non adjusted
  count");
- otherwise the continuation count ``N1+(. s j)``: the number of distinct order-(k+1) suffixes
  ``(x, s)`` followed by j (x may be BOS), the number of entries of order k+1 whose back-off
  entry is ``(s, j)``; for the unigrams, the number of distinct bigram contexts of j.

**Collapsed padding.** A suffix holding two adjacent BOS ids (the padding of a position
closer to its document's start than k - 1) says no more than the shorter suffix after the
pair, so it has no row of its own: its counts are kept in `NgramCounts` (they are the block's
exact statistics) but the model drops those rows, and such a context backs off entirely, as
KenLM collapses ``<s> <s> a`` into ``<s> a``. The rows of an order that remain (`KneserNeyLevel`)
are closed under taking the back-off suffix, and every entry ``(s, j)`` has its back-off entry
``(s', j)`` one order below.

**Discounts** ``(D1, D2, D3+)`` per order from that order's counts-of-counts ``n1..n4`` of the
adjusted counts over the kept entries (Chen & Goodman: ``Y = n1 / (n1 + 2 n2)``,
``D_k = k - (k + 1) Y n_{k+1} / n_k``), as KenLM: it needs ``n1, n2, n3 > 0`` (``n4 = 0``
gives ``D3+ = 3``); an order without them, or with an estimate outside ``(0, k]``, uses
KenLM's ``--discount_fallback`` values (0.5, 1, 1.5) with a warning. (KenLM accepts an
estimate of exactly 0; here it falls back, since a zero discount leaves a row's unseen
successors without mass.) The offset blocks' Kneser–Ney (`core.kneser_ney`) also asks for
``n4 > 0``; this module follows KenLM.

Stored per order k >= 2 (`KneserNeyLevel`): the kept suffix ``keys`` and the CSR
(``indptr``, ``targets``) of their successors, the discounted ``numerators``
``max(a - D, 0) / c(s)`` per entry and the per-row ``backoff`` ``b(s)``; derived from them in
one O(nnz) pass, the interpolated ``probs`` ``P_k(j | s)`` of every entry and ``roots``, the
order-2 entry ``(s_2, j)`` of every entry (the successors of ``s_k`` are a subset of those of
its order-2 suffix, which `streamsolve.core.ngram_scoring` uses as the union).
Pure numpy: no I/O.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from . import ngram_keys
from .kneser_ney import FALLBACK_DISCOUNTS
from .ngram_counts import NgramConfig, NgramCounts, OrderCounts, SuffixRows
from .smoothing import check_discount

logger = logging.getLogger(__name__)


def kenlm_discounts(counts_of_counts) -> tuple[float, float, float] | None:
    """Chen & Goodman's ``(D1, D2, D3+)`` from ``n1..n4`` under KenLM's rule (module doc);
    None when the order is degenerate.

    Examples
    --------
    >>> [round(d, 4) for d in kenlm_discounts([10, 4, 2, 0])]   # n4 = 0: D3+ = 3
    [0.5556, 1.1667, 3.0]
    >>> kenlm_discounts([10, 4, 0, 1]) is None
    True
    """
    n1, n2, n3, n4 = (float(n) for n in counts_of_counts)
    if min(n1, n2, n3) <= 0:
        return None
    y = n1 / (n1 + 2 * n2)
    discounts = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
    if not all(0 < d <= k for k, d in enumerate(discounts, start=1)):
        return None
    return discounts


def order_discounts(counts_of_counts, order: int, given=None) -> tuple[float, float, float]:
    """The discounts of one order: ``given`` (checked), the estimates, or the fallback."""
    checked = check_discount(given)
    if checked is not None:
        return checked
    estimated = kenlm_discounts(counts_of_counts)
    if estimated is None:
        logger.warning("n-gram kneser-ney: the order-%d counts-of-counts n1..n4 = %s give no "
                       "valid discounts; using the fallback %s", order,
                       [int(n) for n in counts_of_counts], FALLBACK_DISCOUNTS)
        return FALLBACK_DISCOUNTS
    return estimated


def counts_of_counts(adjusted: np.ndarray) -> np.ndarray:
    """``n1..n4``: how many adjusted counts equal 1, 2, 3, 4 (int64)."""
    small = adjusted[(adjusted >= 1) & (adjusted <= 4)].astype(np.int64)
    return np.bincount(small - 1, minlength=4)[:4].astype(np.int64)


def entry_discounts(adjusted: np.ndarray, discounts) -> np.ndarray:
    """``D(a)`` per entry: D1, D2, D3+ for adjusted counts 1, 2, >= 3 (0 for 0)."""
    table = np.array([0.0, *discounts])
    return table[np.minimum(adjusted, 3)]


def find_in_rows(indptr: np.ndarray, targets: np.ndarray, rows: np.ndarray,
                 query: np.ndarray) -> np.ndarray:
    """Entry index of ``query[i]`` in row ``rows[i]`` of a CSR with ascending targets per
    row; -1 where the row lacks it or ``rows[i] < 0`` (vectorised binary search)."""
    rows = np.asarray(rows, dtype=np.int64)
    query = np.asarray(query, dtype=np.int64)
    valid = rows >= 0
    safe = np.where(valid, rows, 0)
    lo, end = indptr[safe].copy(), indptr[safe + 1]
    lo[~valid] = end[~valid] = 0
    hi = end.copy()
    longest = int((hi - lo).max(initial=0))
    last = max(targets.size - 1, 0)
    for _ in range(longest.bit_length()):
        mid = (lo + hi) >> 1
        active = lo < hi
        right = active & (targets[np.minimum(mid, last)] < query)
        lo = np.where(right, mid + 1, lo)
        hi = np.where(active & ~right, mid, hi)
    found = valid & (lo < end)
    found[found] = targets[lo[found]] == query[found]
    return np.where(found, lo, -1)


def has_bos_pair(layout: ngram_keys.KeyLayout, keys: np.ndarray, bos_id: int) -> np.ndarray:
    """Whether each suffix key holds two adjacent BOS ids (a collapsed padding)."""
    out = np.zeros(keys.size, dtype=bool)
    if layout.digits < 2:
        return out
    digits = layout.unpack(keys)
    for newer, older in zip(digits[:-1], digits[1:]):
        out |= (newer == bos_id) & (older == bos_id)
    return out


def keep_rows(order: OrderCounts, keep: np.ndarray) -> OrderCounts:
    """The counts of the rows where ``keep`` is True."""
    if keep.all():
        return order
    lengths = np.diff(order.indptr)[keep]
    entries = np.repeat(keep, np.diff(order.indptr))
    return OrderCounts(order.order, order.keys[keep], np.r_[0, np.cumsum(lengths)].astype(np.int64),
                       order.targets[entries], order.counts[entries])


@dataclasses.dataclass
class KneserNeyLevel(SuffixRows):
    """One order k >= 2 of the model (module doc).

    Attributes
    ----------
    order : int
    keys : ndarray
        Kept suffix keys, ascending (`streamsolve.core.ngram_keys` layout of k - 1 tokens).
    indptr : ndarray of int64
    targets : ndarray of int32
    numerators : ndarray of float64
        ``max(a - D, 0) / c(s)`` per entry.
    backoff : ndarray of float64
        ``b(s)`` per row.
    probs : ndarray of float64
        ``P_k(j | s)`` per entry (derived).
    roots : ndarray of int
        Index of the order-2 entry ``(s_2, j)`` of every entry (derived).
    """

    order: int
    keys: np.ndarray
    indptr: np.ndarray
    targets: np.ndarray
    numerators: np.ndarray
    backoff: np.ndarray
    probs: np.ndarray = None
    roots: np.ndarray = None

    def stored_arrays(self) -> dict:
        """The arrays a store would keep (the derived ones are rebuilt from them)."""
        return {"keys": self.keys, "indptr": self.indptr, "targets": self.targets,
                "numerators": self.numerators, "backoff": self.backoff}

    @property
    def nbytes(self) -> int:
        """Bytes of the stored and derived arrays."""
        return sum(a.nbytes for a in (*self.stored_arrays().values(), self.probs, self.roots))


@dataclasses.dataclass
class NgramKneserNey:
    """An interpolated modified Kneser–Ney n-gram model (module doc).

    Attributes
    ----------
    config : NgramConfig
    discounts : ndarray of shape (N, 3)
        ``(D1, D2, D3+)`` of orders 1..N (row k - 1 is order k).
    counts_of_counts : ndarray of shape (N, 4), int64
        ``n1..n4`` of the adjusted counts of orders 1..N.
    unigram_numerators : ndarray of shape (V,)
        ``max(a_1 - D, 0) / c_1``.
    unigram_backoff : float
        ``b_1``, spread uniformly over the V ids.
    levels : list of KneserNeyLevel
        Orders 2..N.
    """

    config: NgramConfig
    discounts: np.ndarray
    counts_of_counts: np.ndarray
    unigram_numerators: np.ndarray
    unigram_backoff: float
    levels: list

    @property
    def unigram(self) -> np.ndarray:
        """``P_1`` over the V ids."""
        return self.unigram_numerators + self.unigram_backoff / self.config.vocab_size

    def level(self, k: int) -> KneserNeyLevel:
        return self.levels[k - 2]

    @property
    def nbytes(self) -> int:
        return self.unigram_numerators.nbytes + sum(level.nbytes for level in self.levels)

    def find_rows(self, contexts: np.ndarray) -> np.ndarray:
        """Row of each position's suffix at orders 2..N, -1 where absent.

        Parameters
        ----------
        contexts : int array of shape (n, R), R >= N - 1
            ``contexts[:, r]`` is the token at offset r + 1 before the target (BOS-padded),
            the layout of `streamsolve.core.scoring`.

        Returns
        -------
        ndarray of shape (n, N - 1), int64
            Column k - 2 is the row of order k.
        """
        contexts = np.atleast_2d(np.asarray(contexts, dtype=np.int64))
        N, V = self.config.order, self.config.vocab_size
        if contexts.shape[1] < N - 1:
            raise ValueError(f"an order-{N} model needs {N - 1} context columns, "
                             f"got {contexts.shape[1]}")
        if contexts.size and (contexts.min() < 0 or contexts.max() >= V):
            raise ValueError(f"context id outside 0..{V - 1}")
        rows = np.empty((contexts.shape[0], N - 1), dtype=np.int64)
        suffix = contexts[:, 0].astype(np.uint64)
        for k in range(2, N + 1):
            if k > 2:
                suffix = self.config.suffix_layout(k - 1).append(suffix, contexts[:, k - 2])
            rows[:, k - 2] = ngram_keys.search(self.level(k).keys, suffix)
        return rows

    def order_probs(self, rows: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """``P_k(t | s_k)`` for k = 1..N at each position's target, shape (n, N).

        ``rows``: `find_rows` of the positions. A found row without the target backs off
        with its ``b(s)``, an absent row passes the lower order on unchanged.
        """
        targets = np.asarray(targets, dtype=np.int64).reshape(-1)
        out = np.empty((targets.size, self.config.order))
        out[:, 0] = self.unigram[targets]
        for k in range(2, self.config.order + 1):
            level, row = self.level(k), rows[:, k - 2]
            found = row >= 0
            p = out[:, k - 2].copy()
            p[found] *= level.backoff[row[found]]
            entry = find_in_rows(level.indptr, level.targets, row, targets)
            hit = entry >= 0
            p[hit] = level.probs[entry[hit]]
            out[:, k - 1] = p
        return out

    def log_probs(self, contexts: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """``log P_N(t | context)`` (natural log) per position: the N-gram model alone."""
        return np.log(self.order_probs(self.find_rows(contexts), targets)[:, -1])

    def distribution(self, contexts: np.ndarray, k: int | None = None) -> np.ndarray:
        """Dense ``P_k(. | s_k)`` (n, V) of each context (small vocabularies; default N)."""
        k = self.config.order if k is None else k
        rows = self.find_rows(contexts)
        out = np.broadcast_to(self.unigram, (rows.shape[0], self.config.vocab_size)).copy()
        for m in range(2, k + 1):
            level, row = self.level(m), rows[:, m - 2]
            for n in np.flatnonzero(row >= 0):
                lo, hi = level.indptr[row[n]], level.indptr[row[n] + 1]
                out[n] *= level.backoff[row[n]]
                out[n, level.targets[lo:hi]] = level.probs[lo:hi]
        return out


def kept_orders(counts: NgramCounts) -> list[OrderCounts]:
    """Each order's counts without the rows of a collapsed padding (module doc)."""
    config = counts.config
    return [keep_rows(o, ~has_bos_pair(config.suffix_layout(o.order), o.keys, config.bos_id))
            for o in counts.orders]


def back_off_entries(config: NgramConfig, lower: OrderCounts, upper: OrderCounts) -> np.ndarray:
    """For every entry ``(s, j)`` of ``upper`` (order k + 1), its entry ``(s', j)`` in
    ``lower`` (order k); both kept (`kept_orders`), so every one exists."""
    V = config.vocab_size
    rows = ngram_keys.search(lower.keys, config.suffix_layout(upper.order).drop_last(upper.keys))
    lower_entries = lower.entry_rows() * V + lower.targets   # ascending
    query = np.repeat(rows, np.diff(upper.indptr)) * V + upper.targets
    entries = np.minimum(np.searchsorted(lower_entries, query), max(lower.nnz - 1, 0))
    if upper.nnz and (rows.min() < 0 or np.any(lower_entries[entries] != query)):
        raise ValueError("inconsistent n-gram counts: an order-"
                         f"{upper.order} n-gram lacks its order-{lower.order} suffix")
    return entries


def adjusted_counts(config: NgramConfig, orders: list, parents: list) -> list[np.ndarray]:
    """``a_k`` of the kept entries of orders 1..N (module doc); ``parents[k]`` is the
    `back_off_entries` of order k + 2 into order k + 1 (order 2's: its targets)."""
    N = config.order
    adjusted = [np.bincount(parents[0], minlength=config.vocab_size).astype(np.int64)]
    for k in range(2, N + 1):
        order = orders[k - 2]
        if k == N:
            adjusted.append(order.counts.copy())
            continue
        a = np.bincount(parents[k - 1], minlength=order.nnz).astype(np.int64)
        oldest = config.suffix_layout(k).last(order.keys)
        at_start = np.repeat(oldest == config.bos_id, np.diff(order.indptr))
        a[at_start] = order.counts[at_start]
        adjusted.append(a)
    return adjusted


def estimate_kneser_ney(counts: NgramCounts, discounts=None) -> NgramKneserNey:
    """The interpolated modified Kneser–Ney model of n-gram counts.

    Parameters
    ----------
    counts : NgramCounts
    discounts : sequence of N entries, optional
        Per order 1..N: None (estimate, the default) or ``D`` / ``(D1, D2, D3+)``.

    Returns
    -------
    NgramKneserNey
    """
    config = counts.config
    N, V = config.order, config.vocab_size
    given = [None] * N if discounts is None else list(discounts)
    if len(given) != N:
        raise ValueError(f"need discounts for {N} orders (None to estimate), got {len(given)}")
    orders = kept_orders(counts)
    parents = [orders[0].targets.astype(np.int64)]
    parents += [back_off_entries(config, orders[k - 2], orders[k - 1]) for k in range(2, N)]
    adjusted = adjusted_counts(config, orders, parents)
    coc = np.array([counts_of_counts(a) for a in adjusted], dtype=np.int64)
    used = np.array([order_discounts(coc[k - 1], k, given[k - 1]) for k in range(1, N + 1)])
    total = float(adjusted[0].sum())
    d1 = entry_discounts(adjusted[0], used[0])
    if total > 0:
        uni_num, uni_back = np.maximum(adjusted[0] - d1, 0.0) / total, float(d1.sum()) / total
    else:  # nothing counted: the uniform distribution
        uni_num, uni_back = np.zeros(V), 1.0
    model = NgramKneserNey(config, used, coc, uni_num, uni_back, [])
    lower_probs, lower_roots = model.unigram, None
    for k in range(2, N + 1):
        level = _level(orders[k - 2], adjusted[k - 1], used[k - 1])
        rows = level.entry_rows()
        level.probs = level.numerators + level.backoff[rows] * lower_probs[parents[k - 2]]
        index_type = np.int32 if orders[0].nnz < 1 << 31 else np.int64
        level.roots = (np.arange(level.nnz, dtype=index_type) if k == 2
                       else lower_roots[parents[k - 2]])
        model.levels.append(level)
        lower_probs, lower_roots = level.probs, level.roots
    return model


def _level(order: OrderCounts, adjusted: np.ndarray, discounts) -> KneserNeyLevel:
    """Numerators and back-off weights of one order from its adjusted counts."""
    d = entry_discounts(adjusted, discounts)
    starts = order.indptr[:-1]
    if order.nnz:
        total = np.add.reduceat(adjusted.astype(np.float64), starts)
        mass = np.add.reduceat(d, starts)
    else:
        total = mass = np.zeros(0)
    rows = np.repeat(np.arange(order.rows), np.diff(order.indptr))
    numerators = np.maximum(adjusted - d, 0.0) / total[rows]
    return KneserNeyLevel(order.order, order.keys, order.indptr, order.targets, numerators,
                          mass / total)

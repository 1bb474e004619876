"""Scoring with suffix n-gram blocks beside the offset blocks, in O(|union|) per context.

The Kneser–Ney n-gram model (`streamsolve.core.ngram_kneser_ney`) gives each order k = 2..N a
block ``W^(k)[c, j] = log P_k(j | s_k)``. Unrolling the interpolation, with ``A_k(c)`` the
product of the back-off weights ``b(s_m)`` of the rows found at orders m = 2..k (1 for an
absent row),

    P_k(j | s_k) = A_k(c) P_1(j) + (terms on the successors of s_2..s_k)

and the successors of a found ``s_k`` are a subset of those of its order-2 suffix ``s_2``
(every k-gram's suffixes occurred with it), so every order's correction lives on one union
``J(c)`` = the successors of ``s_2``:

    log P_k(j | s_k) = log A_k(c) + log P_1(j) + C_k(c, j),   C_k = 0 off J(c)

That is the sparse + rank-one shape of the offset blocks (docs/design.md §5): with the
calibrated logits ``sum_k beta_k W^(k) + sum_r beta_r W^(r)[c_r, .] + gamma log p``, the
features of a target j split into a dense part shared by all contexts (``log P_1`` for each
order, ``uses_b c^(b)`` for each offset block, ``log p``) and a sparse part on ``J(c)``
(``C_k`` per order, ``S^(b)`` on the offsets' rows); the per-context constants
(``log A_k``, the offsets' row terms) cancel in ``log p(t | c)``. So

    log Z(c) - A(c) = max(a) + log( U + sum_{j in J(c)} u_j (exp(T_j) - 1) )

as in `streamsolve.core.scoring`, and a context costs O(|J(c)| N). `NgramScoringParts` gives
the n-gram half (rows, targets' ``C_k``, the union), `NgramScorer` scores positions (NumPy;
distinct contexts once, through a bounded cache), `NgramCalibration` is the loss and gradient
of the scalars. Without offset blocks a context is identified by its deepest found row (it
determines every lower one), which the cache uses. Pure numpy: no I/O.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .calibration import CalibrationFit, minimize_kept
from .ngram_kneser_ney import NgramKneserNey, find_in_rows
from .positions import calibration_sample
from .scoring import DEFAULT_CACHE_SIZE, CANCELLATION_RATIO, ContextCache, Scorer, ScoringParts, \
    _ranges

#: Bits of the row index in a context signature (the order sits above them).
SIGNATURE_SHIFT = 40
#: Distinct contexts handled at once (bounds the union arrays).
CONTEXT_CHUNK = 2048


@dataclasses.dataclass
class NgramUnion:
    """The union ``J(c)`` of distinct contexts, owner-major, targets ascending per context.

    Attributes
    ----------
    owner : ndarray of int64, shape (m,)
        The context of each entry.
    targets : ndarray of int64, shape (m,)
    corrections : ndarray of shape (m, N - 1), or (m, 1)
        ``C_k(c, j)`` for k = 2..N, or their weighted sum (`NgramScoringParts.union`).
    """

    owner: np.ndarray
    targets: np.ndarray
    corrections: np.ndarray


def distinct(identity: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct rows of an (n, c) int64 array: ``(unique (k, c), first index, inverse)``."""
    if identity.shape[1] == 1:
        unique, first, inverse = np.unique(identity[:, 0], return_index=True,
                                           return_inverse=True)
        return unique[:, None], first, inverse.reshape(-1)
    unique, first, inverse = np.unique(identity, axis=0, return_index=True, return_inverse=True)
    return unique, first, inverse.reshape(-1)


def _owner_peaks(values: np.ndarray, owner: np.ndarray, k: int) -> np.ndarray:
    """``max(0, max of each owner's values)`` for owner-sorted entries (0 for none)."""
    peak = np.zeros(k)
    if values.size:
        starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
        peak[owner[starts]] = np.maximum(np.maximum.reduceat(values, starts), 0.0)
    return peak


class NgramScoringParts:
    """The n-gram blocks of a `NgramKneserNey` model in the scorer's form (module doc)."""

    def __init__(self, model: NgramKneserNey):
        self.model = model
        self.order = model.config.order
        self.vocab_size = model.config.vocab_size
        self.n_blocks = self.order - 1
        self.log_unigram = np.log(model.unigram)

    def rows(self, contexts: np.ndarray) -> np.ndarray:
        """Rows of orders 2..N of each context, -1 where absent (`NgramKneserNey.find_rows`)."""
        return self.model.find_rows(contexts)

    def signatures(self, rows: np.ndarray) -> np.ndarray:
        """One int64 per context naming its deepest found row (order and index)."""
        depth = (rows >= 0).sum(axis=1)
        deepest = np.where(depth > 0, rows[np.arange(rows.shape[0]), np.maximum(depth - 1, 0)], 0)
        return (depth.astype(np.int64) << SIGNATURE_SHIFT) | deepest

    def log_backoffs(self, rows: np.ndarray) -> np.ndarray:
        """``log A_k`` for k = 2..N, shape (n, N - 1)."""
        out = np.zeros(rows.shape, dtype=np.float64)
        total = np.zeros(rows.shape[0])
        for k in range(2, self.order + 1):
            row = rows[:, k - 2]
            found = row >= 0
            total[found] += np.log(self.model.level(k).backoff[row[found]])
            out[:, k - 2] = total
        return out

    def target_corrections(self, rows: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """``C_k(c, t)`` for k = 2..N at each position's target, shape (n, N - 1)."""
        targets = np.asarray(targets, dtype=np.int64)
        log_p = np.log(self.model.order_probs(rows, targets)[:, 1:])
        return log_p - self.log_backoffs(rows) - self.log_unigram[targets][:, None]

    def union(self, rows: np.ndarray, weights: np.ndarray | None = None) -> NgramUnion:
        """``J(c)`` and ``C_k`` on it for the rows of distinct contexts (module doc).

        With ``weights`` (one per order 2..N), ``corrections`` is the one column
        ``sum_k weights_k C_k``, and the orders of weight 0 cost no logarithm.
        """
        model, k_ctx = self.model, rows.shape[0]
        bigram, r2 = model.level(2), rows[:, 0]
        safe2 = np.maximum(r2, 0)
        lengths = np.where(r2 >= 0, bigram.indptr[safe2 + 1] - bigram.indptr[safe2], 0)
        start = np.cumsum(lengths) - lengths      # each context's first union entry
        entries = _ranges(bigram.indptr[safe2], lengths)
        owner = np.repeat(np.arange(k_ctx), lengths)
        targets = bigram.targets[entries].astype(np.int64)
        current = bigram.probs[entries]  # (a copy) P_k on the union, order by order
        log_a = np.where(r2 >= 0, np.log(bigram.backoff[safe2]), 0.0)
        out = _Corrections(entries.size, self.n_blocks, weights)
        out.add(2, current, log_a)
        for k in range(3, self.order + 1):
            level, row = model.level(k), rows[:, k - 2]
            found = np.flatnonzero(row >= 0)
            factor = np.ones(k_ctx)
            factor[found] = level.backoff[row[found]]
            current *= factor[owner]
            log_a += np.log(factor)
            n = level.indptr[row[found] + 1] - level.indptr[row[found]]
            hits = _ranges(level.indptr[row[found]], n)
            at = np.repeat(found, n)
            current[start[at] + level.roots[hits] - bigram.indptr[r2[at]]] = level.probs[hits]
            out.add(k, current, log_a)
        return NgramUnion(owner, targets, out.result(owner, self.log_unigram[targets]))


class _Corrections:
    """``C_k = log P_k - log A_k - log P_1`` on a union, per order or weighted together."""

    def __init__(self, size: int, n_blocks: int, weights: np.ndarray | None):
        self.weights = weights
        self.terms = np.zeros((size, 1 if weights is not None else n_blocks))
        self.constants = []  # (weight, log A_k per context)

    def add(self, k: int, current: np.ndarray, log_a: np.ndarray):
        if self.weights is None:
            self.terms[:, k - 2] = np.log(current)
            self.constants.append((k - 2, log_a.copy()))
        elif self.weights[k - 2] != 0:
            self.terms[:, 0] += self.weights[k - 2] * np.log(current)
            self.constants.append((self.weights[k - 2], log_a.copy()))

    def result(self, owner: np.ndarray, base: np.ndarray) -> np.ndarray:
        if self.weights is None:
            for column, log_a in self.constants:
                self.terms[:, column] -= log_a[owner] + base
            return self.terms
        if self.constants:
            self.terms[:, 0] -= sum(w * log_a for w, log_a in self.constants)[owner]
        self.terms[:, 0] -= float(np.sum(self.weights)) * base
        return self.terms


class NgramScorer:
    """``log p(t | c)`` of the calibrated n-gram (and offset) blocks in O(|J(c)|) (module doc).

    Parameters
    ----------
    parts : NgramScoringParts
    beta : array-like of shape (N - 1,)
        Weight of the blocks of orders 2..N.
    gamma : float
        Weight of ``log p``: the offsets' ``log_unigram`` when ``offsets`` are given, else
        the model's ``log P_1``.
    offsets : ScoringParts, optional
        Offset blocks scored beside the n-gram blocks (their contexts: the first R columns).
    offset_beta : array-like, optional
        Weight of each offset block.
    cache_size : int
        Distinct contexts whose ``log_zhat`` is kept (0: none).
    """

    def __init__(self, parts: NgramScoringParts, beta, gamma: float,
                 offsets: ScoringParts | None = None, offset_beta=None,
                 cache_size: int = DEFAULT_CACHE_SIZE):
        self.parts, self.offsets = parts, offsets
        beta = np.asarray(beta, dtype=np.float64).reshape(-1)
        if beta.size != parts.n_blocks:
            raise ValueError(f"need {parts.n_blocks} n-gram beta values, got {beta.size}")
        offset_beta = np.zeros(0) if offsets is None else \
            np.asarray(offset_beta, dtype=np.float64).reshape(-1)
        if offsets is not None and offset_beta.size != offsets.n_blocks:
            raise ValueError(f"need {offsets.n_blocks} offset beta values, got {offset_beta.size}")
        self.theta = np.r_[beta, offset_beta, float(gamma)]
        self.dense = self._dense_features()
        a = self.dense @ self.theta
        self.a_max = float(a.max())
        self.a = a - self.a_max
        self.u = np.exp(self.a)
        self.U = float(self.u.sum())
        self.totals = self.u @ self.dense
        self._offset_scorer = None if offsets is None else Scorer(
            offsets, np.ones(offsets.n_blocks), 0.0, cache_size=0)
        width = 1 + (0 if offsets is None else offsets.radius)
        self.cache = ContextCache(cache_size, width) if cache_size else None

    def _dense_features(self) -> np.ndarray:
        """(V, blocks + 1): ``log P_1`` per order, ``uses_b c^(b)`` per offset block, ``log p``."""
        columns = [self.parts.log_unigram] * self.parts.n_blocks
        prior = self.parts.log_unigram
        if self.offsets is not None:
            columns += [u * c for u, c in zip(self.offsets.uses, self.offsets.col_terms)]
            prior = self.offsets.log_unigram
        return np.ascontiguousarray(np.column_stack(columns + [prior]))

    # -- identities and the cache -------------------------------------------------------
    def identities(self, contexts: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """What a context's scores depend on: its deepest n-gram row, and the offsets' ids."""
        signature = self.parts.signatures(rows)[:, None]
        if self.offsets is None:
            return signature
        return np.hstack([signature, contexts[:, :self.offsets.radius]])

    def log_zhat(self, contexts: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """``log Z(c) - A(c) - max(a)`` per position (distinct contexts once); ``rows``: the
        contexts' `NgramScoringParts.rows` when known."""
        contexts = np.atleast_2d(np.asarray(contexts, dtype=np.int64))
        rows = self.parts.rows(contexts) if rows is None else rows
        unique, first, inverse = distinct(self.identities(contexts, rows))
        if self.cache is None:
            return self.context_terms(contexts[first], rows[first])[inverse]
        slots, hit, values = self.cache.lookup(unique)
        miss = np.flatnonzero(~hit)
        if miss.size:
            values[miss] = self.context_terms(contexts[first[miss]], rows[first[miss]])
            self.cache.store(slots[miss], unique[miss], values[miss])
        return values[inverse]

    # -- per distinct context -----------------------------------------------------------
    def context_terms(self, contexts: np.ndarray, rows: np.ndarray, gradient: bool = False):
        """``log_zhat`` of distinct contexts; with ``gradient`` also ``E_p`` of each feature
        (the blocks then ``log p``, shape (k, blocks + 1)), per context."""
        pieces = [self._chunk_terms(contexts[s:s + CONTEXT_CHUNK], rows[s:s + CONTEXT_CHUNK],
                                    gradient)
                  for s in range(0, max(1, contexts.shape[0]), CONTEXT_CHUNK)]
        out = [np.concatenate([p[i] for p in pieces]) for i in range(len(pieces[0]))]
        bad = ~(out[0] - np.log(self.U) > np.log(CANCELLATION_RATIO))
        if np.any(bad):
            dense = self._dense_terms(contexts[bad], rows[bad], gradient)
            for array, fixed in zip(out, dense):
                array[bad] = fixed
        return tuple(out) if gradient else out[0]

    def _sparse(self, contexts: np.ndarray, rows: np.ndarray, gradient: bool):
        """``(owner, targets, values)`` on each context's union: the sparse features
        (m, blocks + 1) with ``gradient``, else their sum weighted by theta (m,)."""
        n = self.parts.n_blocks
        if gradient:
            union = self.parts.union(rows)
            values = np.zeros((union.owner.size, self.theta.size))
            values[:, :n] = union.corrections
        else:
            union = self.parts.union(rows, self.theta[:n])
            values = union.corrections[:, 0]
        if self.offsets is None:
            return union.owner, union.targets, values
        owner, targets, block, data = self._offset_entries(contexts)
        if gradient:
            offset_values = np.zeros((owner.size, self.theta.size))
            offset_values[np.arange(owner.size), n + block] = data
        else:
            offset_values = data * self.theta[n + block]
        V = self.parts.vocab_size
        keys, inverse = np.unique(np.r_[union.owner * V + union.targets, owner * V + targets],
                                  return_inverse=True)
        inverse = inverse.reshape(-1)
        stacked = np.concatenate([values, offset_values])
        if gradient:
            merged = np.column_stack([np.bincount(inverse, stacked[:, b], keys.size)
                                      for b in range(self.theta.size)])
        else:
            merged = np.bincount(inverse, stacked, keys.size)
        return keys // V, keys % V, merged

    def _offset_entries(self, contexts: np.ndarray):
        """The offsets' stored entries on each context's rows: owner, target, block, S."""
        p, k = self.offsets, contexts.shape[0]
        owner, column, block, data = [], [], [], []
        for r, b in enumerate(p.block_of):
            starts = p.indptr[b][contexts[:, r]]
            lengths = p.indptr[b][contexts[:, r] + 1] - starts
            index = _ranges(starts, lengths)
            owner.append(np.repeat(np.arange(k), lengths))
            column.append(p.indices[b][index].astype(np.int64))
            block.append(np.full(index.size, b))
            data.append(p.data[b][index])
        return (np.concatenate(owner), np.concatenate(column), np.concatenate(block),
                np.concatenate(data))

    def _chunk_terms(self, contexts: np.ndarray, rows: np.ndarray, gradient: bool):
        k = rows.shape[0]
        owner, targets, sparse = self._sparse(contexts, rows, gradient)
        e = self.a[targets] + (sparse @ self.theta if gradient else sparse)
        peak = _owner_peaks(e, owner, k)
        weights = np.exp(e - peak[owner])
        u = self.u[targets]
        scale = np.exp(-peak)
        zs = (self.U - np.bincount(owner, u, k)) * scale + np.bincount(owner, weights, k)
        log_zhat = peak + np.log(zs)
        if not gradient:
            return (log_zhat,)
        dense = self.dense[targets]
        expectations = np.empty((k, self.theta.size))
        for b in range(self.theta.size):
            off = self.totals[b] - np.bincount(owner, u * dense[:, b], k)
            on = np.bincount(owner, weights * (dense[:, b] + sparse[:, b]), k)
            expectations[:, b] = (off * scale + on) / zs
        return log_zhat, expectations

    def _dense_terms(self, contexts: np.ndarray, rows: np.ndarray, gradient: bool):
        """The same figures from dense features (O(V) per context; cancelling contexts)."""
        owner, targets, sparse = self._sparse(contexts, rows, gradient=True)
        features = np.broadcast_to(self.dense, (rows.shape[0], *self.dense.shape)).copy()
        features[owner, targets] += sparse
        logits = features @ self.theta - self.a_max
        peak = logits.max(axis=1, keepdims=True)
        weights = np.exp(logits - peak)
        total = weights.sum(axis=1)
        log_zhat = peak[:, 0] + np.log(total)
        if not gradient:
            return (log_zhat,)
        return log_zhat, np.einsum("kv,kvb->kb", weights / total[:, None], features)

    # -- positions ------------------------------------------------------------------------
    def target_features(self, contexts: np.ndarray, targets: np.ndarray,
                        rows: np.ndarray | None = None) -> np.ndarray:
        """Each position's features at its target (n, blocks + 1), without the per-context
        constants: ``log P_1(t) + C_k(t)``, the offsets' ``S + uses c``, ``log p(t)``."""
        contexts = np.atleast_2d(np.asarray(contexts, dtype=np.int64))
        targets = np.asarray(targets, dtype=np.int64).reshape(-1)
        rows = self.parts.rows(contexts) if rows is None else rows
        out = self.dense[targets].copy()
        out[:, :self.parts.n_blocks] += self.parts.target_corrections(rows, targets)
        if self.offsets is not None:
            first = self.parts.n_blocks
            out[:, first:first + self.offsets.n_blocks] += self._offset_scorer.target_values(
                contexts[:, :self.offsets.radius], targets)
        return out

    def log_probs(self, contexts: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """``log p(t | c)`` per position.

        Parameters
        ----------
        contexts : int array of shape (n, R)
            ``contexts[:, r]`` is the token at offset r + 1 before the target (BOS-padded);
            R >= N - 1 and >= the offsets' radius.
        targets : int array of shape (n,)
        """
        contexts = np.atleast_2d(np.asarray(contexts, dtype=np.int64))
        targets = np.asarray(targets, dtype=np.int64).reshape(-1)
        if targets.size == 0:
            return np.zeros(0)
        rows = self.parts.rows(contexts)
        features = self.target_features(contexts, targets, rows)
        return features @ self.theta - self.a_max - self.log_zhat(contexts, rows)


class NgramCalibration:
    """Mean cross-entropy of ``theta = (beta_ngram, beta_offsets, gamma)`` on a sample, and
    its gradient: per distinct context one pass over its union (module doc)."""

    def __init__(self, parts: NgramScoringParts, contexts: np.ndarray, targets: np.ndarray,
                 offsets: ScoringParts | None = None):
        contexts, targets = calibration_sample(contexts, targets)
        self.parts, self.offsets, self.n = parts, offsets, targets.size
        probe = self.scorer(np.ones(self.width))
        rows = parts.rows(contexts)
        _, first, inverse = distinct(probe.identities(contexts, rows))
        self.contexts, self.rows = contexts[first], rows[first]
        self.counts = np.bincount(inverse).astype(np.float64)
        self.target_sum = probe.target_features(contexts, targets, rows).sum(axis=0)
        self.evaluations = 0

    @property
    def width(self) -> int:
        return self.parts.n_blocks + (0 if self.offsets is None else self.offsets.n_blocks) + 1

    def scorer(self, theta: np.ndarray) -> NgramScorer:
        theta = np.asarray(theta, dtype=np.float64)
        split = self.parts.n_blocks
        offset_beta = None if self.offsets is None else theta[split:-1]
        return NgramScorer(self.parts, theta[:split], theta[-1], self.offsets, offset_beta,
                           cache_size=0)

    def __call__(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        scorer = self.scorer(theta)
        log_zhat, expectations = scorer.context_terms(self.contexts, self.rows, gradient=True)
        loss = (self.counts @ (log_zhat + scorer.a_max) - self.target_sum @ theta) / self.n
        grad = (self.counts @ expectations - self.target_sum) / self.n
        self.evaluations += 1
        return float(loss), grad

    def fit(self, theta0: np.ndarray, max_iter: int = 100) -> CalibrationFit:
        """L-BFGS from ``theta0``, kept only if the sample's loss does not go up."""
        return minimize_kept(self, np.asarray(theta0, dtype=np.float64), max_iter, self.n)

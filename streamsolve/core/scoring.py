"""Scoring in O(nnz) (DESIGN 3b): log p(t | c) without a dense V-vector per position.

With every weight block sparse + rank-one, ``W^(b) = S^(b) + r^(b) 1^T + 1 c^(b)T``, and
calibration scalars ``(beta, gamma)``, the logits of a context ``c = (c_1..c_R)`` are

    logit_j(c) = A(c) + a_j + T_j(c),     T_j(c) = sum_r beta_r S^(b(r))[c_r, j]
    A(c) = sum_r beta_r r^(b(r))_{c_r},   a_j = sum_r beta_r c^(b(r))_j + gamma log p_j

so, with ``u_j = exp(a_j - max a)``, ``U = sum_j u_j`` and ``J(c)`` the union of the R rows'
supports,

    log Z(c) = A(c) + max(a) + log( U + sum_{j in J(c)} u_j (exp(T_j) - 1) )

and ``log p(t | c) = a_t - max(a) + T_t(c) - log_zhat(c)`` (``A`` cancels), where ``log_zhat``
is the last logarithm, computed with the largest correction term factored out. A position
costs O(sum of its R rows' nnz); ``a``, ``u`` and ``U`` cost O(V) once per ``(beta, gamma)``.
``b(r)`` is the block of offset r: r itself for ``cat``, block 0 R times for ``sum`` (the
rows of one block are merged and their values added per target).

Where the correction almost cancels ``U`` (only possible with negative calibration scalars)
the rounding of ``U - sum_J u_j`` would show, and those contexts are scored densely, O(V).

`Scorer` scores positions (C kernel `_score.c` on a thread pool, NumPy fallback), caching
``log_zhat`` per context tuple in a bounded direct-mapped `ContextCache`.
`CalibrationObjective`: the calibration loss on the same kernel (Newton: `core.newton`).
Pure numpy/scipy (and ctypes): no I/O.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import logging
import os

import numpy as np
import scipy.sparse as sp

from . import newton, score_native
from .calibration import CalibrationFit, minimize_kept
from .positions import calibration_sample

logger = logging.getLogger(__name__)

#: Context tuples whose ``log_zhat`` a `Scorer` keeps (direct-mapped; R = 1 keeps every row).
DEFAULT_CACHE_SIZE = 1 << 18
#: Contexts per kernel call (a thread pool runs several calls at once).
KERNEL_CHUNK = 512
#: Stored entries gathered at once by the NumPy fallback (bounds its memory).
NUMPY_CHUNK_NNZ = 1 << 22
#: Largest exponent the product kernel may meet (``exp(T_j)`` stays far from overflow).
PRODUCT_EXPONENT_BOUND = 600.0
#: Bytes of rows the product kernel holds densely per scorer (R > 1: the longest row of a
#: context then costs O(1), see `Scorer.dense_rows`), and the fewest entries worth it.
DENSE_ROW_BYTES = 32 << 20
DENSE_ROW_MIN_NNZ = 256
#: Contexts with ``Z(c) / U`` below this are scored densely (cancellation, see module doc).
CANCELLATION_RATIO = 1e-4


@dataclasses.dataclass
class ScoringParts:
    """The weight parts the scorer reads, in the kernel's layout (independent of beta, gamma).

    Attributes
    ----------
    indptr, indices, data : list of ndarray
        CSR of each block's ``S`` (int64, int32 sorted within rows, float64).
    row_terms, col_terms : list of ndarray
        Each block's rank-one terms.
    log_unigram : ndarray of shape (V,)
    block_of : ndarray of shape (R,), int32
        Block read by each offset.
    """

    indptr: list
    indices: list
    data: list
    row_terms: list
    col_terms: list
    log_unigram: np.ndarray
    block_of: np.ndarray

    def __post_init__(self):
        self.vocab_size = self.log_unigram.size
        self.n_blocks = len(self.indptr)
        self.radius = self.block_of.size
        self.uses = np.bincount(self.block_of, minlength=self.n_blocks).astype(np.float64)
        self.data_range = [(float(d.min(initial=0.0)), float(d.max(initial=0.0)))
                           for d in self.data]
        longest = [int(np.diff(ip).max(initial=0)) for ip in self.indptr]
        self.max_union = int(sum(longest[b] for b in self.block_of))
        self.pointers = score_native.BlockPointers(self.indptr, self.indices, self.data)

    @classmethod
    def from_blocks(cls, blocks, log_unigram: np.ndarray, block_of) -> "ScoringParts":
        """Parts of `SparseRankOne` blocks; sorts a block's indices (on a copy) if needed."""
        indptr, indices, data = [], [], []
        for block in blocks:
            S = block.sparse
            if not (S.has_canonical_format and S.has_sorted_indices):
                logger.info("sorting the indices of a weight block for scoring")
                S = sp.csr_array(S, copy=True)
                S.sum_duplicates()
                S.sort_indices()
            indptr.append(np.ascontiguousarray(S.indptr, dtype=np.int64))
            indices.append(np.ascontiguousarray(S.indices, dtype=np.int32))
            data.append(np.ascontiguousarray(S.data, dtype=np.float64))
        return cls(indptr, indices, data, [np.asarray(b.row_terms, np.float64) for b in blocks],
                   [np.asarray(b.col_terms, np.float64) for b in blocks],
                   np.asarray(log_unigram, np.float64),
                   np.asarray(block_of, dtype=np.int32))

    @classmethod
    def from_weights(cls, weights) -> "ScoringParts":
        """Parts of an `ExplicitWeights` (its blocks, unigram and aggregation)."""
        block_of = [weights.block_of_offset(r) for r in range(weights.config.radius)]
        return cls.from_blocks(weights.blocks, weights.log_unigram, block_of)

    def dense_features(self) -> np.ndarray:
        """(V, n_blocks + 1), target-major: ``uses_b * col_terms_b`` then ``log p``."""
        return np.ascontiguousarray(np.column_stack(
            [u * c for u, c in zip(self.uses, self.col_terms)] + [self.log_unigram]))

    def row_keys(self, b: int) -> np.ndarray:
        """``row * V + column`` of every stored cell of block b, ascending (built once; the
        NumPy fallback finds targets in it by binary search)."""
        keys = getattr(self, "_row_keys", None)
        if keys is None:
            keys = self._row_keys = [None] * self.n_blocks
        if keys[b] is None:
            rows = np.repeat(np.arange(self.indptr[b].size - 1, dtype=np.int64),
                             np.diff(self.indptr[b]))
            keys[b] = rows * self.vocab_size + self.indices[b]
        return keys[b]

    def dense_rows(self, b: int, rows: np.ndarray) -> np.ndarray:
        """Dense ``S^(b)[rows]`` (len(rows), V); only for the few cancelling contexts."""
        out = np.zeros((rows.size, self.vocab_size))
        for n, i in enumerate(rows):
            lo, hi = self.indptr[b][i], self.indptr[b][i + 1]
            out[n, self.indices[b][lo:hi]] = self.data[b][lo:hi]
        return out


class ContextCache:
    """A bounded direct-mapped cache of one float per context tuple.

    A slot holds the last tuple stored there; a lookup hits only on an exact tuple match, so
    cached and recomputed values are the same numbers. With R = 1 and ``size >= V`` every
    row has its own slot.
    """

    def __init__(self, size: int, radius: int):
        self.size = 1 << max(0, int(size - 1).bit_length())
        self.mask = self.size - 1
        self.keys = np.full((self.size, radius), -1, dtype=np.int64)
        self.values = np.zeros(self.size)
        self.hits = self.lookups = 0

    def slots(self, contexts: np.ndarray) -> np.ndarray:
        if contexts.shape[1] == 1:
            return contexts[:, 0] & self.mask
        h = np.zeros(contexts.shape[0], dtype=np.uint64)
        with np.errstate(over="ignore"):
            for column in contexts.T:
                h = (h ^ column.astype(np.uint64)) * np.uint64(0x9E3779B97F4A7C15)
        return ((h >> np.uint64(29)) & np.uint64(self.mask)).astype(np.int64)

    def lookup(self, contexts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(slots, hit mask, values)`` (values valid where hit)."""
        slots = self.slots(contexts)
        hit = np.all(self.keys[slots] == contexts, axis=1)
        self.lookups += hit.size
        self.hits += int(hit.sum())
        return slots, hit, self.values[slots]

    def store(self, slots: np.ndarray, contexts: np.ndarray, values: np.ndarray):
        self.keys[slots] = contexts
        self.values[slots] = values


@functools.lru_cache(maxsize=4)
def _executor_of(pid: int) -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1,
                                                 thread_name_prefix="streamsolve-score")


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    """The kernel's thread pool, one per process (a forked worker gets its own: the parent's
    threads do not exist in the child)."""
    return _executor_of(os.getpid())


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + n)`` for every (s, n)."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(starts - offsets, lengths) + np.arange(total)


def unique_contexts(contexts: np.ndarray, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct context tuples (C-contiguous int64) and each position's index among them."""
    R = contexts.shape[1]
    if vocab_size ** R < 1 << 62:
        key = contexts[:, 0].copy()
        for r in range(1, R):
            key = key * vocab_size + contexts[:, r]
        _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        return np.ascontiguousarray(contexts[first]), inverse.reshape(-1)
    unique, inverse = np.unique(contexts, axis=0, return_inverse=True)
    return np.ascontiguousarray(unique), inverse.reshape(-1)


class Scorer:
    """Log-probabilities of targets after contexts, in O(nnz) per position (module doc).

    Parameters
    ----------
    parts : ScoringParts
    beta : array-like of shape (n_blocks,)
        Weight of each block.
    gamma : float
        Weight of ``log p``.
    cache_size : int
        Context tuples whose ``log_zhat`` is kept (0: no cache).
    native : bool, optional
        Use the C kernel (default: when built and not disabled by ``STREAMSOLVE_NATIVE=0``).
    """

    def __init__(self, parts: ScoringParts, beta, gamma: float,
                 cache_size: int = DEFAULT_CACHE_SIZE, native: bool | None = None):
        self.parts = parts
        self.beta = np.asarray(beta, dtype=np.float64).reshape(-1)
        if self.beta.size != parts.n_blocks:
            raise ValueError(f"need {parts.n_blocks} beta values, got {self.beta.size}")
        self.gamma = float(gamma)
        self.beta_of = np.ascontiguousarray(self.beta[parts.block_of])
        a = self.gamma * parts.log_unigram
        for b in range(parts.n_blocks):
            a = a + self.beta[b] * parts.uses[b] * parts.col_terms[b]
        self.a_max = float(a.max())
        self.a = np.ascontiguousarray(a - self.a_max)
        self.u = np.exp(self.a)
        self.U = float(self.u.sum())
        self.log_U = float(np.log(self.U))
        self.lib = score_native.library() if native in (None, True) else None
        if native and self.lib is None:
            raise RuntimeError("the native scoring kernel is not available")
        if cache_size and parts.radius == 1:
            cache_size = max(cache_size, parts.vocab_size)
        self.cache = ContextCache(cache_size, parts.radius) if cache_size else None
        self._dense = None
        self._exp_data = None

    # -- per context ----------------------------------------------------------------------
    def _dense_features(self):
        if self._dense is None:
            x = self.parts.dense_features()
            self._dense = (x, np.ascontiguousarray(self.u @ x))
        return self._dense

    def context_terms(self, contexts: np.ndarray, gradient: bool = False):
        """``log_zhat`` of distinct contexts, and with ``gradient`` the expectations.

        Parameters
        ----------
        contexts : int array of shape (k, R)
        gradient : bool

        Returns
        -------
        log_zhat : ndarray of shape (k,)
            ``log Z(c) - A(c) - max(a)``.
        exp_sparse : ndarray of shape (k, n_blocks), only with ``gradient``
            ``E_p[sum_{r: b(r)=b} S^(b)[c_r, .]]``.
        exp_dense : ndarray of shape (k, n_blocks + 1), only with ``gradient``
            ``E_p`` of ``uses_b * col_terms_b`` and of ``log p``.
        """
        contexts = np.ascontiguousarray(contexts, dtype=np.int64)
        k = contexts.shape[0]
        chunks = [(s, min(k, s + KERNEL_CHUNK)) for s in range(0, k, KERNEL_CHUNK)]
        if self.lib is not None:  # built once, before the threads share them
            self._product_factors()
            if not gradient:
                self.dense_rows()
            if gradient:
                self._dense_features()
        if self.lib is not None and len(chunks) > 1:
            pieces = list(_executor().map(lambda c: self._terms(contexts[c[0]:c[1]], gradient),
                                          chunks))
        else:
            pieces = [self._terms(contexts[s:e], gradient) for s, e in chunks] or \
                     [self._terms(contexts, gradient)]
        out = [np.concatenate([p[i] for p in pieces]) for i in range(3 if gradient else 1)]
        bad = ~(out[0] - self.log_U > np.log(CANCELLATION_RATIO))
        if np.any(bad):
            dense = self._dense_terms(contexts[bad], gradient)
            for array, fixed in zip(out, dense):
                array[bad] = fixed
        return tuple(out) if gradient else out[0]

    def _product_factors(self):
        """Pointer table to ``exp(beta_b S^(b))`` per block (built once, O(nnz)), or None
        when ``exp(T_j)`` could come near overflow (then the kernel factors out the max)."""
        if self._exp_data is None:
            bound = sum(max(0.0, self.beta[b] * self.parts.data_range[b][0],
                            self.beta[b] * self.parts.data_range[b][1])
                        for b in self.parts.block_of)
            if bound > PRODUCT_EXPONENT_BOUND:
                self._exp_data = (None, None)
            else:
                arrays = [np.exp(self.beta[b] * d) for b, d in enumerate(self.parts.data)]
                table = score_native.BlockPointers(arrays, arrays, arrays).data
                self._exp_data = (arrays, table)
        return self._exp_data[1]

    def dense_rows(self):
        """The longest rows (at least `DENSE_ROW_MIN_NNZ` entries, longest first, up to
        `DENSE_ROW_BYTES`) as dense factors ``exp(beta_b S^(b)[row, .])`` for the product
        kernel, built once per scorer; None when R = 1, off the product path, or none
        qualifies."""
        if getattr(self, "_dense_rows", None) is None:
            self._dense_rows = False
            p = self.parts
            if (p.radius > 1 and self.lib is not None and self._product_factors() is not None
                    and hasattr(self.lib, "score_contexts_product_dense")):
                self._dense_rows = self._build_dense_rows() or False
        return self._dense_rows or None

    def _build_dense_rows(self):
        p, V = self.parts, self.parts.vocab_size
        lengths = [np.diff(ip) for ip in p.indptr]
        candidates = sorted(((int(n), b, int(row)) for b, n_b in enumerate(lengths)
                             for row in np.flatnonzero(n_b >= DENSE_ROW_MIN_NNZ)
                             for n in [n_b[row]]), reverse=True)
        chosen = candidates[:DENSE_ROW_BYTES // (8 * V)]
        if not chosen:
            return None
        exp_data = self._exp_data[0]
        slots, rows, corrections = [], [], []
        for b in range(p.n_blocks):
            mine = np.asarray(sorted(row for _, bb, row in chosen if bb == b), dtype=np.int64)
            slot = np.full(p.indptr[b].size - 1, -1, dtype=np.int32)
            slot[mine] = np.arange(mine.size, dtype=np.int32)
            dense = np.ones((max(1, mine.size), V))
            corr = np.zeros(max(1, mine.size))
            for s, row in enumerate(mine):
                lo, hi = p.indptr[b][row], p.indptr[b][row + 1]
                j, e = p.indices[b][lo:hi], exp_data[b][lo:hi]
                dense[s, j] = e
                corr[s] = float(np.sum(self.u[j] * (e - 1.0)))
            slots.append(slot), rows.append(dense), corrections.append(corr)
        return score_native.DenseRows(slots, rows, corrections)

    def _terms(self, contexts: np.ndarray, gradient: bool):
        if not gradient and self.lib is not None and self.dense_rows() is not None:
            return score_native.score_contexts_product_dense(
                self.lib, self.parts.pointers, self._product_factors(), self.parts.block_of,
                self.u, self.U, contexts, self.dense_rows())
        if self.lib is not None and self._product_factors() is not None:
            dense, totals = self._dense_features() if gradient else (None, None)
            return score_native.score_contexts_product(
                self.lib, self.parts.pointers, self._product_factors(), self.parts.block_of,
                self.u, self.U, contexts, dense, totals)
        if self.lib is not None:
            dense, totals = self._dense_features() if gradient else (None, None)
            return score_native.score_contexts(self.lib, self.parts.pointers,
                                               self.parts.block_of, self.beta_of, self.a, self.u,
                                               self.U, contexts, self.parts.max_union, dense,
                                               totals)
        return self._numpy_terms(contexts, gradient)

    def _numpy_terms(self, contexts: np.ndarray, gradient: bool):
        """NumPy twin of the kernel, in slices of bounded size."""
        p, k = self.parts, contexts.shape[0]
        lengths = np.zeros(k, dtype=np.int64)
        for r, b in enumerate(p.block_of):
            lengths += p.indptr[b][contexts[:, r] + 1] - p.indptr[b][contexts[:, r]]
        cum = np.cumsum(lengths)
        cuts = np.searchsorted(cum, np.arange(NUMPY_CHUNK_NNZ, int(cum[-1]) if k else 0,
                                              NUMPY_CHUNK_NNZ), side="right")
        edges = np.unique(np.r_[0, cuts, k])
        if edges.size < 2:
            return self._numpy_slice(contexts, gradient)
        pieces = [self._numpy_slice(contexts[s:e], gradient) for s, e in zip(edges[:-1], edges[1:])]
        return tuple(np.concatenate([q[i] for q in pieces]) for i in range(len(pieces[0])))

    def _numpy_slice(self, contexts: np.ndarray, gradient: bool):
        p, k, V = self.parts, contexts.shape[0], self.parts.vocab_size
        owner, column, value, block = [], [], [], []
        for r, b in enumerate(p.block_of):
            starts = p.indptr[b][contexts[:, r]]
            lengths = p.indptr[b][contexts[:, r] + 1] - starts
            index = _ranges(starts, lengths)
            owner.append(np.repeat(np.arange(k), lengths))
            column.append(p.indices[b][index])
            value.append(p.data[b][index])
            block.append(np.full(index.size, r))
        owner, column = np.concatenate(owner), np.concatenate(column)
        value, offset = np.concatenate(value), np.concatenate(block)
        keys, inverse = np.unique(owner * V + column, return_inverse=True)
        inverse = inverse.reshape(-1)
        T = np.bincount(inverse, weights=value * self.beta_of[offset], minlength=keys.size)
        own, j = keys // V, keys % V
        e = self.a[j] + T
        m = np.zeros(k)
        np.maximum.at(m, own, e)
        w = np.exp(e - m[own])
        scale = np.exp(-m)
        zs = (self.U - np.bincount(own, self.u[j], k)) * scale + np.bincount(own, w, k)
        log_zhat = m + np.log(zs)
        if not gradient:
            return (log_zhat,)
        x, totals = self._dense_features()
        exp_sparse = np.empty((k, p.n_blocks))
        for b in range(p.n_blocks):
            raw = np.bincount(inverse, weights=value * (p.block_of[offset] == b), minlength=keys.size)
            exp_sparse[:, b] = np.bincount(own, w * raw, k) / zs
        xj = x[j]
        exp_dense = np.empty((k, x.shape[1]))
        for d in range(x.shape[1]):
            ux = np.bincount(own, self.u[j] * xj[:, d], k)
            wx = np.bincount(own, w * xj[:, d], k)
            exp_dense[:, d] = ((totals[d] - ux) * scale + wx) / zs
        return log_zhat, exp_sparse, exp_dense

    def _dense_terms(self, contexts: np.ndarray, gradient: bool):
        """The same figures from dense logits (O(V) per context): cancelling contexts only."""
        p = self.parts
        raw = np.zeros((p.n_blocks, contexts.shape[0], p.vocab_size))
        for r, b in enumerate(p.block_of):
            raw[b] += p.dense_rows(b, contexts[:, r])
        return self._terms_of_dense_rows(raw, self.beta, gradient)

    def _terms_of_dense_rows(self, raw: np.ndarray, beta: np.ndarray, gradient: bool):
        """`_dense_terms` from the dense sparse-part rows ``raw`` (blocks, contexts, V)."""
        logits = self.a[None, :] + np.tensordot(beta, raw, axes=1)
        peak = logits.max(axis=1, keepdims=True)
        weights = np.exp(logits - peak)
        total = weights.sum(axis=1)
        log_zhat = peak[:, 0] + np.log(total)
        if not gradient:
            return (log_zhat,)
        prob = weights / total[:, None]
        exp_sparse = np.einsum("bkv,kv->kb", raw, prob)
        return log_zhat, exp_sparse, prob @ self._dense_features()[0]

    def log_zhat(self, contexts: np.ndarray) -> np.ndarray:
        """``log Z(c) - A(c) - max(a)`` per position (looked up by hash; misses scored once)."""
        contexts = np.atleast_2d(np.asarray(contexts, dtype=np.int64))
        _, hit, values = self.cache.lookup(contexts) if self.cache else (None, None, None)
        miss = np.flatnonzero(~hit) if self.cache else slice(None)
        unique, inverse = unique_contexts(contexts[miss], self.parts.vocab_size)
        scored = self.context_terms(unique)
        if self.cache is None:
            return scored[inverse]
        self.cache.store(self.cache.slots(unique), unique, scored)
        values[miss] = scored[inverse]
        return values

    def log_normalizers(self, contexts: np.ndarray) -> np.ndarray:
        """``log Z(c)`` per context (the log-sum-exp of the logits)."""
        contexts = np.atleast_2d(np.asarray(contexts, dtype=np.int64))
        A = sum(self.beta_of[r] * self.parts.row_terms[b][contexts[:, r]]
                for r, b in enumerate(self.parts.block_of))
        return A + self.a_max + self.log_zhat(contexts)

    def target_values(self, contexts: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Raw ``sum_{r: b(r)=b} S^(b)[c_r, t]`` per position and block, (n, n_blocks)."""
        contexts = np.ascontiguousarray(contexts, dtype=np.int64)
        targets = np.ascontiguousarray(targets, dtype=np.int64)
        if self.lib is not None:
            return score_native.target_values(self.lib, self.parts.pointers, self.parts.block_of,
                                              contexts, targets)
        p = self.parts
        out = np.zeros((targets.size, p.n_blocks))
        for r, b in enumerate(p.block_of):
            rows = contexts[:, r]
            lo, hi = p.indptr[b][rows], p.indptr[b][rows + 1]
            at = np.searchsorted(p.row_keys(b), rows * p.vocab_size + targets)
            found = (at < hi) & (at >= lo)
            found[found] = p.indices[b][at[found]] == targets[found]
            out[found, b] += p.data[b][at[found]]
        return out

    def log_probs(self, contexts: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """``log p(t | c)`` per position.

        Parameters
        ----------
        contexts : int array of shape (n, R)
            ``contexts[n, r]`` is the token at offset r + 1 before the target.
        targets : int array of shape (n,)

        Returns
        -------
        ndarray of shape (n,)
        """
        contexts = np.atleast_2d(np.asarray(contexts, dtype=np.int64))
        targets = np.asarray(targets, dtype=np.int64).reshape(-1)
        if contexts.shape != (targets.size, self.parts.radius):
            raise ValueError(f"contexts must be ({targets.size}, {self.parts.radius}), "
                             f"got {contexts.shape}")
        if targets.size == 0:
            return np.zeros(0)
        T = self.target_values(contexts, targets) @ self.beta
        return self.a[targets] + T - self.log_zhat(contexts)


def scorer_class(parts) -> type:
    """The scorer of a parts object: `Scorer`, or the class lazily loaded parts name
    (`streamsolve.core.blocked_scoring.BlockedScorer`)."""
    return getattr(parts, "scorer_class", Scorer)


class CalibrationObjective:
    """Mean cross-entropy of calibration scalars on a sample, and its gradient, in O(nnz).

    ``theta = (beta_1..beta_B, gamma)``. Per distinct context of the sample, one kernel pass
    gives ``log_zhat`` and the expectations ``E_p[S-part of block b]``, ``E_p[uses_b c^(b)]``
    and ``E_p[log p]``, with

        d CE / d beta_b  = mean_n (E_p[X_b] - X_b[t_n]),   X_b = sum_{r: b(r)=b} W^(b)[c_r, .]
        d CE / d gamma   = mean_n (E_p[log p] - log p[t_n])

    (the row terms of ``X_b`` cancel). Parameters as `Scorer`'s; ``contexts`` (n, R) and
    ``targets`` (n,) are the sample.
    """

    def __init__(self, parts: ScoringParts, contexts: np.ndarray, targets: np.ndarray,
                 native: bool | None = None):
        contexts, targets = calibration_sample(contexts, targets)
        self.parts, self.native, self.n = parts, native, targets.size
        self.unique, inverse = unique_contexts(contexts, parts.vocab_size)
        self.unique = np.ascontiguousarray(self.unique, dtype=np.int64)
        self.counts = np.bincount(inverse, minlength=self.unique.shape[0]).astype(np.float64)
        probe = scorer_class(parts)(parts, np.ones(parts.n_blocks), 0.0, cache_size=0,
                                    native=native)
        self.target_raw = probe.target_values(contexts, targets).sum(axis=0)
        target_counts = np.bincount(targets, minlength=parts.vocab_size).astype(np.float64)
        self.target_dense = target_counts @ parts.dense_features()  # sum_n x[t_n]
        self.evaluations = 0

    def scorer(self, theta: np.ndarray, native: bool | None = None) -> Scorer:
        """An uncached scorer of the parts at ``theta`` (``native`` defaults to the
        objective's)."""
        return scorer_class(self.parts)(self.parts, theta[:-1], theta[-1], cache_size=0,
                                        native=self.native if native is None else native)

    def __call__(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        theta = np.asarray(theta, dtype=np.float64)
        beta, gamma = theta[:-1], theta[-1]
        scorer = self.scorer(theta)
        log_zhat, exp_sparse, exp_dense = scorer.context_terms(self.unique, gradient=True)
        target_logits = self.target_dense[:-1] @ beta + gamma * self.target_dense[-1] \
            + self.target_raw @ beta - self.n * scorer.a_max
        loss = (self.counts @ log_zhat - target_logits) / self.n
        grad = np.empty_like(theta)
        grad[:-1] = (self.counts @ (exp_sparse + exp_dense[:, :-1])
                     - self.target_dense[:-1] - self.target_raw) / self.n
        grad[-1] = (self.counts @ exp_dense[:, -1] - self.target_dense[-1]) / self.n
        self.evaluations += 1
        return float(loss), grad


def fit_calibration_scored(parts: ScoringParts, contexts: np.ndarray, targets: np.ndarray,
                           theta0: np.ndarray, max_iter: int = 100, native: bool | None = None,
                           start_loss: float | None = None, check: bool = True,
                           evaluate=None) -> CalibrationFit:
    """Fit ``(beta, gamma)`` on `CalibrationObjective` (one fast pass per evaluation): by
    damped Newton with the exact Hessian (`streamsolve.core.newton`) on the C kernel's
    product path, else by L-BFGS; kept only if the sample's loss does not go up (as
    `fit_calibration`). ``start_loss``: the sample's mean cross-entropy at ``theta0`` when
    known; ``check=False``: the caller checks the last step's loss; ``evaluate``: the Newton
    fit's Hessian passes on the whole sample, e.g. over a cluster (see `newton.fit_newton`)."""
    objective = CalibrationObjective(parts, contexts, targets, native)
    if newton.newton_available(objective):
        coarse = []
        if objective.n > 2 * newton.COARSE_POSITIONS:  # uniform subsamples for the first steps
            pick = np.random.default_rng(0).choice(objective.n, newton.COARSE_POSITIONS, False)
            sizes = sorted({min(newton.COARSE_FIRST_POSITIONS, pick.size), pick.size})
            coarse = [CalibrationObjective(parts, np.atleast_2d(contexts)[pick[:size]],
                                           np.reshape(targets, -1)[pick[:size]], native)
                      for size in sizes]  # nested: each level a uniform subset of the next
        fit = newton.fit_newton(objective, np.asarray(theta0, dtype=np.float64),
                                coarse or None, newton.FIT_DECREMENT,
                                start=start_loss if coarse else None, check=check,
                                evaluate=evaluate)
    else:
        fit = minimize_kept(objective, np.asarray(theta0, dtype=np.float64), max_iter,
                            objective.n)
    logger.info("calibration: %d evaluations over %d positions (%d distinct contexts)",
                objective.evaluations, objective.n, objective.unique.shape[0])
    return fit

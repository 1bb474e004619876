"""Scoring with weights read row block by row block, in bounded memory.

`streamsolve.core.scoring.Scorer` wants every block's whole CSR ``S`` in memory; at V = 65k
and R = 3 that is most of a model's size. Here the model keeps only its O(V) vectors (row
and column terms, unigram) and fetches CSR row blocks on demand through a bounded LRU
(`RowBlockCache`, filled by a caller-supplied loader: this module does no I/O). For a batch
of contexts, `LazyScoringParts.gather` copies the distinct rows each offset needs into a
compact CSR, one *virtual block per offset*, and renumbers the contexts into it; the same C
kernel (or its NumPy twin) then scores the batch.

Every figure is computed from the same numbers, in the same order, as the eager `Scorer`:
``a``, ``u``, ``U`` from the same O(V) vectors, each context's rows with the same entries in
the same order, ``exp(beta_b S)`` elementwise, the product/merge path chosen from the
*global* range of ``S`` (not the batch's). So log-probabilities are bit-identical to the
eager model's (tested), and only the memory differs.

Pure numpy (and ctypes through `score_native`).
"""

from __future__ import annotations

import collections
import threading

import numpy as np

from . import score_native
from .scoring import (CANCELLATION_RATIO, KERNEL_CHUNK, PRODUCT_EXPONENT_BOUND, Scorer,
                      ScoringParts, _executor, _ranges)

#: Contexts gathered into one compact layout at once (bounds its size).
GATHER_CONTEXTS = 1 << 13

#: Distinct contexts scored through gathered layouts before the model tries to keep all of
#: ``S`` resident (`LazyScoringParts.resident`): a short text never reads the whole model.
RESIDENT_AFTER = 1 << 15


class RowBlockCache:
    """A bounded LRU of CSR row blocks ``(indptr, indices, data)``, loaded on demand.

    Parameters
    ----------
    loader : callable
        ``loader(b, k) -> (indptr, indices, data)`` of row block ``k`` of weight block ``b``
        (local row numbers; indices sorted within rows).
    max_bytes : int
        Bytes of blocks kept; the least recently used are dropped above it (the block just
        loaded is always kept, so one block larger than the budget still works).
    """

    def __init__(self, loader, max_bytes: int):
        self.loader = loader
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.loads = 0
        self._blocks: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def clear(self):
        """Drop every cached block."""
        with self._lock:
            self._blocks.clear()
            self.bytes = 0

    def get(self, b: int, k: int) -> tuple:
        key = (b, k)
        with self._lock:
            if key in self._blocks:
                self._blocks.move_to_end(key)
                return self._blocks[key]
        ip, ix, d = self.loader(b, k)
        value = (np.ascontiguousarray(ip, dtype=np.int64),
                 np.ascontiguousarray(ix, dtype=np.int32),
                 np.ascontiguousarray(d, dtype=np.float64))
        size = sum(a.nbytes for a in value)
        with self._lock:
            self.loads += 1
            if key not in self._blocks:
                self._blocks[key] = value
                self.bytes += size
            while self.bytes > self.max_bytes and len(self._blocks) > 1:
                _, old = self._blocks.popitem(last=False)
                self.bytes -= sum(a.nbytes for a in old)
        return value


class LazyScoringParts:
    """The scorer's parts with ``S`` left in row blocks (module doc).

    Parameters
    ----------
    cache : RowBlockCache
    row_starts : list of ndarray
        Per weight block, the first row of each row block and V at the end (K + 1 values).
    row_terms, col_terms : list of ndarray
        Each block's rank-one terms, (V,) each.
    log_unigram : ndarray of shape (V,)
    block_of : array-like of shape (R,)
        Block read by each offset.
    data_range : list of (float, float)
        Smallest and largest value of each block's ``S`` (decides the kernel path).
    """

    dense_features = ScoringParts.dense_features

    def __init__(self, cache: RowBlockCache, row_starts, row_terms, col_terms,
                 log_unigram: np.ndarray, block_of, data_range):
        self.cache = cache
        self.row_starts = [np.asarray(s, dtype=np.int64) for s in row_starts]
        self.row_terms = [np.asarray(t, np.float64) for t in row_terms]
        self.col_terms = [np.asarray(t, np.float64) for t in col_terms]
        self.log_unigram = np.asarray(log_unigram, np.float64)
        self.block_of = np.asarray(block_of, dtype=np.int32)
        self.data_range = [(float(lo), float(hi)) for lo, hi in data_range]
        self.vocab_size = self.log_unigram.size
        self.n_blocks = len(self.row_terms)
        self.radius = self.block_of.size
        self.uses = np.bincount(self.block_of, minlength=self.n_blocks).astype(np.float64)
        self.scored = 0  # distinct contexts scored through gathered layouts
        self._resident: ScoringParts | None | bool = None  # False: does not fit
        self._resident_lock = threading.Lock()

    def resident(self, now: bool = False) -> ScoringParts | None:
        """The whole of ``S`` as eager `ScoringParts` when it fits the row block cache's
        budget, built once (the cache is then emptied: the parts replace it) and shared by
        every scorer of these parts; None while fewer than `RESIDENT_AFTER` contexts were
        scored (unless ``now``: a caller that will read it all, such as a calibration fit),
        or when it does not fit.

        Scores through it are the same numbers as through gathered layouts (same rows, same
        order, the product path chosen from the same global ``data_range``): tested.
        """
        if self._resident is False or (self._resident is None and not now
                                       and self.scored < RESIDENT_AFTER):
            return None
        with self._resident_lock:
            if self._resident is None:
                self._resident = self._load_resident() or False
        return self._resident or None

    def _load_resident(self) -> ScoringParts | None:
        total, blocks = 0, []
        for b in range(self.n_blocks):
            pieces = []
            for k in range(self.row_starts[b].size - 1):
                ip, ix, d = self.cache.loader(b, k)
                total += np.asarray(ix).size * 12 + np.asarray(ip).size * 8
                if total > self.cache.max_bytes:
                    return None
                pieces.append((np.asarray(ip, dtype=np.int64), ix, d))
            offsets = np.cumsum([0] + [int(ip[-1] - ip[0]) for ip, _, _ in pieces])
            indptr = np.concatenate([np.zeros(1, dtype=np.int64)]
                                    + [ip[1:] - ip[0] + o for (ip, _, _), o in
                                       zip(pieces, offsets)])
            indices = np.concatenate([np.asarray(ix, dtype=np.int32)[ip[0]:ip[-1]]
                                      for ip, ix, _ in pieces])
            data = np.concatenate([np.asarray(d, dtype=np.float64)[ip[0]:ip[-1]]
                                   for ip, _, d in pieces])
            blocks.append((indptr, indices, data))
        parts = ScoringParts([x[0] for x in blocks], [x[1] for x in blocks],
                             [x[2] for x in blocks], self.row_terms, self.col_terms,
                             self.log_unigram, self.block_of)
        parts.data_range = list(self.data_range)  # the path is chosen as when gathered
        self.cache.clear()
        return parts

    @property
    def scorer_class(self):
        return BlockedScorer

    def rows(self, b: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Compact CSR ``(indptr, indices, data)`` of rows ``rows`` of block b, in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        starts = self.row_starts[b]
        which = np.searchsorted(starts, rows, side="right") - 1
        lengths = np.zeros(rows.size, dtype=np.int64)
        begin = np.zeros(rows.size, dtype=np.int64)
        blocks = np.unique(which)
        loaded = {}
        for k in blocks:
            ip, ix, d = loaded[k] = self.cache.get(b, int(k))
            sel = which == k
            local = rows[sel] - starts[k]
            begin[sel] = ip[local]
            lengths[sel] = ip[local + 1] - ip[local]
        indptr = np.zeros(rows.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        indices = np.empty(int(indptr[-1]), dtype=np.int32)
        data = np.empty(int(indptr[-1]), dtype=np.float64)
        for k in blocks:
            _, ix, d = loaded[k]
            sel = np.flatnonzero(which == k)
            source = _ranges(begin[sel], lengths[sel])
            target = _ranges(indptr[sel], lengths[sel])
            indices[target] = ix[source]
            data[target] = d[source]
        return indptr, indices, data

    def gather(self, contexts: np.ndarray) -> tuple[ScoringParts, np.ndarray]:
        """The compact parts of a batch (one virtual block per offset) and its contexts
        renumbered into them."""
        contexts = np.atleast_2d(np.asarray(contexts, dtype=np.int64))
        local = np.empty_like(contexts)
        indptr, indices, data = [], [], []
        for r, b in enumerate(self.block_of):
            distinct, inverse = np.unique(contexts[:, r], return_inverse=True)
            local[:, r] = inverse.reshape(-1)
            ip, ix, d = self.rows(int(b), distinct)
            indptr.append(ip)
            indices.append(ix)
            data.append(d)
        parts = ScoringParts(indptr, indices, data,
                             [self.row_terms[b] for b in self.block_of],
                             [self.col_terms[b] for b in self.block_of], self.log_unigram,
                             np.arange(self.radius, dtype=np.int32))
        return parts, np.ascontiguousarray(local)


class _Window(Scorer):
    """A `Scorer` over one gathered batch: the base scorer's O(V) terms, compact ``S``."""

    def __init__(self, base: "BlockedScorer", parts: ScoringParts):
        self.base = base
        self.parts = parts
        self.beta = base.beta_of  # one virtual block per offset
        self.beta_of = base.beta_of
        self.gamma = base.gamma
        self.a, self.a_max, self.u, self.U, self.log_U = base.a, base.a_max, base.u, base.U, \
            base.log_U
        self.lib = base.lib
        self.cache = None
        self._exp_data = None
        self._dense_rows = False  # a batch's compact rows are not worth densifying

    def _dense_features(self):
        return self.base._dense_features()

    def _product_factors(self):
        if self._exp_data is None:
            if not self.base.product_path:
                self._exp_data = (None, None)
            else:
                arrays = [np.exp(self.beta_of[r] * d) for r, d in enumerate(self.parts.data)]
                self._exp_data = (arrays, score_native.BlockPointers(arrays, arrays, arrays).data)
        return self._exp_data[1]

    def real_dense_terms(self, contexts: np.ndarray, gradient: bool):
        """`Scorer._dense_terms` with the real blocks (sums of offsets sharing a block first,
        as the eager scorer adds them)."""
        base = self.base
        raw = np.zeros((base.parts.n_blocks, contexts.shape[0], base.parts.vocab_size))
        for r, b in enumerate(base.parts.block_of):
            raw[b] += self.parts.dense_rows(r, contexts[:, r])
        return self._terms_of_dense_rows(raw, base.beta, gradient)


class BlockedScorer(Scorer):
    """`Scorer` over `LazyScoringParts`: the same results, ``S`` fetched per batch."""

    def __init__(self, parts: LazyScoringParts, beta, gamma: float, cache_size: int = 1 << 18,
                 native: bool | None = None):
        super().__init__(parts, beta, gamma, cache_size, native)
        bound = sum(max(0.0, self.beta[b] * parts.data_range[b][0],
                        self.beta[b] * parts.data_range[b][1]) for b in parts.block_of)
        self.product_path = self.lib is not None and bound <= PRODUCT_EXPONENT_BOUND
        self._eager = None

    def eager(self, now: bool = False) -> Scorer | None:
        """An eager `Scorer` on the resident parts (same beta, gamma), once they exist (or
        ``now``, see `LazyScoringParts.resident`)."""
        if self._eager is None:
            resident = self.parts.resident(now)
            if resident is not None:
                self._eager = Scorer(resident, self.beta, self.gamma, cache_size=0,
                                     native=self.lib is not None)
        return self._eager

    def _to_blocks(self, per_offset: np.ndarray) -> np.ndarray:
        out = np.zeros((per_offset.shape[0], self.parts.n_blocks))
        for r, b in enumerate(self.parts.block_of):
            out[:, b] += per_offset[:, r]
        return out

    def context_terms(self, contexts: np.ndarray, gradient: bool = False):
        contexts = np.ascontiguousarray(np.atleast_2d(contexts), dtype=np.int64)
        if self.eager() is not None:
            return self._eager.context_terms(contexts, gradient)
        self.parts.scored += contexts.shape[0]
        pieces = [self._gathered_terms(contexts[s:s + GATHER_CONTEXTS], gradient)
                  for s in range(0, contexts.shape[0], GATHER_CONTEXTS)]
        if not pieces:
            empty = (np.zeros(0), np.zeros((0, self.parts.n_blocks)),
                     np.zeros((0, self.parts.n_blocks + 1)))
            return empty if gradient else empty[0]
        out = tuple(np.concatenate([p[i] for p in pieces]) for i in range(len(pieces[0])))
        return out if gradient else out[0]

    def _gathered_terms(self, contexts: np.ndarray, gradient: bool):
        parts, local = self.parts.gather(contexts)
        window = _Window(self, parts)
        k = local.shape[0]
        chunks = [(s, min(k, s + KERNEL_CHUNK)) for s in range(0, k, KERNEL_CHUNK)]
        if self.lib is not None:
            window._product_factors()
            if gradient:
                self._dense_features()
        if self.lib is not None and len(chunks) > 1:
            pieces = list(_executor().map(lambda c: window._terms(local[c[0]:c[1]], gradient),
                                          chunks))
        else:
            pieces = [window._terms(local[s:e], gradient) for s, e in chunks]
        out = [np.concatenate([p[i] for p in pieces]) for i in range(3 if gradient else 1)]
        if gradient:
            out[1] = self._to_blocks(out[1])
        bad = ~(out[0] - self.log_U > np.log(CANCELLATION_RATIO))
        if np.any(bad):
            dense = window.real_dense_terms(local[bad], gradient)
            for array, fixed in zip(out, dense):
                array[bad] = fixed
        return tuple(out)

    def target_values(self, contexts: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """As `Scorer.target_values`, searching each position's row inside its cached row
        block (no copy of the rows): offset by offset, row block by row block."""
        contexts = np.ascontiguousarray(np.atleast_2d(contexts), dtype=np.int64)
        targets = np.ascontiguousarray(targets, dtype=np.int64)
        if self.eager() is not None:
            return self._eager.target_values(contexts, targets)
        p = self.parts
        out = np.zeros((targets.size, p.n_blocks))
        for r, b in enumerate(p.block_of):
            rows = contexts[:, r]
            which = np.searchsorted(p.row_starts[b], rows, side="right") - 1
            values = np.zeros(targets.size)
            for k in np.unique(which):
                sel = np.flatnonzero(which == k)
                ip, ix, d = p.cache.get(int(b), int(k))
                local = np.ascontiguousarray((rows[sel] - p.row_starts[b][k])[:, None])
                values[sel] = _row_block_values(self.lib, ip, ix, d, local,
                                                np.ascontiguousarray(targets[sel]))
            out[:, b] += values
        return out


def _row_block_values(lib, indptr, indices, data, rows: np.ndarray, targets: np.ndarray):
    """``S[rows, targets]`` of one CSR row block (0 where not stored)."""
    if lib is not None:
        pointers = score_native.BlockPointers([indptr], [indices], [data])
        return score_native.target_values(lib, pointers, np.zeros(1, dtype=np.int32), rows,
                                          targets)[:, 0]
    rows = rows[:, 0]
    width = int(max(indices.max(initial=0), targets.max(initial=0))) + 1
    keys = np.repeat(np.arange(indptr.size - 1, dtype=np.int64), np.diff(indptr)) * width \
        + indices
    wanted = rows * width + targets
    at = np.minimum(np.searchsorted(keys, wanted), max(keys.size - 1, 0))
    values = np.zeros(rows.size)
    if keys.size:
        found = keys[at] == wanted
        values[found] = data[at[found]]
    return values


class LazySparseRankOne:
    """A weight block ``W = S + row_terms 1^T + 1 col_terms^T`` whose ``S`` stays in row
    blocks (read through the parts' `RowBlockCache`); the interface of
    `streamsolve.core.smoothing.SparseRankOne`.
    """

    def __init__(self, parts: LazyScoringParts, b: int):
        self.parts = parts
        self.b = b
        self.row_terms = parts.row_terms[b]
        self.col_terms = parts.col_terms[b]

    @property
    def shape(self) -> tuple[int, int]:
        return (self.row_terms.size, self.col_terms.size)

    def sparse_rows(self, index: np.ndarray) -> np.ndarray:
        """Dense ``S[index]`` (len(index), V)."""
        index = np.atleast_1d(np.asarray(index, dtype=np.int64))
        ip, ix, d = self.parts.rows(self.b, index)
        out = np.zeros((index.size, self.shape[1]))
        owner = np.repeat(np.arange(index.size), np.diff(ip))
        out[owner, ix] = d
        return out

    def rows(self, index: np.ndarray) -> np.ndarray:
        """Dense rows ``W[index]`` as a (len(index), n_cols) float64 array."""
        index = np.atleast_1d(np.asarray(index, dtype=np.int64))
        out = self.sparse_rows(index)
        out += self.row_terms[index][:, None]
        out += self.col_terms[None, :]
        return out

    @property
    def sparse(self):
        """The whole ``S`` as a CSR array (reads every row block: small models only)."""
        import scipy.sparse as sp

        V = self.shape[1]
        ip, ix, d = self.parts.rows(self.b, np.arange(self.shape[0]))
        return sp.csr_array((d, ix, ip), shape=(self.shape[0], V))

    def dense(self) -> np.ndarray:
        return self.rows(np.arange(self.shape[0]))

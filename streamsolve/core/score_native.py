"""The optional C scoring kernels (``_score.c``), loaded with ctypes.

Built like the counting kernels (an optional extension module compiled at install time);
absent, or with ``STREAMSOLVE_NATIVE=0``, `streamsolve.core.scoring` computes the same
figures with NumPy. ctypes releases the GIL during a call, so calls on slices of the
contexts run in parallel on a thread pool.
"""

from __future__ import annotations

import ctypes
import functools
import logging

import numpy as np

from .native import load_kernel_library

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def library():
    """The loaded kernel library, or None (not built, or disabled by ``STREAMSOLVE_NATIVE=0``)."""
    lib = load_kernel_library("_score", "scoring")
    if lib is None:
        return None
    ptr = ctypes.c_void_p
    i64, i32, f64, dbl = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p, ctypes.c_double
    lib.score_contexts.argtypes = [i32, i32, ptr, ptr, ptr, ptr, ptr, ptr, ptr, dbl, i32, ptr,
                                   ptr, i64, ptr, i64, f64, f64, f64]
    lib.score_contexts.restype = ctypes.c_int
    lib.score_contexts_product.argtypes = [i32, ptr, ptr, ptr, ptr, ptr, dbl, i64, i64, ptr, ptr]
    lib.score_contexts_product.restype = ctypes.c_int
    lib.score_contexts_product_grad.argtypes = [i32, i32, ptr, ptr, ptr, ptr, ptr, ptr, dbl,
                                                i64, i32, ptr, ptr, i64, ptr, ptr, ptr, ptr]
    lib.score_contexts_product_grad.restype = ctypes.c_int
    if hasattr(lib, "score_contexts_product_dense"):  # absent from a kernel built earlier
        lib.score_contexts_product_dense.argtypes = [i32, ptr, ptr, ptr, ptr, ptr, dbl, i64, i64,
                                                     ptr, ptr, ptr, ptr, ptr]
        lib.score_contexts_product_dense.restype = ctypes.c_int
    if hasattr(lib, "score_contexts_product_hess"):
        lib.score_contexts_product_hess.argtypes = [i32, i32, ptr, ptr, ptr, ptr, ptr, ptr, dbl,
                                                    i64, i32, ptr, ptr, ptr, i64, ptr, ptr,
                                                    ptr, ptr, ptr]
        lib.score_contexts_product_hess.restype = ctypes.c_int
    if hasattr(lib, "score_contexts_product_hess_dense"):
        lib.score_contexts_product_hess_dense.argtypes = \
            lib.score_contexts_product_hess.argtypes + [ptr, ptr, ptr, ptr]
        lib.score_contexts_product_hess_dense.restype = ctypes.c_int
    lib.target_values.argtypes = [i32, i32, ptr, ptr, ptr, ptr, i64, ptr, ptr, ptr]
    lib.target_values.restype = None
    return lib


def available() -> bool:
    """Whether the C scoring kernel is built and enabled."""
    return library() is not None


def _p(array: np.ndarray | None):
    return None if array is None else array.ctypes.data


class BlockPointers:
    """ctypes pointer tables to the CSR arrays of every block (kept alive with them)."""

    def __init__(self, indptr: list, indices: list, data: list):
        self._keep = (indptr, indices, data)
        n = len(indptr)
        self.indptr = (ctypes.c_void_p * n)(*[a.ctypes.data for a in indptr])
        self.indices = (ctypes.c_void_p * n)(*[a.ctypes.data for a in indices])
        self.data = (ctypes.c_void_p * n)(*[a.ctypes.data for a in data])


def score_contexts(lib, blocks: BlockPointers, block_of: np.ndarray, beta_of: np.ndarray,
                   a: np.ndarray, u: np.ndarray, U: float, contexts: np.ndarray,
                   max_union: int, dense: np.ndarray | None = None,
                   dense_totals: np.ndarray | None = None):
    """One kernel call: ``log_zhat`` (and with ``dense`` the expectations) of C-contiguous
    int64 ``contexts`` (n, R). See `_score.c` for the formulas."""
    n, R = contexts.shape
    n_blocks = len(blocks.indptr)
    log_zhat = np.empty(n)
    exp_sparse = exp_dense = None
    n_dense = 0
    if dense is not None:
        n_dense = dense.shape[1]
        exp_sparse = np.empty((n, n_blocks))
        exp_dense = np.empty((n, n_dense))
    status = lib.score_contexts(R, n_blocks, blocks.indptr, blocks.indices, blocks.data,
                                _p(block_of), _p(beta_of), _p(a), _p(u), float(U), n_dense,
                                _p(dense), _p(dense_totals), n, _p(contexts), int(max_union),
                                _p(log_zhat), _p(exp_sparse), _p(exp_dense))
    if status != 0:
        raise MemoryError("the scoring kernel could not allocate its buffers")
    return log_zhat, exp_sparse, exp_dense


def score_contexts_product(lib, blocks: BlockPointers, exp_data: "ctypes.Array",
                           block_of: np.ndarray, u: np.ndarray, U: float,
                           contexts: np.ndarray, dense: np.ndarray | None = None,
                           dense_totals: np.ndarray | None = None):
    """``log_zhat`` of C-contiguous int64 ``contexts`` (n, R) from the per-cell factors
    ``exp_data`` (a pointer table, one ``exp(beta_b S^(b))`` array per block); with
    ``dense`` also the expectations, as `score_contexts`."""
    n, R = contexts.shape
    log_zhat = np.empty(n)
    if dense is not None:
        n_blocks, n_dense = len(blocks.indptr), dense.shape[1]
        exp_sparse, exp_dense = np.empty((n, n_blocks)), np.empty((n, n_dense))
        status = lib.score_contexts_product_grad(
            R, n_blocks, blocks.indptr, blocks.indices, blocks.data, exp_data, _p(block_of),
            _p(u), float(U), u.size, n_dense, _p(dense), _p(dense_totals), n, _p(contexts),
            _p(log_zhat), _p(exp_sparse), _p(exp_dense))
        if status != 0:
            raise MemoryError("the scoring kernel could not allocate its buffers")
        return log_zhat, exp_sparse, exp_dense
    status = lib.score_contexts_product(R, blocks.indptr, blocks.indices, exp_data,
                                        _p(block_of), _p(u), float(U), u.size, n,
                                        _p(contexts), _p(log_zhat))
    if status != 0:
        raise MemoryError("the scoring kernel could not allocate its buffers")
    return (log_zhat,)


class DenseRows:
    """Pointer tables to the rows a product kernel reads whole (per block: the row -> slot
    map, int32 with -1 for sparse rows; the dense factors, (slots, V); each slot's
    ``sum_j u_j (P(j) - 1)``), kept alive with them."""

    def __init__(self, slots: list, rows: list, corrections: list):
        self._keep = (slots, rows, corrections)
        n = len(slots)
        self.slots = (ctypes.c_void_p * n)(*[a.ctypes.data for a in slots])
        self.rows = (ctypes.c_void_p * n)(*[a.ctypes.data for a in rows])
        self.corrections = (ctypes.c_void_p * n)(*[a.ctypes.data for a in corrections])


def score_contexts_product_dense(lib, blocks: BlockPointers, exp_data: "ctypes.Array",
                                 block_of: np.ndarray, u: np.ndarray, U: float,
                                 contexts: np.ndarray, dense_rows: DenseRows):
    """`score_contexts_product` (no gradient) with each context's longest dense row taken
    from ``dense_rows`` in O(1) (see `_score.c`)."""
    n, R = contexts.shape
    log_zhat = np.empty(n)
    status = lib.score_contexts_product_dense(
        R, blocks.indptr, blocks.indices, exp_data, _p(block_of), _p(u), float(U), u.size, n,
        _p(contexts), dense_rows.slots, dense_rows.rows, dense_rows.corrections, _p(log_zhat))
    if status != 0:
        raise MemoryError("the scoring kernel could not allocate its buffers")
    return (log_zhat,)


def target_values(lib, blocks: BlockPointers, block_of: np.ndarray, contexts: np.ndarray,
                  targets: np.ndarray) -> np.ndarray:
    """Raw sparse values at the targets, summed per block: (n, n_blocks)."""
    n, R = contexts.shape
    out = np.empty((n, len(blocks.indptr)))
    lib.target_values(R, len(blocks.indptr), blocks.indptr, blocks.indices, blocks.data,
                      _p(block_of), n, _p(contexts), _p(targets), _p(out))
    return out

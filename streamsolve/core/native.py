"""The optional C counting kernels (``_radix.c``), loaded with ctypes, and their NumPy twins.

The kernels are built when the package is installed (``pip install`` compiles them with the
machine's C compiler). Without them — no compiler, or ``STREAMSOLVE_NATIVE=0`` in the
environment — the same results come from NumPy, about 3x slower on the pair sort.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
import logging
import os
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

#: Environment variable that disables the kernel when set to 0 (benchmarks compare both).
NATIVE_ENV = "STREAMSOLVE_NATIVE"


def load_kernel_library(name: str, purpose: str):
    """The compiled kernel library ``name`` (``_radix``, ``_score``) of this package, or None
    when it is not built or ``STREAMSOLVE_NATIVE=0`` disables it (logged: ``purpose`` then
    falls back to NumPy)."""
    if os.environ.get(NATIVE_ENV, "1") == "0":
        logger.info("native %s kernels disabled by %s=0: %s with NumPy", purpose, NATIVE_ENV,
                    purpose)
        return None
    here = Path(__file__).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = here / f"{name}{suffix}"
        if path.exists():
            return ctypes.CDLL(str(path))
    logger.warning("native %s kernels not built (reinstall with a C compiler for faster %s): "
                   "%s with NumPy", purpose, purpose, purpose)
    return None


@functools.lru_cache(maxsize=1)
def _library():
    library = load_kernel_library("_radix", "counting")
    if library is None:
        return None
    array = np.ctypeslib.ndpointer
    u32 = array(np.uint32, flags="C_CONTIGUOUS,WRITEABLE")
    i64_out = array(np.int64, flags="C_CONTIGUOUS,WRITEABLE")
    library.radix_count_u32.argtypes = [u32, u32, ctypes.c_int64, ctypes.c_int, i64_out]
    library.radix_count_u32.restype = ctypes.c_int64
    pointers = ctypes.POINTER(ctypes.c_void_p)
    library.merge_add_k_i64.argtypes = [ctypes.c_int, pointers, pointers,
                                        array(np.int64, flags="C_CONTIGUOUS"), i64_out, i64_out]
    library.merge_add_k_i64.restype = ctypes.c_int64
    return library


def _kernel():
    """The radix counting function, or None (tests replace this to force NumPy)."""
    library = _library()
    return None if library is None else library.radix_count_u32


def _merge_kernel():
    """The k-list merge function, or None (tests replace this to force NumPy)."""
    library = _library()
    return None if library is None else library.merge_add_k_i64


def available() -> bool:
    """Whether the C counting kernels are built and enabled."""
    return _library() is not None


def count_keys_u32(keys: np.ndarray, key_bound: int,
                   overwrite: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Distinct keys (sorted, int64) and how often each occurs, for keys below ``key_bound``.

    Parameters
    ----------
    keys : ndarray
        Non-negative integer keys, all below ``key_bound``; not modified unless
        ``overwrite``.
    key_bound : int
        At most 2**32.
    overwrite : bool
        Whether ``keys`` (if C-contiguous uint32) may be used as the sort buffer, which
        saves a copy.

    Returns
    -------
    (ndarray, ndarray)
        int64 unique keys in ascending order, int64 counts.
    """
    if not 0 < key_bound <= 1 << 32:
        raise ValueError(f"key_bound must be in 1..2**32, got {key_bound}")
    kernel = _kernel()
    if kernel is None or keys.size == 0:
        unique, counts = np.unique(np.asarray(keys).astype(np.uint32, copy=False),
                                   return_counts=True)
        return unique.astype(np.int64), counts.astype(np.int64)
    reusable = (overwrite and keys.dtype == np.uint32 and keys.flags.c_contiguous
                and keys.flags.writeable)
    work = keys if reusable else np.array(keys, dtype=np.uint32, order="C")
    counts = np.empty(work.size, dtype=np.int64)
    distinct = kernel(work, np.empty(work.size, dtype=np.uint32), work.size,
                      max(1, (key_bound - 1).bit_length()), counts)
    if distinct < 0:
        raise MemoryError("the counting kernel could not allocate its histogram")
    counts.resize(distinct, refcheck=False)  # realloc: no copy
    return work[:distinct].astype(np.int64), counts


def add_duplicates(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct keys and the summed values of each (NumPy; keys in any order)."""
    order = np.argsort(keys, kind="stable")
    keys, values = keys[order], values[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    return keys[starts], np.add.reduceat(values, starts).astype(np.int64)


#: Most lists merged in one pass of the kernel (its head scan is linear in this).
MERGE_FAN_IN = 16


def _merge_pass(merge, runs: list) -> tuple[np.ndarray, np.ndarray]:
    """One kernel call merging up to `MERGE_FAN_IN` runs; output buffers shrunk in place."""
    total = sum(k.size for k, _ in runs)
    keys = np.empty(total, np.int64)
    values = np.empty(total, np.int64)
    key_pointers = (ctypes.c_void_p * len(runs))(*[k.ctypes.data for k, _ in runs])
    value_pointers = (ctypes.c_void_p * len(runs))(*[v.ctypes.data for _, v in runs])
    lengths = np.array([k.size for k, _ in runs], dtype=np.int64)
    length = merge(len(runs), key_pointers, value_pointers, lengths, keys, values)
    if length < 0:
        raise ValueError(f"the merge kernel takes at most 64 runs, got {len(runs)}")
    if length < total:  # realloc: no copy, and the unused tail goes back to the allocator
        keys.resize(length, refcheck=False)
        values.resize(length, refcheck=False)
    return keys, values


def merge_runs(key_runs: list, value_runs: list) -> tuple[np.ndarray, np.ndarray]:
    """Merge sorted lists of distinct int64 keys, adding the int64 values of equal keys.

    Parameters
    ----------
    key_runs, value_runs : list of ndarray
        One sorted list of distinct keys, and their values, per run.

    Returns
    -------
    (ndarray, ndarray)
        Sorted distinct keys and summed values (int64).
    """
    runs = [(np.ascontiguousarray(k, dtype=np.int64), np.ascontiguousarray(v, dtype=np.int64))
            for k, v in zip(key_runs, value_runs) if len(k)]
    if not runs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    merge = _merge_kernel()
    if merge is None:
        return add_duplicates(np.concatenate([k for k, _ in runs]),
                              np.concatenate([v for _, v in runs]))
    while len(runs) > 1:  # one pass when there are few runs; a tree of passes otherwise
        runs = [_merge_pass(merge, runs[i:i + MERGE_FAN_IN])
                for i in range(0, len(runs), MERGE_FAN_IN)]
    return runs[0]

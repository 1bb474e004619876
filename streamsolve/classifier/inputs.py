"""Inputs of the explicit softmax classifier: row blocks of X, checked; labels, checked.

X may be a numpy array (or anything ``np.asarray`` accepts), a scipy.sparse matrix/array, a
Dask array (one task per row block) or a Zarr array (read ``chunk_size`` rows at a time,
aligned to its chunks). X is never densified as a whole: `RowBlocks` hands out one row block
at a time, `to_float_block` converts it, `find_bad_values` counts the entries the explicit
solution cannot take (non-finite, negative) so that a call can refuse them with totals and
the first position. `map_reduce_rows` sums a per-block function over all blocks: a
sequential loop, or for Dask input one task per block and a tree reduction
(`streamsolve.engine.runtime.tree_reduce`) on the active scheduler. Labels ``y`` are read
whole (one value per sample) and checked by `check_labels` and `class_index`.
`count_block` is the map step of counting: the class and feature counts of one row block.

Nothing here imports Dask, Zarr or scikit-learn at import time.
"""

from __future__ import annotations

import dataclasses
import itertools
import numbers
import sys
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import scipy.sparse as sp

from ..engine.runtime import tree_reduce

#: Row blocks summed per node of the Dask tree reduction.
SPLIT_EVERY = 8


def _top_module(obj) -> str:
    return type(obj).__module__.split(".")[0]


def is_dask(X) -> bool:
    """True for a Dask array (checked by module name: Dask is never imported here)."""
    return _top_module(X) == "dask" and hasattr(X, "to_delayed")


def is_zarr(X) -> bool:
    """True for a Zarr array (checked by module name: Zarr is never imported here)."""
    return _top_module(X) == "zarr" and hasattr(X, "chunks")


class RowBlocks:
    """The rows of X, readable block by block without materialising X.

    numpy arrays and Zarr arrays are sliced ``chunk_size`` rows at a time (Zarr reads aligned
    to its row chunks); scipy.sparse input is converted to CSR once (no densification) and
    sliced; Dask arrays keep their own row blocks (columns are merged into one chunk). Other
    array-likes (lists, pandas frames) are converted with ``np.asarray``.

    Parameters
    ----------
    X : array-like, scipy.sparse, Dask or Zarr array of shape (n_samples, n_features)
    chunk_size : int
        Rows per block (numpy, sparse, Zarr input).
    caller : str
        ``Class.method`` named in error messages.
    """

    def __init__(self, X, chunk_size: int, caller: str):
        if X is None:
            raise ValueError(f"{caller} needs X, got None.")
        if sp.issparse(X):
            if X.format != "csr":
                X = X.tocsr()
            self.kind = "sparse"
        elif is_dask(X):
            self.kind = "dask"
        elif is_zarr(X) or isinstance(X, np.ndarray):
            self.kind = "sliced"
        else:
            X = np.asarray(X)
            self.kind = "sliced"
        if np.dtype(getattr(X, "dtype", np.float64)).kind == "c":
            raise ValueError(f"Complex data not supported by {caller}.")
        shape = tuple(X.shape)
        if len(shape) != 2:
            raise ValueError(
                f"Expected 2D array, got {len(shape)}D array instead (shape={shape}) in "
                f"{caller}. Reshape your data either using array.reshape(-1, 1) if your data "
                "has a single feature or array.reshape(1, -1) if it contains a single sample.")
        if self.kind == "dask":
            if any(np.isnan(c) for c in X.chunks[0]):
                raise ValueError(f"{caller}: the Dask array has unknown row-chunk sizes; "
                                 "call X.compute_chunk_sizes() first.")
            if len(X.chunks[1]) > 1:
                X = X.rechunk({1: -1})
        n, d = shape
        if n == 0:
            raise ValueError(f"Found array with 0 sample(s) (shape={shape}) while a minimum "
                             f"of 1 is required by {caller}.")
        if d == 0:
            raise ValueError(f"Found array with 0 feature(s) (shape={shape}) while a minimum "
                             f"of 1 is required by {caller}.")
        self.X, self.n_samples, self.n_features = X, n, d
        self.chunk_size = chunk_size
        self.caller = caller

    def spans(self) -> list[tuple[int, int]]:
        """(start, stop) of each row block."""
        if self.kind == "dask":
            edges = np.cumsum((0,) + tuple(int(c) for c in self.X.chunks[0]))
        else:
            step = self.chunk_size
            if self.kind == "sliced" and is_zarr(self.X):
                zrows = int(self.X.chunks[0])
                step = max(1, step // zrows) * zrows
            edges = list(range(0, self.n_samples, step)) + [self.n_samples]
        return [(int(a), int(b)) for a, b in itertools.pairwise(edges) if b > a]

    def raw_block(self, index: int, start: int, stop: int):
        """Rows start:stop, as stored (not yet converted or checked)."""
        if self.kind == "dask":
            return self.X.blocks[index].compute()
        return self.X[start:stop]

    def blocks(self) -> Iterator[tuple[int, object]]:
        """Yield (start, raw block) in row order, one block in memory at a time."""
        for index, (start, stop) in enumerate(self.spans()):
            yield start, self.raw_block(index, start, stop)


def to_float_block(raw, caller: str):
    """One raw block as float64 (dense ndarray or CSR); refuse complex and non-numbers."""
    if sp.issparse(raw):
        block = raw if raw.format == "csr" else raw.tocsr()
        if np.iscomplexobj(block.data):
            raise ValueError(f"Complex data not supported by {caller}.")
        if not block.has_canonical_format:        # duplicates summed: entries are values
            block = block.copy()
            block.sum_duplicates()
        return block.astype(np.float64) if block.dtype != np.float64 else block
    block = np.asarray(raw)
    if np.iscomplexobj(block):
        raise ValueError(f"Complex data not supported by {caller}.")
    return block.astype(np.float64, copy=False)


@dataclasses.dataclass
class BadValues:
    """How many non-finite and negative entries a set of rows holds, and where the first is.

    A monoid like the counts: ``a + b`` adds the numbers and keeps the first position."""

    n_nonfinite: int = 0
    first_nonfinite: tuple | None = None      # (row, col, value)
    n_negative: int = 0
    first_negative: tuple | None = None

    def __add__(self, other: BadValues) -> BadValues:
        def first(a, b):
            return a if b is None or (a is not None and a[:2] <= b[:2]) else b
        return BadValues(self.n_nonfinite + other.n_nonfinite,
                         first(self.first_nonfinite, other.first_nonfinite),
                         self.n_negative + other.n_negative,
                         first(self.first_negative, other.first_negative))

    def __bool__(self) -> bool:
        return bool(self.n_nonfinite or self.n_negative)

    def raise_if_any(self, caller: str) -> None:
        """Raise ValueError naming how many bad entries there are and where the first is."""
        if self.n_nonfinite:
            row, col, value = self.first_nonfinite
            raise ValueError(
                f"Input X contains NaN or infinity: {_entries(self.n_nonfinite)} not finite in "
                f"the data passed to {caller}; the first ({value}) at (row {row}, col {col}). "
                "Impute or drop those entries first.")
        if self.n_negative:
            row, col, value = self.first_negative
            raise ValueError(
                f"Negative values in data passed to {caller}: {_entries(self.n_negative)} "
                f"< 0, the first ({value}) at (row {row}, col {col}). The explicit solution "
                "needs features >= 0 (counts, intensities): shift or clip them, or split a "
                "signed feature into two non-negative columns.")


def _entries(n: int) -> str:
    return f"{n} entry" if n == 1 else f"{n} entries"


def find_bad_values(block, offset: int) -> BadValues:
    """Non-finite and negative entries of one float64 block, rows numbered from ``offset``.

    Sparse blocks must be canonical CSR (as `to_float_block` returns them), so that
    ``tocoo`` keeps the order of ``data``."""
    values = block.data if sp.issparse(block) else block
    finite = np.isfinite(values)
    negative = values < 0                                     # False for NaN
    n_nonfinite = int(values.size - np.count_nonzero(finite))
    n_negative = int(np.count_nonzero(negative))
    if not (n_nonfinite or n_negative):
        return BadValues()

    def first(mask):
        if not mask.any():
            return None
        if sp.issparse(block):
            coo = block.tocoo()
            rows, cols, vals = coo.row[mask.ravel()], coo.col[mask.ravel()], coo.data[mask.ravel()]
            k = np.lexsort((cols, rows))[0]
            return int(rows[k]) + offset, int(cols[k]), float(vals[k])
        row, col = np.argwhere(mask)[0]
        return int(row) + offset, int(col), float(block[row, col])

    return BadValues(n_nonfinite, first(~finite), n_negative, first(negative))


def map_reduce_rows(rows: RowBlocks, y_index: np.ndarray, block_fn: Callable):
    """``sum over row blocks of block_fn(raw block, y_block, offset)``.

    Parameters
    ----------
    rows : RowBlocks
    y_index : ndarray of shape (n_samples,)
        Class index of every sample (sliced along with the blocks).
    block_fn : callable
        ``block_fn(raw_block, y_block, first_row) -> value``; values must add (``a + b``).

    Returns
    -------
    The sum. Dask input: one task per row block and a tree reduction (parallel on the active
    Dask scheduler). Other input: a sequential loop, one block in memory at a time.
    """
    spans = rows.spans()
    if rows.kind == "dask":
        import dask
        blocks = rows.X.to_delayed().ravel()
        parts = [dask.delayed(block_fn)(blk, y_index[a:b], a)
                 for blk, (a, b) in zip(blocks, spans)]
        (total,) = dask.compute(tree_reduce(parts, _add_all, split_every=SPLIT_EVERY))
        return total
    total = None
    for index, (a, b) in enumerate(spans):
        part = block_fn(rows.raw_block(index, a, b), y_index[a:b], a)
        total = part if total is None else total + part
    return total


def _add_all(*parts):
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


# --------------------------------------------------------------------------------------
# Counting one row block: the sufficient statistics of DESIGN §2
# --------------------------------------------------------------------------------------

@dataclasses.dataclass
class BlockCounts:
    """Counts of a set of rows: a monoid (``a + b``), plus the bad values seen."""

    class_count: np.ndarray          # (M,) int64
    feature_count: np.ndarray        # (M, D) float64
    bad: BadValues

    def __add__(self, other: BlockCounts) -> BlockCounts:
        return BlockCounts(self.class_count + other.class_count,
                           self.feature_count + other.feature_count, self.bad + other.bad)


def count_block(raw, y_index: np.ndarray, n_classes: int, offset: int,
                caller: str) -> BlockCounts:
    """class_count[j] = #(y == j); feature_count[j, i] = sum of x_i over the rows with y == j."""
    block = to_float_block(raw, caller)
    bad = find_bad_values(block, offset)
    class_count = np.bincount(y_index, minlength=n_classes).astype(np.int64)
    if bad:                                   # counts are discarded: the call will raise
        return BlockCounts(class_count, np.zeros((n_classes, block.shape[1])), bad)
    onehot = np.zeros((len(y_index), n_classes))
    onehot[np.arange(len(y_index)), y_index] = 1.0
    if sp.issparse(block):
        feature_count = np.asarray((block.T @ onehot).T)
    else:
        feature_count = onehot.T @ block
    return BlockCounts(class_count, feature_count, bad)


# --------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------

def _data_conversion_warning():
    """scikit-learn's DataConversionWarning when sklearn is loaded (never imported here)."""
    exceptions = sys.modules.get("sklearn.exceptions")
    return getattr(exceptions, "DataConversionWarning", UserWarning)


def check_labels(y, n_samples: int, caller: str) -> np.ndarray:
    """y as a 1-D numpy array of class labels, with the usual refusals."""
    if y is None:
        raise ValueError(f"{caller} requires y to be passed, but the target y is None.")
    if is_dask(y):
        y = y.compute()
    elif is_zarr(y):
        y = y[...]
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        warnings.warn("A column-vector y was passed when a 1d array was expected. Please "
                      "change the shape of y to (n_samples,), for example using ravel().",
                      _data_conversion_warning(), stacklevel=3)
        y = y.ravel()
    if y.ndim != 1:
        raise ValueError(f"y should be a 1d array, got an array of shape {y.shape} instead.")
    if len(y) != n_samples:
        raise ValueError(f"{caller}: X has {n_samples} samples but y has {len(y)}; "
                         "they must have the same number of rows.")
    if y.dtype.kind == "c":
        raise ValueError("Unknown label type: complex. Class labels must be integers, "
                         "strings or integral floats.")
    if y.dtype.kind == "f" or y.dtype == object:
        numeric = y if y.dtype.kind == "f" else np.array(
            [v for v in y if isinstance(v, numbers.Real) and not isinstance(v, bool)],
            dtype=np.float64)
        if numeric.size and not np.isfinite(numeric).all():
            raise ValueError("Input y contains NaN or infinity.")
        if numeric.size and np.any(numeric != np.round(numeric)):
            raise ValueError(
                "Unknown label type: continuous. ExplicitSoftmaxClassifier is a classifier: "
                "y must hold class labels (integers, strings or integral floats).")
    return y


def class_index(y: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Positions of the labels y in the sorted ``classes``; refuse labels not in it."""
    index = np.searchsorted(classes, y)
    index = np.minimum(index, len(classes) - 1)
    unknown = classes[index] != y
    if np.any(unknown):
        new = np.unique(y[unknown])
        raise ValueError(
            f"y contains {len(new)} label(s) not among the declared classes "
            f"{classes.tolist()}: {new[:10].tolist()}. Declare every class in the first "
            "call: partial_fit(X, y, classes=all_classes).")
    return index.astype(np.intp)

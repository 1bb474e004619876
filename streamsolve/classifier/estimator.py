"""Explicit softmax classifier on positive-valued features (DESIGN §1-3).

`ExplicitSoftmaxClassifier` is a scikit-learn-style estimator for the single-layer model
``yhat(x) = softmax(x W + b)`` on features ``x >= 0`` (pixel intensities, counts). It is
trained without backpropagation, in two separate steps:

1. **count** (DESIGN §2): one streaming pass over row chunks accumulates the exact sufficient
   statistics ``class_count_[j] = n_j`` (int64) and ``feature_count_[j, i] = F[i, j] =
   sum_n x_{n,i} [y_n = j]`` (float64). Counts of two chunks add, so `partial_fit` over any
   chunking gives the counts of `fit` (bit for bit when the feature values are integers, or
   any values whose float64 sums are exact; otherwise up to float64 rounding of the sums).
2. **finalize** (DESIGN §3): the counts become explicit weights, in one of two forms
   (``coef_[j, i]`` is ``W[i, j]`` of DESIGN; class x feature, as in scikit-learn):

   - ``form="column"`` (multinomial naive Bayes): ``coef_[j, i] = log P(i | j)``,
     ``intercept_[j] = log p_j``. With additive smoothing this is exactly scikit-learn's
     ``MultinomialNB``.
   - ``form="row"``: ``coef_[j, i] = log P(j | i) - log pi_j``, ``intercept_[j] = log p_j``,
     where ``pi_j`` is class j's share of the feature mass (``sum_i F[i, j] / sum F``). By
     Bayes, ``log P(i | j) = log P(j | i) - log pi_j + log P(i)``, so unsmoothed it predicts
     exactly like the column form (pointwise mutual information plus the prior). For R
     one-hot blocks (every sample has mass ``sum_i x_i = R``, and ``pi = p``) the logits are
     DESIGN's ``sum_r log P_r(j | c_r) - (R - 1) log p_j``.

   Smoothing: ``"additive"`` (``alpha`` pseudo-counts) or ``"dirichlet"`` (strength ``mu``
   towards a background distribution: the feature totals for the column form, ``pi`` for the
   row form, so that an unseen feature carries no evidence).

Optional steps on top of the explicit weights: `calibrate` (a few convex scalars on a held-out
sample) and `refine` (full-batch L-BFGS passes, each a map-reduce of ``X^T (Yhat - Y)`` over
row chunks). The counts can be kept in a Zarr v3 store (`save_counts`) and re-finalized
without the data (`from_counts`).

Inputs: numpy arrays (and anything ``np.asarray`` accepts), scipy.sparse matrices/arrays,
Dask arrays (one task per row block; per-block counts are summed with a tree reduction on
whatever Dask scheduler is active) and Zarr arrays (read ``chunk_size`` rows at a time,
aligned to the Zarr chunks). X is never densified as a whole; labels ``y`` are read whole
(one value per sample).
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import json
import logging
import numbers
import sys
import warnings
from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp

from . import refine as _refine

logger = logging.getLogger(__name__)

FORMS = ("column", "row")
SMOOTHINGS = ("additive", "dirichlet")
STORE_FORMAT = "streamsolve.classifier.estimator-counts"
STORE_FORMAT_VERSION = 1
_NAME = "ExplicitSoftmaxClassifier"


class NotFittedError(ValueError, AttributeError):
    """The estimator has no weights yet: call `fit` or `partial_fit` first."""


def _not_fitted(message: str) -> NotFittedError:
    """A NotFittedError that is also scikit-learn's when sklearn is loaded (never imported)."""
    exceptions = sys.modules.get("sklearn.exceptions")
    if exceptions is None:
        return NotFittedError(message)
    both = type("NotFittedError", (NotFittedError, exceptions.NotFittedError),
                {"__module__": __name__})
    return both(message)


# --------------------------------------------------------------------------------------
# Input: row blocks of X, checked one at a time
# --------------------------------------------------------------------------------------

def _top_module(obj) -> str:
    return type(obj).__module__.split(".")[0]


def _is_dask(X) -> bool:
    return _top_module(X) == "dask" and hasattr(X, "to_delayed")


def _is_zarr(X) -> bool:
    return _top_module(X) == "zarr" and hasattr(X, "chunks")


class _Rows:
    """The rows of X, readable block by block without materialising X.

    numpy arrays and Zarr arrays are sliced ``chunk_size`` rows at a time (Zarr reads aligned
    to its row chunks); scipy.sparse input is converted to CSR once (no densification) and
    sliced; Dask arrays keep their own row blocks (columns are merged into one chunk). Other
    array-likes (lists, pandas frames) are converted with ``np.asarray``.
    """

    def __init__(self, X, chunk_size: int, caller: str):
        if X is None:
            raise ValueError(f"{caller} needs X, got None.")
        if sp.issparse(X):
            if X.format != "csr":
                X = X.tocsr()
            self.kind = "sparse"
        elif _is_dask(X):
            self.kind = "dask"
        elif _is_zarr(X) or isinstance(X, np.ndarray):
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
            if self.kind == "sliced" and _is_zarr(self.X):
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


def _to_float_block(raw, caller: str):
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
class _BadValues:
    """How many non-finite and negative entries a set of rows holds, and where the first is.

    A monoid like the counts: ``a + b`` adds the numbers and keeps the first position."""

    n_nonfinite: int = 0
    first_nonfinite: tuple | None = None      # (row, col, value)
    n_negative: int = 0
    first_negative: tuple | None = None

    def __add__(self, other: _BadValues) -> _BadValues:
        def first(a, b):
            return a if b is None or (a is not None and a[:2] <= b[:2]) else b
        return _BadValues(self.n_nonfinite + other.n_nonfinite,
                          first(self.first_nonfinite, other.first_nonfinite),
                          self.n_negative + other.n_negative,
                          first(self.first_negative, other.first_negative))

    def __bool__(self) -> bool:
        return bool(self.n_nonfinite or self.n_negative)

    def raise_if_any(self, caller: str) -> None:
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


def _bad_values(block, offset: int) -> _BadValues:
    """Non-finite and negative entries of one float64 block, rows numbered from ``offset``.

    Sparse blocks must be canonical CSR (as `_to_float_block` returns them), so that
    ``tocoo`` keeps the order of ``data``."""
    values = block.data if sp.issparse(block) else block
    finite = np.isfinite(values)
    negative = values < 0                                     # False for NaN
    n_nonfinite = int(values.size - np.count_nonzero(finite))
    n_negative = int(np.count_nonzero(negative))
    if not (n_nonfinite or n_negative):
        return _BadValues()

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

    return _BadValues(n_nonfinite, first(~finite), n_negative, first(negative))


# --------------------------------------------------------------------------------------
# Counting: the sufficient statistics of DESIGN §2, one row block at a time
# --------------------------------------------------------------------------------------

@dataclasses.dataclass
class _BlockCounts:
    """Counts of a set of rows: a monoid (``a + b``), plus the bad values seen."""

    class_count: np.ndarray          # (M,) int64
    feature_count: np.ndarray        # (M, D) float64
    bad: _BadValues

    def __add__(self, other: _BlockCounts) -> _BlockCounts:
        return _BlockCounts(self.class_count + other.class_count,
                            self.feature_count + other.feature_count, self.bad + other.bad)


def _count_block(raw, y_index: np.ndarray, n_classes: int, offset: int,
                 caller: str) -> _BlockCounts:
    """class_count[j] = #(y == j); feature_count[j, i] = sum of x_i over the rows with y == j."""
    block = _to_float_block(raw, caller)
    bad = _bad_values(block, offset)
    class_count = np.bincount(y_index, minlength=n_classes).astype(np.int64)
    if bad:                                   # counts are discarded: the call will raise
        return _BlockCounts(class_count, np.zeros((n_classes, block.shape[1])), bad)
    onehot = np.zeros((len(y_index), n_classes))
    onehot[np.arange(len(y_index)), y_index] = 1.0
    if sp.issparse(block):
        feature_count = np.asarray((block.T @ onehot).T)
    else:
        feature_count = onehot.T @ block
    return _BlockCounts(class_count, feature_count, bad)


def _tree_sum(items: list, split_every: int = 8):
    """Sum a list of Dask delayed values with a tree of ``split_every``-ary additions."""
    import dask

    def add_all(*parts):
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        return total

    while len(items) > 1:
        items = [dask.delayed(add_all)(*items[i:i + split_every])
                 for i in range(0, len(items), split_every)]
    return items[0]


def _map_reduce(rows: _Rows, y_index: np.ndarray, block_fn):
    """``sum over row blocks of block_fn(block, y_block, offset)``.

    Dask input: one task per row block and a tree reduction (parallel on the active Dask
    scheduler). Other input: a sequential loop, one block in memory at a time.
    """
    spans = rows.spans()
    if rows.kind == "dask":
        import dask
        blocks = rows.X.to_delayed().ravel()
        parts = [dask.delayed(block_fn)(blk, y_index[a:b], a)
                 for blk, (a, b) in zip(blocks, spans)]
        (total,) = dask.compute(_tree_sum(parts))
        return total
    total = None
    for index, (a, b) in enumerate(spans):
        part = block_fn(rows.raw_block(index, a, b), y_index[a:b], a)
        total = part if total is None else total + part
    return total


# --------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------

def _data_conversion_warning():
    """scikit-learn's DataConversionWarning when sklearn is loaded (never imported here)."""
    exceptions = sys.modules.get("sklearn.exceptions")
    return getattr(exceptions, "DataConversionWarning", UserWarning)


def _check_y(y, n_samples: int, caller: str) -> np.ndarray:
    """y as a 1-D numpy array of class labels, with the usual refusals."""
    if y is None:
        raise ValueError(f"{caller} requires y to be passed, but the target y is None.")
    if _is_dask(y):
        y = y.compute()
    elif _is_zarr(y):
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


def _class_index(y: np.ndarray, classes: np.ndarray) -> np.ndarray:
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


# --------------------------------------------------------------------------------------
# The estimator
# --------------------------------------------------------------------------------------

class ExplicitSoftmaxClassifier:
    """Softmax classifier on features >= 0 with explicit (closed-form) weights.

    Training counts, per class, the samples and the sums of each feature over them, in one
    streaming pass over row chunks, and turns the counts into the weights of a single softmax
    layer (the naive-Bayes factorisation of DESIGN §3). No gradient descent is involved unless
    `refine` is called.

    Parameters
    ----------
    form : {"column", "row"}, default="column"
        ``"column"``: ``coef_[j, i] = log P(i | j)`` (multinomial naive Bayes, equal to
        scikit-learn's ``MultinomialNB`` under additive smoothing). ``"row"``:
        ``coef_[j, i] = log P(j | i) - log pi_j`` (the published row form; ``pi_j`` is the
        class's share of the feature mass). Both use ``intercept_[j] = log p_j``.
    smoothing : {"additive", "dirichlet"}, default="additive"
        ``"additive"``: column ``P(i | j) = (F_ij + alpha) / (t_j + alpha D)``, row
        ``P(j | i) = (F_ij + alpha) / (f_i + alpha M)``. ``"dirichlet"``: column
        ``P(i | j) = (F_ij + mu q_i) / (t_j + mu)`` with ``q`` the feature totals smoothed by
        ``alpha``; row ``P(j | i) = (F_ij + mu pi_j) / (f_i + mu)``; ``pi`` is always smoothed
        additively: ``pi_j = (t_j + alpha) / (T + alpha M)``.
    alpha : float, default=1.0
        Additive pseudo-count (> 0; it also keeps the Dirichlet backgrounds strictly
        positive). ``alpha = 0`` is refused because
        ``0 * log 0`` would make logits NaN; use a tiny value such as 1e-10 instead.
    mu : float or None, default=None
        Dirichlet strength (> 0). None: the size of the smoothed distribution's support,
        ``n_features`` for the column form and ``n_classes`` for the row form.
    fit_prior : bool, default=True
        Learn the class prior ``p_j = n_j / N`` (as ``MultinomialNB``: a declared class with
        no sample gets ``log p_j = -inf`` and is never predicted). If False, it is uniform.
    class_prior : array-like of shape (n_classes,) or None, default=None
        Fixed class prior (overrides ``fit_prior``).
    chunk_size : int, default=4096
        Rows per block when streaming numpy, scipy.sparse or Zarr input (Dask input keeps its
        own row blocks).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Sorted class labels.
    n_features_in_ : int
        Number of features seen in training.
    class_count_ : ndarray of shape (n_classes,), int64
        Samples per class, ``n_j``.
    feature_count_ : ndarray of shape (n_classes, n_features), float64
        ``feature_count_[j, i] = sum_n x_{n,i} [y_n = j]`` (DESIGN's ``F[i, j]``).
    class_log_prior_ : ndarray of shape (n_classes,)
        ``log p_j``, the intercept of the explicit solution.
    feature_log_prob_ : ndarray of shape (n_classes, n_features)
        Column form only: ``log P(i | j)`` (as in ``MultinomialNB``).
    row_log_prob_ : ndarray of shape (n_classes, n_features)
        Row form only: ``row_log_prob_[j, i] = log P(j | i)``.
    class_mass_log_prob_ : ndarray of shape (n_classes,)
        Row form only: ``log pi_j``.
    coef_ : ndarray of shape (n_classes, n_features)
        Weights used for prediction (explicit, calibrated or refined): the transpose of
        DESIGN's ``W``.
    intercept_ : ndarray of shape (n_classes,)
        Biases used for prediction (DESIGN's ``b``).
    calibration_ : dict or None
        After `calibrate`: the fitted scalars and the loss before/after on the sample.
    refine_history_ : list of dict
        After `refine`: one entry per point evaluated (see `refine`).
    weights_source_ : str
        ``"explicit"``, ``"calibrated"`` or ``"refined"``.

    See Also
    --------
    sklearn.naive_bayes.MultinomialNB : the column form with additive smoothing.
    sklearn.linear_model.LogisticRegression : the optimum of the same model.

    Examples
    --------
    >>> import numpy as np
    >>> from streamsolve.classifier.estimator import ExplicitSoftmaxClassifier
    >>> X = np.array([[3, 0, 1], [2, 1, 0], [0, 4, 1], [0, 3, 2]])
    >>> y = np.array([0, 0, 1, 1])
    >>> clf = ExplicitSoftmaxClassifier(alpha=1.0).fit(X, y)
    >>> clf.predict(np.array([[1, 0, 0], [0, 2, 1]])).tolist()
    [0, 1]
    >>> clf.class_count_.tolist(), clf.feature_count_.tolist()
    ([2, 2], [[5.0, 1.0, 1.0], [0.0, 7.0, 3.0]])
    """

    _estimator_type = "classifier"

    def __init__(self, form="column", smoothing="additive", alpha=1.0, mu=None,
                 fit_prior=True, class_prior=None, chunk_size=4096):
        self.form = form
        self.smoothing = smoothing
        self.alpha = alpha
        self.mu = mu
        self.fit_prior = fit_prior
        self.class_prior = class_prior
        self.chunk_size = chunk_size

    # ---- scikit-learn protocol without importing scikit-learn --------------------------

    @classmethod
    def _param_names(cls) -> list[str]:
        signature = inspect.signature(cls.__init__)
        return sorted(p.name for p in signature.parameters.values()
                      if p.name != "self" and p.kind == p.POSITIONAL_OR_KEYWORD)

    def get_params(self, deep=True):
        """Get the hyper-parameters of this estimator.

        Parameters
        ----------
        deep : bool, default=True
            Unused (no sub-estimators); kept for scikit-learn compatibility.

        Returns
        -------
        dict
            Parameter names mapped to their values.
        """
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params):
        """Set hyper-parameters; they take effect at the next `fit` or `finalize`.

        Parameters
        ----------
        **params : dict
            Hyper-parameters by name.

        Returns
        -------
        self
        """
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"Invalid parameter {name!r} for estimator {_NAME}. "
                                 f"Valid parameters are: {valid}.")
            setattr(self, name, value)
        return self

    def __repr__(self):
        defaults = {p.name: p.default
                    for p in inspect.signature(type(self).__init__).parameters.values()}
        changed = []
        for name, value in self.get_params().items():
            default = defaults[name]
            same = value is default or (
                not isinstance(value, np.ndarray) and type(value) is type(default)
                and value == default)
            if not same:
                changed.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(changed)})"

    def __sklearn_tags__(self):
        """Estimator tags for scikit-learn (imported lazily: only sklearn calls this)."""
        from sklearn.utils import ClassifierTags, InputTags, Tags, TargetTags
        # poor_score: like MultinomialNB (which sets it too), naive Bayes does not reach the
        # suite's 0.83 training accuracy on its shifted Gaussian blobs.
        return Tags(estimator_type="classifier",
                    target_tags=TargetTags(required=True),
                    classifier_tags=ClassifierTags(multi_class=True, poor_score=True),
                    input_tags=InputTags(sparse=True, positive_only=True))

    def __sklearn_is_fitted__(self):
        return hasattr(self, "coef_")

    def _check_fitted(self, what: str):
        if not hasattr(self, "coef_"):
            raise _not_fitted(f"This {_NAME} instance is not fitted yet. Call 'fit' or "
                                 f"'partial_fit' with appropriate arguments before {what}.")

    def _validate_params(self):
        if self.form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {self.form!r}.")
        if self.smoothing not in SMOOTHINGS:
            raise ValueError(f"smoothing must be one of {SMOOTHINGS}, got {self.smoothing!r}.")
        if not isinstance(self.alpha, numbers.Real) or not self.alpha > 0:
            raise ValueError(f"alpha must be a number > 0, got {self.alpha!r} (alpha = 0 gives "
                             "log 0 weights and NaN logits; use e.g. 1e-10).")
        if self.mu is not None and (not isinstance(self.mu, numbers.Real) or not self.mu > 0):
            raise ValueError(f"mu must be None or a number > 0, got {self.mu!r}.")
        if (not isinstance(self.chunk_size, numbers.Integral) or isinstance(self.chunk_size, bool)
                or self.chunk_size < 1):
            raise ValueError(f"chunk_size must be an integer >= 1, got {self.chunk_size!r}.")

    # ---- counting ----------------------------------------------------------------------

    def fit(self, X, y):
        """Count X and y from scratch and finalize the explicit weights.

        Parameters
        ----------
        X : array-like, scipy.sparse, Dask or Zarr array of shape (n_samples, n_features)
            Features, all >= 0 and finite.
        y : array-like of shape (n_samples,)
            Class labels.

        Returns
        -------
        self
        """
        self._validate_params()
        rows = _Rows(X, self.chunk_size, f"{_NAME}.fit")
        y = _check_y(y, rows.n_samples, f"{_NAME}.fit")
        classes = np.unique(y)
        counts = self._count(rows, _class_index(y, classes), len(classes), "fit")
        for name in list(vars(self)):
            if name.endswith("_") and not name.startswith("__"):
                delattr(self, name)
        self.classes_ = classes
        self.n_features_in_ = rows.n_features
        self.class_count_ = counts.class_count
        self.feature_count_ = counts.feature_count
        return self.finalize()

    def partial_fit(self, X, y, classes=None):
        """Add the counts of one more batch and re-finalize the explicit weights.

        The counts add exactly, so any sequence of `partial_fit` calls over a split of the
        data gives the counts of one `fit`. Calibration and refinement are dropped (they
        were fitted to the previous weights).

        Parameters
        ----------
        X : array-like, scipy.sparse, Dask or Zarr array of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
        classes : array-like of shape (n_classes,), default=None
            All class labels; required on the first call, optional (and checked) later.

        Returns
        -------
        self
        """
        self._validate_params()
        caller = f"{_NAME}.partial_fit"
        first = not hasattr(self, "classes_")
        if first and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit.")
        if classes is not None:
            declared = np.unique(np.asarray(classes))
            if not first and not np.array_equal(declared, self.classes_):
                raise ValueError(f"`classes={declared.tolist()}` is not the same as on the first "
                                 f"call to partial_fit, which declared {self.classes_.tolist()}.")
        rows = _Rows(X, self.chunk_size, caller)
        if not first and rows.n_features != self.n_features_in_:
            raise ValueError(f"X has {rows.n_features} features, but {_NAME} is expecting "
                             f"{self.n_features_in_} features as input.")
        y = _check_y(y, rows.n_samples, caller)
        all_classes = declared if first else self.classes_
        counts = self._count(rows, _class_index(y, all_classes), len(all_classes), "partial_fit")
        if first:
            self.classes_ = all_classes
            self.n_features_in_ = rows.n_features
            self.class_count_ = counts.class_count
            self.feature_count_ = counts.feature_count
        else:
            self.class_count_ += counts.class_count
            self.feature_count_ += counts.feature_count
        return self.finalize()

    def _count(self, rows: _Rows, y_index: np.ndarray, n_classes: int, method: str):
        caller = f"{_NAME}.{method}"
        logger.debug("%s: counting %d x %d (%s input, %d row blocks)", caller,
                     rows.n_samples, rows.n_features, rows.kind, len(rows.spans()))

        def count(raw, y_block, offset):
            return _count_block(raw, y_block, n_classes, offset, caller)

        counts = _map_reduce(rows, y_index, count)
        counts.bad.raise_if_any(caller)     # nothing is committed before this point
        return counts

    # ---- finalize ----------------------------------------------------------------------

    def _log_prior(self):
        """log p_j: given ``class_prior``, uniform, or ``log(n_j / N)`` (-inf if n_j = 0)."""
        n_classes = len(self.classes_)
        if self.class_prior is not None:
            prior = np.asarray(self.class_prior, dtype=np.float64)
            if prior.shape != (n_classes,) or np.any(prior <= 0) or not np.isclose(prior.sum(), 1):
                raise ValueError(f"class_prior must be {n_classes} positive numbers summing to "
                                 f"1, got {self.class_prior!r}.")
            return np.log(prior)
        if not self.fit_prior:
            return np.full(n_classes, -np.log(n_classes))
        counts = self.class_count_.astype(np.float64)
        with np.errstate(divide="ignore"):
            return np.log(counts) - np.log(counts.sum())

    def finalize(self):
        """Turn the counts into explicit weights (DESIGN §3) with the current parameters.

        Called by `fit` and `partial_fit`; call it after `set_params` to re-smooth (e.g. a
        new ``alpha``) without recounting, or to drop calibration/refinement.

        Returns
        -------
        self
        """
        if not hasattr(self, "class_count_"):
            raise _not_fitted(f"This {_NAME} instance has no counts: call 'fit' or "
                                 "'partial_fit' first.")
        self._validate_params()
        F = self.feature_count_
        n_classes, n_features = F.shape
        log_prior = self._log_prior()
        alpha = float(self.alpha)
        for name in ("feature_log_prob_", "row_log_prob_", "class_mass_log_prob_"):
            if hasattr(self, name):
                delattr(self, name)
        if self.form == "column":
            if self.smoothing == "additive":
                smoothed = F + alpha
            else:
                mu = float(n_features if self.mu is None else self.mu)
                totals = F.sum(axis=0)
                background = (totals + alpha) / (totals.sum() + alpha * n_features)
                smoothed = F + mu * background
            self.feature_log_prob_ = (np.log(smoothed)
                                      - np.log(smoothed.sum(axis=1, keepdims=True)))
            self.class_log_prior_ = log_prior
            evidence = self.feature_log_prob_
            components = [(evidence, None), (None, log_prior)]
        else:
            totals = F.sum(axis=0)
            # pi_j: share of the feature mass in class j (the class marginal of P(i, j))
            mass = F.sum(axis=1)
            pi = (mass + alpha) / (mass.sum() + alpha * n_classes)
            if self.smoothing == "additive":
                row = np.log(F + alpha) - np.log(totals + alpha * n_classes)
            else:
                mu = float(n_classes if self.mu is None else self.mu)
                row = np.log(F + mu * pi[:, None]) - np.log(totals + mu)
            self.row_log_prob_ = row
            self.class_mass_log_prob_ = np.log(pi)
            self.class_log_prior_ = log_prior
            # logit_j = sum_i x_i (log P(j|i) - log pi_j) + log p_j
            mass_prior = np.broadcast_to(-self.class_mass_log_prob_[:, None], F.shape)
            components = [(row, None), (mass_prior, None), (None, log_prior)]
        self._components = components
        self.coef_, self.intercept_ = self._combine(np.ones(len(components)))
        self.calibration_ = None
        self.refine_history_ = []
        self.weights_source_ = "explicit"
        return self

    def _combine(self, theta):
        n_classes, n_features = self.feature_count_.shape
        coef, intercept = np.zeros((n_classes, n_features)), np.zeros(n_classes)
        for t, (matrix, vector) in zip(theta, self._components):
            if matrix is not None:
                coef += t * matrix
            if vector is not None:
                intercept = intercept + t * vector
        return coef, intercept

    # ---- prediction --------------------------------------------------------------------

    def _checked_blocks(self, X, method: str):
        """Yield (start, float64 block) of X, checked; raise with totals over all of X."""
        self._check_fitted(method)
        caller = f"{_NAME}.{method}"
        rows = _Rows(X, self.chunk_size, caller)
        if rows.n_features != self.n_features_in_:
            raise ValueError(f"X has {rows.n_features} features, but {_NAME} is expecting "
                             f"{self.n_features_in_} features as input.")
        bad = _BadValues()
        for start, raw in rows.blocks():
            block = _to_float_block(raw, caller)
            bad = bad + _bad_values(block, start)
            if not bad:
                yield start, block
        bad.raise_if_any(caller)

    def predict_log_proba(self, X):
        """Log-probabilities of the classes, ``log softmax(X coef_^T + intercept_)``.

        Parameters
        ----------
        X : array-like, scipy.sparse, Dask or Zarr array of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
        """
        parts = [_refine.log_softmax(_refine.block_logits(block, self.coef_, self.intercept_))
                 for _, block in self._checked_blocks(X, "predict_log_proba")]
        return np.concatenate(parts)

    def predict_proba(self, X):
        """Probabilities of the classes (rows sum to 1).

        Parameters
        ----------
        X : array-like, scipy.sparse, Dask or Zarr array of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
        """
        return np.exp(self.predict_log_proba(X))

    def predict(self, X):
        """Most probable class of each sample.

        Parameters
        ----------
        X : array-like, scipy.sparse, Dask or Zarr array of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        parts = [np.argmax(_refine.block_logits(block, self.coef_, self.intercept_), axis=1)
                 for _, block in self._checked_blocks(X, "predict")]
        return self.classes_[np.concatenate(parts)]

    def score(self, X, y):
        """Mean accuracy on (X, y).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)

        Returns
        -------
        float
        """
        predicted = self.predict(X)
        y = _check_y(y, len(predicted), f"{_NAME}.score")
        return float(np.mean(predicted == y))

    def log_loss(self, X, y):
        """Mean cross-entropy ``-mean_n log yhat_n[y_n]`` (nats) on (X, y).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
            Labels among ``classes_``.

        Returns
        -------
        float
        """
        log_proba = self.predict_log_proba(X)
        y = _check_y(y, len(log_proba), f"{_NAME}.log_loss")
        index = _class_index(y, self.classes_)
        return float(-log_proba[np.arange(len(index)), index].mean())

    # ---- calibration -------------------------------------------------------------------

    def calibrate(self, X, y):
        """Fit the logit scale and prior weight of the explicit solution on a held-out sample.

        The explicit logits are a sum of components, each scaled by one scalar ``theta_k``:
        column form ``theta_0 * x . log P(.|j) + theta_1 * log p_j`` (logit scale, prior
        weight); row form ``theta_0 * x . log P(j|.) - theta_1 * (sum_i x_i) log pi_j +
        theta_2 * log p_j`` (DESIGN's beta, and gamma split in two). ``theta = 1`` is the uncalibrated solution; the mean
        cross-entropy is convex in theta and is minimised by L-BFGS from ``theta = 1``; the
        result is kept only if it lowers the loss on this sample. Draw the sample uniformly
        from held-out data (DESIGN §3). Replaces any refinement.

        Parameters
        ----------
        X : array-like, scipy.sparse, Dask or Zarr array of shape (n_samples, n_features)
            Held-out features (not the training data).
        y : array-like of shape (n_samples,)
            Their labels, among ``classes_``.

        Returns
        -------
        self
        """
        self._check_fitted("calibrate")
        caller = f"{_NAME}.calibrate"
        intercept_ok = np.isfinite(self._combine(np.ones(len(self._components)))[1])
        parts = []
        for _, block in self._checked_blocks(X, "calibrate"):
            columns = []
            for matrix, vector in self._components:
                component = np.zeros((block.shape[0], len(self.classes_)))
                if matrix is not None:
                    component += np.asarray(block @ matrix.T)
                if vector is not None:
                    component += np.where(intercept_ok, vector, 0.0)
                columns.append(component)
            parts.append(np.stack(columns, axis=2))
        components = np.concatenate(parts)
        y = _check_y(y, len(components), caller)
        theta, before, after = _refine.fit_calibration(
            components, _class_index(y, self.classes_), dead=~intercept_ok)
        self.coef_, intercept = self._combine(theta)
        self.intercept_ = np.where(intercept_ok, intercept, -np.inf)
        self.calibration_ = {"theta": theta.tolist(), "loss_before": before,
                             "loss_after": after, "n_samples": len(components)}
        self.refine_history_ = []
        self.weights_source_ = "calibrated" if after < before else "explicit"
        logger.info("calibrated on %d samples: theta=%s, loss %.5f -> %.5f",
                    len(components), np.round(theta, 5).tolist(), before, after)
        return self

    # ---- refinement --------------------------------------------------------------------

    def refine(self, X, y, passes=10, init="current", l2=0.0, X_val=None, y_val=None,
               early_stopping=False, random_state=None):
        """Improve the weights by full-batch L-BFGS passes over row chunks of (X, y).

        Objective: mean cross-entropy ``-1/N sum_n log yhat_n[y_n] + l2/2 ||coef||^2``. One
        **pass** is one evaluation of the objective and its gradient over all of (X, y): a
        map-reduce of ``X_b^T (Yhat_b - Y_b)`` over the row blocks (parallel for Dask input).
        ``refine(passes=k)`` makes at most ``k + 1`` evaluations: the first at the start
        point, then one at each point L-BFGS proposes; evaluation ``j + 1`` measures the
        point produced by ``j`` gradient passes. So ``refine_history_[j]`` ("after j
        passes") is that point, for j = 0..k. The weights kept are those of the entry with the
        lowest training objective (lowest validation loss if ``early_stopping`` and
        validation data are given). Counts are untouched: `finalize` restores the explicit
        weights.

        Parameters
        ----------
        X : array-like, scipy.sparse, Dask or Zarr array of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
            Labels among ``classes_``.
        passes : int, default=10
            Gradient passes (>= 0).
        init : {"current", "explicit", "zeros", "random"} or (coef, intercept), default="current"
            Start point: the current weights (explicit or calibrated), the uncalibrated
            explicit weights, zeros, small random normal weights, or given arrays.
        l2 : float, default=0.0
            L2 penalty on ``coef`` (not on the intercept).
        X_val, y_val : optional held-out data
            If given, each history entry also holds ``val_loss`` and ``val_accuracy`` (an
            extra evaluation pass over them, not counted in ``passes``).
        early_stopping : bool, default=False
            Keep the entry with the lowest ``val_loss`` instead of the lowest objective.
        random_state : int or None
            Seed for ``init="random"``.

        Returns
        -------
        self
        """
        self._check_fitted("refine")
        caller = f"{_NAME}.refine"
        if not isinstance(passes, numbers.Integral) or passes < 0:
            raise ValueError(f"passes must be an integer >= 0, got {passes!r}.")
        if early_stopping and X_val is None:
            raise ValueError("early_stopping=True needs validation data X_val, y_val.")
        n_classes, n_features = len(self.classes_), self.n_features_in_
        coef0, intercept0 = self._start_point(init, random_state)
        floor = np.min(intercept0[np.isfinite(intercept0)], initial=0.0) - 50.0
        intercept0 = np.where(np.isfinite(intercept0), intercept0, floor)
        rows = _Rows(X, self.chunk_size, caller)
        if rows.n_features != n_features:
            raise ValueError(f"X has {rows.n_features} features, but {_NAME} is expecting "
                             f"{n_features} features as input.")
        y_index = _class_index(_check_y(y, rows.n_samples, caller), self.classes_)
        if X_val is not None:
            val_rows = _Rows(X_val, self.chunk_size, caller)
            y_val_index = _class_index(_check_y(y_val, val_rows.n_samples, caller),
                                       self.classes_)

        def split(theta):
            return (theta[:n_classes * n_features].reshape(n_classes, n_features),
                    theta[n_classes * n_features:])

        def loss_grad_block(raw, y_block, offset):
            block = _to_float_block(raw, caller)
            bad = _bad_values(block, offset)
            bad.raise_if_any(caller)
            return _refine.block_loss_grad(block, y_block, *current)

        history, best = [], {}

        def evaluate(theta):
            nonlocal current
            current = split(theta)
            total = _map_reduce(rows, y_index, loss_grad_block)
            coef, intercept = current
            n = total.n_samples
            objective = total.loss / n + 0.5 * l2 * float(np.sum(coef * coef))
            grad = np.concatenate([(total.grad_coef / n + l2 * coef).ravel(),
                                   total.grad_intercept / n])
            entry = {"pass": len(history), "objective": objective, "loss": total.loss / n,
                     "accuracy": total.n_correct / n}
            if X_val is not None:
                val = _map_reduce(val_rows, y_val_index, loss_grad_block)
                entry.update(val_loss=val.loss / val.n_samples,
                             val_accuracy=val.n_correct / val.n_samples)
            history.append(entry)
            key = entry["val_loss"] if early_stopping else objective
            if not best or key < best["key"]:
                best.update(key=key, coef=coef.copy(), intercept=intercept.copy(),
                            entry=entry["pass"])
            logger.info("refine pass %d: objective %.6f, accuracy %.4f%s", entry["pass"],
                        objective, entry["accuracy"],
                        f", val loss {entry['val_loss']:.6f}" if X_val is not None else "")
            return objective, grad

        current = (coef0, intercept0)
        theta0 = np.concatenate([coef0.ravel(), intercept0])
        _refine.minimize_in_passes(evaluate, theta0, passes + 1)
        for entry in history:
            entry["kept"] = entry["pass"] == best["entry"]
        self.coef_, self.intercept_ = best["coef"], best["intercept"]
        self.refine_history_ = history
        self.weights_source_ = "refined"
        return self

    def _start_point(self, init, random_state):
        shape = (len(self.classes_), self.n_features_in_)
        if isinstance(init, str):
            if init == "current":
                return self.coef_.copy(), self.intercept_.copy()
            if init == "explicit":
                return self._combine(np.ones(len(self._components)))
            if init == "zeros":
                return np.zeros(shape), np.zeros(shape[0])
            if init == "random":
                rng = np.random.default_rng(random_state)
                return 0.01 * rng.standard_normal(shape), np.zeros(shape[0])
            raise ValueError(f"init must be 'current', 'explicit', 'zeros', 'random' or a "
                             f"(coef, intercept) pair, got {init!r}.")
        coef, intercept = (np.array(a, dtype=np.float64) for a in init)
        if coef.shape != shape or intercept.shape != (shape[0],):
            raise ValueError(f"init arrays must have shapes {shape} and ({shape[0]},), got "
                             f"{coef.shape} and {intercept.shape}.")
        return coef, intercept

    # ---- Zarr count store --------------------------------------------------------------

    def save_counts(self, store, *, storage_options=None, overwrite=False):
        """Write the counts, classes and parameters to a Zarr v3 group (no pickle).

        Parameters
        ----------
        store : str, pathlib.Path or zarr store
            Local path or fsspec URL (e.g. ``"s3://bucket/counts.zarr"``) of the group.
        storage_options : dict, optional
            Passed to fsspec for URLs.
        overwrite : bool, default=False
            Replace an existing group; otherwise an existing group is an error.

        Returns
        -------
        zarr.Group
            The written group.
        """
        self._check_fitted("save_counts")
        classes = self.classes_.tolist()
        params = self.get_params()
        if isinstance(params["class_prior"], np.ndarray):
            params["class_prior"] = params["class_prior"].tolist()
        try:
            json.dumps(classes)
            json.dumps(params)
        except TypeError as exc:
            raise ValueError("save_counts needs JSON-serialisable class labels and parameters "
                             f"(int, float, str, bool): {exc}") from None
        group = _open_group(store, "w" if overwrite else "w-", storage_options)
        group.create_array("class_count", data=self.class_count_,
                           chunks=self.class_count_.shape)
        n_classes, n_features = self.feature_count_.shape
        group.create_array("feature_count", data=self.feature_count_,
                           chunks=(n_classes, min(n_features, 1 << 16)))
        group.attrs.update({
            "format": STORE_FORMAT, "format_version": STORE_FORMAT_VERSION,
            "estimator": _NAME, "classes": classes, "classes_dtype": self.classes_.dtype.str,
            "n_features_in": int(self.n_features_in_), "params": params,
            "versions": _versions()})
        logger.info("saved counts (%d classes x %d features) to %s", n_classes, n_features,
                    store)
        return group

    @classmethod
    def from_counts(cls, store, *, storage_options=None, **params):
        """Rebuild a fitted estimator from count store(s), without the data.

        Parameters
        ----------
        store : str, pathlib.Path, zarr store, or a list of them
            Group(s) written by `save_counts`. Several stores (e.g. one per shard or worker)
            are summed; they must declare the same classes and number of features.
        storage_options : dict, optional
            Passed to fsspec for URLs.
        **params
            Hyper-parameters overriding the stored ones (e.g. another ``alpha`` or ``form``).

        Returns
        -------
        ExplicitSoftmaxClassifier
            Finalized from the (summed) counts.
        """
        stores = list(store) if isinstance(store, (list, tuple)) else [store]
        if not stores:
            raise ValueError("from_counts needs at least one store.")
        estimator = None
        for location in stores:
            group = _open_group(location, "r", storage_options)
            attrs = dict(group.attrs)
            if attrs.get("format") != STORE_FORMAT:
                raise ValueError(f"{location} is not a {_NAME} count store (format attribute "
                                 f"{attrs.get('format')!r}, expected {STORE_FORMAT!r}).")
            if attrs.get("format_version", 0) > STORE_FORMAT_VERSION:
                raise ValueError(f"{location} has count-store format version "
                                 f"{attrs['format_version']}; this streamsolve reads up to "
                                 f"{STORE_FORMAT_VERSION}. Upgrade streamsolve.")
            classes = np.asarray(attrs["classes"], dtype=np.dtype(attrs["classes_dtype"]))
            class_count = np.asarray(group["class_count"][...], dtype=np.int64)
            feature_count = np.asarray(group["feature_count"][...], dtype=np.float64)
            if estimator is None:
                estimator = cls(**{**attrs["params"], **params})
                estimator.classes_ = classes
                estimator.n_features_in_ = int(attrs["n_features_in"])
                estimator.class_count_ = class_count
                estimator.feature_count_ = feature_count
                continue
            if (not np.array_equal(classes, estimator.classes_)
                    or feature_count.shape != estimator.feature_count_.shape):
                raise ValueError(
                    f"{location} holds classes {classes.tolist()} x {feature_count.shape[1]} "
                    f"features, the first store {estimator.classes_.tolist()} x "
                    f"{estimator.n_features_in_}: count stores add only when every shard "
                    "declared the same classes (partial_fit(..., classes=all_classes)).")
            estimator.class_count_ = estimator.class_count_ + class_count
            estimator.feature_count_ = estimator.feature_count_ + feature_count
        return estimator.finalize()


def _open_group(store, mode: str, storage_options):
    import zarr
    kwargs = {} if storage_options is None else {"storage_options": storage_options}
    try:
        return zarr.open_group(store=store, mode=mode, zarr_format=3, **kwargs)
    except FileNotFoundError:
        raise FileNotFoundError(f"no Zarr count store at {store}") from None
    except FileExistsError:
        raise FileExistsError(f"{store} already exists; pass overwrite=True to replace "
                              "it.") from None


def _versions() -> dict:
    from importlib import metadata
    versions = {}
    for package in ("streamsolve", "numpy", "scipy", "zarr"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:          # e.g. a source checkout
            module = sys.modules.get(package)
            versions[package] = getattr(module, "__version__", "unknown")
    return versions

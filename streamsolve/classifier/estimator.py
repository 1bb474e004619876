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
   row form, so that an unseen feature carries no evidence). No Kneser–Ney (the LM default): it
   discounts integer counts from counts-of-counts, but features are real-valued (tf-idf); its
   continuation counts have no analogue for classes; naive Bayes' native form is the column form.

   The formulas are the language model's (`streamsolve.core.smoothing.block_weights`, on
   ``feature_count_`` transposed). Counting and smoothing are separate, as in scikit-learn's
   naive Bayes: `partial_fit` only adds counts; the weights are computed on first use with
   the parameters current then, cached, and dropped by the next `fit` or `partial_fit`.

Optional steps on top of the explicit weights: `calibrate` (a few convex scalars on a held-out
sample, `streamsolve.core.calibration`, shared with the language model) and `refine`
(full-batch L-BFGS passes, each a map-reduce of ``X^T (Yhat - Y)`` over row chunks,
`streamsolve.classifier.refine`). The counts can be kept in a Zarr v3 store (`save_counts`,
`streamsolve.classifier.store`) and re-finalized without the data (`from_counts`).

Inputs (`streamsolve.classifier.inputs`): numpy arrays (and anything ``np.asarray``
accepts), scipy.sparse matrices/arrays, Dask arrays (one task per row block, summed with a
tree reduction on the active Dask scheduler) and Zarr arrays (read ``chunk_size`` rows at a
time). X is never densified as a whole; labels ``y`` are read whole.
"""

from __future__ import annotations

import logging
import numbers

import numpy as np

from ..core.smoothing import is_strength
from . import refine as _refine, torch_bridge as _torch_bridge
from .inputs import (BadValues, RowBlocks, check_labels, class_index, count_block,
                     find_bad_values, map_reduce_rows, to_float_block)
from .sklearn_protocol import EstimatorProtocol, NotFittedError, not_fitted
from .weights import (ClassifierWeights, WeightsCache, check_class_prior, explicit_weights,
                      fitted_log_prob, log_prior, weights_field)

logger = logging.getLogger(__name__)

FORMS = ("column", "row")
SMOOTHINGS = ("additive", "dirichlet")
_NAME = "ExplicitSoftmaxClassifier"

__all__ = ["ExplicitSoftmaxClassifier", "NotFittedError"]


class ExplicitSoftmaxClassifier(EstimatorProtocol):
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
        positive). ``alpha = 0`` is refused (``0 * log 0`` makes logits NaN): use e.g. 1e-10.
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
        return hasattr(self, "class_count_")

    def _check_fitted(self, what: str):
        if not hasattr(self, "class_count_"):
            raise not_fitted(f"This {_NAME} instance is not fitted yet. Call 'fit' or "
                              f"'partial_fit' with appropriate arguments before {what}.")

    def _validate_params(self):
        if self.form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {self.form!r}.")
        if self.smoothing not in SMOOTHINGS:
            raise ValueError(f"smoothing must be one of {SMOOTHINGS}, got {self.smoothing!r}.")
        if not is_strength(self.alpha):
            raise ValueError(f"alpha must be a number > 0, got {self.alpha!r} (alpha = 0 gives "
                             "log 0 weights and NaN logits; use e.g. 1e-10).")
        if self.mu is not None and not is_strength(self.mu):
            raise ValueError(f"mu must be None or a number > 0, got {self.mu!r}.")
        if (not isinstance(self.chunk_size, numbers.Integral) or isinstance(self.chunk_size, bool)
                or self.chunk_size < 1):
            raise ValueError(f"chunk_size must be an integer >= 1, got {self.chunk_size!r}.")

    # ---- counting ----------------------------------------------------------------------

    def fit(self, X, y):
        """Count X and y from scratch (the weights follow on first use).

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
        rows = RowBlocks(X, self.chunk_size, f"{_NAME}.fit")
        y = check_labels(y, rows.n_samples, f"{_NAME}.fit")
        classes = np.unique(y)
        check_class_prior(self.class_prior, len(classes))      # before counting: refuse early
        counts = self._count(rows, class_index(y, classes), len(classes), "fit")
        for name in list(vars(self)):
            if name.endswith("_") and not name.startswith("__"):
                delattr(self, name)
        self._set_counts(classes, rows.n_features, counts.class_count, counts.feature_count)
        return self

    def partial_fit(self, X, y, classes=None):
        """Add the counts of one more batch (the weights follow on first use).

        The counts add exactly, so any sequence of `partial_fit` calls over a split of the
        data gives the counts of one `fit`. Weights computed earlier, calibration and
        refinement are dropped (they belonged to the previous counts).

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
        rows = RowBlocks(X, self.chunk_size, caller) if first else self._rows(X, caller)
        y = check_labels(y, rows.n_samples, caller)
        all_classes = declared if first else self.classes_
        check_class_prior(self.class_prior, len(all_classes))
        counts = self._count(rows, class_index(y, all_classes), len(all_classes), "partial_fit")
        if first:
            self._set_counts(all_classes, rows.n_features, counts.class_count,
                             counts.feature_count)
        else:
            self.class_count_ += counts.class_count
            self.feature_count_ += counts.feature_count
            self._cache = WeightsCache()
        return self

    def _set_counts(self, classes, n_features, class_count, feature_count):
        self.classes_ = classes
        self.n_features_in_ = int(n_features)
        self.class_count_ = class_count
        self.feature_count_ = feature_count
        self._cache = WeightsCache()

    def _count(self, rows: RowBlocks, y_index: np.ndarray, n_classes: int, method: str):
        caller = f"{_NAME}.{method}"
        logger.debug("%s: counting %d x %d (%s input, %d row blocks)", caller,
                     rows.n_samples, rows.n_features, rows.kind, len(rows.spans()))

        def count(raw, y_block, offset):
            return count_block(raw, y_block, n_classes, offset, caller)

        counts = map_reduce_rows(rows, y_index, count)
        counts.bad.raise_if_any(caller)     # nothing is committed before this point
        return counts

    # ---- finalize ----------------------------------------------------------------------

    def finalize(self):
        """Turn the counts into explicit weights (DESIGN §3) now, with the current parameters.

        Weights are otherwise computed on first use after `fit` or `partial_fit`; call this
        after `set_params` to re-smooth (e.g. a new ``alpha``) without recounting, or to drop
        calibration/refinement.

        Returns
        -------
        self
        """
        if not hasattr(self, "class_count_"):
            raise not_fitted(f"This {_NAME} instance has no counts: call 'fit' or "
                              "'partial_fit' first.")
        self._validate_params()
        prior = log_prior(self.class_count_, self.class_prior, self.fit_prior)
        cache = self.__dict__.setdefault("_cache", WeightsCache())
        cache.weights = explicit_weights(self.feature_count_, prior, self.form, self.smoothing,
                                         float(self.alpha), self.mu)
        return self

    def _weights(self) -> ClassifierWeights:
        """The current weights, finalized from the counts on first use."""
        self._check_fitted("using its weights")
        cache = self.__dict__.get("_cache")
        if cache is None or cache.weights is None:
            self.finalize()
        return self._cache.weights

    coef_ = weights_field("coef", "Weights used for prediction, (n_classes, n_features).")
    intercept_ = weights_field("intercept", "Biases used for prediction, (n_classes,).")
    calibration_ = weights_field("calibration", "Result of `calibrate`, or None.")
    refine_history_ = weights_field("refine_history", "History of `refine` (list of dict).")
    weights_source_ = weights_field("source", '"explicit", "calibrated" or "refined".')
    class_log_prior_ = fitted_log_prob("class_log_prior_", "log p_j, (n_classes,).")
    feature_log_prob_ = fitted_log_prob("feature_log_prob_", "Column form: log P(i | j).")
    row_log_prob_ = fitted_log_prob("row_log_prob_", "Row form: log P(j | i), class x feature.")
    class_mass_log_prob_ = fitted_log_prob("class_mass_log_prob_", "Row form: log pi_j.")

    # ---- prediction --------------------------------------------------------------------

    def _rows(self, X, caller: str) -> RowBlocks:
        """Row blocks of X, which must have the features seen in training."""
        rows = RowBlocks(X, self.chunk_size, caller)
        if rows.n_features != self.n_features_in_:
            raise ValueError(f"X has {rows.n_features} features, but {_NAME} is expecting "
                             f"{self.n_features_in_} features as input.")
        return rows

    def _checked_blocks(self, X, method: str):
        """Yield (start, float64 block) of X, checked; raise with totals over all of X."""
        self._check_fitted(method)
        caller = f"{_NAME}.{method}"
        rows = self._rows(X, caller)
        bad = BadValues()
        for start, raw in rows.blocks():
            block = to_float_block(raw, caller)
            bad = bad + find_bad_values(block, start)
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
        y = check_labels(y, len(predicted), f"{_NAME}.score")
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
        y = check_labels(y, len(log_proba), f"{_NAME}.log_loss")
        index = class_index(y, self.classes_)
        return float(-log_proba[np.arange(len(index)), index].mean())

    # ---- calibration -------------------------------------------------------------------

    def calibrate(self, X, y):
        """Fit the logit scale and prior weight of the explicit solution on a held-out sample.

        The explicit logits are a sum of components, each scaled by one scalar ``theta_k``:
        column form ``theta_0 * x . log P(.|j) + theta_1 * log p_j`` (logit scale, prior
        weight); row form ``theta_0 * x . log P(j|.) - theta_1 * (sum_i x_i) log pi_j +
        theta_2 * log p_j`` (DESIGN's beta, and gamma split in two). ``theta = 1`` is the
        uncalibrated solution; the mean cross-entropy is convex in theta and is minimised by
        L-BFGS from ``theta = 1`` (`streamsolve.core.calibration.fit_calibration`, the
        language model's fit); the result is kept only if it does not raise the loss on this
        sample. Draw the sample uniformly from held-out data (DESIGN §3). Replaces any
        refinement.

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
        weights = self._weights()
        components = [np.stack([np.asarray(block @ matrix.T) for matrix in weights.matrices])
                      for _, block in self._checked_blocks(X, "calibrate")]
        components = np.concatenate(components, axis=1)
        n_samples = components.shape[1]
        y_index = class_index(check_labels(y, n_samples, caller), self.classes_)
        self._cache.weights = calibrated = weights.calibrated(components, y_index)
        theta, fit = calibrated.calibration["theta"], calibrated.calibration
        logger.info("calibrated on %d samples: theta=%s, loss %.5f -> %.5f", n_samples,
                    np.round(theta, 5).tolist(), fit["loss_before"], fit["loss_after"])
        return self

    # ---- refinement --------------------------------------------------------------------

    def refine(self, X, y, passes=10, init="auto", l2="auto", X_val=None, y_val=None,
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
        init : {"auto", "current", "explicit", "zeros", "random"} or (coef, intercept), default="auto"
            Start point: the current weights, the minimum-norm explicit weights
            (calibrated if `calibrate` ran; DESIGN 3b), zeros, small random weights, or arrays.
            ``"auto"`` starts from the minimum-norm explicit weights unless the weights in use
            were already refined (then it continues from them): the raw explicit weights carry
            a per-feature offset that predicts nothing but that the L2 penalty pays for.
        l2 : float or "auto", default="auto"
            L2 penalty on ``coef`` (not the intercept). LogisticRegression minimises ``C sum_n
            loss_n + ||coef||^2 / 2``: this objective with ``l2 = 1 / (C N)`` (N training
            samples), the same optimum. "auto" is ``1 / N``, LogisticRegression's default C = 1.
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
        weights, l2 = self._weights(), _refine.resolve_l2(l2, self._rows(X, caller).n_samples)
        coef0, intercept0 = _refine.start_point(
            init, (weights.coef, weights.intercept), weights.explicit_point(), random_state,
            source=weights.source)
        floor = np.min(intercept0[np.isfinite(intercept0)], initial=0.0) - 50.0
        intercept0 = np.where(np.isfinite(intercept0), intercept0, floor)
        train_pass = self._loss_grad_pass(X, y, caller)
        val_pass = None if X_val is None else self._loss_grad_pass(X_val, y_val, caller)
        coef, intercept, history = _refine.refine_weights(
            train_pass, coef0, intercept0, passes, l2, val_pass, early_stopping)
        weights.coef, weights.intercept = coef, intercept
        weights.refine_history = history
        weights.source = "refined"
        return self

    def _loss_grad_pass(self, X, y, caller: str):
        """``(coef, intercept) -> LossGrad`` summed over the row blocks of (X, y)."""
        rows = self._rows(X, caller)
        y_index = class_index(check_labels(y, rows.n_samples, caller), self.classes_)

        def one_pass(coef, intercept):
            def loss_grad_block(raw, y_block, offset):
                block = to_float_block(raw, caller)
                find_bad_values(block, offset).raise_if_any(caller)
                return _refine.block_loss_grad(block, y_block, coef, intercept)
            return map_reduce_rows(rows, y_index, loss_grad_block)

        return one_pass

    to_torch = _torch_bridge.to_torch

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
        from .store import StoredCounts, write_counts

        self._check_fitted("save_counts")
        counts = StoredCounts(self.classes_, self.n_features_in_, self.class_count_,
                              self.feature_count_, self.get_params())
        return write_counts(store, counts, storage_options=storage_options, overwrite=overwrite)

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
        from .store import read_counts

        counts = read_counts(store, storage_options)
        estimator = cls(**{**counts.params, **params})
        estimator._set_counts(counts.classes, counts.n_features_in, counts.class_count,
                              counts.feature_count)
        return estimator

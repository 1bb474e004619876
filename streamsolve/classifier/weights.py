"""The classifier's weights: counts to explicit weights, cached until the counts change.

`explicit_weights` turns the counts into DESIGN §3's explicit solution with the formulas
shared with the language model (`streamsolve.core.smoothing.block_weights`). The result,
`ClassifierWeights`, keeps the logit components so that calibration can rescale them, and
the weights in use (explicit, calibrated or refined). `WeightsCache` holds it: the estimator
fills the cache on first use and replaces it by an empty one when its counts change, as
scikit-learn's naive Bayes separates counting from smoothing.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse as sp

from ..core.calibration import fit_calibration
from ..core.smoothing import block_weights, smoothed_unigram


def check_class_prior(class_prior, n_classes: int) -> np.ndarray | None:
    """``class_prior`` as float64, refused unless it is n_classes positive numbers summing to 1."""
    if class_prior is None:
        return None
    prior = np.asarray(class_prior, dtype=np.float64)
    if prior.shape != (n_classes,) or np.any(prior <= 0) or not np.isclose(prior.sum(), 1):
        raise ValueError(f"class_prior must be {n_classes} positive numbers summing to "
                         f"1, got {class_prior!r}.")
    return prior


def log_prior(class_count: np.ndarray, class_prior=None, fit_prior: bool = True) -> np.ndarray:
    """log p_j: given ``class_prior``, uniform, or ``log(n_j / N)`` (-inf if n_j = 0).

    Parameters
    ----------
    class_count : ndarray of shape (n_classes,)
        Samples per class.
    class_prior : array-like of shape (n_classes,), optional
        Fixed prior (overrides ``fit_prior``).
    fit_prior : bool
        Learn the prior from the counts; if False it is uniform.
    """
    n_classes = len(class_count)
    prior = check_class_prior(class_prior, n_classes)
    if prior is not None:
        return np.log(prior)
    if not fit_prior:
        return np.full(n_classes, -np.log(n_classes))
    counts = class_count.astype(np.float64)
    with np.errstate(divide="ignore"):
        return np.log(counts) - np.log(counts.sum())


@dataclasses.dataclass
class ClassifierWeights:
    """Weights derived from the counts: explicit, then possibly calibrated or refined.

    The explicit logits are ``sum_k theta_k (x . matrices[k][j]) + sum_l theta_{K+l}
    vectors[l][j]`` at ``theta = 1``; calibration fits theta (`combine`)."""

    log_probs: dict                  # fitted attribute name -> array
    matrices: list                   # per-sample components, (M, D) each
    vectors: list                    # per-class components, (M,) each
    coef: np.ndarray = None
    intercept: np.ndarray = None
    calibration: dict | None = None
    refine_history: list = dataclasses.field(default_factory=list)
    source: str = "explicit"

    def __post_init__(self):
        if self.coef is None:
            self.coef, self.intercept = self.combine(np.ones(self.n_components))

    @property
    def n_components(self) -> int:
        """Number of calibration scalars: matrices, then vectors."""
        return len(self.matrices) + len(self.vectors)

    def combine(self, theta) -> tuple[np.ndarray, np.ndarray]:
        """``(coef, intercept)`` for the scalars theta (matrices first, then vectors)."""
        coef, intercept = np.zeros(self.matrices[0].shape), np.zeros(len(self.vectors[0]))
        for t, matrix in zip(theta, self.matrices):
            coef += t * matrix
        for t, vector in zip(theta[len(self.matrices):], self.vectors):
            intercept = intercept + t * vector
        return coef, intercept

    def explicit_point(self) -> tuple[np.ndarray, np.ndarray]:
        """``(coef, intercept)`` of the explicit weights, with the calibration scalars if any."""
        theta = (self.calibration["theta"] if self.calibration is not None
                 else np.ones(self.n_components))
        coef, intercept = self.combine(np.asarray(theta, dtype=np.float64))
        finite = np.isfinite(self.combine(np.ones(self.n_components))[1])
        return coef, np.where(finite, intercept, -np.inf)

    def calibrated(self, sample_components: np.ndarray, y_index: np.ndarray,
                   max_iter: int = 200) -> ClassifierWeights:
        """New weights with the explicit components rescaled by the scalars fitted on a sample.

        Parameters
        ----------
        sample_components : ndarray of shape (len(matrices), n_samples, n_classes)
            ``X @ matrix.T`` for each matrix, on the calibration sample.
        y_index : ndarray of shape (n_samples,)
            Target class indices.
        max_iter : int
            L-BFGS iterations of `streamsolve.core.calibration.fit_calibration`.
        """
        explicit = ClassifierWeights(self.log_probs, self.matrices, self.vectors)
        finite = np.isfinite(explicit.intercept)       # a class with prior 0 stays dead
        shared = np.stack([np.where(finite, vector, 0.0) for vector in self.vectors])
        fit = fit_calibration(sample_components, shared, y_index, max_iter=max_iter,
                              class_mask=None if finite.all() else np.where(finite, 0.0, -np.inf))
        explicit.coef, intercept = explicit.combine(fit.theta)
        explicit.intercept = np.where(finite, intercept, -np.inf)
        explicit.calibration = {"theta": fit.theta.tolist(), "loss_before": fit.loss_before,
                                "loss_after": fit.loss_after, "n_samples": fit.n_samples}
        explicit.source = "calibrated" if fit.improved else "explicit"
        return explicit


class WeightsCache:
    """Holds the weights once computed; a new (empty) cache replaces it when counts change.

    The estimator's ``__dict__`` keeps the same cache object when the weights are computed
    on first use, so predicting does not change the estimator's attributes."""

    def __init__(self):
        self.weights: ClassifierWeights | None = None

    def __repr__(self):
        return f"WeightsCache({'empty' if self.weights is None else self.weights.source})"


def explicit_weights(feature_count: np.ndarray, class_log_prior: np.ndarray, form: str,
                     smoothing: str, alpha: float, mu: float | None) -> ClassifierWeights:
    """Explicit weights of the counts, via `streamsolve.core.smoothing.block_weights`.

    The count block of DESIGN has features as rows and classes as columns: ``F =
    feature_count.T``. Column form: ``P(i | j)`` over the D features, Dirichlet background
    ``q`` = the feature totals smoothed by ``alpha``. Row form: ``P(j | i)`` over the M
    classes, Dirichlet background ``pi`` = the class shares of the feature mass smoothed by
    ``alpha``.

    Parameters
    ----------
    feature_count : ndarray of shape (n_classes, n_features)
    class_log_prior : ndarray of shape (n_classes,)
        The intercept, ``log p_j``.
    form : {"column", "row"}
    smoothing : {"additive", "dirichlet"}
    alpha : float
        Additive pseudo-count; also smooths the Dirichlet backgrounds.
    mu : float or None
        Dirichlet strength (None: the support, n_features or n_classes).

    Returns
    -------
    ClassifierWeights
    """
    n_classes, n_features = feature_count.shape
    F = sp.csr_array(feature_count.T)
    if form == "column":
        mu = float(n_features if mu is None else mu) if smoothing == "dirichlet" else None
        log_q = None
        if smoothing == "dirichlet":
            log_q = np.log(smoothed_unigram(np.asarray(F.sum(axis=1)).ravel(), alpha))
        block = block_weights(F, "column", smoothing, mu, alpha, log_q=log_q,
                              n_rows=n_features)
        feature_log_prob = block.dense().T
        return ClassifierWeights({"feature_log_prob_": feature_log_prob,
                                  "class_log_prior_": class_log_prior},
                                 matrices=[feature_log_prob], vectors=[class_log_prior])
    # pi_j: share of the feature mass in class j (the class marginal of P(i, j))
    log_pi = np.log(smoothed_unigram(np.asarray(F.sum(axis=0)).ravel(), alpha))
    mu = float(n_classes if mu is None else mu) if smoothing == "dirichlet" else None
    block = block_weights(F, "row", smoothing, mu, alpha, log_p=log_pi)
    row_log_prob = block.dense().T
    # logit_j = sum_i x_i (log P(j|i) - log pi_j) + log p_j
    mass_prior = np.broadcast_to(-log_pi[:, None], row_log_prob.shape)
    return ClassifierWeights({"row_log_prob_": row_log_prob, "class_mass_log_prob_": log_pi,
                              "class_log_prior_": class_log_prior},
                             matrices=[row_log_prob, mass_prior], vectors=[class_log_prior])


def fitted_log_prob(name: str, doc: str):
    """A read-only fitted attribute served from the (lazily computed) weights."""
    def get(self):
        weights = self._weights()
        if name not in weights.log_probs:
            raise AttributeError(f"{type(self).__name__} with form={self.form!r} has no "
                                 f"{name}.")
        return weights.log_probs[name]
    return property(get, doc=doc)


def weights_field(field: str, doc: str):
    """A fitted attribute stored in the weights (explicit, calibrated or refined)."""
    def get(self):
        return getattr(self._weights(), field)
    return property(get, doc=doc)

"""One formula, one place: the smoothing of DESIGN §3 is `streamsolve.core.smoothing`, and the
language model and the classifier both build their weights with it."""

from __future__ import annotations

import doctest
import random

import numpy as np
import pytest
import scipy.sparse as sp

from streamsolve.classifier import ExplicitSoftmaxClassifier
from streamsolve.core import smoothing
from streamsolve.core.counting import CountConfig, count_sequences
from streamsolve.core.smoothing import block_weights, smoothed_unigram
from streamsolve.core.weights import finalize

V = 7


def bigram_data(seed=0, n_docs=300, max_len=25):
    """Documents of token ids, their R = 1 counts, and the same samples as a classifier's
    (one-hot previous token, BOS = 0 before the first token; target = the token)."""
    rng = random.Random(seed)
    docs = [[rng.randrange(0, V) for _ in range(rng.randrange(1, max_len))]
            for _ in range(n_docs)]
    counts = count_sequences([(np.asarray(d, dtype=np.int64), True) for d in docs],
                             CountConfig(V, 1, "cat", bos_id=0))
    previous = np.array([d[t - 1] if t else 0 for d in docs for t in range(len(d))])
    y = np.array([token for d in docs for token in d])
    X = np.eye(V)[previous]
    return counts, X, y


@pytest.mark.parametrize("form,smoothing_name,lm_params,clf_params", [
    ("column", "additive", {"alpha": 0.4}, {"alpha": 0.4}),
    ("column", "dirichlet", {"mu": 3.0}, {"alpha": 1.0, "mu": 3.0}),
    ("column", "dirichlet", {}, {"alpha": 1.0}),
    ("row", "additive", {"alpha": 0.4}, {"alpha": 0.4}),
    ("row", "dirichlet", {"mu": 5.0}, {"alpha": 1.0, "mu": 5.0}),
])
def test_classifier_and_language_model_weights_are_the_same_code_path(
        form, smoothing_name, lm_params, clf_params):
    """The classifier's log-probabilities on the bigram samples equal, bit for bit, the dense
    weights the LM builds from the same counts (the classifier's counts are the LM's count
    block transposed; Dirichlet backgrounds are the unigram smoothed with alpha = 1)."""
    counts, X, y = bigram_data()
    lm = finalize(counts, form=form, smoothing=smoothing_name, **lm_params)
    W = lm.dense_blocks()[0]                                   # rows: context i, cols: target j
    clf = ExplicitSoftmaxClassifier(form=form, smoothing=smoothing_name, **clf_params).fit(X, y)
    assert clf.classes_.tolist() == list(range(V)), "test needs every token as a target"
    np.testing.assert_array_equal(clf.feature_count_, counts.dense(0).T)
    log_prob = clf.feature_log_prob_ if form == "column" else clf.row_log_prob_
    assert np.array_equal(log_prob, W.T)
    if form == "column":                                       # and the coefficients are W^T
        assert np.array_equal(clf.coef_, W.T)


def test_column_form_of_a_non_square_block_is_the_dense_formula():
    """The classifier's shape (features x classes, D != M): P(i | j) sums over the D rows."""
    F = np.array([[3, 0], [1, 2], [0, 0], [4, 1], [0, 5]])
    alpha, mu = 0.5, 2.0
    g = F.sum(axis=0)
    W = block_weights(sp.csr_array(F), "column", "additive", None, alpha,
                      n_rows=F.shape[0]).dense()
    np.testing.assert_allclose(W, np.log((F + alpha) / (g + alpha * F.shape[0])), rtol=1e-13)
    np.testing.assert_allclose(np.exp(W).sum(axis=0), 1.0, rtol=1e-13)
    q = smoothed_unigram(F.sum(axis=1), alpha)
    W = block_weights(sp.csr_array(F), "column", "dirichlet", mu, None,
                      log_q=np.log(q)).dense()
    np.testing.assert_allclose(W, np.log((F + mu * q[:, None]) / (g + mu)), rtol=1e-13)
    W = block_weights(sp.csr_array(F), "row", "dirichlet", mu, None,
                      log_p=np.log(smoothed_unigram(g))).dense()
    np.testing.assert_allclose(np.exp(W).sum(axis=1), 1.0, rtol=1e-13)


def test_strength_validation_is_shared():
    assert smoothing.is_strength(0.5) and smoothing.is_strength(3)
    for bad in (0, -1.0, float("nan"), float("inf"), True, "1", None):
        assert not smoothing.is_strength(bad)
    with pytest.raises(ValueError, match="--mu must be a positive number"):
        smoothing.check_smoothing("dirichlet", float("inf"), None)
    with pytest.raises(ValueError, match="alpha must be a number > 0"):
        ExplicitSoftmaxClassifier(alpha=float("inf")).fit(np.eye(2), [0, 1])


def test_docstring_examples():
    result = doctest.testmod(smoothing, verbose=False)
    assert result.attempted > 0 and result.failed == 0

"""Fixtures of the classifier tests: the digits data set and small count data."""

import numpy as np
import pytest
from sklearn.datasets import load_digits


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's 8x8 digits: 1797 samples, 64 pixel intensities in 0..16."""
    X, y = load_digits(return_X_y=True)
    return X, y


@pytest.fixture(scope="module")
def digits_split(digits):
    """Train / calibration / test split of the digits, stratified-ish by a fixed shuffle."""
    X, y = digits
    order = np.random.default_rng(0).permutation(len(y))
    train, cal, test = order[:1000], order[1000:1300], order[1300:]
    return (X[train], y[train]), (X[cal], y[cal]), (X[test], y[test])


def same_counts(a, b):
    """Assert two fitted classifiers hold the same classes and exactly the same counts."""
    assert np.array_equal(a.classes_, b.classes_)
    assert a.class_count_.dtype == np.int64 and b.class_count_.dtype == np.int64
    assert a.feature_count_.dtype == np.float64
    np.testing.assert_array_equal(a.class_count_, b.class_count_)
    np.testing.assert_array_equal(a.feature_count_, b.feature_count_)


def random_counts_data(seed=0, n=300, d=6, m=4, rate=3.0):
    """Poisson count features (n x d) whose rates depend on the class (m classes)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, m, size=n)
    X = rng.poisson(rate * (1 + rng.random((m, d)))[y]).astype(float)
    return X, y

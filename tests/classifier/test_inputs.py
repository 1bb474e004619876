"""Inputs (streamsolve.classifier.inputs): counts are exact and independent of chunking and
of the container (numpy, scipy.sparse, Dask, Zarr); bad values and labels are refused with
messages that name the count, the first position and the fix."""

import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
import zarr

from streamsolve.classifier.estimator import ExplicitSoftmaxClassifier

from .conftest import same_counts


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_partial_fit_over_any_chunking_equals_fit(digits, seed):
    X, y = digits
    rng = np.random.default_rng(seed)
    whole = ExplicitSoftmaxClassifier().fit(X, y)
    cuts = np.sort(rng.choice(np.arange(1, len(y)), size=rng.integers(1, 30), replace=False))
    pieces = np.split(np.arange(len(y)), cuts)
    rng.shuffle(pieces)                                   # any order, not only any split
    streamed = ExplicitSoftmaxClassifier(chunk_size=int(rng.integers(1, 500)))
    for i, piece in enumerate(pieces):
        streamed.partial_fit(X[piece], y[piece], classes=np.unique(y) if i == 0 else None)
    same_counts(streamed, whole)
    np.testing.assert_array_equal(streamed.coef_, whole.coef_)
    np.testing.assert_array_equal(streamed.intercept_, whole.intercept_)


@pytest.mark.parametrize("chunk_size", [1, 7, 256, 10_000])
def test_chunk_size_does_not_change_counts(digits, chunk_size):
    X, y = digits
    same_counts(ExplicitSoftmaxClassifier(chunk_size=chunk_size).fit(X, y),
                 ExplicitSoftmaxClassifier().fit(X, y))


def _containers(X, tmp_path):
    group = zarr.open_group(str(tmp_path / "features.zarr"), mode="w")
    return {
        "dask": da.from_array(X, chunks=(170, 23)),           # column chunks get merged
        "zarr": group.create_array("X", data=X, chunks=(100, 64)),
        "csr": sp.csr_matrix(X),
        "csc_array": sp.csc_array(X),
        "coo": sp.coo_matrix(X),
        "dask_of_sparse": da.from_array(X, chunks=(400, 64)).map_blocks(sp.csr_matrix),
        "list": X.tolist(),
        "float32": X.astype(np.float32),
    }


def test_dask_zarr_sparse_input_equals_numpy(digits, tmp_path):
    X, y = digits
    reference = ExplicitSoftmaxClassifier().fit(X, y)
    for name, container in _containers(X, tmp_path).items():
        model = ExplicitSoftmaxClassifier(chunk_size=333).fit(container, y)
        same_counts(model, reference)
        np.testing.assert_array_equal(model.coef_, reference.coef_, err_msg=name)
        np.testing.assert_array_equal(model.predict(container), reference.predict(X),
                                      err_msg=name)
        np.testing.assert_allclose(model.predict_log_proba(container),
                                   reference.predict_log_proba(X), rtol=0, atol=1e-10,
                                   err_msg=name)


def test_dask_and_zarr_labels(digits, tmp_path):
    X, y = digits
    group = zarr.open_group(str(tmp_path / "labels.zarr"), mode="w")
    reference = ExplicitSoftmaxClassifier().fit(X, y)
    for labels in (da.from_array(y, chunks=500), group.create_array("y", data=y, chunks=(300,))):
        same_counts(ExplicitSoftmaxClassifier().fit(da.from_array(X, chunks=(250, 64)), labels),
                     reference)


def test_string_labels_and_counts_are_exact():
    X = np.array([[3, 0, 1], [2, 1, 0], [0, 4, 1], [0, 3, 2], [1, 1, 1]])
    y = np.array(["cat", "cat", "dog", "dog", "eel"])
    model = ExplicitSoftmaxClassifier().fit(X, y)
    assert model.classes_.tolist() == ["cat", "dog", "eel"]
    assert model.class_count_.tolist() == [2, 2, 1]
    assert model.feature_count_.tolist() == [[5, 1, 1], [0, 7, 3], [1, 1, 1]]
    assert set(model.predict(X)) <= {"cat", "dog", "eel"}


def test_negative_values_name_count_and_first_position(digits):
    X, y = digits
    X = X.copy()
    X[900, 2], X[5, 3], X[5, 10] = -2.0, -1.0, -0.5
    for container in (X, sp.csr_matrix(X), da.from_array(X, chunks=(200, 64))):
        model = ExplicitSoftmaxClassifier(chunk_size=100)
        with pytest.raises(ValueError, match=r"Negative values in data passed to "
                           r"ExplicitSoftmaxClassifier\.fit: 3 entries < 0, the first \(-1\.0\) "
                           r"at \(row 5, col 3\)"):
            model.fit(container, y)
        assert not hasattr(model, "classes_")                  # nothing committed
    fitted = ExplicitSoftmaxClassifier().fit(np.abs(X), y)
    counts = fitted.feature_count_.copy()
    with pytest.raises(ValueError, match=r"3 entries < 0.*\(row 5, col 3\)"):
        fitted.partial_fit(X, y)
    np.testing.assert_array_equal(fitted.feature_count_, counts)   # failed batch not added
    with pytest.raises(ValueError, match=r"predict: 3 entries < 0"):
        fitted.predict(X)


def test_sparse_duplicate_entries_are_summed_before_checking():
    # row 0 holds (-1 + 2) = 1 at col 1, stored as two duplicate entries; row 1 holds -3
    X = sp.csr_matrix((np.array([-1.0, 2.0, -3.0]), np.array([1, 1, 0]), np.array([0, 2, 3])),
                      shape=(2, 2))
    assert not X.has_canonical_format
    with pytest.raises(ValueError, match=r"1 entry < 0, the first \(-3\.0\) at \(row 1, col 0\)"):
        ExplicitSoftmaxClassifier().fit(X, [0, 1])
    X.data[2] = 3.0
    model = ExplicitSoftmaxClassifier().fit(X, [0, 1])
    assert model.feature_count_.tolist() == [[0.0, 1.0], [3.0, 0.0]]


@pytest.mark.parametrize("bad,word", [(np.nan, "nan"), (np.inf, "inf")])
def test_nan_and_inf_are_refused(digits, bad, word):
    X, y = digits
    X = X.copy()
    X[7, 1] = bad
    with pytest.raises(ValueError, match=rf"Input X contains NaN or infinity: 1 entry not "
                       rf"finite .* the first \({word}\) at \(row 7, col 1\)"):
        ExplicitSoftmaxClassifier().fit(X, y)
    with pytest.raises(ValueError, match="Input X contains NaN or infinity"):
        ExplicitSoftmaxClassifier().fit(sp.csr_matrix(X), y)
    with pytest.raises(ValueError, match="Input y contains NaN"):
        ExplicitSoftmaxClassifier().fit(np.abs(np.nan_to_num(X)), np.where(y == 3, np.nan, y))


def test_partial_fit_class_errors(digits):
    X, y = digits
    model = ExplicitSoftmaxClassifier()
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        model.partial_fit(X, y)
    model.partial_fit(X[y < 5], y[y < 5], classes=[0, 1, 2, 3, 4])
    counts = model.class_count_.copy()
    with pytest.raises(ValueError, match=r"y contains 5 label\(s\) not among the declared "
                       r"classes \[0, 1, 2, 3, 4\]: \[5, 6, 7, 8, 9\].*classes=all_classes"):
        model.partial_fit(X, y)
    np.testing.assert_array_equal(model.class_count_, counts)
    with pytest.raises(ValueError, match="is not the same as on the first call"):
        model.partial_fit(X[y < 5], y[y < 5], classes=[0, 1, 2])


def test_mismatched_feature_counts(digits):
    X, y = digits
    model = ExplicitSoftmaxClassifier().partial_fit(X, y, classes=np.arange(10))
    message = "X has 63 features, but ExplicitSoftmaxClassifier is expecting 64 features"
    for method in (lambda: model.partial_fit(X[:, 1:], y), lambda: model.predict(X[:, 1:]),
                   lambda: model.predict_proba(X[:, 1:]), lambda: model.calibrate(X[:, 1:], y),
                   lambda: model.refine(X[:, 1:], y)):
        with pytest.raises(ValueError, match=message):
            method()


def test_empty_and_malformed_input(digits):
    X, y = digits
    model = ExplicitSoftmaxClassifier()
    with pytest.raises(ValueError, match=r"0 sample\(s\) \(shape=\(0, 64\)\)"):
        model.fit(X[:0], y[:0])
    with pytest.raises(ValueError, match=r"0 feature\(s\) \(shape=\(1797, 0\)\)"):
        model.fit(X[:, :0], y)
    with pytest.raises(ValueError, match="Expected 2D array, got 1D array"):
        model.fit(X[:, 0], y)
    with pytest.raises(ValueError, match="X has 1797 samples but y has 1796"):
        model.fit(X, y[:-1])
    with pytest.raises(ValueError, match="requires y to be passed"):
        model.fit(X, None)
    with pytest.raises(ValueError, match="Unknown label type: continuous"):
        model.fit(X, y + 0.5)
    with pytest.raises(ValueError, match="Complex data not supported"):
        model.fit(X + 1j, y)

"""Tests of the explicit softmax classifier (streamsolve.classifier.estimator, DESIGN §1-3)."""

import doctest
import warnings

import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
import zarr
from scipy.special import log_softmax
from sklearn.datasets import load_digits
from sklearn.naive_bayes import MultinomialNB
from sklearn.utils.estimator_checks import parametrize_with_checks

from streamsolve.classifier import estimator as classifier_module
from streamsolve.classifier import refine as classifier_refine
from streamsolve.classifier.estimator import ExplicitSoftmaxClassifier, NotFittedError


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X, y


@pytest.fixture(scope="module")
def digits_split(digits):
    """Train / calibration / test split of the digits, stratified-ish by a fixed shuffle."""
    X, y = digits
    order = np.random.default_rng(0).permutation(len(y))
    train, cal, test = order[:1000], order[1000:1300], order[1300:]
    return (X[train], y[train]), (X[cal], y[cal]), (X[test], y[test])


def _same_counts(a, b):
    assert np.array_equal(a.classes_, b.classes_)
    assert a.class_count_.dtype == np.int64 and b.class_count_.dtype == np.int64
    assert a.feature_count_.dtype == np.float64
    np.testing.assert_array_equal(a.class_count_, b.class_count_)
    np.testing.assert_array_equal(a.feature_count_, b.feature_count_)


# --------------------------------------------------------------------------------------
# The column form is MultinomialNB
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("alpha", [1.0, 0.1, 1e-3])
def test_column_form_equals_multinomial_nb(digits, alpha):
    X, y = digits
    ours = ExplicitSoftmaxClassifier(alpha=alpha).fit(X, y)
    nb = MultinomialNB(alpha=alpha).fit(X, y)
    np.testing.assert_allclose(ours.feature_log_prob_, nb.feature_log_prob_, rtol=0, atol=1e-10)
    np.testing.assert_allclose(ours.class_log_prior_, nb.class_log_prior_, rtol=0, atol=1e-10)
    np.testing.assert_array_equal(ours.class_count_, nb.class_count_)
    np.testing.assert_array_equal(ours.feature_count_, nb.feature_count_)
    np.testing.assert_array_equal(ours.predict(X), nb.predict(X))
    np.testing.assert_allclose(ours.predict_log_proba(X), nb.predict_log_proba(X),
                               rtol=0, atol=1e-10)
    np.testing.assert_allclose(ours.predict_proba(X), nb.predict_proba(X), rtol=0, atol=1e-10)
    assert ours.score(X, y) == pytest.approx(nb.score(X, y), abs=0)


def test_column_form_equals_multinomial_nb_without_fitted_prior(digits):
    X, y = digits
    for kwargs in ({"fit_prior": False}, {"class_prior": np.full(10, 0.1)}):
        ours = ExplicitSoftmaxClassifier(alpha=0.5, **kwargs).fit(X, y)
        nb = MultinomialNB(alpha=0.5, **kwargs).fit(X, y)
        np.testing.assert_allclose(ours.predict_log_proba(X), nb.predict_log_proba(X),
                                   rtol=0, atol=1e-10)


def test_partial_fit_matches_multinomial_nb_partial_fit(digits):
    X, y = digits
    ours, nb = ExplicitSoftmaxClassifier(alpha=0.3), MultinomialNB(alpha=0.3)
    for part in np.array_split(np.arange(len(y)), 4):
        ours.partial_fit(X[part], y[part], classes=np.arange(10))
        nb.partial_fit(X[part], y[part], classes=np.arange(10))
    np.testing.assert_allclose(ours.feature_log_prob_, nb.feature_log_prob_, rtol=0, atol=1e-10)
    np.testing.assert_array_equal(ours.predict(X), nb.predict(X))


# --------------------------------------------------------------------------------------
# Counts: exact, independent of chunking and of the input container
# --------------------------------------------------------------------------------------

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
    _same_counts(streamed, whole)
    np.testing.assert_array_equal(streamed.coef_, whole.coef_)
    np.testing.assert_array_equal(streamed.intercept_, whole.intercept_)


@pytest.mark.parametrize("chunk_size", [1, 7, 256, 10_000])
def test_chunk_size_does_not_change_counts(digits, chunk_size):
    X, y = digits
    _same_counts(ExplicitSoftmaxClassifier(chunk_size=chunk_size).fit(X, y),
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
        _same_counts(model, reference)
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
        _same_counts(ExplicitSoftmaxClassifier().fit(da.from_array(X, chunks=(250, 64)), labels),
                     reference)


def test_string_labels_and_counts_are_exact():
    X = np.array([[3, 0, 1], [2, 1, 0], [0, 4, 1], [0, 3, 2], [1, 1, 1]])
    y = np.array(["cat", "cat", "dog", "dog", "eel"])
    model = ExplicitSoftmaxClassifier().fit(X, y)
    assert model.classes_.tolist() == ["cat", "dog", "eel"]
    assert model.class_count_.tolist() == [2, 2, 1]
    assert model.feature_count_.tolist() == [[5, 1, 1], [0, 7, 3], [1, 1, 1]]
    assert set(model.predict(X)) <= {"cat", "dog", "eel"}


# --------------------------------------------------------------------------------------
# Forms and smoothing against dense formulas (DESIGN §3)
# --------------------------------------------------------------------------------------

def _random_counts_data(seed=0, n=300, d=6, m=4, rate=3.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, m, size=n)
    X = rng.poisson(rate * (1 + rng.random((m, d)))[y]).astype(float)
    return X, y


def test_row_form_matches_dense_formula():
    X, y = _random_counts_data()
    X[:, 5] = 0.0                                        # a feature never seen
    n_classes = 4
    F = np.array([[X[y == j, i].sum() for i in range(X.shape[1])] for j in range(n_classes)])
    n = np.bincount(y, minlength=n_classes).astype(float)
    alpha, mu = 0.5, 3.0
    prior = n / n.sum()
    mass = F.sum(axis=1)
    pi = (mass + alpha) / (mass.sum() + alpha * n_classes)
    # additive: P(j | i) = (F_ij + alpha) / (f_i + alpha M)
    expected_row = np.log((F + alpha) / (F.sum(axis=0) + alpha * n_classes))
    model = ExplicitSoftmaxClassifier(form="row", alpha=alpha).fit(X, y)
    np.testing.assert_allclose(model.row_log_prob_, expected_row, rtol=1e-13)
    np.testing.assert_allclose(model.coef_, expected_row - np.log(pi)[:, None], rtol=1e-13)
    np.testing.assert_allclose(model.intercept_, np.log(prior), rtol=1e-13)
    # Dirichlet towards pi: P(j | i) = (F_ij + mu pi_j) / (f_i + mu)
    expected_row = np.log((F + mu * pi[:, None]) / (F.sum(axis=0) + mu))
    model = ExplicitSoftmaxClassifier(form="row", smoothing="dirichlet", alpha=alpha,
                                      mu=mu).fit(X, y)
    np.testing.assert_allclose(model.row_log_prob_, expected_row, rtol=1e-13)
    assert np.allclose(np.exp(model.row_log_prob_).sum(axis=0), 1.0)
    np.testing.assert_allclose(model.coef_[:, 5], 0.0, atol=1e-15)   # unseen: no evidence
    # logits: sum_i x_i (log P(j|i) - log pi_j) + log p_j
    logits = X @ expected_row.T - X.sum(axis=1, keepdims=True) * np.log(pi) + np.log(prior)
    np.testing.assert_allclose(model.predict_log_proba(X), log_softmax(logits, axis=1),
                               rtol=0, atol=1e-9)


def test_row_form_on_one_hot_blocks_is_design_formula():
    """R one-hot blocks (sum_i x_i = R, so pi = p): sum_r log P_r(j|c_r) - (R-1) log p_j."""
    rng = np.random.default_rng(3)
    V, R, n = 5, 3, 400
    tokens = rng.integers(0, V, size=(n, R))
    y = (tokens[:, 0] + rng.integers(0, 2, size=n)) % V
    X = np.zeros((n, R * V))
    X[np.arange(n)[:, None], np.arange(R) * V + tokens] = 1.0
    model = ExplicitSoftmaxClassifier(form="row", smoothing="dirichlet", alpha=1e-12).fit(X, y)
    prior = np.bincount(y, minlength=V) / n
    np.testing.assert_allclose(model.class_mass_log_prob_, np.log(prior), rtol=1e-9)
    logits = -(R - 1) * np.log(prior) + sum(
        model.row_log_prob_[:, r * V + tokens[:, r]].T for r in range(R))
    np.testing.assert_allclose(model.predict_log_proba(X), log_softmax(logits, axis=1),
                               rtol=0, atol=1e-9)


def test_column_dirichlet_matches_dense_formula():
    X, y = _random_counts_data(seed=1)
    F = np.array([[X[y == j, i].sum() for i in range(X.shape[1])] for j in range(4)])
    alpha, mu = 0.25, 10.0
    q = (F.sum(axis=0) + alpha) / (F.sum() + alpha * X.shape[1])
    expected = np.log((F + mu * q) / (F.sum(axis=1, keepdims=True) + mu))
    model = ExplicitSoftmaxClassifier(smoothing="dirichlet", alpha=alpha, mu=mu).fit(X, y)
    np.testing.assert_allclose(model.feature_log_prob_, expected, rtol=1e-13)
    default_mu = ExplicitSoftmaxClassifier(smoothing="dirichlet", alpha=alpha).fit(X, y)
    np.testing.assert_allclose(
        default_mu.feature_log_prob_,
        np.log((F + X.shape[1] * q) / (F.sum(axis=1, keepdims=True) + X.shape[1])), rtol=1e-13)


def test_row_and_column_forms_predict_alike_when_unsmoothed():
    X, y = _random_counts_data(seed=2, n=500, rate=20.0)     # every count > 0
    assert np.all(ExplicitSoftmaxClassifier().fit(X, y).feature_count_ > 0)
    column = ExplicitSoftmaxClassifier(alpha=1e-12).fit(X, y)
    row = ExplicitSoftmaxClassifier(form="row", alpha=1e-12).fit(X, y)
    np.testing.assert_array_equal(column.predict(X), row.predict(X))
    np.testing.assert_allclose(column.predict_log_proba(X), row.predict_log_proba(X),
                               rtol=0, atol=1e-6)


def test_finalize_resmooths_without_recounting(digits):
    X, y = digits
    model = ExplicitSoftmaxClassifier(alpha=1.0).fit(X, y)
    model.set_params(alpha=0.2, form="row").finalize()
    np.testing.assert_array_equal(
        model.coef_, ExplicitSoftmaxClassifier(alpha=0.2, form="row").fit(X, y).coef_)


# --------------------------------------------------------------------------------------
# Calibration and refinement
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("form,smoothing", [("column", "additive"), ("column", "dirichlet"),
                                            ("row", "additive"), ("row", "dirichlet")])
def test_calibration_never_worse_on_its_sample(digits_split, form, smoothing):
    (X, y), (Xc, yc), (Xt, yt) = digits_split
    model = ExplicitSoftmaxClassifier(form=form, smoothing=smoothing).fit(X, y)
    before, test_before = model.log_loss(Xc, yc), model.log_loss(Xt, yt)
    model.calibrate(Xc, yc)
    after = model.log_loss(Xc, yc)
    assert after <= before
    assert model.calibration_["loss_before"] == pytest.approx(before, rel=1e-12)
    assert model.calibration_["loss_after"] == pytest.approx(after, rel=1e-12)
    assert len(model.calibration_["theta"]) == (2 if form == "column" else 3)
    # naive Bayes on digit pixels is grossly over-confident; calibration fixes most of it
    assert model.log_loss(Xt, yt) < 0.5 * test_before


def test_calibration_keeps_uncalibrated_point_when_it_cannot_improve():
    # a sample where the explicit solution is already perfect and confident: theta = 1 wins
    # or the result is at least as good; never a loss increase
    X, y = _random_counts_data(seed=4, n=200, rate=30.0)
    model = ExplicitSoftmaxClassifier().fit(X, y)
    before = model.log_loss(X[:5], y[:5])
    model.calibrate(X[:5], y[:5])
    assert model.log_loss(X[:5], y[:5]) <= before


def test_block_loss_grad_is_the_dense_formula():
    rng = np.random.default_rng(0)
    X, y = rng.random((40, 7)), rng.integers(0, 3, size=40)
    coef, intercept = rng.standard_normal((3, 7)), rng.standard_normal(3)
    Y = np.eye(3)[y]
    P = np.exp(log_softmax(X @ coef.T + intercept, axis=1))
    for block in (X, sp.csr_matrix(X)):
        result = classifier_refine.block_loss_grad(block, y, coef, intercept)
        np.testing.assert_allclose(result.grad_coef, (X.T @ (P - Y)).T, rtol=1e-12)
        np.testing.assert_allclose(result.grad_intercept, (P - Y).sum(axis=0), rtol=1e-12)
        assert result.loss == pytest.approx(-np.log(P[np.arange(40), y]).sum(), rel=1e-12)


def test_refinement_decreases_loss_and_explicit_start_beats_zeros(digits_split):
    (X, y), (Xc, yc), _ = digits_split
    explicit = ExplicitSoftmaxClassifier().fit(X, y).calibrate(Xc, yc)
    start_loss = explicit.log_loss(X, y)
    explicit.refine(X, y, passes=10)
    history = explicit.refine_history_
    assert [h["pass"] for h in history] == list(range(11))
    assert history[0]["loss"] == pytest.approx(start_loss, rel=1e-10)
    best_so_far = np.minimum.accumulate([h["objective"] for h in history])
    assert best_so_far[-1] < 0.6 * best_so_far[0]
    # "monotonically-ish": L-BFGS line-search trials may overshoot, but most steps go down
    losses = np.array([h["loss"] for h in history])
    assert np.mean(np.diff(losses) <= 0) >= 0.7
    assert explicit.log_loss(X, y) == pytest.approx(best_so_far[-1], rel=1e-10)
    assert explicit.weights_source_ == "refined"

    zeros = ExplicitSoftmaxClassifier().fit(X, y).refine(X, y, passes=1, init="zeros")
    from_explicit = ExplicitSoftmaxClassifier().fit(X, y).calibrate(Xc, yc).refine(X, y, passes=1)
    assert zeros.refine_history_[0]["loss"] == pytest.approx(np.log(10), rel=1e-12)
    assert from_explicit.log_loss(X, y) < zeros.log_loss(X, y)


def test_refinement_is_a_map_reduce_independent_of_chunking(digits_split):
    (X, y), _, (Xt, yt) = digits_split
    one = ExplicitSoftmaxClassifier(chunk_size=10_000).fit(X, y)
    one.refine(X, y, passes=3, init="zeros", X_val=Xt, y_val=yt)
    many = ExplicitSoftmaxClassifier(chunk_size=64).fit(X, y)
    many.refine(da.from_array(X, chunks=(128, 64)), y, passes=3, init="zeros", X_val=Xt,
                y_val=yt)
    for a, b in zip(one.refine_history_, many.refine_history_):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-9)


def test_refine_early_stopping_keeps_best_validation_point(digits_split):
    (X, y), (Xc, yc), (Xt, yt) = digits_split
    model = ExplicitSoftmaxClassifier().fit(X, y).calibrate(Xc, yc)
    model.refine(X, y, passes=15, X_val=Xt, y_val=yt, early_stopping=True)
    history = model.refine_history_
    best = min(history, key=lambda entry: entry["val_loss"])
    assert [entry["pass"] for entry in history if entry["kept"]] == [best["pass"]]
    assert model.log_loss(Xt, yt) == pytest.approx(best["val_loss"], rel=1e-10)
    with pytest.raises(ValueError, match="early_stopping=True needs validation data"):
        model.refine(X, y, passes=1, early_stopping=True)


def test_refine_start_points_and_finalize_restores_explicit(digits_split):
    (X, y), _, _ = digits_split
    model = ExplicitSoftmaxClassifier().fit(X, y)
    explicit_coef = model.coef_.copy()
    model.refine(X, y, passes=0)
    np.testing.assert_array_equal(model.coef_, explicit_coef)
    model.refine(X, y, passes=2, init="random", random_state=0, l2=1e-3)
    assert not np.array_equal(model.coef_, explicit_coef)
    given = (np.zeros_like(explicit_coef), np.zeros(10))
    model.refine(X, y, passes=0, init=given)
    np.testing.assert_array_equal(model.coef_, 0.0)
    model.finalize()
    np.testing.assert_array_equal(model.coef_, explicit_coef)
    assert model.weights_source_ == "explicit"
    with pytest.raises(ValueError, match="init must be"):
        model.refine(X, y, init="ones")
    with pytest.raises(ValueError, match="passes must be an integer >= 0"):
        model.refine(X, y, passes=-1)


# --------------------------------------------------------------------------------------
# Zarr count store
# --------------------------------------------------------------------------------------

def test_zarr_counts_round_trip(digits, tmp_path):
    X, y = digits
    model = ExplicitSoftmaxClassifier(form="row", smoothing="dirichlet", alpha=0.5).fit(X, y)
    store = tmp_path / "counts.zarr"
    model.save_counts(str(store))
    group = zarr.open_group(str(store), mode="r")
    assert group["class_count"].dtype == np.int64
    assert group["feature_count"].dtype == np.float64
    assert group.attrs["params"]["form"] == "row"
    assert not list(store.rglob("*.pkl"))
    again = ExplicitSoftmaxClassifier.from_counts(str(store))
    assert again.get_params() == model.get_params()
    _same_counts(again, model)
    np.testing.assert_array_equal(again.coef_, model.coef_)
    np.testing.assert_array_equal(again.intercept_, model.intercept_)
    np.testing.assert_array_equal(again.predict(X), model.predict(X))
    # re-finalize with other parameters, without the data
    column = ExplicitSoftmaxClassifier.from_counts(str(store), form="column", alpha=1.0,
                                                   smoothing="additive")
    np.testing.assert_array_equal(column.coef_, ExplicitSoftmaxClassifier().fit(X, y).coef_)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save_counts(str(store))
    model.save_counts(str(store), overwrite=True)


def test_zarr_stores_of_shards_add_up(digits, tmp_path):
    X, y = digits
    stores = []
    for k, part in enumerate(np.array_split(np.arange(len(y)), 3)):
        shard = ExplicitSoftmaxClassifier().partial_fit(X[part], y[part], classes=np.arange(10))
        stores.append(str(tmp_path / f"shard{k}.zarr"))
        shard.save_counts(stores[-1])
    merged = ExplicitSoftmaxClassifier.from_counts(stores[::-1])
    whole = ExplicitSoftmaxClassifier().fit(X, y)
    _same_counts(merged, whole)
    np.testing.assert_array_equal(merged.coef_, whole.coef_)


def test_zarr_fsspec_url_and_string_classes():
    X = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    y = np.array(["a", "b", "a"])
    model = ExplicitSoftmaxClassifier().fit(X, y)
    url = f"memory://streamsolve-test-{np.random.default_rng().integers(1 << 30)}.zarr"
    model.save_counts(url)
    again = ExplicitSoftmaxClassifier.from_counts(url)
    assert again.classes_.tolist() == ["a", "b"]
    np.testing.assert_array_equal(again.coef_, model.coef_)


def test_from_counts_refuses_foreign_or_mismatched_stores(tmp_path, digits):
    X, y = digits
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w").attrs["format"] = "something"
    with pytest.raises(ValueError, match="is not a ExplicitSoftmaxClassifier count store"):
        ExplicitSoftmaxClassifier.from_counts(str(tmp_path / "other.zarr"))
    with pytest.raises(FileNotFoundError, match="no Zarr count store"):
        ExplicitSoftmaxClassifier.from_counts(str(tmp_path / "missing.zarr"))
    ExplicitSoftmaxClassifier().fit(X, y).save_counts(str(tmp_path / "a.zarr"))
    ExplicitSoftmaxClassifier().fit(X[y < 5], y[y < 5]).save_counts(str(tmp_path / "b.zarr"))
    with pytest.raises(ValueError, match="declared the same classes"):
        ExplicitSoftmaxClassifier.from_counts([str(tmp_path / "a.zarr"),
                                               str(tmp_path / "b.zarr")])


# --------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------

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


def test_bad_parameters_and_unfitted(digits):
    X, y = digits
    for params, message in [({"alpha": 0.0}, "alpha must be a number > 0"),
                            ({"form": "diagonal"}, "form must be one of"),
                            ({"smoothing": "kneser-ney"}, "smoothing must be one of"),
                            ({"mu": -1.0}, "mu must be None or a number > 0"),
                            ({"chunk_size": 0}, "chunk_size must be an integer >= 1"),
                            ({"class_prior": [0.5, 0.5]}, "class_prior must be 10 positive")]:
        with pytest.raises(ValueError, match=message):
            ExplicitSoftmaxClassifier(**params).fit(X, y)
    with pytest.raises(NotFittedError, match="not fitted yet"):
        ExplicitSoftmaxClassifier().predict(X)
    with pytest.raises(ValueError, match="Invalid parameter 'alpah'"):
        ExplicitSoftmaxClassifier().set_params(alpah=1.0)


# --------------------------------------------------------------------------------------
# scikit-learn conventions
# --------------------------------------------------------------------------------------

def test_get_set_params_and_repr():
    model = ExplicitSoftmaxClassifier(alpha=0.5, form="row")
    assert model.get_params() == {"alpha": 0.5, "chunk_size": 4096, "class_prior": None,
                                  "fit_prior": True, "form": "row", "mu": None,
                                  "smoothing": "additive"}
    assert repr(model) == "ExplicitSoftmaxClassifier(alpha=0.5, form='row')"
    assert model.set_params(mu=2.0) is model and model.mu == 2.0


def test_module_does_not_import_sklearn_at_import_time():
    import subprocess
    import sys
    code = ("import sys; import streamsolve.classifier.estimator; "
            "assert not any(m == 'sklearn' or m.startswith('sklearn.') for m in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_docstring_examples():
    result = doctest.testmod(classifier_module, verbose=False)
    assert result.attempted > 0 and result.failed == 0


def _expected_failed_checks(estimator):
    """Checks of scikit-learn's suite that cannot apply, with the reason.

    None today: the suite's generated data is made non-negative because the estimator sets
    the ``positive_only`` tag, and its ``check_classifiers_train`` accuracy bar is waived by
    the ``poor_score`` tag exactly as scikit-learn does for its own ``MultinomialNB``. Keep
    this mapping (and ``xfail_strict``) so that any future exception is listed with a reason.
    """
    return {}


with warnings.catch_warnings():
    # the suite warns that the estimator does not inherit from BaseEstimator: deliberate,
    # the library must not import scikit-learn
    warnings.simplefilter("ignore", UserWarning)

    @parametrize_with_checks(
        [ExplicitSoftmaxClassifier(),
         ExplicitSoftmaxClassifier(form="row", smoothing="dirichlet", chunk_size=3)],
        expected_failed_checks=_expected_failed_checks, xfail_strict=True)
    def test_scikit_learn_conformance(estimator, check):
        check(estimator)

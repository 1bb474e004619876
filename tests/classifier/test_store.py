"""The classifier's Zarr count store (streamsolve.classifier.store): round trip, shards add
up, fsspec URLs, foreign or mismatched stores are refused."""

import numpy as np
import pytest
import zarr

from streamsolve.classifier.estimator import ExplicitSoftmaxClassifier

from .conftest import same_counts


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
    same_counts(again, model)
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
    same_counts(merged, whole)
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


def test_store_records_library_versions(tmp_path):
    from streamsolve.versions import library_versions

    store = str(tmp_path / "counts.zarr")
    ExplicitSoftmaxClassifier().fit(np.eye(3), [0, 1, 1]).save_counts(store)
    versions = zarr.open_group(store, mode="r").attrs["versions"]
    assert versions == library_versions()
    assert set(versions) >= {"streamsolve", "numpy", "scipy", "dask", "zarr", "tokenizers"}
    assert versions["numpy"] == np.__version__


def test_versions_docstring_examples():
    import doctest

    from streamsolve import versions

    result = doctest.testmod(versions, verbose=False)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("overwrite", [False, True])
def test_save_counts_refuses_a_directory_of_user_files(digits, tmp_path, overwrite):
    X, y = digits
    model = ExplicitSoftmaxClassifier().fit(X, y)
    target = tmp_path / "results"
    target.mkdir()
    (target / "notes.txt").write_text("mine\n")
    with pytest.raises(ValueError, match="refusing to overwrite .*notes.txt.*nothing was deleted"):
        model.save_counts(str(target), overwrite=overwrite)
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]
    assert (target / "notes.txt").read_text() == "mine\n"


def test_save_counts_refuses_files_beside_a_count_store(digits, tmp_path):
    X, y = digits
    model = ExplicitSoftmaxClassifier().fit(X, y)
    store = tmp_path / "counts.zarr"
    model.save_counts(str(store))
    (store / "extra.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match="besides the store it holds extra.csv"):
        model.save_counts(str(store), overwrite=True)
    assert (store / "extra.csv").exists()
    same_counts(ExplicitSoftmaxClassifier.from_counts(str(store)), model)


def test_count_store_arrays_are_checksummed_and_verified(digits, tmp_path):
    X, y = digits
    model = ExplicitSoftmaxClassifier().fit(X, y)
    store = tmp_path / "counts.zarr"
    model.save_counts(str(store))
    group = zarr.open_group(str(store), mode="r+")
    codecs = [type(c).__name__ for c in group["feature_count"].metadata.codecs]
    assert "Crc32cCodec" in codecs and "ZstdCodec" in codecs
    group["class_count"][0] += 1  # a changed value, re-encoded: only the digest can tell
    with pytest.raises(ValueError, match="class_count .*digest"):
        ExplicitSoftmaxClassifier.from_counts(str(store))

"""The classifier's count store: its sufficient statistics in a Zarr v3 group (no pickle).

A group holds two arrays, ``class_count`` (n_classes,) int64 and ``feature_count``
(n_classes, n_features) float64, and JSON attributes: the format name and version, the
class labels and their dtype, ``n_features_in``, the estimator's hyper-parameters and the
library versions (`streamsolve.versions.library_versions`). Counts add, so several stores
(one per shard or worker) are summed by `read_counts`. The store returns arrays, never an
estimator: `ExplicitSoftmaxClassifier.from_counts` builds one from them.

It follows the language-model store's safety rules, from the same helpers
(`streamsolve.store.location`, `streamsolve.store.integrity`): a path is written only when
nothing is there, it is an empty directory, or it is a classifier counts store holding
nothing but its own entries (``overwrite=True``) - a directory of a user's files is refused,
never cleared; every array is written with checksummed codecs and a content digest that
`read_one` verifies.

Zarr is imported only when a store is opened.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import numpy as np

from ..versions import library_versions

logger = logging.getLogger(__name__)

#: Format name in the group's attributes (unchanged since the first release: stores stay readable).
STORE_FORMAT = "streamsolve.classifier.estimator-counts"
STORE_FORMAT_VERSION = 1
ESTIMATOR_NAME = "ExplicitSoftmaxClassifier"
#: The top-level entries of a count store: the only names `write_counts` replaces.
STORE_ENTRIES = ("zarr.json", "class_count", "feature_count")


@dataclasses.dataclass
class StoredCounts:
    """What a count store holds (summed over stores by `read_counts`).

    Attributes
    ----------
    classes : ndarray of shape (n_classes,)
    n_features_in : int
    class_count : ndarray of shape (n_classes,), int64
    feature_count : ndarray of shape (n_classes, n_features), float64
    params : dict
        Hyper-parameters of the estimator that wrote the (first) store.
    """

    classes: np.ndarray
    n_features_in: int
    class_count: np.ndarray
    feature_count: np.ndarray
    params: dict


def open_group(store, mode: str, storage_options: dict | None = None):
    """Open a Zarr v3 group, with errors that name the fix.

    Parameters
    ----------
    store : str, pathlib.Path or zarr store
        Local path or fsspec URL.
    mode : str
        Zarr mode: ``"r"``, ``"w"`` (replace) or ``"w-"`` (create, refuse an existing group).
    storage_options : dict, optional
        Passed to fsspec for URLs.
    """
    import zarr
    kwargs = {} if storage_options is None else {"storage_options": storage_options}
    try:
        return zarr.open_group(store=store, mode=mode, zarr_format=3, **kwargs)
    except FileNotFoundError:
        raise FileNotFoundError(f"no Zarr count store at {store}") from None
    except FileExistsError:
        raise FileExistsError(f"{store} already exists; pass overwrite=True to replace "
                              "it.") from None


def write_counts(store, counts: StoredCounts, *, storage_options: dict | None = None,
                 overwrite: bool = False):
    """Write counts, classes and parameters to a new Zarr v3 group.

    Parameters
    ----------
    store : str, pathlib.Path or zarr store
        Local path or fsspec URL (e.g. ``"s3://bucket/counts.zarr"``) of the group.
    counts : StoredCounts
        Class labels and parameters must be JSON-serialisable (int, float, str, bool).
    storage_options : dict, optional
        Passed to fsspec for URLs.
    overwrite : bool
        Replace an existing group; otherwise an existing group is an error.

    Returns
    -------
    zarr.Group
    """
    classes = counts.classes.tolist()
    params = dict(counts.params)
    if isinstance(params.get("class_prior"), np.ndarray):
        params["class_prior"] = params["class_prior"].tolist()
    try:
        json.dumps(classes)
        json.dumps(params)
    except TypeError as exc:
        raise ValueError("save_counts needs JSON-serialisable class labels and parameters "
                         f"(int, float, str, bool): {exc}") from None
    from ..store.integrity import write_checksummed_array

    if isinstance(store, (str, os.PathLike)):
        _check_writable(str(store), storage_options, overwrite)
    group = open_group(store, "w" if overwrite else "w-", storage_options)
    write_checksummed_array(group, "class_count", np.asarray(counts.class_count, np.int64))
    n_classes, n_features = counts.feature_count.shape
    write_checksummed_array(group, "feature_count",
                            np.asarray(counts.feature_count, np.float64))
    group.attrs.update({
        "format": STORE_FORMAT, "format_version": STORE_FORMAT_VERSION,
        "estimator": ESTIMATOR_NAME, "classes": classes,
        "classes_dtype": counts.classes.dtype.str,
        "n_features_in": int(counts.n_features_in), "params": params,
        "versions": library_versions()})
    logger.info("saved counts (%d classes x %d features) to %s", n_classes, n_features, store)
    return group


def _check_writable(location: str, storage_options: dict | None, overwrite: bool):
    """Refuse a location holding anything but a classifier counts store of its own entries.

    Raises
    ------
    streamsolve.store.layout.StoreError
        A ``ValueError`` naming what is there (a user's files, another dataset); nothing is
        changed.
    FileExistsError
        When a counts store is there and ``overwrite`` is False.
    """
    from ..store.location import replaceable_location

    found = replaceable_location(location, storage_options, format_name=STORE_FORMAT,
                                 store_noun=f"a {ESTIMATOR_NAME} count store",
                                 own_entries=STORE_ENTRIES)
    if found.kind == "store" and not overwrite:
        raise FileExistsError(f"{location} already exists; pass overwrite=True to replace it.")


def _verified(group, name: str) -> np.ndarray:
    """An array of a count store, checked against the digest recorded when it was written."""
    from ..store.integrity import array_digest

    array = group[name]
    values = array[...]
    recorded = array.attrs.get("digest")
    if recorded is not None and array_digest(values) != recorded:
        raise ValueError(f"{name} of the count store {group.store} fails its digest check: the "
                         "store is damaged; write it again with save_counts.")
    return values


def read_one(location, storage_options: dict | None = None) -> StoredCounts:
    """The counts of one store; refuse a group of another format or a newer version."""
    group = open_group(location, "r", storage_options)
    attrs = dict(group.attrs)
    if attrs.get("format") != STORE_FORMAT:
        raise ValueError(f"{location} is not a {ESTIMATOR_NAME} count store (format attribute "
                         f"{attrs.get('format')!r}, expected {STORE_FORMAT!r}).")
    if attrs.get("format_version", 0) > STORE_FORMAT_VERSION:
        raise ValueError(f"{location} has count-store format version "
                         f"{attrs['format_version']}; this streamsolve reads up to "
                         f"{STORE_FORMAT_VERSION}. Upgrade streamsolve.")
    return StoredCounts(
        classes=np.asarray(attrs["classes"], dtype=np.dtype(attrs["classes_dtype"])),
        n_features_in=int(attrs["n_features_in"]),
        class_count=np.asarray(_verified(group, "class_count"), dtype=np.int64),
        feature_count=np.asarray(_verified(group, "feature_count"), dtype=np.float64),
        params=dict(attrs["params"]))


def read_counts(stores, storage_options: dict | None = None) -> StoredCounts:
    """The summed counts of one or several stores (parameters of the first).

    Parameters
    ----------
    stores : str, pathlib.Path, zarr store, or a list of them
        Groups written by `write_counts`; they must declare the same classes and number
        of features.
    storage_options : dict, optional
        Passed to fsspec for URLs.

    Returns
    -------
    StoredCounts
    """
    stores = list(stores) if isinstance(stores, (list, tuple)) else [stores]
    if not stores:
        raise ValueError("from_counts needs at least one store.")
    total = None
    for location in stores:
        counts = read_one(location, storage_options)
        if total is None:
            total = counts
            continue
        if (not np.array_equal(counts.classes, total.classes)
                or counts.feature_count.shape != total.feature_count.shape):
            raise ValueError(
                f"{location} holds classes {counts.classes.tolist()} x "
                f"{counts.feature_count.shape[1]} features, the first store "
                f"{total.classes.tolist()} x {total.n_features_in}: count stores add only when "
                "every shard declared the same classes (partial_fit(..., classes=all_classes)).")
        total.class_count = total.class_count + counts.class_count
        total.feature_count = total.feature_count + counts.feature_count
    return total

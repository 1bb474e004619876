"""The suffix n-gram blocks in a store (issue 24): counts per generation, Kneser–Ney weights
per weights version.

::

    STORE/counts/g{n}/ngram/k{k}/      order k = 2..N of the generation's n-gram counts:
                                       keys uint64 [rows, words], indptr int64 [rows + 1],
                                       targets int32 [nnz], counts int64 [nnz]
                                       (group attrs of counts/g{n}/ngram: order, contexts,
                                       entries per order)
    STORE/weights/v{id}/ngram/         unigram_numerators float64 [V]; attrs: order,
                                       unigram_backoff, discounts, counts_of_counts
    STORE/weights/v{id}/ngram/k{k}/    keys, indptr, targets as above, numerators float64 [nnz],
                                       backoff float64 [rows]

Keys are `streamsolve.core.ngram_keys` keys stored as ``words`` little-endian ``uint64``
columns (a narrow key is one column), so a wide key needs no structured Zarr dtype. Every
array is written checksummed with its digest and read verified (`streamsolve.store.integrity`).
The groups live inside their generation / weights version, so the counts transaction and
the weights commit create, retire and discard them with the rest.
"""

from __future__ import annotations

import numpy as np

from ..core.ngram_counts import NgramConfig, NgramCounts, OrderCounts
from ..core.ngram_keys import KeyLayout
from ..core.ngram_kneser_ney import KneserNeyLevel, NgramKneserNey
from .integrity import write_checksummed_array


def counts_path(generation: int) -> str:
    """The group of a generation's n-gram counts."""
    return f"counts/g{generation}/ngram"


def weights_path(weights_id: str) -> str:
    """The group of a weights version's n-gram weights."""
    return f"weights/v{weights_id}/ngram"


def key_columns(keys: np.ndarray, layout: KeyLayout) -> np.ndarray:
    """Keys as a ``(rows, words)`` uint64 array."""
    return np.ascontiguousarray(keys).view(np.uint64).reshape(-1, layout.words)


def keys_of_columns(columns: np.ndarray, layout: KeyLayout) -> np.ndarray:
    """The keys (``uint64`` or the wide structured dtype) of `key_columns`."""
    columns = np.ascontiguousarray(columns, dtype=np.uint64).reshape(-1, layout.words)
    if layout.narrow:
        return columns[:, 0].copy()
    return columns.view(layout.dtype).reshape(-1)


def _write_rows(group, layout: KeyLayout, keys, indptr, targets, **values) -> None:
    write_checksummed_array(group, "keys", key_columns(keys, layout))
    write_checksummed_array(group, "indptr", np.asarray(indptr, dtype=np.int64))
    write_checksummed_array(group, "targets", np.asarray(targets, dtype=np.int32))
    for name, array in values.items():
        write_checksummed_array(group, name, array)


def _read_rows(store, path: str, layout: KeyLayout, names: tuple) -> list:
    keys = keys_of_columns(store._read_single(f"{path}/keys"), layout)
    return [keys] + [store._read_single(f"{path}/{name}") for name in names]


def write_ngram_counts(store, generation: int, counts: NgramCounts) -> dict:
    """Write every order of ``counts`` into an uncommitted generation; returns the summary
    (``order``, ``contexts`` and ``entries`` per order k = 2..N) recorded on its group."""
    group = store.group.require_group(counts_path(generation))
    config = counts.config
    for order in counts.orders:
        _write_rows(group.require_group(f"k{order.order}"), config.suffix_layout(order.order),
                    order.keys, order.indptr, order.targets,
                    counts=np.asarray(order.counts, dtype=np.int64))
    summary = {"order": config.order, "contexts": [o.rows for o in counts.orders],
               "entries": [o.nnz for o in counts.orders]}
    group.attrs.put(summary)
    return summary


def read_ngram_counts(store, generation: int, config: NgramConfig) -> NgramCounts:
    """The n-gram counts of a (committed or base) generation, verified."""
    path = counts_path(generation)
    orders = []
    for k in range(2, config.order + 1):
        keys, indptr, targets, counts = _read_rows(store, f"{path}/k{k}",
                                                   config.suffix_layout(k),
                                                   ("indptr", "targets", "counts"))
        orders.append(OrderCounts(k, keys, indptr.astype(np.int64), targets.astype(np.int32),
                                  counts.astype(np.int64)))
    unigram = store.read_unigram(generation).astype(np.int64)
    return NgramCounts(config, orders, unigram)


def ngram_summary(store, generation: int) -> dict | None:
    """The recorded summary of a generation's n-gram counts (None when it has none)."""
    path = counts_path(generation)
    if path not in store.group:
        return None
    return dict(store.group[path].attrs)


def write_ngram_weights(root, model: NgramKneserNey) -> None:
    """Write a model's stored arrays into a weights version's group ``root``."""
    group = root.require_group("ngram")
    config = model.config
    write_checksummed_array(group, "unigram_numerators",
                            np.asarray(model.unigram_numerators, dtype=np.float64))
    for level in model.levels:
        _write_rows(group.require_group(f"k{level.order}"), config.suffix_layout(level.order),
                    level.keys, level.indptr, level.targets,
                    numerators=np.asarray(level.numerators, dtype=np.float64),
                    backoff=np.asarray(level.backoff, dtype=np.float64))
    group.attrs.put({"order": config.order, "unigram_backoff": float(model.unigram_backoff),
                     "discounts": np.asarray(model.discounts, dtype=float).tolist(),
                     "counts_of_counts": np.asarray(model.counts_of_counts).tolist()})


def read_ngram_weights(store, weights_id: str, config: NgramConfig) -> NgramKneserNey:
    """The stored arrays of a weights version's n-gram model, verified (without the derived
    ``probs`` and ``roots``: `streamsolve.core.ngram_weights.derive` adds them)."""
    path = weights_path(weights_id)
    try:
        attrs = dict(store.group[path].attrs)
    except KeyError as exc:
        raise store._unreadable(path, exc) from exc
    levels = []
    for k in range(2, config.order + 1):
        keys, indptr, targets, numerators, backoff = _read_rows(
            store, f"{path}/k{k}", config.suffix_layout(k),
            ("indptr", "targets", "numerators", "backoff"))
        levels.append(KneserNeyLevel(k, keys, indptr.astype(np.int64), targets.astype(np.int32),
                                     numerators, backoff))
    return NgramKneserNey(config, np.asarray(attrs["discounts"]),
                          np.asarray(attrs["counts_of_counts"], dtype=np.int64),
                          store._read_single(f"{path}/unigram_numerators"),
                          float(attrs["unigram_backoff"]), levels)

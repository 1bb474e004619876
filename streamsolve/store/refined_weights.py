"""Refined weights in the store: a weights version of dense or factored tables.

``streamsolve refine`` writes the trained weights as a new weights version
(``weights/v{id}``) that holds, instead of rank-one vectors and sparse row blocks::

    weights/v{id}/bias               float32 [V]
    weights/v{id}/table{b}           float32 [V, V]   (dense; chunked by row blocks)
    weights/v{id}/embedding{b}       float32 [V, d]   (factored)
    weights/v{id}/output{b}          float32 [d, V]
    weights/v{id}/row_offsets{b}     float32 [V]

every array checksummed and with its digest (`streamsolve.store.integrity`). The version's
attributes (``attrs["weights"]``) say ``kind: "refined"``, the layout (``dense`` or
``factored``, ``rank``), ``blocks: []`` (no sparse row blocks) and ``refined``: the
provenance (init, optimizer, lr, weight decay, steps, tokens, held-out curve, device, the
weights version it started from). The commit is one attribute write with a ``refined``
history event; the replaced version is retired, not deleted (`ModelStore.commit_attributes`).
A later ``finalize`` commits explicit weights again in the same way.
"""

from __future__ import annotations

import numpy as np

from .history import with_event
from .integrity import write_checksummed_array
from .layout import REFINED, StoreError, is_refined, refined_arrays, utc_now
from .weight_blocks import commit_weights_version


def commit_refined(store, bias: np.ndarray, tables: list | None = None,
                   factors: list | None = None, provenance: dict | None = None) -> str:
    """Write refined weights as a new weights version of ``store`` and switch to it.

    Call it holding the store's writer lock. Nothing is visible to readers until the final
    attribute write; any failure before it leaves the previous weights current and removes
    the arrays written (`commit_weights_version`; an ``OSError`` becomes one
    `StoreWriteError` line naming its errno).

    Parameters
    ----------
    store : ModelStore
    bias : ndarray (V,)
    tables : list of ndarray (V, V), optional
        Dense blocks (one per weight block).
    factors : list of (E (V, d), B (d, V), row_offsets (V,)), optional
        Factored blocks, instead of ``tables``.
    provenance : dict
        JSON-able; recorded under ``attrs["weights"]["refined"]`` and in the event.

    Returns
    -------
    str
        The new weights version id.
    """
    if (tables is None) == (factors is None):
        raise ValueError("give either dense tables or factors")
    meta = store.meta
    V = int(meta["config"]["vocab_size"])
    rows = int(meta["rows_per_block"])
    if tables is not None:
        layout, rank, n_blocks = "dense", None, len(tables)
    else:
        layout, rank, n_blocks = "factored", int(factors[0][0].shape[1]), len(factors)

    def write_arrays(root):
        write_checksummed_array(root, "bias", np.asarray(bias, dtype=np.float32))
        for b, table in enumerate(tables or []):
            write_checksummed_array(root, f"table{b}", np.asarray(table, dtype=np.float32),
                                    chunk_elements=rows * V)
        for b, (E, B, offsets) in enumerate(factors or []):
            write_checksummed_array(root, f"embedding{b}", np.asarray(E, dtype=np.float32))
            write_checksummed_array(root, f"output{b}", np.asarray(B, dtype=np.float32))
            write_checksummed_array(root, f"row_offsets{b}", np.asarray(offsets, np.float32))

    provenance = dict(provenance or {})

    def attributes(meta: dict, weights_id: str) -> dict:
        previous = meta.get("weights") or {}
        counts_id = meta["counts"]["id"]
        meta["weights"] = {"id": weights_id, "counts_id": counts_id, "written": utc_now(),
                           "blocks": [], "kind": REFINED, "layout": layout, "rank": rank,
                           "n_blocks": n_blocks, "form": previous.get("form"),
                           "smoothing": previous.get("smoothing"), "calibration": None,
                           "refined": provenance}
        return with_event(meta, {"event": "refined", "time": utc_now(),
                                 "weights_id": weights_id, "counts_id": counts_id,
                                 "layout": layout, "rank": rank,
                                 **{k: v for k, v in provenance.items() if k != "curve"}})

    return commit_weights_version(store, write_arrays, attributes)


def read_refined(store, allow_stale: bool = False):
    """The arrays of a store's refined weights version (one snapshot), verified.

    Returns
    -------
    (dict, dict)
        ``attrs["weights"]`` and ``{name: array}`` for every array of `refined_arrays`.

    Raises
    ------
    StoreError
        No weights, stale weights, or the current version is not a refined one.
    """
    view, info = store._current_weights(allow_stale)
    if not is_refined(info):
        raise StoreError(f"the weights of {store.url} are not refined weights")
    root = f"weights/v{info['id']}"
    return info, {name: view._read_single(f"{root}/{name}") for name in refined_arrays(info)}

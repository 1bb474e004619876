"""Weights in the store: content-addressed weight row blocks, weights versions, their commit.

A weights version (``weights/v{id}``) holds the rank-one vectors (``col_terms`` per block,
``bias``, ``log_unigram``) and names its row blocks (``weights/blocks/{key}``: CSR of the
sparse part plus ``row_terms``). A block's key hashes the digest of the count block it came
from and every global input of its formula (see `streamsolve.engine.finalize`), so
re-finalizing after an update recomputes only blocks whose inputs changed.

The store hands back arrays (`StoredWeights`), never a model object: the caller builds the
weights (``streamsolve.engine.finalize.read_store_weights``).
"""

from __future__ import annotations

import dataclasses
import logging
import uuid

import numpy as np

from .history import calibrated_event, finalized_event, with_event
from .integrity import array_digest, block_digest, write_checksummed_array
from .layout import (StoreError, count_block_path, live_paths, stack_row_blocks, utc_now,
                     write_failure)

logger = logging.getLogger(__name__)

#: Keys of ``attrs["weights"]`` that describe the version rather than its parameters.
VERSION_KEYS = ("id", "counts_id", "written", "blocks", "reused_blocks", "digests")


@dataclasses.dataclass
class StoredWeights:
    """The arrays and parameters of a store's weights version.

    Attributes
    ----------
    blocks : list of tuple
        Per weight block ``(sparse, row_terms, col_terms)``: ``sparse`` a V x V
        ``scipy.sparse.csr_array`` (float64), the two others float64 [V].
    bias, log_unigram : ndarray
    params : dict
        form, smoothing, mu, alpha and calibration (or None).
    """

    blocks: list
    bias: np.ndarray
    log_unigram: np.ndarray
    params: dict


def commit_weights_version(store, write_arrays, attributes) -> str:
    """Write a new weights version and make it the store's, or leave no trace of it.

    Parameters
    ----------
    store : ModelStore
        Held under its writer lock.
    write_arrays : callable
        ``write_arrays(group)`` writes the version's arrays into its (new) group.
    attributes : callable
        ``attributes(meta, weights_id)`` returns the store's attributes with the version
        (and its history events); committed in one write (`ModelStore.commit_attributes`).

    Returns
    -------
    str
        The new version id.

    Raises
    ------
    StoreWriteError
        For an ``OSError`` (full disk, file-size limit, permissions, ...): one line naming
        the errno. On any failure the version's group is removed unless the attribute write
        switched to it, so the previous weights stay current and nothing half-written stays.
    """
    weights_id = uuid.uuid4().hex[:12]
    path = f"weights/v{weights_id}"
    try:
        write_arrays(store.group.require_group(path))
        store.commit_attributes(attributes(dict(store.meta), weights_id))
    except BaseException as exc:
        _discard_version(store, path, weights_id)
        if isinstance(exc, OSError):
            raise write_failure(exc, f"writing the weights to {store.url}",
                                "The store is unchanged (its previous weights stay current)"
                                ) from exc
        raise
    return weights_id


def _discard_version(store, path: str, weights_id: str):
    """Remove an uncommitted weights version (best effort; never the committed one)."""
    try:
        if (store.unchecked_meta().get("weights") or {}).get("id") == weights_id:
            return  # the attribute write went through: it is the store's now
        if path in store.group:
            del store.group[path]
    except Exception:  # the next commit retires it
        logger.warning("could not remove the uncommitted weights version %s/%s", store.url, path)


class WeightBlocks:
    """Weight blocks and versions of a store (mixed into `ModelStore`)."""

    def count_block_digest(self, r: int, k: int) -> str:
        """Digest of row block ``k`` of count block ``r`` in the committed generation."""
        generation = self.committed_generation()
        block = self.group[count_block_path(generation, r, k)]
        digest = block.attrs.get("digest")
        if digest is None:  # stores written before digests were recorded
            digest = block_digest(*self.read_count_block_csr(generation, r, k))
        return digest

    def has_weight_block(self, key: str) -> bool:
        """Whether a complete weight row block ``key`` is stored, with its digest (a block
        without one, written before digests, is recomputed rather than reused unchecked)."""
        path = f"weights/blocks/{key}"
        if path not in self.group:
            return False
        attrs = self.group[path].attrs
        return bool(attrs.get("complete")) and "digest" in attrs

    def write_weight_block(self, key: str, indptr, indices, data, row_terms):
        """Write one weight row block (marked complete only after all its arrays)."""
        group = self.group.require_group(f"weights/blocks/{key}")
        arrays = {"indptr": np.asarray(indptr, dtype=np.int64),
                  "indices": np.asarray(indices, dtype=np.int32),
                  "data": np.asarray(data, dtype=np.float64),
                  "row_terms": np.asarray(row_terms, dtype=np.float64)}
        for name, values in arrays.items():
            write_checksummed_array(group, name, values)
        data = arrays["data"]
        group.attrs.put({"complete": True, "digest": array_digest(*arrays.values()),
                         "data_min": float(data.min(initial=0.0)),
                         "data_max": float(data.max(initial=0.0))})

    def weight_nodes(self) -> set[str]:
        """Paths of the weights versions and weight row blocks present (and of their groups)."""
        paths = {p for p in self._node_paths() if p.startswith("weights/")}
        return paths | {g for g in ("weights", "weights/blocks") if g in self.group}

    def discard_weight_nodes(self, keep: set[str]):
        """Remove weights versions and row blocks not in ``keep`` (`weight_nodes` taken before
        a failed finalize: what it half-wrote); never what the store's weights use."""
        live = live_paths(self.meta)
        for path in sorted(self.weight_nodes() - keep - live - {"weights", "weights/blocks"}):
            del self.group[path]
        for path in ("weights/blocks", "weights"):  # groups this finalize created, left empty
            if path not in keep and path in self.group and not self.group_names(path):
                del self.group[path]

    def weight_block_range(self, key: str) -> tuple[float, float]:
        """``(min, max)`` of a weight row block's values (0 included), from its attributes
        (blocks written before they were recorded are read)."""
        attrs = self.group[f"weights/blocks/{key}"].attrs
        if "data_min" in attrs and "data_max" in attrs:
            return float(attrs["data_min"]), float(attrs["data_max"])
        data = self.read_weight_block(key)[2]
        return float(data.min(initial=0.0)), float(data.max(initial=0.0))

    def read_weight_block(self, key: str):
        """``(indptr, indices, data, row_terms)`` of a weight row block, verified."""
        path = f"weights/blocks/{key}"
        node, arrays = self._read_arrays(path, ("indptr", "indices", "data", "row_terms"))
        indptr, indices, data, row_terms = arrays
        self._check_csr(path, indptr, indices, data)
        if "digest" not in node.attrs and self._weight_digest_required(key):
            raise self._damaged(path, "digest missing (its weights version recorded one for "
                                      "every block)")
        self._check_digest(path, node.attrs.get("digest"),
                           lambda: array_digest(indptr, indices, data, row_terms))
        return indptr, indices, data, row_terms

    def _weight_digest_required(self, key: str) -> bool:
        """Whether ``key`` is a block of the current weights, committed with block digests."""
        info = self.meta.get("weights") or {}
        return info.get("digests") is True and any(key in keys for keys in info["blocks"])

    def commit_weights(self, params: dict, block_keys: list[list[str]], col_terms: np.ndarray,
                       bias: np.ndarray, log_unigram: np.ndarray,
                       counts_id: str | None = None, reused_blocks: int | None = None,
                       write_extra=None) -> str:
        """Make written weight blocks plus the rank-one vectors the store's weights.

        One attribute write switches to them and appends a ``finalized`` event (and a
        ``calibrated`` one when ``params`` holds calibration scalars) to the history; the
        replaced version is retired, not deleted. ``counts_id`` names the counts they were
        computed from (default: the committed ones); ``reused_blocks`` (how many row
        blocks a re-finalize kept) goes into the event. ``write_extra(group)`` writes more
        arrays into the version's group (the n-gram blocks, issue 24).

        Returns
        -------
        str
            The new weights version id.
        """
        arrays = {"col_terms": np.asarray(col_terms, dtype=np.float64),
                  "bias": np.asarray(bias, dtype=np.float64),
                  "log_unigram": np.asarray(log_unigram, dtype=np.float64)}

        def attributes(meta: dict, weights_id: str) -> dict:
            used = counts_id or meta["counts"]["id"]
            meta["weights"] = {"id": weights_id, "counts_id": used, "written": utc_now(),
                               "blocks": block_keys, "digests": True, **params}
            meta = with_event(meta, finalized_event(weights_id, used, params, reused_blocks))
            if params.get("calibration"):
                meta = with_event(meta, calibrated_event(weights_id, params["calibration"]))
            return meta

        def write(root):
            for name, values in arrays.items():
                write_checksummed_array(root, name, values)
            if write_extra is not None:  # issue 24: the n-gram blocks
                write_extra(root)

        return commit_weights_version(self, write, attributes)

    def set_calibration(self, calibration: dict | None):
        """Record calibration scalars on the current weights (with a ``calibrated`` event)."""
        meta = dict(self.meta)
        if "weights" not in meta:
            raise StoreError(f"store {self.url} has no weights to calibrate")
        meta["weights"] = {**meta["weights"], "calibration": calibration}
        if calibration:
            meta = with_event(meta, calibrated_event(meta["weights"]["id"], calibration))
        self._set_meta(meta)

    def set_calibration_source(self, source: dict | None):
        """Record the text a re-finalize re-calibrates on (``{"kind": "files", "paths"}`` or
        ``{"kind": "heldout", ...}``: a `streamsolve.text.holdout.HoldOut` and its shards)."""
        meta = dict(self.meta)
        meta["calibration_source"] = source
        self._set_meta(meta)

    def read_weights_index(self, allow_stale: bool = False) -> StoredWeights:
        """The store's weights without their row blocks: ``blocks`` holds, per weight block,
        ``(row block keys, None, col_terms)``; read a row block with `read_weight_block`.

        Raises
        ------
        StoreError
            As `read_weights`.
        """
        view, info = self._current_weights(allow_stale)
        root = f"weights/v{info['id']}"
        col_terms = view._read_single(f"{root}/col_terms")
        blocks = [(list(keys), None, col_terms[r]) for r, keys in enumerate(info["blocks"])]
        params = {k: v for k, v in info.items() if k not in VERSION_KEYS}
        return StoredWeights(blocks, view._read_single(f"{root}/bias"),
                             view._read_single(f"{root}/log_unigram"), params)

    def _current_weights(self, allow_stale: bool):
        """``(snapshot, weights attributes)``, refusing a store without weights or stale ones."""
        view = self.snapshot()
        meta = view.meta
        info = meta.get("weights")
        if not info:
            raise StoreError(f"store {self.url} has no weights: run `streamsolve finalize {self.url}`")
        if info["counts_id"] != meta.get("counts", {}).get("id") and not allow_stale:
            raise StoreError(f"the weights in {self.url} are stale (counts changed since they were "
                             f"computed): run `streamsolve finalize {self.url}` again")
        return view, info

    def read_weights(self, allow_stale: bool = False) -> StoredWeights:
        """The arrays and parameters of the store's weights (one snapshot), verified.

        Raises
        ------
        StoreError
            If there are no weights, or they were computed from older counts (stale).
        """
        view, info = self._current_weights(allow_stale)
        root = f"weights/v{info['id']}"
        V = view.config.vocab_size
        col_terms = view._read_single(f"{root}/col_terms")
        blocks = []
        for r, keys in enumerate(info["blocks"]):
            pieces = [view.read_weight_block(key) for key in keys]
            sparse = stack_row_blocks([p[:3] for p in pieces], V, np.float64)
            blocks.append((sparse, np.concatenate([p[3] for p in pieces]), col_terms[r]))
        params = {k: v for k, v in info.items() if k not in VERSION_KEYS}
        return StoredWeights(blocks, view._read_single(f"{root}/bias"),
                             view._read_single(f"{root}/log_unigram"), params)

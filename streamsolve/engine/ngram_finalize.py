"""Finalize and load the suffix n-gram blocks of a store (issue 24).

- `attach_ngram`: after the offsets' weights are computed, the interpolated modified
  Kneser–Ney model of the committed generation's n-gram counts
  (`streamsolve.core.ngram_kneser_ney.estimate_kneser_ney`), joined to them as
  `streamsolve.core.ngram_weights.NgramWeights`;
- `ngram_writer`: what the weights commit writes into the new version's group beside the
  offsets' vectors (`streamsolve.store.ngram_blocks.write_ngram_weights`), so the n-gram
  weights are committed, retired and discarded with the version;
- `with_stored_ngram`: the weights read from a store, joined to the version's n-gram model.

A store counted without ``--ngram`` passes through all three unchanged.
"""

from __future__ import annotations

import logging
import time

from ..core.ngram_kneser_ney import estimate_kneser_ney
from ..core.ngram_weights import NgramWeights, derive
from ..store import ngram_blocks
from .ngram_tasks import ngram_config

logger = logging.getLogger(__name__)


def attach_ngram(store, weights):
    """``weights`` joined to the Kneser–Ney model of the store's committed n-gram counts
    (unchanged for a store without n-gram blocks)."""
    view = store.snapshot()
    config = ngram_config(view.config)
    if config is None:
        return weights
    started = time.perf_counter()
    counts = ngram_blocks.read_ngram_counts(view, view.committed_generation(), config)
    model = estimate_kneser_ney(counts)
    logger.info("n-gram Kneser-Ney, orders 2..%d: %s contexts, %s entries, discounts %s "
                "(%.1f s)", config.order, [level.rows for level in model.levels],
                [level.nnz for level in model.levels],
                [[round(float(d), 3) for d in row] for row in model.discounts],
                time.perf_counter() - started)
    return NgramWeights(weights, model)


def ngram_writer(weights):
    """``write(root)`` of the n-gram arrays of ``weights`` (None when it has none)."""
    if not isinstance(weights, NgramWeights):
        return None
    return lambda root: ngram_blocks.write_ngram_weights(root, weights.model)


def ngram_info(view) -> dict:
    """``{"ngram": {order, contexts, entries}}`` of the committed generation for ``info``
    (empty for a store without n-gram blocks)."""
    if not view.config.ngram or "counts" not in view.meta:
        return {}
    return {"ngram": ngram_blocks.ngram_summary(view, view.committed_generation())}


def with_stored_ngram(view, weights):
    """The store's weights joined to the n-gram model of their version (unchanged when the
    version has none)."""
    info = view.meta.get("weights") or {}
    config = ngram_config(view.config)
    if config is None or "ngram" not in info:
        return weights
    model = derive(ngram_blocks.read_ngram_weights(view, info["id"], config))
    return NgramWeights.from_params(weights, model, info)

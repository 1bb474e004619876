"""Finalize a store: read its count row blocks, write weight row blocks, commit the weights.

The formulas are pure (`streamsolve.core.smoothing`, `streamsolve.core.weights`); this module
is the I/O around them. A weight row block is a pure function of its count block and a few
global inputs (the unigram for Dirichlet row weights, column sums for the column form), so
its key in the store hashes those; blocks whose inputs are unchanged since the last finalize
are reused, not recomputed. Nothing becomes the store's weights before
`commit_store_weights` (one attribute write).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging

import numpy as np
import scipy.sparse as sp

from ..core.smoothing import (SparseRankOne, block_weights, check_smoothing,
                              check_smoothing_scale, resolve_strengths, smoothed_unigram)
from ..core.kneser_ney import KneserNeyStatistics, block_statistics, kneser_ney_parameters
from ..core.weights import ExplicitWeights
from ..store.layout import StoreCorruptError, row_blocks

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class PendingWeights:
    """Weights whose row blocks are written to a store but which are not its weights yet.

    Made by `compute_store_weights`; `commit_store_weights` switches the store to them in one
    attribute write (with calibration scalars, if any), so until then the store's previous
    weights stay current and readable.

    Attributes
    ----------
    weights : ExplicitWeights
    block_keys : list of list of str
        The weight row blocks of each weight block, in row order.
    col_terms : ndarray, shape (blocks, V)
    counts_id : str
        The counts they were computed from.
    reused_blocks : int
        Row blocks kept from an earlier finalize.
    """

    weights: ExplicitWeights
    block_keys: list
    col_terms: np.ndarray
    counts_id: str
    reused_blocks: int = 0


def finalize_store(store, form: str = "row", smoothing: str = "dirichlet",
                   mu: float | None = None, alpha: float | None = None,
                   reuse: bool = True, discount=None) -> ExplicitWeights:
    """Explicit weights from a `ModelStore`, row block by row block (counts never densified).

    The weights are returned and written to the store (`compute_store_weights` then
    `commit_store_weights`); ``reuse=False`` recomputes every row block.
    """
    pending = compute_store_weights(store, form, smoothing, mu, alpha, reuse, discount)
    commit_store_weights(store, pending)
    return pending.weights


def commit_store_weights(store, pending: PendingWeights,
                         weights: ExplicitWeights | None = None) -> str:
    """Make pending weights the store's (``weights``: the same weights, e.g. calibrated).

    Returns
    -------
    str
        The new weights version id.
    """
    weights = pending.weights if weights is None else weights
    return store.commit_weights(weights.params(), pending.block_keys, pending.col_terms,
                                pending.weights.bias, pending.weights.log_unigram,
                                counts_id=pending.counts_id,
                                reused_blocks=pending.reused_blocks)


def read_store_weights(store, allow_stale: bool = False) -> ExplicitWeights:
    """The store's explicit weights (one snapshot), built from the arrays it holds.

    Raises
    ------
    StoreError
        If there are no weights, or they are stale and ``allow_stale`` is False.
    """
    view = store.snapshot()
    stored = view.read_weights(allow_stale=allow_stale)
    blocks = [SparseRankOne(sparse, row_terms, col_terms)
              for sparse, row_terms, col_terms in stored.blocks]
    return ExplicitWeights.from_params(blocks, stored.bias, stored.log_unigram, view.config,
                                       stored.params)


def compute_store_weights(store, form: str = "row", smoothing: str = "dirichlet",
                          mu: float | None = None, alpha: float | None = None,
                          reuse: bool = True, discount=None) -> PendingWeights:
    """Compute and write the weight row blocks of a store's counts, without committing them.

    Every count block is read (and so verified against its digest) from one snapshot of the
    store, also when its weights are reused. Raises `StoreCorruptError` on damaged counts.
    Kneser–Ney (``discount``: see `core.weights.finalize`) first makes one statistics pass
    over each offset's row blocks (`_kneser_ney_globals`).
    """
    check_smoothing(smoothing, mu, alpha, form, discount)
    source = store.snapshot()
    config = source.config
    V = config.vocab_size
    mu, alpha = resolve_strengths(smoothing, mu, alpha, V)
    log_p = np.log(smoothed_unigram(source.read_unigram()))
    check_smoothing_scale(smoothing, mu, alpha, float(np.exp(log_p.min())), V)
    ranges = list(enumerate(row_blocks(V, source.meta["rows_per_block"])))
    blocks, block_keys, col_terms_all, used_discounts = [], [], [], []
    reused = 0
    for r in range(config.n_blocks):
        col_sums = log_q_all = discounts = None
        background = log_p  # log of the row form's column background
        if smoothing == "kneser-ney":
            discounts, background = _kneser_ney_globals(source, r, V, discount)
            used_discounts.append(discounts)
            global_inputs = np.asarray(discounts).tobytes() + background.tobytes()
        elif form == "column":
            col_sums = np.zeros(V)
            row_sums = np.zeros(V)
            for start, stop, (ip, ix, d) in source.iter_count_blocks(r):
                np.add.at(col_sums, ix, d)
                rows = np.repeat(np.arange(stop - start), np.diff(ip))
                row_sums[start:stop] = np.bincount(rows, weights=d, minlength=stop - start)
            log_q_all = np.log(smoothed_unigram(row_sums))
            global_inputs = col_sums.tobytes() + log_q_all.tobytes()
        elif smoothing == "dirichlet":
            global_inputs = log_p.tobytes()
        else:
            global_inputs = b""
        global_digest = hashlib.blake2b(global_inputs, digest_size=16).hexdigest()
        empty = sp.csr_array((0, V), dtype=np.int64)
        col_terms = block_weights(empty, form, smoothing, mu, alpha, background,
                                  np.zeros(0) if form == "column" else None, col_sums,
                                  row_sums=np.zeros(0), discounts=discounts).col_terms
        pieces_S, row_terms, keys = [], [], []
        for k, (start, stop) in ranges:
            # read (and so verify) the count block even when its weights are reused
            ip, ix, d = source.read_count_block_csr(source.committed_generation(), r, k)
            F = sp.csr_array((d, ix, ip), shape=(stop - start, V))
            recipe = f"{r}|{k}|{start}|{stop}|{V}|{form}|{smoothing}|{mu}|{alpha}|" \
                     f"{source.count_block_digest(r, k)}|{global_digest}"
            key = hashlib.blake2b(recipe.encode(), digest_size=16).hexdigest()
            previous = _stored_weight_block(source, key, (stop - start, V)) if reuse else None
            if previous is not None:
                S, rt = previous
                reused += 1
            else:
                log_q = log_q_all[start:stop] if log_q_all is not None else None
                block = block_weights(F, form, smoothing, mu, alpha, background, log_q, col_sums,
                                      discounts=discounts)
                S, rt = block.sparse, block.row_terms
                store.write_weight_block(key, S.indptr, S.indices, S.data, rt)
            pieces_S.append(S)
            row_terms.append(rt)
            keys.append(key)
        S = sp.csr_array(sp.vstack(pieces_S, format="csr"))
        blocks.append(SparseRankOne(S, np.concatenate(row_terms), col_terms))
        block_keys.append(keys)
        col_terms_all.append(col_terms)
        logger.info("finalized block %d/%d (%d nonzeros)", r + 1, config.n_blocks, S.nnz)
    total = len(ranges) * config.n_blocks
    logger.info("finalize: recomputed %d of %d row blocks, reused %d unchanged", total - reused,
                total, reused)
    weights = ExplicitWeights(blocks, log_p, config, form, smoothing, mu, alpha,
                              discounts=used_discounts if smoothing == "kneser-ney" else None)
    weights.reused_blocks = reused
    return PendingWeights(weights, block_keys, np.stack(col_terms_all),
                          source.meta["counts"]["id"], reused)


def _kneser_ney_globals(source, r: int, V: int, discount):
    """Kneser–Ney's global-statistics pass over the row blocks of offset ``r`` of a store:
    ``(discounts, log q)``, the inputs every weight row block needs besides its own counts."""
    statistics = KneserNeyStatistics.empty(V)
    for _start, _stop, (ip, ix, d) in source.iter_count_blocks(r):
        statistics = statistics + block_statistics(ip, ix, d, V)
    return kneser_ney_parameters(statistics, discount)


def _stored_weight_block(store, key: str, shape: tuple):
    """``(S, row_terms)`` of a stored weight block, or None when absent or damaged (a damaged
    block is derived data: it is recomputed from its verified counts and written again)."""
    if not store.has_weight_block(key):
        return None
    try:
        ip, ix, d, rt = store.read_weight_block(key)
    except StoreCorruptError as exc:
        logger.warning("recomputing a damaged weight block: %s", exc)
        return None
    return sp.csr_array((d, ix, ip), shape=shape), rt

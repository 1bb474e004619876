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
from ..core import strength_search
from ..core.weights import ExplicitWeights
from ..core.blocked_scoring import LazyScoringParts, LazySparseRankOne, RowBlockCache
from ..core.dense_lm import RefinedWeights
from ..store.layout import StoreCorruptError, row_blocks, write_failure
from ..store.manifest import manifest_entries
from ..store.refined_weights import is_refined, read_refined
from .progress import TaskProgress
from .ngram_finalize import ngram_writer, with_stored_ngram  # issue 24

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
    present : set of str, optional
        The store's weight nodes before they were written (what a failed commit keeps).
    """

    weights: ExplicitWeights
    block_keys: list
    col_terms: np.ndarray
    counts_id: str
    reused_blocks: int = 0
    present: set | None = None


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
    try:
        return store.commit_weights(weights.params(), pending.block_keys, pending.col_terms,
                                    pending.weights.bias, pending.weights.log_unigram,
                                    counts_id=pending.counts_id,
                                    reused_blocks=pending.reused_blocks,
                                    write_extra=ngram_writer(weights))  # issue 24
    except BaseException as exc:  # the version removed itself; remove the new row blocks
        if pending.present is not None:
            _write_failed(store, pending.present, exc)
        raise


#: Bytes of CSR weight row blocks a lazily loaded model keeps (`read_store_weights`).
DEFAULT_CACHE_BYTES = 256 << 20


def read_store_weights(store, allow_stale: bool = False, lazy: bool = True,
                       cache_bytes: int | None = None) -> ExplicitWeights:
    """The store's explicit weights (one snapshot), built from the arrays it holds.

    With ``lazy`` (default) only the O(V) vectors are read now; the sparse part ``S`` is
    read row block by row block when scoring needs it, through a bounded LRU of
    ``cache_bytes`` (default `DEFAULT_CACHE_BYTES`), so the model's memory does not grow
    with its number of nonzeros (`streamsolve.core.blocked_scoring`; the log-probabilities
    are bit-identical to the eager model's). ``lazy=False`` stacks every block in memory.

    Raises
    ------
    StoreError
        If there are no weights, or they are stale and ``allow_stale`` is False.
    """
    view = store.snapshot()
    if is_refined(view.meta.get("weights")):  # written by `streamsolve refine`
        return refined_store_weights(view, allow_stale)
    if not lazy:
        stored = view.read_weights(allow_stale=allow_stale)
        blocks = [SparseRankOne(sparse, row_terms, col_terms)
                  for sparse, row_terms, col_terms in stored.blocks]
        return with_stored_ngram(view, ExplicitWeights.from_params(  # issue 24 hook
            blocks, stored.bias, stored.log_unigram, view.config, stored.params))
    index = view.read_weights_index(allow_stale=allow_stale)
    keys = [block[0] for block in index.blocks]
    weights = lazy_weights(view, keys, [block[2] for block in index.blocks],
                           index.log_unigram, view.config, index.params, cache_bytes)
    return with_stored_ngram(view, weights)  # issue 24 hook


def refined_store_weights(view, allow_stale: bool = False) -> RefinedWeights:
    """The refined (dense or factored) weights of a store view (`store.refined_weights`)."""
    info, arrays = read_refined(view, allow_stale)
    provenance = {**info.get("refined", {}), "form": info.get("form"),
                  "smoothing": info.get("smoothing"), "weights_id": info["id"]}
    n = int(info["n_blocks"])
    if info["layout"] == "dense":
        return RefinedWeights(view.config, arrays["bias"].astype(np.float64),
                              tables=[arrays[f"table{b}"] for b in range(n)],
                              provenance=provenance)
    factors = [tuple(arrays[f"{name}{b}"].astype(np.float64)  # small: V x d, d x V, V
                     for name in ("embedding", "output", "row_offsets")) for b in range(n)]
    return RefinedWeights(view.config, arrays["bias"].astype(np.float64), factors=factors,
                          provenance=provenance)


def lazy_weights(view, keys: list, col_terms: list, log_unigram: np.ndarray, config,
                 params: dict, cache_bytes: int | None = None,
                 row_terms: list | None = None, data_range: list | None = None) -> ExplicitWeights:
    """`ExplicitWeights` whose ``S`` is read from the weight row blocks ``keys`` (per weight
    block, in row order) of a store view on demand. ``row_terms`` and ``data_range`` (per
    block) are read from the blocks when not given."""
    V = config.vocab_size
    bounds = np.asarray([0] + [stop for _start, stop in
                               row_blocks(V, view.meta["rows_per_block"])], dtype=np.int64)
    if len(keys) and len(keys[0]) != bounds.size - 1:
        raise StoreCorruptError(f"store {view.url}: {len(keys[0])} weight row blocks for "
                                f"{bounds.size - 1} row ranges")

    def load(b: int, k: int):
        ip, ix, d, _rt = view.read_weight_block(keys[b][k])
        return ip, ix, d

    if row_terms is None:
        row_terms = [np.concatenate([view.read_weight_block(key)[3] for key in block_keys])
                     for block_keys in keys]
    if data_range is None:
        data_range = []
        for block_keys in keys:
            ranges = [view.weight_block_range(key) for key in block_keys]
            data_range.append((min(lo for lo, _ in ranges), max(hi for _, hi in ranges)))
    cache = RowBlockCache(load, DEFAULT_CACHE_BYTES if cache_bytes is None else cache_bytes)
    block_of = [r if config.aggregation == "cat" else 0 for r in range(config.radius)]
    parts = LazyScoringParts(cache, [bounds] * len(keys), row_terms, col_terms, log_unigram,
                             block_of, data_range)
    blocks = [LazySparseRankOne(parts, b) for b in range(len(keys))]
    weights = ExplicitWeights.from_params(blocks, None, log_unigram, config, params)
    # where the parts come from: a cluster worker rebuilds them from it (cluster_calibration)
    parts.source = {"url": view.url, "storage_options": view.storage_options,
                    "keys": [list(k) for k in keys], "params": dict(params)}
    weights._scoring_parts = parts
    return weights


def compute_store_weights(store, form: str = "row", smoothing: str = "dirichlet",
                          mu: float | None = None, alpha: float | None = None,
                          reuse: bool = True, discount=None, scheduler: str = "threads",
                          cache_bytes: int | None = None,
                          search_positions: tuple | None = None) -> PendingWeights:
    """Compute and write the weight row blocks of a store's counts, without committing them.

    One task per weight row block (``dask.delayed``, run with ``scheduler``: "threads" by
    default, "sync" for one at a time; the result is the same bit for bit). A task reads
    its count block, computes or reuses its weights and writes them; it hands back only the
    block's key, row terms and value range, so memory holds a few row blocks at a time and
    the returned weights read ``S`` lazily from the written blocks (`lazy_weights`).

    Every count block is read (and so verified against its digest) from one snapshot of the
    store, also when its weights are reused. Raises `StoreCorruptError` on damaged counts.
    Kneser–Ney (``discount``: see `core.weights.finalize`) first makes one statistics pass
    over each offset's row blocks (`_kneser_ney_globals`).

    ``search_positions`` = ``(contexts (n, R), targets (n,))``, held-out positions: the
    smoothing strength of each block (Dirichlet ``mu``, Kneser–Ney discounts) is then chosen
    on them (`streamsolve.core.strength_search`, in the same statistics pass) instead of the
    default; only for the row form with Dirichlet or Kneser–Ney and no explicit
    ``mu``/``discount`` (else ignored). The choices are recorded in the weights' params
    (``smoothing_search``).
    """
    import dask

    check_smoothing(smoothing, mu, alpha, form, discount)
    source = store.snapshot()
    config = source.config
    V = config.vocab_size
    explicit_mu = mu is not None
    mu, alpha = resolve_strengths(smoothing, mu, alpha, V)
    log_p = np.log(smoothed_unigram(source.read_unigram()))
    check_smoothing_scale(smoothing, mu, alpha, float(np.exp(log_p.min())), V)
    ranges = list(enumerate(row_blocks(V, source.meta["rows_per_block"])))
    tasks, col_terms_all, used_discounts = [], [], []
    generation = source.committed_generation()
    searching = (search_positions is not None and form == "row" and discount is None
                 and smoothing in strength_search.SEARCH_RANGES and not explicit_mu)
    searches, block_mu = [], []
    for r in range(config.n_blocks):
        col_sums = log_q_all = discounts = None
        background = log_p  # log of the row form's column background
        mu_r = mu
        if searching:
            found, discounts, background, searched_mu = _searched_strength(
                source, r, V, smoothing, mu, log_p, search_positions)
            searches.append(found.summary())
            mu_r = mu if searched_mu is None else searched_mu
            if discounts is not None:
                used_discounts.append(discounts)
                global_inputs = np.asarray(discounts).tobytes() + background.tobytes()
            else:
                global_inputs = log_p.tobytes()
        elif smoothing == "kneser-ney":
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
        block_mu.append(mu_r)
        global_digest = hashlib.blake2b(global_inputs, digest_size=16).hexdigest()
        empty = sp.csr_array((0, V), dtype=np.int64)
        col_terms = block_weights(empty, form, smoothing, mu_r, alpha, background,
                                  np.zeros(0) if form == "column" else None, col_sums,
                                  row_sums=np.zeros(0), discounts=discounts).col_terms
        col_terms_all.append(col_terms)
        recipe = _BlockRecipe(V, form, smoothing, mu_r, alpha, background, col_sums, discounts,
                              global_digest)
        tasks.append([dask.delayed(_weight_row_block, pure=False)(
            source, store, generation, r, k, start, stop, recipe,
            log_q_all[start:stop] if log_q_all is not None else None, reuse)
            for k, (start, stop) in ranges])
    present = store.weight_nodes()
    try:
        with TaskProgress():  # the same bar (or log lines) as counting's tasks
            (results,) = dask.compute(tasks, scheduler=scheduler)
        failed = [res for block in results for res in block if isinstance(res, OSError)]
        if failed:  # raised once every task has ended: none writes after the clean-up
            raise failed[0]
    except BaseException as exc:  # e.g. a full disk: remove the blocks written, keep the rest
        _write_failed(store, present, exc)
        raise
    block_keys = [[res.key for res in block] for block in results]
    reused = sum(res.reused for block in results for res in block)
    for r, block in enumerate(results):
        logger.info("finalized block %d/%d (%d nonzeros)", r + 1, config.n_blocks,
                    sum(res.nnz for res in block))
    total = len(ranges) * config.n_blocks
    logger.info("finalize: recomputed %d of %d row blocks, reused %d unchanged", total - reused,
                total, reused)
    row_terms = [np.concatenate([res.row_terms for res in block]) for block in results]
    data_range = [(min(res.low for res in block), max(res.high for res in block))
                  for block in results]
    params = {"form": form, "smoothing": smoothing, "alpha": alpha,
              "mu": block_mu if searching and smoothing == "dirichlet" else mu,
              "discounts": used_discounts if smoothing == "kneser-ney" else None}
    if searching:
        params["smoothing_search"] = {"positions": int(np.asarray(search_positions[1]).size),
                                      "blocks": searches}
    weights = lazy_weights(store.snapshot(), block_keys, col_terms_all, log_p, config, params,
                           cache_bytes, row_terms, data_range)
    weights.reused_blocks = reused
    return PendingWeights(weights, block_keys, np.stack(col_terms_all),
                          source.meta["counts"]["id"], reused, present)


def _write_failed(store, present: set[str], exc: BaseException):
    """After a failed weights write: remove what it wrote (weight nodes not in ``present``,
    best effort); an ``OSError`` becomes the one-line `StoreWriteError` naming its errno."""
    try:
        store.discard_weight_nodes(present)
    except Exception:  # unreferenced: the next commit retires them
        logger.warning("could not remove the weight blocks of the failed write to %s", store.url)
    if isinstance(exc, OSError):
        raise write_failure(exc, f"writing the weights to {store.url}",
                            "The store is unchanged (its previous weights stay current)") from exc


@dataclasses.dataclass
class _BlockRecipe:
    """The inputs every row block of one weight block shares."""

    vocab_size: int
    form: str
    smoothing: str
    mu: float | None
    alpha: float | None
    background: np.ndarray
    col_sums: np.ndarray | None
    discounts: tuple | None
    global_digest: str


@dataclasses.dataclass
class _RowBlockResult:
    key: str
    row_terms: np.ndarray
    nnz: int
    low: float
    high: float
    reused: bool


def _weight_row_block(source, store, generation: int, r: int, k: int, start: int, stop: int,
                      recipe: _BlockRecipe, log_q, reuse: bool) -> _RowBlockResult | OSError:
    """One task: the weight row block ``k`` of weight block ``r`` (computed and written, or
    reused when its content key is already stored); a failed write returns its ``OSError``."""
    V = recipe.vocab_size
    # read (and so verify) the count block even when its weights are reused
    ip, ix, d = source.read_count_block_csr(generation, r, k)
    F = sp.csr_array((d, ix, ip), shape=(stop - start, V))
    text = f"{r}|{k}|{start}|{stop}|{V}|{recipe.form}|{recipe.smoothing}|{recipe.mu}|" \
           f"{recipe.alpha}|{source.count_block_digest(r, k)}|{recipe.global_digest}"
    key = hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
    previous = _stored_weight_block(source, key, (stop - start, V)) if reuse else None
    if previous is not None:
        S, rt = previous
    else:
        block = block_weights(F, recipe.form, recipe.smoothing, recipe.mu, recipe.alpha,
                              recipe.background, log_q, recipe.col_sums,
                              discounts=recipe.discounts)
        S, rt = block.sparse, block.row_terms
        try:
            store.write_weight_block(key, S.indptr, S.indices, S.data, rt)
        except OSError as exc:  # returned: raised once every other task has ended
            return exc
    data = np.asarray(S.data)
    return _RowBlockResult(key, np.asarray(rt, dtype=np.float64), int(S.nnz),
                           float(data.min(initial=0.0)), float(data.max(initial=0.0)),
                           previous is not None)


def _kneser_ney_globals(source, r: int, V: int, discount):
    """Kneser–Ney's global-statistics pass over the row blocks of offset ``r`` of a store:
    ``(discounts, log q)``, the inputs every weight row block needs besides its own counts."""
    statistics = KneserNeyStatistics.empty(V)
    for _start, _stop, (ip, ix, d) in source.iter_count_blocks(r):
        statistics = statistics + block_statistics(ip, ix, d, V)
    return kneser_ney_parameters(statistics, discount)


def _searched_strength(source, b: int, V: int, smoothing: str, mu: float, log_p: np.ndarray,
                       positions: tuple):
    """Choose the smoothing strength of weight block ``b`` on held-out ``positions``.

    One pass over the block's count row blocks gathers Kneser–Ney's statistics and, for
    every position scored by the block, its `strength_search.PositionStatistics`; the 1-D
    search then runs on those alone.

    Returns
    -------
    (ScaleSearch, discounts or None, log background, mu or None)
    """
    contexts, targets = (np.asarray(a, dtype=np.int64) for a in positions)
    contexts = np.atleast_2d(contexts)
    offsets = range(contexts.shape[1]) if source.config.aggregation == "sum" else [b]
    ctx = np.concatenate([contexts[:, r] for r in offsets])
    tgt = np.tile(targets, len(offsets))
    stats = strength_search.PositionStatistics.empty(tgt.size)
    statistics = KneserNeyStatistics.empty(V)
    for start, _stop, (ip, ix, d) in source.iter_count_blocks(b):
        if smoothing == "kneser-ney":
            statistics = statistics + block_statistics(ip, ix, d, V)
        strength_search.gather_positions(ip, ix, d, start, ctx, tgt, stats)
    result = strength_search.choose_strength(stats, tgt, smoothing, mu, log_p, statistics)
    found = result[0]
    logger.info("smoothing search, block %d: s = %.4g (%d positions): %.4f -> %.4f nats/token",
                b + 1, found.scale, tgt.size, found.default_cross_entropy, found.cross_entropy)
    return result


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


def recorded_heldout(store, source: dict, storage_options: dict | None = None):
    """The held-out documents a store's ``calibration_source`` of kind ``"heldout"`` names:
    the same split of the same shards that `solve` held out of counting.

    Returns
    -------
    (list of np.ndarray, int)
        Held-out documents as token ids and their UTF-8 bytes.

    Raises
    ------
    OSError
        When a shard is gone or no longer holds the bytes that were counted.
    """
    from ..text.holdout import HoldOut
    from ..text.reading import ReadOptions
    from .tasks import heldout_of_shard

    meta = store.meta
    read_meta = {k: v for k, v in meta.get("read_options", {}).items()
                 if k in ("documents", "text_field", "max_line_bytes")}
    read_options = ReadOptions(storage_options=storage_options, **read_meta)
    holdout = HoldOut(source["fraction"], source["group_lines"], source["group_bytes"],
                      source["max_tokens_per_shard"])
    counted = {s["path"]: s.get("sha256") for s in manifest_entries(meta)}
    logger.info("re-calibrating on the hold-out recorded by solve: %s of %d shard(s)",
                holdout.describe(), len(source["shards"]))
    docs, n_bytes = [], 0
    for path in source["shards"]:
        held, held_bytes, sha = heldout_of_shard(path, store.tokenizer_text(), store.config,
                                                 read_options, holdout)
        if counted.get(path) != sha:
            raise OSError(f"shard {path} no longer holds the bytes that were counted")
        docs += held
        n_bytes += held_bytes
    return docs, n_bytes

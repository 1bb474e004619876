"""Finalize: counts to the explicit weights of DESIGN §3, kept as sparse + rank-one.

Every weight block (one per offset for ``cat``, one for ``sum``) has the form

    W_ij = S_ij + row_terms_i + col_terms_j,     S_ij != 0 only where F_ij > 0,

so storage is O(nnz + V). The logits of one context are a dense V-vector plus R sparse rows:

    logit_j = sum_r beta_r W^(r)[c_r, j] + gamma * log p_j

with (beta, gamma) = (1, -(R - 1)) for the row (published) form, (1, 1) for the column
(naive-Bayes) form, or the calibrated scalars. The smoothing formulas themselves (row and
column form, Dirichlet and additive) live in `streamsolve.core.smoothing`, shared with the
classifier; here p_j = (n_j + 1) / (N + V) is the smoothed target unigram and, for the
column form, q the smoothed context unigram.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import scipy.sparse as sp

from .counting import CountConfig, Counts
from .kneser_ney import KneserNeyStatistics, block_statistics, kneser_ney_parameters
from .smoothing import (FORMS, SMOOTHINGS, UNIGRAM_ALPHA, SparseRankOne, block_weights,  # noqa: F401
                        check_smoothing_scale,
                        check_smoothing, resolve_strengths, smoothed_unigram)

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class ExplicitWeights:
    """Explicit weights of a single-layer softmax language model.

    Attributes
    ----------
    blocks : list of SparseRankOne
        One per offset (``cat``) or one (``sum``).
    log_unigram : ndarray
        log p_j, the smoothed target unigram.
    config : CountConfig
    form, smoothing : str
    mu, alpha : float or None
    beta : ndarray
        Weight of each block's log-probability (length = number of blocks).
    gamma : float
        Weight of log p_j; the bias is ``gamma * log_unigram``.
    calibrated : bool
    discounts : list of (float, float, float), optional
        Kneser–Ney ``(D1, D2, D3+)`` used by each block (``smoothing="kneser-ney"`` only).
    """

    blocks: list
    log_unigram: np.ndarray
    config: CountConfig
    form: str = "row"
    smoothing: str = "dirichlet"
    mu: float | None = None
    alpha: float | None = None
    beta: np.ndarray = None
    gamma: float = 0.0
    calibrated: bool = False
    discounts: list | None = None

    def __post_init__(self):
        if self.beta is None:
            self.beta = np.ones(len(self.blocks))
            self.gamma = self.default_gamma()

    def default_gamma(self) -> float:
        """The uncalibrated prior weight: -(R - 1) (row form) or 1 (column form)."""
        return float(-(self.config.radius - 1)) if self.form == "row" else 1.0

    @property
    def bias(self) -> np.ndarray:
        return self.gamma * self.log_unigram

    def params(self) -> dict:
        """JSON-able description (stored in the store's attributes)."""
        calibration = None
        if self.calibrated:
            calibration = {**getattr(self, "calibration_info", {}),
                           "beta": [float(b) for b in self.beta], "gamma": float(self.gamma)}
        params = {"form": self.form, "smoothing": self.smoothing, "mu": self.mu,
                  "alpha": self.alpha, "calibration": calibration}
        if self.discounts is not None:
            params["discounts"] = [[float(d) for d in block] for block in self.discounts]
        return params

    @classmethod
    def from_params(cls, blocks, bias, log_unigram, config, params) -> "ExplicitWeights":
        weights = cls(blocks, np.asarray(log_unigram), config, params["form"], params["smoothing"],
                      params.get("mu"), params.get("alpha"),
                      discounts=params.get("discounts"))
        calibration = params.get("calibration")
        if calibration:
            weights = weights.with_calibration(np.asarray(calibration["beta"]), calibration["gamma"])
            weights.calibration_info = dict(calibration)
        return weights

    def with_calibration(self, beta, gamma) -> "ExplicitWeights":
        """A copy using calibration scalars (beta per block, gamma)."""
        beta = np.asarray(beta, dtype=np.float64).reshape(-1)
        if beta.size != len(self.blocks):
            raise ValueError(f"need {len(self.blocks)} beta values, got {beta.size}")
        return dataclasses.replace(self, beta=beta, gamma=float(gamma), calibrated=True)

    def uncalibrated(self) -> "ExplicitWeights":
        return dataclasses.replace(self, beta=np.ones(len(self.blocks)),
                                   gamma=self.default_gamma(), calibrated=False)

    def block_of_offset(self, r: int) -> int:
        """Index of the weight block used by offset r (0-based)."""
        return r if self.config.aggregation == "cat" else 0

    def block_features(self, contexts: np.ndarray) -> np.ndarray:
        """Per-block summed log-probabilities, shape (n_blocks, B, V) (for calibration)."""
        contexts = np.asarray(contexts)
        B, V = contexts.shape[0], self.config.vocab_size
        out = np.zeros((len(self.blocks), B, V))
        for r in range(self.config.radius):
            out[self.block_of_offset(r)] += self.blocks[self.block_of_offset(r)].rows(contexts[:, r])
        return out

    def logits(self, contexts: np.ndarray) -> np.ndarray:
        """Logits for a batch of contexts.

        Parameters
        ----------
        contexts : int array, shape (B, R)
            ``contexts[b, r]`` is the token at offset r + 1 before the target.

        Returns
        -------
        ndarray, shape (B, V)
        """
        contexts = np.atleast_2d(np.asarray(contexts, dtype=np.int64))
        if contexts.shape[1] != self.config.radius:
            raise ValueError(f"contexts must have {self.config.radius} columns (the radius), "
                             f"got {contexts.shape[1]}")
        out = np.broadcast_to(self.bias, (contexts.shape[0], self.config.vocab_size)).copy()
        for r in range(self.config.radius):
            b = self.block_of_offset(r)
            out += self.beta[b] * self.blocks[b].rows(contexts[:, r])
        return out

    def target_log_probs(self, contexts: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """log softmax(logits)[target] for a batch, in O(nnz of the context rows), not O(V).

        The logits are ``D_j + T_j`` plus a per-context constant, where
        ``D = sum_r beta_r col_terms_r + gamma log p`` is the same for every context and
        ``T = sum_r beta_r S_r[c_r]`` is sparse. So
        ``sum_j exp(D_j + T_j) = Z0 + sum_{j in supp T} exp(D_j) expm1(T_j)`` with the constant
        ``Z0 = sum_j exp(D_j)``. Contexts where that sum cancels badly fall back to dense logits.
        """
        contexts = np.atleast_2d(np.asarray(contexts, dtype=np.int64))
        targets = np.asarray(targets, dtype=np.int64)
        B = contexts.shape[0]
        dense_part = self.bias.copy()
        for b, block in enumerate(self.blocks):
            uses = self.config.radius if self.config.aggregation == "sum" else 1
            dense_part += self.beta[b] * uses * block.col_terms
        peak = dense_part.max()
        E = np.exp(dense_part - peak)
        Z0 = E.sum()
        T = None
        for r in range(self.config.radius):
            b = self.block_of_offset(r)
            rows = self.blocks[b].sparse[contexts[:, r]] * self.beta[b]
            T = rows if T is None else T + rows
        T = sp.csr_array(T)
        T.sum_duplicates()
        row_of = np.repeat(np.arange(B), np.diff(T.indptr))
        correction = np.bincount(row_of, weights=E[T.indices] * np.expm1(T.data), minlength=B)
        total = Z0 + correction
        target_T = np.asarray(T[np.arange(B), targets]).ravel()
        out = dense_part[targets] + target_T - peak - np.log(np.maximum(total, 1e-300))
        bad = total < 1e-9 * Z0
        if np.any(bad):
            logits = self.logits(contexts[bad])
            peak_b = logits.max(axis=1, keepdims=True)
            lse = np.log(np.exp(logits - peak_b).sum(axis=1)) + peak_b[:, 0]
            out[bad] = logits[np.arange(bad.sum()), targets[bad]] - lse
        return out

    def dense_blocks(self) -> list[np.ndarray]:
        """Dense W^(r) (V x V each); small vocabularies only."""
        return [block.dense() for block in self.blocks]


def finalize(counts: Counts, form: str = "row", smoothing: str = "dirichlet",
             mu: float | None = None, alpha: float | None = None,
             discount=None) -> ExplicitWeights:
    """Explicit weights from in-memory counts.

    Parameters
    ----------
    counts : Counts
    form : {"row", "column"}
        Row (published, default) or column (multinomial naive-Bayes) form.
    smoothing : {"dirichlet", "additive", "none", "kneser-ney"}
        Dirichlet towards the unigram (default, ``mu`` defaults to V), additive (``alpha``
        defaults to 0.1), none (exact maximum likelihood; needs every count positive), or
        modified Kneser–Ney (row form; discounts estimated per block from its
        counts-of-counts unless ``discount`` is given).
    mu, alpha : float, optional
    discount : float or (float, float, float), optional
        Kneser–Ney discounts ``D`` (all three) or ``(D1, D2, D3+)`` for every block.

    Returns
    -------
    ExplicitWeights
    """
    check_smoothing(smoothing, mu, alpha, form, discount)
    config = counts.config
    V = config.vocab_size
    mu, alpha = resolve_strengths(smoothing, mu, alpha, V)
    log_p = np.log(smoothed_unigram(counts.unigram))
    check_smoothing_scale(smoothing, mu, alpha, float(np.exp(log_p.min())), V)
    blocks, used_discounts = [], []
    for r in range(config.n_blocks):
        F = counts.block_csr(r)
        log_q = None
        if form == "column":
            log_q = np.log(smoothed_unigram(np.asarray(F.sum(axis=1)).ravel()))
        if smoothing == "kneser-ney":
            discounts, log_cont = kneser_ney_parameters(
                block_statistics(F.indptr, F.indices, F.data, V), discount)
            used_discounts.append(discounts)
            blocks.append(block_weights(F, form, smoothing, None, None, log_cont,
                                        discounts=discounts))
            continue
        blocks.append(block_weights(F, form, smoothing, mu, alpha, log_p, log_q))
    return ExplicitWeights(blocks, log_p, config, form, smoothing, mu, alpha,
                           discounts=used_discounts if smoothing == "kneser-ney" else None)


@dataclasses.dataclass
class PendingWeights:
    """Weights whose row blocks are written to a store but which are not its weights yet.

    Made by `compute_store_weights`; `commit_store_weights` switches the store to them in one
    attribute write (with calibration scalars, if any), so until then the store's previous
    weights stay current and readable.
    """

    weights: ExplicitWeights
    block_keys: list
    col_terms: np.ndarray
    counts_id: str


def finalize_store(store, form: str = "row", smoothing: str = "dirichlet",
                   mu: float | None = None, alpha: float | None = None,
                   reuse: bool = True, discount=None) -> ExplicitWeights:
    """Explicit weights from a `ModelStore`, row block by row block (counts never densified).

    The weights are returned and written to the store (`compute_store_weights` then
    `commit_store_weights`). A weight row block is a pure function of its count block and a
    few global inputs (the unigram for Dirichlet row weights, column sums for the column
    form); blocks whose inputs are unchanged since the last finalize are reused, not
    recomputed (``reuse=False`` recomputes everything).
    """
    pending = compute_store_weights(store, form, smoothing, mu, alpha, reuse, discount)
    commit_store_weights(store, pending)
    return pending.weights


def commit_store_weights(store, pending: PendingWeights,
                         weights: ExplicitWeights | None = None) -> str:
    """Make pending weights the store's (``weights``: the same weights, e.g. calibrated)."""
    weights = pending.weights if weights is None else weights
    return store.commit_weights(weights.params(), pending.block_keys, pending.col_terms,
                                pending.weights.bias, pending.weights.log_unigram,
                                counts_id=pending.counts_id)


def compute_store_weights(store, form: str = "row", smoothing: str = "dirichlet",
                          mu: float | None = None, alpha: float | None = None,
                          reuse: bool = True, discount=None) -> PendingWeights:
    """Compute and write the weight row blocks of a store's counts, without committing them.

    Every count block is read (and so verified against its digest) from one snapshot of the
    store, also when its weights are reused. Raises `StoreCorruptError` on damaged counts.
    Kneser–Ney (``discount``: see `core.weights.finalize`) first makes one statistics pass
    over each offset's row blocks (`_kneser_ney_globals`).
    """
    import hashlib

    check_smoothing(smoothing, mu, alpha, form, discount)
    source = store.snapshot()
    config = source.config
    V = config.vocab_size
    mu, alpha = resolve_strengths(smoothing, mu, alpha, V)
    log_p = np.log(smoothed_unigram(source.read_unigram()))
    check_smoothing_scale(smoothing, mu, alpha, float(np.exp(log_p.min())), V)
    ranges = list(enumerate(row_blocks_of(source)))
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
                          source.meta["counts"]["id"])


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
    from ..store.model_store import StoreCorruptError

    if not store.has_weight_block(key):
        return None
    try:
        ip, ix, d, rt = store.read_weight_block(key)
    except StoreCorruptError as exc:
        logger.warning("recomputing a damaged weight block: %s", exc)
        return None
    return sp.csr_array((d, ix, ip), shape=shape), rt


def row_blocks_of(store) -> list[tuple[int, int]]:
    """The row ranges of a store's blocks."""
    from ..store.model_store import row_blocks

    return row_blocks(store.config.vocab_size, store.meta["rows_per_block"])

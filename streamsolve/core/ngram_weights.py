"""Explicit weights with suffix n-gram blocks beside the offset blocks (issue 24).

`NgramWeights` joins an interpolated modified Kneser–Ney model
(`streamsolve.core.ngram_kneser_ney`, blocks k = 2..N) and the offsets' `ExplicitWeights`
(blocks r = 1..R) into one single-layer model with one scalar per block and gamma
(docs/design.md §5b)::

    logit_j(c) = sum_k beta_k log P_k(j | s_k) + sum_r beta_r W^(r)[c_r, j] + gamma log p_j

It has the interface `streamsolve.language_model.LanguageModel` uses of `ExplicitWeights`
(``config``, ``target_log_probs``, ``logits``, ``uncalibrated``, ``params``, ...), so eval,
score and generate need no other path; a position's context holds ``max(R, N - 1)`` tokens.
Uncalibrated, ``beta`` is 1 on block N and 0 elsewhere, gamma 0: the layer is exactly the
N-gram Kneser–Ney model (and the offsets are not read at all). `fit_calibration` fits every
scalar on held-out positions (`streamsolve.core.ngram_scoring.NgramCalibration`, kept only
if the sample's loss does not go up). Pure numpy: no I/O.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from .ngram_kneser_ney import NgramKneserNey, back_off_entries
from .ngram_scoring import NgramScorer, NgramScoringParts
from .positions import sampled_positions
from . import score_native
from .scoring import PRODUCT_EXPONENT_BOUND, Scorer, ScoringParts, fit_calibration_scored

logger = logging.getLogger(__name__)

#: Most held-out positions the n-gram calibration fits on (its joined parts hold every
#: sampled context's union: ~1-2k entries per context at V = 8192, N - 1 floats each).
NGRAM_CALIBRATION_POSITIONS = 8192
#: Positions scored per joined-parts batch (bounds the union arrays).
JOINED_POSITIONS = 4096


def joined_parts(ngram: NgramScoringParts, offsets: ScoringParts | None, contexts: np.ndarray,
                 weights: np.ndarray | None = None):
    """The n-gram blocks of a batch of contexts as virtual CSR blocks beside the offsets',
    so the offsets' scoring kernel (`streamsolve.core.scoring.Scorer`, C) scores both.

    Row i of the virtual block of order k holds ``C_k`` of the batch's i-th distinct n-gram
    context on its union (`NgramScoringParts.union`), its column part ``log P_1`` and its
    row term 0 (the per-context constants cancel); the offsets' blocks follow unchanged.
    With ``weights`` (one per order 2..N) the orders are one virtual block instead, holding
    ``sum_k weights_k C_k`` with column part ``sum_k weights_k log P_1`` (to be scored with
    scalar 1): what scoring at fixed scalars needs, at a fraction of the cost.

    Returns
    -------
    (ScoringParts, ndarray)
        The parts and the kernel's contexts: each position's virtual row in the first N - 1
        columns, its offset ids after them.
    """
    rows = ngram.rows(contexts)
    _, first, inverse = np.unique(ngram.signatures(rows), return_index=True,
                                  return_inverse=True)
    union = ngram.union(rows[first], weights)
    k, n = first.size, ngram.n_blocks if weights is None else 1
    indptr = np.zeros(k + 1, dtype=np.int64)
    np.cumsum(np.bincount(union.owner, minlength=k), out=indptr[1:])
    indices = union.targets.astype(np.int32)
    data = [np.ascontiguousarray(union.corrections[:, j]) for j in range(n)]
    columns = [inverse.reshape(-1)] * n
    column = ngram.log_unigram if weights is None else float(np.sum(weights)) * ngram.log_unigram
    blocks = ([indptr] * n, [indices] * n, data, [np.zeros(k)] * n, [column] * n)
    block_of = list(range(n))
    prior = ngram.log_unigram
    if offsets is not None:
        blocks = tuple(a + list(b) for a, b in zip(blocks, (
            offsets.indptr, offsets.indices, offsets.data, offsets.row_terms, offsets.col_terms)))
        block_of += [n + int(b) for b in offsets.block_of]
        columns += [contexts[:, r] for r in range(offsets.radius)]
        prior = offsets.log_unigram
    parts = ScoringParts(*blocks, prior, np.asarray(block_of, dtype=np.int32))
    return parts, np.ascontiguousarray(np.column_stack(columns), dtype=np.int64)


def derive(model: NgramKneserNey) -> NgramKneserNey:
    """Fill each level's derived ``probs`` and ``roots`` from the stored arrays (in place),
    as `streamsolve.core.ngram_kneser_ney.estimate_kneser_ney` computes them."""
    lower_probs, lower_roots, lower = model.unigram, None, None
    for level in model.levels:
        parents = (level.targets.astype(np.int64) if lower is None
                   else back_off_entries(model.config, lower, level))
        level.probs = level.numerators + level.backoff[level.entry_rows()] * lower_probs[parents]
        level.roots = (np.arange(level.nnz, dtype=np.int64) if lower is None
                       else lower_roots[parents])
        lower_probs, lower_roots, lower = level.probs, level.roots, level
    return model


def eager_parts(offsets) -> ScoringParts:
    """The offsets' scoring parts with every row in memory (the n-gram scorer reads CSRs)."""
    parts = offsets.scoring_parts()
    if isinstance(parts, ScoringParts):
        return parts
    resident = parts.resident(now=True)
    if resident is not None:
        return resident
    return ScoringParts.from_blocks([_eager_block(b) for b in offsets.blocks],
                                    offsets.log_unigram,
                                    [offsets.block_of_offset(r)
                                     for r in range(offsets.config.radius)])


def _eager_block(block):
    from .smoothing import SparseRankOne

    return SparseRankOne(block.sparse, block.row_terms, block.col_terms)


class NgramWeights:
    """Offset blocks plus n-gram blocks, one scalar each (module doc).

    Parameters
    ----------
    offsets : ExplicitWeights
        The offsets' weights (their own scalars are not used).
    model : NgramKneserNey
        With its derived arrays (`derive`).
    theta : array-like, optional
        ``(beta of orders 2..N, beta of the offset blocks, gamma)``; default: the N-gram
        model alone.
    calibrated : bool
    """

    def __init__(self, offsets, model: NgramKneserNey, theta=None, calibrated: bool = False):
        self.offsets, self.model = offsets, model
        self.n_ngram = model.config.order - 1
        self.n_offsets = len(offsets.blocks)
        if theta is None:
            theta = np.zeros(self.n_ngram + self.n_offsets + 1)
            theta[self.n_ngram - 1] = 1.0
        self.theta = np.asarray(theta, dtype=np.float64).reshape(-1)
        if self.theta.size != self.n_ngram + self.n_offsets + 1:
            raise ValueError(f"need {self.n_ngram + self.n_offsets + 1} scalars, "
                             f"got {self.theta.size}")
        self.calibrated = calibrated
        self.config = dataclasses.replace(offsets.config, radius=max(offsets.config.radius,
                                                                     self.n_ngram))
        self._info: dict = {}
        self._shared: dict = {}

    # -- the ExplicitWeights interface LanguageModel and the store use ----------------------
    @property
    def ngram_beta(self) -> np.ndarray:
        return self.theta[:self.n_ngram]

    @property
    def beta(self) -> np.ndarray:
        return self.theta[self.n_ngram:-1]

    @property
    def gamma(self) -> float:
        return float(self.theta[-1])

    @property
    def log_unigram(self) -> np.ndarray:
        return self.offsets.log_unigram

    @property
    def bias(self) -> np.ndarray:
        return self.offsets.bias

    @property
    def calibration_info(self) -> dict:
        return self._info

    @calibration_info.setter
    def calibration_info(self, info: dict):
        self._info = dict(info)

    def params(self) -> dict:
        """The offsets' parameters, the n-gram model's (``ngram``) and the calibration with
        ``ngram_beta`` (JSON-able)."""
        params = dict(self.offsets.params())
        params["calibration"] = None if not self.calibrated else {
            **self._info, "beta": [float(b) for b in self.beta], "gamma": self.gamma,
            "ngram_beta": [float(b) for b in self.ngram_beta]}
        params["ngram"] = {"order": self.model.config.order,
                           "discounts": np.asarray(self.model.discounts).tolist()}
        return params

    @classmethod
    def from_params(cls, offsets, model: NgramKneserNey, params: dict) -> "NgramWeights":
        """Weights of stored ``params`` (`params`): calibrated when they record it."""
        calibration = params.get("calibration") or {}
        if "ngram_beta" not in calibration:
            return cls(offsets.uncalibrated(), model)
        theta = np.r_[calibration["ngram_beta"], calibration["beta"], calibration["gamma"]]
        weights = cls(offsets.uncalibrated(), model, theta, calibrated=True)
        weights._info = {k: v for k, v in calibration.items()
                         if k not in ("beta", "gamma", "ngram_beta")}
        return weights

    def with_theta(self, theta, calibrated: bool = True) -> "NgramWeights":
        other = NgramWeights(self.offsets, self.model, theta, calibrated)
        other._shared = self._shared  # the scoring parts do not depend on the scalars
        return other

    def uncalibrated(self) -> "NgramWeights":
        return self.with_theta(None, calibrated=False)

    # -- scoring ------------------------------------------------------------------------------
    def ngram_parts(self) -> NgramScoringParts:
        if "ngram" not in self._shared:
            self._shared["ngram"] = NgramScoringParts(self.model)
        return self._shared["ngram"]

    def offset_parts(self) -> ScoringParts | None:
        """The offsets' eager parts (None while their scalars and gamma are all 0)."""
        if not np.any(self.theta[self.n_ngram:]):
            return None
        if "offsets" not in self._shared:
            self._shared["offsets"] = eager_parts(self.offsets)
        return self._shared["offsets"]

    def scorer(self) -> NgramScorer:
        key = self.theta.tobytes()
        if self._shared.get("scorer_key") != key:
            offsets = self.offset_parts()
            self._shared["scorer"] = NgramScorer(self.ngram_parts(), self.ngram_beta,
                                                 self.gamma, offsets,
                                                 None if offsets is None else self.beta)
            self._shared["scorer_key"] = key
        return self._shared["scorer"]

    def target_log_probs(self, contexts: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """``log p(t | c)`` per position, O(|union|) per distinct context: the n-gram
        scorer alone while the offsets are unused, else the offsets' C kernel on the joined
        parts (`joined_parts`) of each batch."""
        offsets = self.offset_parts()
        if offsets is None:
            return self.scorer().log_probs(contexts, targets)
        contexts = np.atleast_2d(np.asarray(contexts, dtype=np.int64))
        targets = np.asarray(targets, dtype=np.int64).reshape(-1)
        out = np.empty(targets.size)
        for s in range(0, targets.size, JOINED_POSITIONS):
            parts, joined = joined_parts(self.ngram_parts(), offsets,
                                         contexts[s:s + JOINED_POSITIONS], self.ngram_beta)
            scorer = self._joined_scorer(parts)
            out[s:s + JOINED_POSITIONS] = scorer.log_probs(joined, targets[s:s + JOINED_POSITIONS])
        return out

    def logits(self, contexts: np.ndarray) -> np.ndarray:
        """Logits (up to a constant per context) of contexts ``(B, max(R, N - 1))``."""
        contexts = np.atleast_2d(np.asarray(contexts, dtype=np.int64))
        scorer = self.scorer()
        rows = scorer.parts.rows(contexts)
        owner, targets, values = scorer._sparse(contexts, rows, gradient=False)
        out = np.broadcast_to(scorer.a, (contexts.shape[0], scorer.a.size)).copy()
        np.add.at(out, (owner, targets), values)
        return out

    def _joined_scorer(self, parts: ScoringParts) -> Scorer:
        """A `Scorer` of one batch's joined parts that reuses the offsets' product factors
        ``exp(beta_b S^(b))`` across batches (O(nnz) of the offsets, once per theta) and
        skips the dense long rows (built per batch they would cost more than they save)."""
        scorer = Scorer(parts, np.r_[1.0, self.beta], self.gamma, cache_size=0)
        scorer._dense_rows = False
        beta, n = scorer.beta, 1
        bound = sum(max(0.0, beta[b] * parts.data_range[b][0], beta[b] * parts.data_range[b][1])
                    for b in parts.block_of)
        if bound > PRODUCT_EXPONENT_BOUND or scorer.lib is None:
            return scorer
        cached = self._shared.get("exp_offsets")
        if cached is None or cached[0] != self.theta.tobytes():
            cached = (self.theta.tobytes(), [np.exp(beta[b] * parts.data[b])
                                             for b in range(n, parts.n_blocks)])
            self._shared["exp_offsets"] = cached
        arrays = [np.exp(beta[b] * parts.data[b]) for b in range(n)] + cached[1]
        scorer._exp_data = (arrays, score_native.BlockPointers(arrays, arrays, arrays).data)
        return scorer

    def fit_calibration(self, documents, sample_size: int, seed: int = 0) -> "NgramWeights":
        """Fit every block's scalar and gamma on up to ``sample_size`` held-out positions."""
        contexts, targets = sampled_positions(documents, self.config.radius,
                                              self.config.bos_id,
                                              min(sample_size, NGRAM_CALIBRATION_POSITIONS),
                                              seed)
        offsets = self._shared.get("offsets") or eager_parts(self.offsets)
        self._shared["offsets"] = offsets
        parts, joined = joined_parts(self.ngram_parts(), offsets, contexts)
        fit = fit_calibration_scored(parts, joined, targets, theta0=self.theta)
        logger.info("n-gram calibration on %d positions: %.4f -> %.4f "
                    "nats/token (n-gram beta=%s, offset beta=%s, gamma=%.3f)", targets.size,
                    fit.loss_before, fit.loss_after,
                    np.round(fit.theta[:self.n_ngram], 3).tolist(),
                    np.round(fit.theta[self.n_ngram:-1], 3).tolist(), fit.theta[-1])
        return self.with_theta(fit.theta, calibrated=True)

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

import numpy as np

from .counting import CountConfig, Counts
from . import strength_search
from .kneser_ney import block_statistics, kneser_ney_parameters
from .scoring import Scorer, ScoringParts, scorer_class
from .smoothing import (FORMS, SMOOTHINGS, UNIGRAM_ALPHA, SparseRankOne, block_weights,  # noqa: F401
                        check_smoothing_scale,
                        check_smoothing, resolve_strengths, smoothed_unigram)


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
    smoothing_search : dict, optional
        How the strengths were chosen on held-out positions, when they were
        (`streamsolve.core.strength_search`; ``mu`` is then one value per block).
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
    smoothing_search: dict | None = None

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
        if self.smoothing_search is not None:
            params["smoothing_search"] = self.smoothing_search
        return params

    @classmethod
    def from_params(cls, blocks, bias, log_unigram, config, params) -> "ExplicitWeights":
        weights = cls(blocks, np.asarray(log_unigram), config, params["form"], params["smoothing"],
                      params.get("mu"), params.get("alpha"),
                      discounts=params.get("discounts"),
                      smoothing_search=params.get("smoothing_search"))
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
        return self._share_parts(dataclasses.replace(self, beta=beta, gamma=float(gamma),
                                                     calibrated=True))

    def uncalibrated(self) -> "ExplicitWeights":
        return self._share_parts(dataclasses.replace(self, beta=np.ones(len(self.blocks)),
                                                     gamma=self.default_gamma(),
                                                     calibrated=False))

    def _share_parts(self, other: "ExplicitWeights") -> "ExplicitWeights":
        """``other`` (a copy with other scalars) reuses these blocks' scoring layout."""
        if getattr(self, "_scoring_parts", None) is not None:
            other._scoring_parts = self._scoring_parts
        return other

    def block_of_offset(self, r: int) -> int:
        """Index of the weight block used by offset r (0-based)."""
        return r if self.config.aggregation == "cat" else 0

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

    def scoring_parts(self) -> ScoringParts:
        """The weight parts in the scorer's layout (built once, shared by calibrated copies)."""
        parts = getattr(self, "_scoring_parts", None)
        if parts is None:
            parts = self._scoring_parts = ScoringParts.from_weights(self)
        return parts

    def scorer(self) -> Scorer:
        """The O(nnz) `Scorer` of these weights (kept while beta and gamma are unchanged)."""
        key = (self.beta.tobytes(), float(self.gamma))
        cached = getattr(self, "_scorer", None)
        if cached is None or cached[0] != key:
            parts = self.scoring_parts()
            cached = self._scorer = (key, scorer_class(parts)(parts, self.beta, self.gamma))
        return cached[1]

    def target_log_probs(self, contexts: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """log softmax(logits)[target] for a batch, in O(nnz of the context rows), not O(V).

        Computed by `streamsolve.core.scoring.Scorer` (DESIGN 3b): ``log Z`` of a context is
        a constant plus a correction over the union of its R rows' supports, cached per
        context tuple; equal to the dense formula to rounding.
        """
        return self.scorer().log_probs(contexts, targets)

    def dense_blocks(self) -> list[np.ndarray]:
        """Dense W^(r) (V x V each); small vocabularies only."""
        return [block.dense() for block in self.blocks]


def finalize(counts: Counts, form: str = "row", smoothing: str = "dirichlet",
             mu: float | None = None, alpha: float | None = None,
             discount=None, search_positions: tuple | None = None) -> ExplicitWeights:
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
    search_positions : (contexts (n, R), targets (n,)), optional
        Held-out positions: each block's strength is chosen on them
        (`streamsolve.core.strength_search`; as `engine.finalize.compute_store_weights`:
        row form, Dirichlet or Kneser–Ney, no explicit ``mu``/``discount``).

    Returns
    -------
    ExplicitWeights
    """
    check_smoothing(smoothing, mu, alpha, form, discount)
    config = counts.config
    V = config.vocab_size
    searching = (search_positions is not None and form == "row" and mu is None
                 and discount is None and smoothing in strength_search.SEARCH_RANGES)
    mu, alpha = resolve_strengths(smoothing, mu, alpha, V)
    log_p = np.log(smoothed_unigram(counts.unigram))
    check_smoothing_scale(smoothing, mu, alpha, float(np.exp(log_p.min())), V)
    blocks, used_discounts, searches, block_mu = [], [], [], []
    for r in range(config.n_blocks):
        F = counts.block_csr(r)
        log_q = None
        if searching:
            contexts = np.atleast_2d(np.asarray(search_positions[0], dtype=np.int64))
            offsets = range(contexts.shape[1]) if config.aggregation == "sum" else [r]
            found, discounts, background, mu_r = strength_search.search_block_strength(
                F, smoothing, mu, log_p, np.concatenate([contexts[:, k] for k in offsets]),
                np.tile(np.asarray(search_positions[1]), len(offsets)))
            searches.append(found.summary())
            block_mu.append(mu_r if mu_r is not None else mu)
            if discounts is not None:
                used_discounts.append(discounts)
            blocks.append(block_weights(F, form, smoothing, block_mu[-1], None, background,
                                        discounts=discounts))
            continue
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
    search = ({"positions": int(np.asarray(search_positions[1]).size), "blocks": searches}
              if searching else None)
    return ExplicitWeights(blocks, log_p, config, form, smoothing,
                           block_mu if searching and smoothing == "dirichlet" else mu, alpha,
                           discounts=used_discounts if smoothing == "kneser-ney" else None,
                           smoothing_search=search)


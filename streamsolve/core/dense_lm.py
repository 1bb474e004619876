"""Refined (backpropagated) language-model weights: dense or factored tables, scored densely.

A refined weights version (``streamsolve refine``) is no longer sparse + rank-one: training
fills every cell. It is held as, per weight block ``b`` (one per offset for ``cat``, one
shared for ``sum``), either a dense table ``T_b`` (V x V) or factors ``E_b`` (V x d),
``B_b`` (d x V) plus a per-row offset ``o_b`` (V,), and one bias (V,)::

    logits(c) = bias + sum_r T_{b(r)}[c_r]                      (dense)
    logits(c) = bias + sum_r (E_{b(r)}[c_r] @ B_{b(r)} + o_{b(r)}[c_r])   (factored)

Scoring is O(R V) per position (O(R d V) factored), done in batches of positions with a
logsumexp over V: fine for V <= 8192, which is where dense refinement is offered. The class
exposes the part of `ExplicitWeights` that evaluation, scoring and generation use
(``config``, ``logits``, ``target_log_probs``, ``params``, ``uncalibrated``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .calibration import logsumexp

#: Floats of dense logits per scoring batch (B * V).
BATCH_FLOATS = 1 << 20


@dataclasses.dataclass
class RefinedWeights:
    """Dense or factored softmax weights of a refined language model.

    Attributes
    ----------
    config : CountConfig
        The store's counting configuration (radius, aggregation, vocabulary, BOS).
    bias : ndarray (V,)
    tables : list of ndarray (V, V), optional
        Dense blocks (float32 or float64); None when factored.
    factors : list of (E (V, d), B (d, V), row_offsets (V,)), optional
        Factored blocks; None when dense.
    provenance : dict
        How they were made (init, optimizer, steps, held-out curve, ...), JSON-able.
    """

    config: object
    bias: np.ndarray
    tables: list | None = None
    factors: list | None = None
    provenance: dict = dataclasses.field(default_factory=dict)
    calibrated: bool = False  # calibration is folded into the trained weights

    def block_of_offset(self, r: int) -> int:
        """Index of the weight block used by offset r (0-based)."""
        return r if self.config.aggregation == "cat" else 0

    def params(self) -> dict:
        """JSON-able description: ``{"refined": provenance, "calibration": None}``."""
        return {"refined": dict(self.provenance), "calibration": None,
                "form": self.provenance.get("form"), "smoothing": self.provenance.get("smoothing")}

    def uncalibrated(self) -> "RefinedWeights":
        """Itself: a refined model has no separate calibration scalars."""
        return self

    def _batch_logits(self, contexts: np.ndarray) -> np.ndarray:
        contexts = np.asarray(contexts, dtype=np.int64)
        out = np.zeros((contexts.shape[0], self.bias.size), dtype=np.float64)
        for r in range(contexts.shape[1]):
            b = self.block_of_offset(r)
            rows = contexts[:, r]
            if self.tables is not None:
                out += self.tables[b][rows]
            else:
                E, B, offsets = self.factors[b]
                out += E[rows] @ B  # float64 since loading (`refined_store_weights`)
                out += offsets[rows][:, None]
        out += self.bias
        return out

    def logits(self, contexts: np.ndarray) -> np.ndarray:
        """Logits ``(B, V)`` of contexts ``(B, R)`` (offset 1 first), float64."""
        contexts = np.asarray(contexts, dtype=np.int64)
        if contexts.ndim != 2 or contexts.shape[1] != self.config.radius:
            raise ValueError(f"contexts must have shape (B, {self.config.radius}), got "
                             f"{contexts.shape}")
        step = max(1, BATCH_FLOATS // self.bias.size)
        return np.concatenate([self._batch_logits(contexts[i:i + step])
                               for i in range(0, max(1, len(contexts)), step)])

    def target_log_probs(self, contexts: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """``log p(target | context)`` per position, in batches of `BATCH_FLOATS` logits."""
        contexts = np.asarray(contexts, dtype=np.int64)
        targets = np.asarray(targets, dtype=np.int64)
        step = max(1, BATCH_FLOATS // self.bias.size)
        out = np.empty(targets.size, dtype=np.float64)
        for i in range(0, targets.size, step):
            logits = self._batch_logits(contexts[i:i + step])
            norm = logsumexp(logits, axis=1)
            out[i:i + step] = logits[np.arange(logits.shape[0]), targets[i:i + step]] - norm
        return out

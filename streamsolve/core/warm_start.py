"""The minimum-norm representative of explicit weights: the warm start of gradient training.

Softmax is unchanged by adding a constant to every logit of a sample (DESIGN 3b). So the
explicit weights (log-probabilities) are one point of a whole family that predicts exactly
alike, and an L2 penalty, weight decay or an initialisation scale sees the family member,
not the predictions. The member with the least Frobenius norm is the warm start:

- **Language model.** Each sample has exactly one active feature per offset (``cat``; R
  summed one-hots for ``sum``), so adding ``d_i`` to row ``i`` of a block (all targets) is a
  per-sample constant, and a per-target vector can move between a block and the bias. The
  least-norm block is the *double-centred* one (every row and every column sums to zero):

      W = S + r 1^T + 1 c^T   ->   D = S - Sbar 1^T - 1 Shat^T + G,

  ``Sbar``/``Shat`` the row/column means of ``S`` and ``G`` its grand mean (the rank-one
  terms are all removed by centring), so ``D`` is again sparse + rank-one and is computed in
  O(nnz + V). The per-target column means ``k`` of each (calibrated, ``beta``-scaled) block
  fold into the bias, which is then centred too. The per-row means are a per-sample constant:
  kept aside as ``row_offsets`` so that `WarmStart.logits` equals the stored model's logits
  exactly, although no prediction depends on them.
- **Classifier** (features ``x >= 0``, ``coef`` class x feature): adding ``d_i`` to feature
  ``i`` of every class shifts each sample's logits by ``x . d``, a per-sample constant. The
  least-norm ``coef`` centres each feature across classes (`min_norm_classifier`).

Pure NumPy/SciPy; nothing here reads a store.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse as sp

from .smoothing import SparseRankOne

__all__ = ["WarmStart", "block_squared_norm", "centre_block", "min_norm_classifier",
           "min_norm_weights", "scale_block"]


def block_squared_norm(block: SparseRankOne) -> float:
    """``||S + r 1^T + 1 c^T||_F^2`` in O(nnz + V), without densifying the block.

    Parameters
    ----------
    block : SparseRankOne

    Returns
    -------
    float
    """
    S = sp.csr_array(block.sparse)
    n_rows, n_cols = S.shape
    r, c = block.row_terms, block.col_terms
    rows = np.repeat(np.arange(n_rows), np.diff(S.indptr))
    cross = float(np.sum(S.data * (r[rows] + c[S.indices])))
    return (float(np.sum(S.data ** 2)) + n_cols * float(r @ r) + n_rows * float(c @ c)
            + 2.0 * cross + 2.0 * float(r.sum()) * float(c.sum()))


def centre_block(block: SparseRankOne) -> tuple[SparseRankOne, np.ndarray, np.ndarray]:
    """Split a block into its double-centred part and its row and column means.

    ``W = D + (m - g) 1^T + 1 k^T`` with ``m`` the row means of ``W``, ``k`` its column means
    and ``g`` its grand mean; every row and every column of ``D`` sums to zero, so ``D`` is the
    member of least Frobenius norm of ``{W + d 1^T + 1 v^T}``. O(nnz + V).

    Parameters
    ----------
    block : SparseRankOne

    Returns
    -------
    centred : SparseRankOne
        ``D = S + (G - Sbar) 1^T + 1 (-Shat)^T`` (the same sparse part ``S``).
    row_part : ndarray of shape (n_rows,)
        ``m - g`` (a per-sample constant when the row is a sample's active feature).
    col_means : ndarray of shape (n_cols,)
        ``k``, the per-target vector to fold into the bias.
    """
    S = sp.csr_array(block.sparse)
    n_rows, n_cols = S.shape
    s_row = np.asarray(S.sum(axis=1)).ravel() / n_cols     # Sbar
    s_col = np.asarray(S.sum(axis=0)).ravel() / n_rows     # Shat
    grand = float(s_row.sum()) / n_rows                    # G
    r, c = block.row_terms, block.col_terms
    row_means = s_row + r + c.mean()
    col_means = s_col + r.mean() + c
    grand_mean = grand + r.mean() + c.mean()
    centred = SparseRankOne(S, grand - s_row, -s_col)
    return centred, row_means - grand_mean, col_means


def scale_block(block: SparseRankOne, factor: float) -> SparseRankOne:
    """``factor * W`` (all three parts scaled)."""
    S = sp.csr_array(block.sparse, copy=True)
    S.data *= factor
    return SparseRankOne(S, factor * block.row_terms, factor * block.col_terms)


@dataclasses.dataclass
class WarmStart:
    """Minimum-norm weights of a language model, calibration applied.

    ``logits(c)_j = bias_j + sum_r (blocks[b(r)][c_r, j] + row_offsets[b(r)][c_r]) + offset``
    with ``b(r)`` = `offset_blocks` ``[r]``. The trainable parts (``blocks``, ``bias``) have
    the least norm; ``row_offsets`` and ``offset`` are per-sample constants (no effect on any
    probability) kept so that the logits equal the explicit model's.

    Attributes
    ----------
    blocks : list of SparseRankOne
        Double-centred blocks, each scaled by its calibration ``beta``.
    bias : ndarray of shape (V,)
        Centred bias: ``gamma log p`` plus the folded column means.
    row_offsets : ndarray of shape (n_blocks, V)
    offset : float
    offset_blocks : tuple of int
        The block used by each offset (``cat``: ``r``; ``sum``: 0).
    """

    blocks: list
    bias: np.ndarray
    row_offsets: np.ndarray
    offset: float
    offset_blocks: tuple

    @property
    def radius(self) -> int:
        return len(self.offset_blocks)

    def squared_norm(self) -> float:
        """Sum of the blocks' squared Frobenius norms (the bias excluded)."""
        return sum(block_squared_norm(block) for block in self.blocks)

    def logits(self, contexts: np.ndarray, with_offsets: bool = True) -> np.ndarray:
        """Logits for contexts ``(B, R)`` (offset 1 first); small batches (dense (B, V)).

        ``with_offsets=False`` leaves out the per-sample constants (same probabilities).
        """
        contexts = np.atleast_2d(np.asarray(contexts, dtype=np.int64))
        out = np.broadcast_to(self.bias, (contexts.shape[0], self.bias.size)).copy()
        for r, b in enumerate(self.offset_blocks):
            out += self.blocks[b].rows(contexts[:, r])
            if with_offsets:
                out += self.row_offsets[b][contexts[:, r]][:, None]
        if with_offsets:
            out += self.offset
        return out


def min_norm_weights(weights) -> WarmStart:
    """The minimum-norm representative of explicit LM weights, calibration kept applied.

    Parameters
    ----------
    weights : streamsolve.core.weights.ExplicitWeights
        Any form, smoothing, aggregation; calibrated or not.

    Returns
    -------
    WarmStart
        Its logits equal ``weights.logits`` (to rounding), its blocks have the least norm.
    """
    config = weights.config
    offset_blocks = tuple(weights.block_of_offset(r) for r in range(config.radius))
    bias = np.array(weights.bias, dtype=np.float64)
    blocks, row_offsets = [], []
    for b, block in enumerate(weights.blocks):
        beta = float(weights.beta[b])
        centred, row_part, col_means = centre_block(block)
        uses = offset_blocks.count(b)   # sum aggregation: one block, R offsets
        bias += uses * beta * col_means
        blocks.append(scale_block(centred, beta))
        row_offsets.append(beta * row_part)
    offset = float(bias.mean())
    return WarmStart(blocks, bias - offset, np.stack(row_offsets), offset, offset_blocks)


def min_norm_classifier(coef: np.ndarray, intercept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The least-norm ``(coef, intercept)`` predicting like the given classifier weights.

    Each feature is centred across classes (``x >= 0`` makes that a per-sample shift of
    ``x . d``) and the finite intercepts are centred (a class with intercept ``-inf``, prior
    zero, stays ``-inf``).

    Parameters
    ----------
    coef : ndarray of shape (n_classes, n_features), finite
    intercept : ndarray of shape (n_classes,)

    Returns
    -------
    coef, intercept : ndarray
        New arrays; ``softmax(x coef^T + intercept)`` is unchanged for every ``x``.
    """
    coef = np.asarray(coef, dtype=np.float64)
    if not np.all(np.isfinite(coef)):
        raise ValueError("coef must be finite to take its minimum-norm representative")
    intercept = np.array(intercept, dtype=np.float64)
    finite = np.isfinite(intercept)
    if finite.any():
        intercept[finite] -= intercept[finite].mean()
    return coef - coef.mean(axis=0, keepdims=True), intercept


def check_dense_fits(vocab_size: int, n_blocks: int, itemsize: int, max_bytes: int) -> int:
    """Bytes of ``n_blocks`` dense V x V tables; refuse (naming ``rank``) above ``max_bytes``.

    Raises
    ------
    ValueError
        One line: the size needed, the budget, and ``rank=d`` / ``--rank d`` as the fix.
    """
    needed = int(n_blocks) * int(vocab_size) ** 2 * int(itemsize)
    if needed > max_bytes:
        raise ValueError(
            f"dense weights need {n_blocks} x {vocab_size} x {vocab_size} x {itemsize} bytes = "
            f"{needed / 2**30:.2f} GiB, over the memory budget of {max_bytes / 2**30:.2f} GiB: "
            "use a low-rank factorisation (rank=d, --rank d) or raise the budget")
    return needed

"""Best rank-d approximation of a sparse + rank-one weight block, never densified (DESIGN 3b).

A neural LM factors its output layer: ``logits = E[c] B + b`` with ``E`` (V x d) and ``B``
(d x V). The best rank-d approximation (truncated SVD) of a centred explicit block gives
``E`` and ``B`` directly, at any V, by the randomized range finder of Halko, Martinsson &
Tropp (2011, algorithms 4.4 and 5.1) with power iterations:

1. ``Y = W Omega`` for a Gaussian ``Omega`` (V x (d + p)), then ``n_iter`` times
   ``Y = W (W^T Q)`` with a QR re-orthonormalisation after every product;
2. ``Q`` an orthonormal basis of ``Y``, ``C = Q^T W`` (small), its SVD ``C = U s V^T``;
3. keep the top d: ``W ~ (Q U_d) s_d V_d^T``, split as ``E = Q U_d sqrt(s_d)``,
   ``B = sqrt(s_d) V_d^T``.

Every product with ``W = S + r 1^T + 1 c^T`` costs O(nnz(S) k + V k) for k columns
(`block_matmat`, `block_rmatmat`); no V x V array is formed.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .smoothing import SparseRankOne

__all__ = ["block_matmat", "block_rmatmat", "low_rank_factors"]

#: Extra columns of the range finder beyond the rank asked for.
OVERSAMPLES = 10


def block_matmat(block: SparseRankOne, X: np.ndarray) -> np.ndarray:
    """``W X`` for ``W = S + r 1^T + 1 c^T`` and X (n_cols, k), in O(nnz k + V k)."""
    S = sp.csr_array(block.sparse)
    return (S @ X) + np.outer(block.row_terms, X.sum(axis=0)) + (block.col_terms @ X)[None, :]


def block_rmatmat(block: SparseRankOne, Y: np.ndarray) -> np.ndarray:
    """``W^T Y`` for ``W = S + r 1^T + 1 c^T`` and Y (n_rows, k), in O(nnz k + V k)."""
    S = sp.csr_array(block.sparse)
    return (S.T @ Y) + (block.row_terms @ Y)[None, :] + np.outer(block.col_terms, Y.sum(axis=0))


def low_rank_factors(block: SparseRankOne, rank: int, n_iter: int = 7,
                     oversamples: int = OVERSAMPLES, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``E`` (n_rows x d), ``B`` (d x n_cols) with ``E B`` the rank-d truncated SVD of ``W``.

    Parameters
    ----------
    block : SparseRankOne
        Typically a centred block (`streamsolve.core.warm_start.centre_block`).
    rank : int
        d, 1 <= d <= min(shape). When d is at least the block's rank the product is exact
        to rounding.
    n_iter : int
        Power iterations (more: closer to the exact truncation when the spectrum decays
        slowly).
    oversamples : int
        Extra range-finder columns (p).
    seed : int
        Seed of the Gaussian test matrix.

    Returns
    -------
    E, B : ndarray (float64)
        The singular values split evenly: ``E = U_d sqrt(s_d)``, ``B = sqrt(s_d) V_d^T``.
    """
    n_rows, n_cols = block.shape
    if not (isinstance(rank, (int, np.integer)) and 1 <= rank <= min(n_rows, n_cols)):
        raise ValueError(f"rank must be an integer in 1..{min(n_rows, n_cols)}, got {rank!r}")
    k = min(int(rank) + int(oversamples), n_rows, n_cols)
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(block_matmat(block, rng.standard_normal((n_cols, k))))
    for _ in range(int(n_iter)):
        Z, _ = np.linalg.qr(block_rmatmat(block, Q))
        Q, _ = np.linalg.qr(block_matmat(block, Z))
    C = block_rmatmat(block, Q).T                      # Q^T W, k x n_cols
    U, s, Vt = np.linalg.svd(C, full_matrices=False)
    root = np.sqrt(s[:rank])
    return (Q @ U[:, :rank]) * root, root[:, None] * Vt[:rank]

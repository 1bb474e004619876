"""Smoothing formulas of DESIGN §3, once: counts to the sparse + rank-one parts of a weight block.

A count block ``F`` has rows ``i`` (features: context tokens, or a classifier's input
features) and columns ``j`` (targets: next tokens, or classes). Its explicit weights are

    W_ij = S_ij + row_terms_i + col_terms_j,     S_ij != 0 only where F_ij > 0,

so a block costs O(nnz + rows + columns), never rows x columns. With ``f_i = sum_j F_ij``,
``g_j = sum_i F_ij``, ``n_rows`` rows and ``n_cols`` columns:

Row form, ``W_ij = log P(j | i)`` (the published LM form):

- Dirichlet: ``P(j | i) = (F_ij + mu p_j) / (f_i + mu)``
  ``S_ij = log1p(F_ij / (mu p_j))``, ``row_i = -log(f_i + mu)``, ``col_j = log(mu p_j)``
- additive: ``P(j | i) = (F_ij + alpha) / (f_i + alpha n_cols)``
  ``S_ij = log1p(F_ij / alpha)``, ``row_i = -log(f_i + alpha n_cols)``, ``col_j = log alpha``
- none: ``P(j | i) = F_ij / f_i`` (needs every F_ij > 0: the exact R = 1 optimum)

Column form, ``W_ij = log P(i | j)`` (multinomial naive Bayes):

- Dirichlet: ``P(i | j) = (F_ij + mu q_i) / (g_j + mu)``
  ``S_ij = log1p(F_ij / (mu q_i))``, ``row_i = log(mu q_i)``, ``col_j = -log(g_j + mu)``
- additive: ``P(i | j) = (F_ij + alpha) / (g_j + alpha n_rows)``
  ``S_ij = log1p(F_ij / alpha)``, ``row_i = log alpha``, ``col_j = -log(g_j + alpha n_rows)``

``p`` (over the columns) and ``q`` (over the rows) are background distributions, usually
`smoothed_unigram` of the column or row totals. The language model (`core.weights`) and the
classifier (`classifier.estimator`) both build their weights with `block_weights`; only the
orientation differs (the classifier's ``feature_count_`` is ``F`` transposed).

Pure numpy/scipy: no I/O, nothing else of ours.
"""

from __future__ import annotations

import dataclasses
import numbers

import numpy as np
import scipy.sparse as sp

FORMS = ("row", "column")
SMOOTHINGS = ("dirichlet", "additive", "none")
#: Pseudo-count of the smoothed unigram (the LM's Dirichlet background).
UNIGRAM_ALPHA = 1.0
#: Additive pseudo-count of the language model when none is given.
DEFAULT_LM_ALPHA = 0.1


@dataclasses.dataclass
class SparseRankOne:
    """One weight block ``W = S + row_terms 1^T + 1 col_terms^T`` (S sparse, CSR).

    Attributes
    ----------
    sparse : scipy.sparse.csr_array
        ``S``, non-zero only on observed cells.
    row_terms : ndarray of shape (n_rows,)
    col_terms : ndarray of shape (n_cols,)
    """

    sparse: sp.csr_array
    row_terms: np.ndarray
    col_terms: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_rows, n_cols)`` of the block."""
        return self.sparse.shape

    def rows(self, index: np.ndarray) -> np.ndarray:
        """Dense rows ``W[index]`` as a (len(index), n_cols) float64 array."""
        out = self.sparse[index].toarray()
        out += self.row_terms[index][:, None]
        out += self.col_terms[None, :]
        return out

    def dense(self) -> np.ndarray:
        """The whole block as a dense array (small blocks only)."""
        return self.rows(np.arange(self.shape[0]))


def smoothed_unigram(unigram: np.ndarray, alpha: float = UNIGRAM_ALPHA) -> np.ndarray:
    """Additively smoothed distribution ``p_j = (n_j + alpha) / (N + alpha V)``.

    Parameters
    ----------
    unigram : array-like of shape (V,)
        Counts or masses ``n_j`` (>= 0).
    alpha : float
        Pseudo-count added to every entry.

    Returns
    -------
    ndarray of shape (V,), float64
    """
    unigram = np.asarray(unigram, dtype=np.float64)
    return (unigram + alpha) / (unigram.sum() + alpha * unigram.size)


def is_strength(value) -> bool:
    """True for a smoothing strength (``mu`` or ``alpha``): a finite real number > 0."""
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and bool(np.isfinite(value)) and value > 0)


def check_smoothing(smoothing: str, mu: float | None, alpha: float | None, form: str = "row"):
    """Validate the language model's smoothing parameters; raise ValueError with the fix.

    Parameters
    ----------
    smoothing : {"dirichlet", "additive", "none"}
    mu, alpha : float or None
        Only the one of the chosen smoothing may be given (the CLI's ``--mu``/``--alpha``).
    form : {"row", "column"}
    """
    if form not in FORMS:
        raise ValueError(f"form must be 'row' or 'column', got {form!r}")
    if smoothing not in SMOOTHINGS:
        raise ValueError(f"smoothing must be one of {', '.join(SMOOTHINGS)}, got {smoothing!r}")
    if mu is not None and not is_strength(mu):
        raise ValueError(f"--mu must be a positive number, got {mu}")
    if alpha is not None and not is_strength(alpha):
        raise ValueError(f"--alpha must be a positive number, got {alpha}")
    if smoothing == "dirichlet" and alpha is not None:
        raise ValueError("--alpha applies to additive smoothing; use --mu with dirichlet")
    if smoothing == "additive" and mu is not None:
        raise ValueError("--mu applies to dirichlet smoothing; use --alpha with additive")


def resolve_strengths(smoothing: str, mu, alpha, support: int) -> tuple[float | None, float | None]:
    """The language model's ``(mu, alpha)`` with defaults filled in.

    ``mu`` defaults to ``support`` (the size of the smoothed distribution), ``alpha`` to
    `DEFAULT_LM_ALPHA`; the strength the smoothing does not use is None.
    """
    if smoothing == "dirichlet":
        return (float(mu) if mu is not None else float(support)), None
    if smoothing == "additive":
        return None, (float(alpha) if alpha is not None else DEFAULT_LM_ALPHA)
    return None, None


def _observed(F: sp.csr_array) -> tuple[np.ndarray, np.ndarray]:
    """Counts (float64) and row index of each stored cell of a CSR block."""
    return (F.data.astype(np.float64),
            np.repeat(np.arange(F.shape[0]), np.diff(F.indptr)))


def row_form_terms(F: sp.csr_array, smoothing: str, mu: float | None, alpha: float | None,
                   log_p: np.ndarray | None, row_sums: np.ndarray | None = None):
    """``(S data, row_terms, col_terms)`` of ``log P(j | i)`` for a CSR count block.

    Parameters
    ----------
    F : csr_array of shape (n_rows, n_cols)
        Counts (int or float, >= 0); may be a row block of a larger matrix.
    smoothing : {"dirichlet", "additive", "none"}
    mu, alpha : float or None
        Strength of the chosen smoothing.
    log_p : ndarray of shape (n_cols,) or None
        Log background over the columns (Dirichlet only).
    row_sums : ndarray of shape (n_rows,), optional
        ``f_i`` (default: computed from F).
    """
    counts, _ = _observed(F)
    n_cols = F.shape[1]
    f = np.asarray(F.sum(axis=1)).ravel().astype(np.float64) if row_sums is None else row_sums
    if smoothing == "dirichlet":
        data = np.log1p(counts / (mu * np.exp(log_p[F.indices])))
        row_terms = -np.log(f + mu)
        col_terms = np.log(mu) + log_p
    elif smoothing == "additive":
        data = np.log1p(counts / alpha)
        row_terms = -np.log(f + alpha * n_cols)
        col_terms = np.full(n_cols, np.log(alpha))
    else:
        nnz_per_row = np.diff(F.indptr)
        if np.any(nnz_per_row[f > 0] < n_cols) or np.any(counts <= 0):
            raise ValueError("smoothing='none' needs every count F_ij > 0 in the observed rows; "
                             "use dirichlet or additive smoothing")
        data = np.log(counts)
        with np.errstate(divide="ignore"):
            row_terms = np.where(f > 0, -np.log(np.maximum(f, 1)), 0.0)
        col_terms = np.zeros(n_cols)
    return data, row_terms, col_terms


def column_form_terms(F: sp.csr_array, smoothing: str, mu: float | None, alpha: float | None,
                      log_q: np.ndarray | None, col_sums: np.ndarray | None = None,
                      n_rows: int | None = None):
    """``(S data, row_terms, col_terms)`` of ``log P(i | j)`` for a CSR count block.

    Parameters
    ----------
    F : csr_array of shape (rows, n_cols)
        Counts (>= 0); may be a row block of a matrix with ``n_rows`` rows.
    smoothing : {"dirichlet", "additive"}
    mu, alpha : float or None
        Strength of the chosen smoothing.
    log_q : ndarray of shape (rows,) or None
        Log background over the rows of F (Dirichlet only).
    col_sums : ndarray of shape (n_cols,), optional
        ``g_j`` of the whole matrix (default: computed from F).
    n_rows : int, optional
        Rows of the whole matrix, the support of ``P(. | j)`` (default: ``n_cols``, the
        language model's square V x V blocks).
    """
    counts, rows_of_nz = _observed(F)
    if col_sums is None:
        col_sums = np.asarray(F.sum(axis=0)).ravel()
    g = col_sums.astype(np.float64)
    n_rows = F.shape[1] if n_rows is None else n_rows
    if smoothing == "dirichlet":
        q = np.exp(log_q)
        data = np.log1p(counts / (mu * q[rows_of_nz]))
        row_terms = np.log(mu) + log_q
        col_terms = -np.log(g + mu)
    elif smoothing == "additive":
        data = np.log1p(counts / alpha)
        row_terms = np.full(F.shape[0], np.log(alpha))
        col_terms = -np.log(g + alpha * n_rows)
    else:
        raise ValueError("the column form needs smoothing (dirichlet or additive)")
    return data, row_terms, col_terms


def check_smoothing_scale(smoothing: str, mu: float | None, alpha: float | None,
                          p_min: float, vocab_size: int):
    """Refuse smoothing so weak that the rarest token's pseudo-count is lost in rounding.

    Below float64 resolution (``mu * p_min`` or ``alpha`` under machine epsilon) the weights
    of unseen pairs are hundreds of nats below the rest and held-out perplexity overflows to
    infinity. ``p_min`` is the smallest smoothed unigram probability of the store; an
    ``alpha`` whose total ``alpha * vocab_size`` overflows is refused too.

    Raises
    ------
    ValueError
        Naming the smallest sensible value.
    """
    eps = float(np.finfo(np.float64).eps)
    if smoothing == "dirichlet" and not mu * p_min >= eps:
        smallest = float(f"{eps / p_min * 1.05:.2g}")
        raise ValueError(f"--mu {mu:g} is too small for this store: the rarest token's "
                         f"pseudo-count mu * p_min = {mu * p_min:.3g} is below float64 resolution "
                         f"({eps:.1e}) and would give infinite perplexity; the smallest sensible "
                         f"--mu is {smallest:g} (the default is V)")
    if smoothing == "additive" and not alpha >= eps:
        raise ValueError(f"--alpha {alpha:g} is too small: below float64 resolution ({eps:.1e}) "
                         f"it would give infinite perplexity; the smallest sensible --alpha is "
                         f"{float(f'{eps * 1.05:.2g}'):g} (the default is 0.1)")
    if smoothing == "additive" and not np.isfinite(alpha * vocab_size):
        raise ValueError(f"--alpha {alpha:g} is too large: alpha * V overflows; the largest "
                         f"usable --alpha is {np.finfo(np.float64).max / vocab_size / 2:.2g}")


def block_weights(F: sp.csr_array, form: str, smoothing: str, mu: float | None,
                  alpha: float | None, log_p: np.ndarray | None = None,
                  log_q: np.ndarray | None = None, col_sums: np.ndarray | None = None,
                  row_sums: np.ndarray | None = None, n_rows: int | None = None) -> SparseRankOne:
    """Weights of one count block (or one row block of it) in the row or column form.

    Parameters
    ----------
    F : sparse matrix of shape (rows, n_cols)
        Counts: rows = features (context tokens), columns = targets (next tokens, classes).
    form : {"row", "column"}
    smoothing : {"dirichlet", "additive", "none"}
    mu, alpha : float or None
        Strength of the chosen smoothing (resolved: no defaults are filled in here).
    log_p : ndarray of shape (n_cols,), optional
        Log background over the columns (row form, Dirichlet).
    log_q : ndarray of shape (rows,), optional
        Log background over the rows of F (column form, Dirichlet).
    col_sums : ndarray of shape (n_cols,), optional
        ``g_j`` of the whole matrix (column form; F may be a row block).
    row_sums : ndarray of shape (rows,), optional
        ``f_i`` of the rows of F (row form; default: computed from F).
    n_rows : int, optional
        Rows of the whole matrix (column form, additive; default ``n_cols``).

    Returns
    -------
    SparseRankOne
        ``W = S + row_terms 1^T + 1 col_terms^T`` with ``S`` on F's stored cells.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> F = sp.csr_array(np.array([[2, 0], [1, 1]]))
    >>> W = block_weights(F, "row", "additive", None, 1.0).dense()
    >>> np.allclose(W, np.log((F.toarray() + 1.0) / (F.toarray().sum(1, keepdims=True) + 2)))
    True
    """
    F = sp.csr_array(F)
    if form == "row":
        data, row_terms, col_terms = row_form_terms(F, smoothing, mu, alpha, log_p, row_sums)
    else:
        data, row_terms, col_terms = column_form_terms(F, smoothing, mu, alpha, log_q, col_sums,
                                                       n_rows)
    sparse = sp.csr_array((data, F.indices.copy(), F.indptr.copy()), shape=F.shape)
    return SparseRankOne(sparse, np.asarray(row_terms, dtype=np.float64),
                         np.asarray(col_terms, dtype=np.float64))

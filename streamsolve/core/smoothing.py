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
- Kneser–Ney (modified, interpolated; Chen & Goodman 1998), discounts ``D(F)`` = D1, D2, D3+
  for counts 1, 2, >= 3 and the continuation distribution ``q`` as the background ``p``:
  ``P(j | i) = max(F_ij - D(F_ij), 0) / f_i + lambda_i q_j``,
  ``lambda_i = m_i / f_i`` with ``m_i = sum_j D(F_ij) = D1 N1(i) + D2 N2(i) + D3+ N3+(i)``
  ``S_ij = log1p(max(F_ij - D, 0) / (m_i q_j))``, ``row_i = log lambda_i``, ``col_j = log q_j``
  (rows with ``f_i = 0``: ``P = q``, ``row_i = 0``). The discounts and ``q`` are statistics of
  the whole block: `streamsolve.core.kneser_ney`.

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
SMOOTHINGS = ("dirichlet", "additive", "none", "kneser-ney")
#: Largest discount for counts 1, 2 and >= 3 (modified Kneser–Ney: D_k <= k keeps F - D >= 0).
DISCOUNT_LIMITS = (1.0, 2.0, 3.0)
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


def check_discount(discount) -> tuple[float, float, float] | None:
    """Kneser–Ney discounts ``(D1, D2, D3+)`` from one value or a triple (None: estimate them).

    One value ``D`` means ``(D, D, D)``. Each ``D_k`` must be finite and in ``(0, k]``.

    Raises
    ------
    ValueError
        One line naming the bad value and the allowed ranges.
    """
    if discount is None:
        return None
    values = [discount] if isinstance(discount, numbers.Real) else list(discount)
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or not all(isinstance(v, numbers.Real) and not isinstance(v, bool)
                                   for v in values):
        raise ValueError(f"--discount must be one number D or three D1,D2,D3, got {discount!r}")
    for k, (value, limit) in enumerate(zip(values, DISCOUNT_LIMITS), start=1):
        if not (np.isfinite(value) and 0 < value <= limit):
            name = "D3+" if k == 3 else f"D{k}"
            raise ValueError(f"--discount: {name} = {value} is outside (0, {limit:g}] "
                             f"(D1 in (0, 1], D2 in (0, 2], D3+ in (0, 3])")
    return tuple(float(v) for v in values)


def check_smoothing(smoothing: str, mu: float | None, alpha: float | None, form: str = "row",
                    discount=None):
    """Validate the language model's smoothing parameters; raise ValueError with the fix.

    Parameters
    ----------
    smoothing : {"dirichlet", "additive", "none", "kneser-ney"}
    mu, alpha : float or None
        Only the one of the chosen smoothing may be given (the CLI's ``--mu``/``--alpha``).
    form : {"row", "column"}
    discount : float or sequence of 3 floats, optional
        Kneser–Ney discounts (see `check_discount`); only with ``smoothing="kneser-ney"``.
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
    if smoothing == "kneser-ney":
        if mu is not None or alpha is not None:
            raise ValueError("--mu/--alpha do not apply to kneser-ney smoothing; use --discount")
        if form != "row":
            raise ValueError("kneser-ney smoothing is a row-form smoothing; use --form row")
        check_discount(discount)
    elif discount is not None:
        raise ValueError("--discount applies to kneser-ney smoothing; use --smoothing kneser-ney")


#: The language model's default smoothing (row form): modified Kneser–Ney won on held-out
#: text held out by source (BENCHMARKS.md, "Smoothing: Dirichlet vs Kneser–Ney").
DEFAULT_LM_SMOOTHING = "kneser-ney"


def default_smoothing(smoothing: str | None, form: str = "row", mu=None, alpha=None) -> str:
    """The smoothing a finalize uses when none is named (``smoothing=None``).

    ``--mu`` alone means Dirichlet and ``--alpha`` alone additive (they name their
    smoothing); otherwise Kneser–Ney (`DEFAULT_LM_SMOOTHING`) for the row form, and Dirichlet
    for the column form, where Kneser–Ney does not apply.

    Examples
    --------
    >>> default_smoothing(None), default_smoothing(None, "column"), default_smoothing(None, mu=8.0)
    ('kneser-ney', 'dirichlet', 'dirichlet')
    >>> default_smoothing("additive")
    'additive'
    """
    if smoothing is not None:
        return smoothing
    if mu is not None:
        return "dirichlet"
    if alpha is not None:
        return "additive"
    return DEFAULT_LM_SMOOTHING if form == "row" else "dirichlet"


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


def cell_discounts(counts: np.ndarray, discounts) -> np.ndarray:
    """Modified Kneser–Ney discount ``D(F)`` of each count: D1, D2, D3+ for 1, 2, >= 3; 0 for 0.

    Raises ValueError for counts that are not whole numbers (Kneser–Ney needs integer counts).
    """
    counts = np.asarray(counts, dtype=np.float64)
    if np.any(counts != np.round(counts)) or np.any(counts < 0):
        raise ValueError("kneser-ney smoothing needs integer counts >= 0; use dirichlet")
    D1, D2, D3 = discounts
    return np.select([counts == 1, counts == 2, counts >= 3], [D1, D2, D3], 0.0)


def kneser_ney_row_terms(F: sp.csr_array, discounts, log_q: np.ndarray,
                         row_sums: np.ndarray | None = None):
    """``(S data, row_terms, col_terms)`` of the modified Kneser–Ney ``log P(j | i)``.

    ``P(j | i) = max(F_ij - D(F_ij), 0) / f_i + lambda_i q_j`` (module docstring); ``F`` may
    be a row block, since every term but ``discounts`` and ``q`` is local to its row.

    Parameters
    ----------
    F : csr_array of shape (n_rows, n_cols)
        Integer counts.
    discounts : (float, float, float)
        ``(D1, D2, D3+)`` of the whole block (`streamsolve.core.kneser_ney.block_discounts`).
    log_q : ndarray of shape (n_cols,)
        Log continuation distribution of the whole block (no entry -inf).
    row_sums : ndarray of shape (n_rows,), optional
        ``f_i`` (default: computed from F).
    """
    counts, rows = _observed(F)
    f = np.asarray(F.sum(axis=1)).ravel().astype(np.float64) if row_sums is None else row_sums
    cell_d = cell_discounts(counts, discounts)
    mass = np.bincount(rows, weights=cell_d, minlength=F.shape[0])  # m_i = lambda_i f_i
    kept = np.maximum(counts - cell_d, 0.0)
    denominator = mass[rows] * np.exp(log_q[F.indices])
    data = np.log1p(np.divide(kept, denominator, out=np.zeros_like(kept), where=kept > 0))
    observed = (f > 0) & (mass > 0)
    row_terms = np.zeros(F.shape[0])
    row_terms[observed] = np.log(mass[observed]) - np.log(f[observed])
    return data, row_terms, np.asarray(log_q, dtype=np.float64).copy()


def row_form_terms(F: sp.csr_array, smoothing: str, mu: float | None, alpha: float | None,
                   log_p: np.ndarray | None, row_sums: np.ndarray | None = None,
                   discounts=None):
    """``(S data, row_terms, col_terms)`` of ``log P(j | i)`` for a CSR count block.

    Parameters
    ----------
    F : csr_array of shape (n_rows, n_cols)
        Counts (int or float, >= 0); may be a row block of a larger matrix.
    smoothing : {"dirichlet", "additive", "none", "kneser-ney"}
    mu, alpha : float or None
        Strength of the chosen smoothing.
    log_p : ndarray of shape (n_cols,) or None
        Log background over the columns (Dirichlet; Kneser–Ney: the continuation ``log q``).
    row_sums : ndarray of shape (n_rows,), optional
        ``f_i`` (default: computed from F).
    discounts : (float, float, float), optional
        Kneser–Ney ``(D1, D2, D3+)`` of the whole block.
    """
    if smoothing == "kneser-ney":
        return kneser_ney_row_terms(F, discounts, log_p, row_sums)
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
                  row_sums: np.ndarray | None = None, n_rows: int | None = None,
                  discounts=None) -> SparseRankOne:
    """Weights of one count block (or one row block of it) in the row or column form.

    Parameters
    ----------
    F : sparse matrix of shape (rows, n_cols)
        Counts: rows = features (context tokens), columns = targets (next tokens, classes).
    form : {"row", "column"}
    smoothing : {"dirichlet", "additive", "none", "kneser-ney"}
    mu, alpha : float or None
        Strength of the chosen smoothing (resolved: no defaults are filled in here).
    log_p : ndarray of shape (n_cols,), optional
        Log background over the columns (row form, Dirichlet; Kneser–Ney: the continuation
        distribution ``log q``).
    log_q : ndarray of shape (rows,), optional
        Log background over the rows of F (column form, Dirichlet).
    col_sums : ndarray of shape (n_cols,), optional
        ``g_j`` of the whole matrix (column form; F may be a row block).
    row_sums : ndarray of shape (rows,), optional
        ``f_i`` of the rows of F (row form; default: computed from F).
    n_rows : int, optional
        Rows of the whole matrix (column form, additive; default ``n_cols``).
    discounts : (float, float, float), optional
        Kneser–Ney ``(D1, D2, D3+)`` of the whole block (row form).

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
        data, row_terms, col_terms = row_form_terms(F, smoothing, mu, alpha, log_p, row_sums,
                                                    discounts)
    else:
        data, row_terms, col_terms = column_form_terms(F, smoothing, mu, alpha, log_q, col_sums,
                                                       n_rows)
    sparse = sp.csr_array((data, F.indices.copy(), F.indptr.copy()), shape=F.shape)
    return SparseRankOne(sparse, np.asarray(row_terms, dtype=np.float64),
                         np.asarray(col_terms, dtype=np.float64))

def smoothing_values(weights: dict, config: dict) -> dict:
    """The smoothing values a store's weights were computed with, as `info` shows them.

    ``mu`` (Dirichlet), ``alpha`` (additive) and, for Kneser–Ney, ``discounts``: per weight
    block (``"r1"``, ``"r2"``, ... per offset for ``cat``; ``"sum"``), ``[D1, D2, D3+]``.
    When the strengths were chosen on held-out text, ``mu`` is per block too and
    ``search`` holds each block's scale ``s`` and held-out cross-entropy (default -> chosen;
    the whole curve is in ``weights.smoothing_search``).
    Values that do not apply are left out.
    """
    out = {"smoothing": weights.get("smoothing"), "form": weights.get("form")}
    def per_block(values: list) -> dict:
        labels = (["sum"] if config.get("aggregation") == "sum" else
                  [f"r{r + 1}" for r in range(len(values))])
        return dict(zip(labels, values))

    for key in ("mu", "alpha"):
        if isinstance(weights.get(key), list):  # chosen per block on held-out text
            out[key] = per_block(weights[key])
        elif weights.get(key) is not None:
            out[key] = weights[key]
    if weights.get("discounts"):
        out["discounts"] = per_block(weights["discounts"])
    search = weights.get("smoothing_search")
    if search:
        out["search"] = {"positions": search.get("positions"), "blocks": per_block([
            {k: block[k] for k in ("scale", "default_cross_entropy", "cross_entropy",
                                   "evaluations")} for block in search["blocks"]])}
    return out

/* Scoring kernels of streamsolve (DESIGN 3b, "Scoring in O(nnz)"): per context, the log
   normaliser of the sparse + rank-one logits, and on request the expectations that the
   calibration gradient needs, in O(sum of the context's R rows' nnz), never O(V).

   For a context c = (c_1..c_R) (offset r reads row c_r of weight block b(r)):

       T_j   = sum_r beta_r S^(b(r))[c_r, j]          nonzero on J(c), the union of the rows
       e_j   = a'_j + T_j,  a' = a - max(a),  u_j = exp(a'_j),  U = sum_j u_j
       m     = max(0, max_{j in J} e_j)
       Zs    = (U - sum_J u_j) e^-m + sum_J exp(e_j - m)
       log_zhat = m + log(Zs)     (log Z(c) = A(c) + max(a) + log_zhat)

   The R rows are merged (indices sorted within each CSR row) so equal targets of several
   rows (the `sum` aggregation reads one block R times) add up. Gradient extras:

       E_p[x_k]       = ((X_k - sum_J u_j x_kj) e^-m + sum_J exp(e_j - m) x_kj) / Zs
       E_p[Sraw_b]    = sum_J exp(e_j - m) Sraw_b(c, j) / Zs,  Sraw_b = sum_{r: b(r)=b} S^(b)[c_r, .]

   with x dense per-target vectors (laid out target-major: x[j * n_dense + k]) and X_k their
   u-weighted totals. Loaded with ctypes by streamsolve/core/score_native.py, which releases
   the GIL during a call: Python runs one call per thread on slices of the contexts. */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_ROWS 64

/* Merge the R rows of one context into (j, T_j[, Sraw_b(j)]) triplets; return |J|. */
static int64_t merge_rows(int R, int n_blocks, const int64_t *const *indptr,
                          const int32_t *const *indices, const double *const *data,
                          const int32_t *block_of, const double *beta, const int64_t *ctx,
                          int32_t *jbuf, double *tbuf, double *sbuf)
{
    int64_t pos[MAX_ROWS], end[MAX_ROWS];
    for (int r = 0; r < R; r++) {
        const int b = block_of[r];
        pos[r] = indptr[b][ctx[r]];
        end[r] = indptr[b][ctx[r] + 1];
    }
    if (R == 1 && sbuf == NULL) {
        const int32_t *ix = indices[block_of[0]];
        const double *d = data[block_of[0]];
        const double be = beta[0];
        int64_t k = 0;
        for (int64_t p = pos[0]; p < end[0]; p++, k++) {
            jbuf[k] = ix[p];
            tbuf[k] = be * d[p];
        }
        return k;
    }
    int64_t k = 0;
    for (;;) {
        int32_t jmin = INT32_MAX;
        for (int r = 0; r < R; r++)
            if (pos[r] < end[r] && indices[block_of[r]][pos[r]] < jmin)
                jmin = indices[block_of[r]][pos[r]];
        if (jmin == INT32_MAX)
            break;
        double t = 0.0;
        if (sbuf != NULL)
            memset(sbuf + k * n_blocks, 0, sizeof(double) * (size_t)n_blocks);
        for (int r = 0; r < R; r++) {
            const int b = block_of[r];
            if (pos[r] < end[r] && indices[b][pos[r]] == jmin) {
                const double v = data[b][pos[r]];
                t += beta[r] * v;
                if (sbuf != NULL)
                    sbuf[k * n_blocks + b] += v;
                pos[r]++;
            }
        }
        jbuf[k] = jmin;
        tbuf[k] = t;
        k++;
    }
    return k;
}

/* log_zhat[i] for contexts[i * R .. i * R + R); with exp_sparse / exp_dense not NULL also
   the expectations (n x n_blocks, n x n_dense). max_union bounds |J| (the sum of the R
   largest row lengths). Returns 0, or -1 when out of memory or R is too large. */
int score_contexts(int R, int n_blocks, const int64_t *const *indptr,
                   const int32_t *const *indices, const double *const *data,
                   const int32_t *block_of, const double *beta, const double *a,
                   const double *u, double U, int n_dense, const double *dense,
                   const double *dense_totals, int64_t n, const int64_t *contexts,
                   int64_t max_union, double *log_zhat, double *exp_sparse, double *exp_dense)
{
    if (R < 1 || R > MAX_ROWS)
        return -1;
    const int grad = exp_sparse != NULL && exp_dense != NULL;
    int32_t *jbuf = malloc(sizeof(int32_t) * (size_t)(max_union + 1));
    double *tbuf = malloc(sizeof(double) * (size_t)(max_union + 1));
    double *sbuf = grad ? malloc(sizeof(double) * (size_t)(max_union + 1) * (size_t)n_blocks)
                        : NULL;
    double *acc = grad ? malloc(sizeof(double) * (size_t)(2 * n_dense + n_blocks + 1)) : NULL;
    if (jbuf == NULL || tbuf == NULL || (grad && (sbuf == NULL || acc == NULL))) {
        free(jbuf), free(tbuf), free(sbuf), free(acc);
        return -1;
    }
    for (int64_t i = 0; i < n; i++) {
        const int64_t k = merge_rows(R, n_blocks, indptr, indices, data, block_of, beta,
                                     contexts + i * R, jbuf, tbuf, grad ? sbuf : NULL);
        double m = 0.0;
        for (int64_t q = 0; q < k; q++) {
            tbuf[q] += a[jbuf[q]]; /* now e_j */
            if (tbuf[q] > m)
                m = tbuf[q];
        }
        double s0 = 0.0, s1 = 0.0;
        if (!grad) {
            for (int64_t q = 0; q < k; q++) {
                s0 += u[jbuf[q]];
                s1 += exp(tbuf[q] - m);
            }
            log_zhat[i] = m + log((U - s0) * exp(-m) + s1);
            continue;
        }
        /* acc: [0, n_dense) sum_J u x; [n_dense, 2 n_dense) sum_J w x; then n_blocks w Sraw */
        double *ux = acc, *wx = acc + n_dense, *ws = acc + 2 * n_dense;
        memset(acc, 0, sizeof(double) * (size_t)(2 * n_dense + n_blocks));
        for (int64_t q = 0; q < k; q++) {
            const int32_t j = jbuf[q];
            const double uj = u[j], w = exp(tbuf[q] - m);
            const double *x = dense + (int64_t)j * n_dense;
            s0 += uj;
            s1 += w;
            for (int d = 0; d < n_dense; d++) {
                ux[d] += uj * x[d];
                wx[d] += w * x[d];
            }
            const double *sb = sbuf + q * n_blocks;
            for (int b = 0; b < n_blocks; b++)
                ws[b] += w * sb[b];
        }
        const double scale = exp(-m);
        const double zs = (U - s0) * scale + s1;
        log_zhat[i] = m + log(zs);
        for (int d = 0; d < n_dense; d++)
            exp_dense[i * n_dense + d] = ((dense_totals[d] - ux[d]) * scale + wx[d]) / zs;
        for (int b = 0; b < n_blocks; b++)
            exp_sparse[i * n_blocks + b] = ws[b] / zs;
    }
    free(jbuf), free(tbuf), free(sbuf), free(acc);
    return 0;
}

/* out[i * n_blocks + b] = sum_{r: b(r)=b} S^(b)[contexts[i, r], targets[i]] (binary search in
   each sorted row; 0 where the target is not stored). */
void target_values(int R, int n_blocks, const int64_t *const *indptr,
                   const int32_t *const *indices, const double *const *data,
                   const int32_t *block_of, int64_t n, const int64_t *contexts,
                   const int64_t *targets, double *out)
{
    for (int64_t i = 0; i < n; i++) {
        double *o = out + i * n_blocks;
        for (int b = 0; b < n_blocks; b++)
            o[b] = 0.0;
        const int32_t t = (int32_t)targets[i];
        for (int r = 0; r < R; r++) {
            const int b = block_of[r];
            const int32_t *ix = indices[b];
            int64_t lo = indptr[b][contexts[i * R + r]], hi = indptr[b][contexts[i * R + r] + 1];
            while (lo < hi) {
                const int64_t mid = lo + (hi - lo) / 2;
                if (ix[mid] < t)
                    lo = mid + 1;
                else
                    hi = mid;
            }
            if (lo < indptr[b][contexts[i * R + r] + 1] && ix[lo] == t)
                o[b] += data[b][lo];
        }
    }
}

/* The union J of one context's rows, as every product kernel needs it: each j in J is
   written once to touched (first-seen order; the count is returned), acc[j] receives the
   product of the rows' factors edata at j (in row order, so the rounding is fixed) and, with
   sraw, sraw[j * n_blocks + b] the raw values of block b's rows at j, summed. Row `skip` is
   left out (-1: none). stamp[j] == i marks j as seen for context i, so nothing is cleared
   between contexts. Inlined: a NULL sraw and constant n_blocks compile the unused work away. */
static inline __attribute__((always_inline)) int64_t
gather_union(int R, int n_blocks, const int64_t *const *indptr, const int32_t *const *indices,
             const double *const *data, const double *const *edata, const int32_t *block_of,
             const int64_t *ctx, int skip, int64_t i, int64_t *stamp, int32_t *touched,
             double *acc, double *sraw)
{
    int64_t k = 0;
    for (int r = 0; r < R; r++) {
        if (r == skip)
            continue;
        const int b = block_of[r];
        const int64_t c = ctx[r];
        const int32_t *ix = indices[b];
        const double *e = edata[b];
        const double *d = sraw != NULL ? data[b] : NULL;
        for (int64_t p = indptr[b][c]; p < indptr[b][c + 1]; p++) {
            const int32_t j = ix[p];
            if (stamp[j] != i) {
                stamp[j] = i;
                touched[k++] = j;
                acc[j] = e[p];
                if (sraw != NULL)
                    for (int q = 0; q < n_blocks; q++)
                        sraw[(int64_t)j * n_blocks + q] = 0.0;
            } else {
                acc[j] *= e[p];
            }
            if (sraw != NULL)
                sraw[(int64_t)j * n_blocks + b] += d[p];
        }
    }
    return k;
}

/* The evaluation path of score_contexts (no gradient), without a merge or an exp per entry:
   edata[b][p] = exp(beta_b * S^(b) data[p]) is precomputed once per (beta, gamma), so
   exp(T_j) is the product of the R rows' factors at j, accumulated in a dense scratch
   vector (stamped per context, so it is never cleared), and

       log_zhat = log(U + sum_{j in J} u_j (exp(T_j) - 1)).

   Only valid while exp(T_j) cannot overflow (the caller checks a bound on T). Returns 0,
   or -1 when out of memory. */
int score_contexts_product(int R, const int64_t *const *indptr, const int32_t *const *indices,
                           const double *const *edata, const int32_t *block_of,
                           const double *u, double U, int64_t V, int64_t n,
                           const int64_t *contexts, double *log_zhat)
{
    if (R == 1) {
        const int64_t *ip = indptr[block_of[0]];
        const int32_t *ix = indices[block_of[0]];
        const double *e = edata[block_of[0]];
        for (int64_t i = 0; i < n; i++) {
            double corr = 0.0;
            for (int64_t p = ip[contexts[i]]; p < ip[contexts[i] + 1]; p++)
                corr += u[ix[p]] * (e[p] - 1.0);
            log_zhat[i] = log(U + corr);
        }
        return 0;
    }
    double *acc = malloc(sizeof(double) * (size_t)V);
    int64_t *stamp = malloc(sizeof(int64_t) * (size_t)V);
    int32_t *touched = malloc(sizeof(int32_t) * (size_t)V);
    if (acc == NULL || stamp == NULL || touched == NULL) {
        free(acc), free(stamp), free(touched);
        return -1;
    }
    for (int64_t j = 0; j < V; j++)
        stamp[j] = -1;
    for (int64_t i = 0; i < n; i++) {
        const int64_t k = gather_union(R, 1, indptr, indices, NULL, edata, block_of,
                                       contexts + i * R, -1, i, stamp, touched, acc, NULL);
        double corr = 0.0;
        for (int64_t q = 0; q < k; q++) {
            const int32_t j = touched[q];
            corr += u[j] * (acc[j] - 1.0);
        }
        log_zhat[i] = log(U + corr);
    }
    free(acc), free(stamp), free(touched);
    return 0;
}

/* score_contexts_product with the calibration gradient's expectations (see score_contexts):
   with P_j = exp(T_j) the product of the rows' factors and Zs = U + sum_J u_j (P_j - 1),

       E_p[x_d]    = (X_d + sum_J u_j (P_j - 1) x_dj) / Zs
       E_p[Sraw_b] = sum_J u_j P_j Sraw_b(j) / Zs

   Same validity condition (no overflow of P_j). Returns 0, or -1 when out of memory. */
int score_contexts_product_grad(int R, int n_blocks, const int64_t *const *indptr,
                                const int32_t *const *indices, const double *const *data,
                                const double *const *edata, const int32_t *block_of,
                                const double *u, double U, int64_t V, int n_dense,
                                const double *dense, const double *dense_totals, int64_t n,
                                const int64_t *contexts, double *log_zhat, double *exp_sparse,
                                double *exp_dense)
{
    double *acc = malloc(sizeof(double) * (size_t)V);
    double *sraw = malloc(sizeof(double) * (size_t)V * (size_t)n_blocks);
    int64_t *stamp = malloc(sizeof(int64_t) * (size_t)V);
    int32_t *touched = malloc(sizeof(int32_t) * (size_t)V);
    double *sums = malloc(sizeof(double) * (size_t)(n_dense + n_blocks + 1));
    if (acc == NULL || sraw == NULL || stamp == NULL || touched == NULL || sums == NULL) {
        free(acc), free(sraw), free(stamp), free(touched), free(sums);
        return -1;
    }
    for (int64_t j = 0; j < V; j++)
        stamp[j] = -1;
    for (int64_t i = 0; i < n; i++) {
        const int64_t k = gather_union(R, n_blocks, indptr, indices, data, edata, block_of,
                                       contexts + i * R, -1, i, stamp, touched, acc, sraw);
        double *cx = sums, *ws = sums + n_dense;
        for (int q = 0; q < n_dense + n_blocks; q++)
            sums[q] = 0.0;
        double corr = 0.0;
        for (int64_t q = 0; q < k; q++) {
            const int32_t j = touched[q];
            const double w = u[j] * acc[j], d0 = w - u[j];
            const double *x = dense + (int64_t)j * n_dense, *s = sraw + (int64_t)j * n_blocks;
            corr += d0;
            for (int t = 0; t < n_dense; t++)
                cx[t] += d0 * x[t];
            for (int b = 0; b < n_blocks; b++)
                ws[b] += w * s[b];
        }
        const double zs = U + corr;
        log_zhat[i] = log(zs);
        for (int t = 0; t < n_dense; t++)
            exp_dense[i * n_dense + t] = (dense_totals[t] + cx[t]) / zs;
        for (int b = 0; b < n_blocks; b++)
            exp_sparse[i * n_blocks + b] = ws[b] / zs;
    }
    free(acc), free(sraw), free(stamp), free(touched), free(sums);
    return 0;
}

/* score_contexts_product with the longest row of a context taken whole from a dense copy:
   for rows held densely (slot[b][row] >= 0: drows[b] + slot * V holds P(j) = exp(beta_b
   S^(b)[row, j]), 1 off the row, and rowcorr[b][slot] = sum_j u_j (P(j) - 1)), with L the
   longest dense row of the context and Q(j) the product of the other rows' factors,

       sum_J u_j (P_L(j) Q(j) - 1) = rowcorr(L) + sum_{j in the other rows} u_j P_L(j) (Q(j) - 1),

   so a context costs the nnz of its other rows only (the long rows of frequent tokens are
   most of a context's nnz). Contexts without a dense row are scored as score_contexts_product
   does. Returns 0, or -1 when out of memory. */
int score_contexts_product_dense(int R, const int64_t *const *indptr,
                                 const int32_t *const *indices, const double *const *edata,
                                 const int32_t *block_of, const double *u, double U, int64_t V,
                                 int64_t n, const int64_t *contexts, const int32_t *const *slot,
                                 const double *const *drows, const double *const *rowcorr,
                                 double *log_zhat)
{
    double *acc = malloc(sizeof(double) * (size_t)V);
    int64_t *stamp = malloc(sizeof(int64_t) * (size_t)V);
    int32_t *touched = malloc(sizeof(int32_t) * (size_t)V);
    if (acc == NULL || stamp == NULL || touched == NULL) {
        free(acc), free(stamp), free(touched);
        return -1;
    }
    for (int64_t j = 0; j < V; j++)
        stamp[j] = -1;
    for (int64_t i = 0; i < n; i++) {
        const int64_t *ctx = contexts + i * R;
        int longest = -1;
        int64_t longest_nnz = -1;
        for (int r = 0; r < R; r++) {
            const int b = block_of[r];
            if (slot[b][ctx[r]] >= 0) {
                const int64_t len = indptr[b][ctx[r] + 1] - indptr[b][ctx[r]];
                if (len > longest_nnz)
                    longest = r, longest_nnz = len;
            }
        }
        const int64_t k = gather_union(R, 1, indptr, indices, NULL, edata, block_of, ctx,
                                       longest, i, stamp, touched, acc, NULL);
        double corr = 0.0;
        if (longest < 0) {
            for (int64_t q = 0; q < k; q++) {
                const int32_t j = touched[q];
                corr += u[j] * (acc[j] - 1.0);
            }
        } else {
            const int b = block_of[longest];
            const int32_t s = slot[b][ctx[longest]];
            const double *pl = drows[b] + (int64_t)s * V;
            corr = rowcorr[b][s];
            for (int64_t q = 0; q < k; q++) {
                const int32_t j = touched[q];
                corr += u[j] * pl[j] * (acc[j] - 1.0);
            }
        }
        log_zhat[i] = log(U + corr);
    }
    free(acc), free(stamp), free(touched);
    return 0;
}

/* A context's outputs of the Hessian kernels from its accumulated sums (zs = U + corr):
   log zhat, the expectations of the dense and sparse features, and the second moments
   (mm holds the correction's square; its upper triangle is read). */
static inline __attribute__((always_inline)) void
write_context_moments(int64_t i, int n_blocks, int n_dense, double zs, const double *cx,
                      const double *ws, const double *mm, const double *dense_totals,
                      const double *dense_second, double *log_zhat, double *exp_sparse,
                      double *exp_dense, double *second)
{
    log_zhat[i] = log(zs);
    for (int t = 0; t < n_dense; t++)
        exp_dense[i * n_dense + t] = (dense_totals[t] + cx[t]) / zs;
    for (int b = 0; b < n_blocks; b++)
        exp_sparse[i * n_blocks + b] = ws[b] / zs;
    for (int t = 0; t < n_dense; t++)
        for (int l = 0; l < n_dense; l++) {
            const int at = t <= l ? t * n_dense + l : l * n_dense + t;
            second[i * n_dense * n_dense + t * n_dense + l] =
                (dense_second[t * n_dense + l] + mm[at]) / zs;
        }
}

/* Call IMPL(nb, nd, ...) with the block counts as constants when they are 1, 2 or 3 (R = 3 /
   2 cat, or one block), so the compiler unrolls the per-entry loops over blocks. */
#define WITH_CONSTANT_BLOCKS(IMPL, ...)                                                      \
    (n_blocks == 3 && n_dense == 4 ? IMPL(3, 4, __VA_ARGS__)                                 \
     : n_blocks == 1 && n_dense == 2 ? IMPL(1, 2, __VA_ARGS__)                               \
     : n_blocks == 2 && n_dense == 3 ? IMPL(2, 3, __VA_ARGS__)                               \
     : IMPL(n_blocks, n_dense, __VA_ARGS__))

/* score_contexts_product_grad plus the second moments the calibration Newton step needs:
   with the features F_k(j) = Sraw_k(j) + x_k(j) for k < n_blocks and F_k = x_k for the
   dense columns beyond (n_dense = n_blocks + 1: the last is log p), per context

       E_p[F_k F_l] = (XX_kl + sum_J (u_j P_j F_k F_l - u_j x_k x_l)) / Zs

   written to second[i * n_dense^2 + k * n_dense + l] (XX = sum_j u_j x_k x_l, given).
   Same validity condition as the product path. Returns 0, or -1 (out of memory, or
   n_dense != n_blocks + 1). */
static inline __attribute__((always_inline)) int
score_contexts_product_hess_impl(int R, int n_blocks, const int64_t *const *indptr,
                                const int32_t *const *indices, const double *const *data,
                                const double *const *edata, const int32_t *block_of,
                                const double *u, double U, int64_t V, int n_dense,
                                const double *dense, const double *dense_totals,
                                const double *dense_second, int64_t n, const int64_t *contexts,
                                double *log_zhat, double *exp_sparse, double *exp_dense,
                                double *second){
    if (n_dense != n_blocks + 1 || n_dense > 64)
        return -1;
    double *acc = malloc(sizeof(double) * (size_t)V);
    double *sraw = malloc(sizeof(double) * (size_t)V * (size_t)n_blocks);
    int64_t *stamp = malloc(sizeof(int64_t) * (size_t)V);
    int32_t *touched = malloc(sizeof(int32_t) * (size_t)V);
    double *sums = malloc(sizeof(double) * (size_t)(n_dense + n_blocks + n_dense * n_dense));
    if (acc == NULL || sraw == NULL || stamp == NULL || touched == NULL || sums == NULL) {
        free(acc), free(sraw), free(stamp), free(touched), free(sums);
        return -1;
    }
    for (int64_t j = 0; j < V; j++)
        stamp[j] = -1;
    for (int64_t i = 0; i < n; i++) {
        const int64_t k = gather_union(R, n_blocks, indptr, indices, data, edata, block_of,
                                       contexts + i * R, -1, i, stamp, touched, acc, sraw);
        double *cx = sums, *ws = sums + n_dense, *mm = sums + n_dense + n_blocks;
        for (int q = 0; q < n_dense + n_blocks + n_dense * n_dense; q++)
            sums[q] = 0.0;
        double corr = 0.0, f[64];
        for (int64_t q = 0; q < k; q++) {
            const int32_t j = touched[q];
            const double w = u[j] * acc[j], d0 = w - u[j];
            const double *x = dense + (int64_t)j * n_dense, *s = sraw + (int64_t)j * n_blocks;
            corr += d0;
            for (int t = 0; t < n_dense; t++)
                cx[t] += d0 * x[t];
            for (int b = 0; b < n_blocks; b++)
                ws[b] += w * s[b];
            for (int t = 0; t < n_dense; t++)
                f[t] = x[t] + (t < n_blocks ? s[t] : 0.0);
            const double uj = u[j];
            /* the whole square, though the output reads its upper triangle: the regular
               loop vectorises (the dense variant measured 20% faster per pass) */
            for (int t = 0; t < n_dense; t++) {
                const double wf = w * f[t], ux = uj * x[t];
                for (int l = 0; l < n_dense; l++)
                    mm[t * n_dense + l] += wf * f[l] - ux * x[l];
            }
        }
        write_context_moments(i, n_blocks, n_dense, U + corr, cx, ws, mm, dense_totals,
                              dense_second, log_zhat, exp_sparse, exp_dense, second);
    }
    free(acc), free(sraw), free(stamp), free(touched), free(sums);
    return 0;
}

int score_contexts_product_hess(int R, int n_blocks, const int64_t *const *indptr,
                                const int32_t *const *indices, const double *const *data,
                                const double *const *edata, const int32_t *block_of,
                                const double *u, double U, int64_t V, int n_dense,
                                const double *dense, const double *dense_totals,
                                const double *dense_second, int64_t n, const int64_t *contexts,
                                double *log_zhat, double *exp_sparse, double *exp_dense,
                                double *second)
{
#define HESS(nb, nd, ...) score_contexts_product_hess_impl(R, nb, indptr, indices, data,   \
                                         edata, block_of, u, U, V, nd, __VA_ARGS__)
    return WITH_CONSTANT_BLOCKS(HESS, dense, dense_totals, dense_second, n, contexts,
                                log_zhat, exp_sparse, exp_dense, second);
#undef HESS
}

/* score_contexts_product_hess with each context's longest dense row L taken from rowsums
   (per slot: corr, cx[n_dense], ws[n_blocks], mm[n_dense^2] of the row alone, mm upper
   triangle) plus, over the other rows' entries j, the summand minus the one of L alone; P_L
   and raw S_L are read densely (drows, srows). */
static inline __attribute__((always_inline)) int
score_contexts_product_hess_dense_impl(int R, int n_blocks, const int64_t *const *indptr,
                                const int32_t *const *indices, const double *const *data,
                                const double *const *edata, const int32_t *block_of,
                                const double *u, double U, int64_t V, int n_dense,
                                const double *dense, const double *dense_totals,
                                const double *dense_second, int64_t n, const int64_t *contexts,
                                double *log_zhat, double *exp_sparse, double *exp_dense,
                                double *second, const int32_t *const *slot,
                                const double *const *drows, const double *const *srows,
                                const double *const *rowsums){
    if (n_dense != n_blocks + 1 || n_dense > 64)
        return -1;
    double *acc = malloc(sizeof(double) * (size_t)V);
    double *sraw = malloc(sizeof(double) * (size_t)V * (size_t)n_blocks);
    int64_t *stamp = malloc(sizeof(int64_t) * (size_t)V);
    int32_t *touched = malloc(sizeof(int32_t) * (size_t)V);
    double *sums = malloc(sizeof(double) * (size_t)(n_dense + n_blocks + n_dense * n_dense));
    if (acc == NULL || sraw == NULL || stamp == NULL || touched == NULL || sums == NULL) {
        free(acc), free(sraw), free(stamp), free(touched), free(sums);
        return -1;
    }
    for (int64_t j = 0; j < V; j++)
        stamp[j] = -1;
    const int n_sums = 1 + n_dense + n_blocks + n_dense * n_dense;
    for (int64_t i = 0; i < n; i++) {
        const int64_t *ctx = contexts + i * R;
        int longest = -1;
        int64_t longest_nnz = -1;
        for (int r = 0; r < R; r++) {
            const int b = block_of[r];
            if (slot[b][ctx[r]] >= 0) {
                const int64_t len = indptr[b][ctx[r] + 1] - indptr[b][ctx[r]];
                if (len > longest_nnz)
                    longest = r, longest_nnz = len;
            }
        }
        const int64_t k = gather_union(R, n_blocks, indptr, indices, data, edata, block_of,
                                       ctx, longest, i, stamp, touched, acc, sraw);
        double *cx = sums, *ws = sums + n_dense, *mm = sums + n_dense + n_blocks;
        double corr = 0.0, f[64], fl[64];
        const double *pl = NULL, *sl = NULL;
        int bl = 0;
        if (longest >= 0) {
            bl = block_of[longest];
            const int32_t sv = slot[bl][ctx[longest]];
            const double *h = rowsums[bl] + (int64_t)sv * n_sums;
            pl = drows[bl] + (int64_t)sv * V;
            sl = srows[bl] + (int64_t)sv * V;
            corr = h[0];
            for (int q = 0; q < n_dense + n_blocks + n_dense * n_dense; q++)
                sums[q] = h[1 + q];
        } else {
            for (int q = 0; q < n_dense + n_blocks + n_dense * n_dense; q++)
                sums[q] = 0.0;
        }
        for (int64_t q = 0; q < k; q++) {
            const int32_t j = touched[q];
            const double uj = u[j];
            const double PL = pl ? pl[j] : 1.0, SL = sl ? sl[j] : 0.0;
            const double w = uj * acc[j] * PL, wl = uj * PL;
            const double *x = dense + (int64_t)j * n_dense, *s = sraw + (int64_t)j * n_blocks;
            corr += w - wl; /* (w - u) - (wl - u) */
            for (int t = 0; t < n_dense; t++)
                cx[t] += (w - wl) * x[t];
            for (int b = 0; b < n_blocks; b++)
                ws[b] += w * (s[b] + (b == bl && pl ? SL : 0.0)) - (b == bl && pl ? wl * SL : 0.0);
            for (int t = 0; t < n_dense; t++) {
                const double sl_t = (t == bl && pl) ? SL : 0.0;
                f[t] = x[t] + (t < n_blocks ? s[t] : 0.0) + sl_t;
                fl[t] = x[t] + sl_t;
            }
            /* the u x x terms cancel; the whole square, though the output reads its upper
               triangle: the regular loop vectorises (measured 20% faster per pass) */
            for (int t = 0; t < n_dense; t++) {
                const double wf = w * f[t], wlf = wl * fl[t];
                for (int l = 0; l < n_dense; l++)
                    mm[t * n_dense + l] += wf * f[l] - wlf * fl[l];
            }
        }
        write_context_moments(i, n_blocks, n_dense, U + corr, cx, ws, mm, dense_totals,
                              dense_second, log_zhat, exp_sparse, exp_dense, second);
    }
    free(acc), free(sraw), free(stamp), free(touched), free(sums);
    return 0;
}

int score_contexts_product_hess_dense(int R, int n_blocks, const int64_t *const *indptr,
                                const int32_t *const *indices, const double *const *data,
                                const double *const *edata, const int32_t *block_of,
                                const double *u, double U, int64_t V, int n_dense,
                                const double *dense, const double *dense_totals,
                                const double *dense_second, int64_t n, const int64_t *contexts,
                                double *log_zhat, double *exp_sparse, double *exp_dense,
                                double *second, const int32_t *const *slot,
                                const double *const *drows, const double *const *srows,
                                const double *const *rowsums)
{
#define HESS_DENSE(nb, nd, ...) score_contexts_product_hess_dense_impl(R, nb, indptr,      \
                                         indices, data, edata, block_of, u, U, V, nd, __VA_ARGS__)
    return WITH_CONSTANT_BLOCKS(HESS_DENSE, dense, dense_totals, dense_second, n, contexts,
                                log_zhat, exp_sparse, exp_dense, second, slot, drows, srows,
                                rowsums);
#undef HESS_DENSE
}

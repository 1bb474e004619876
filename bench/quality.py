"""Benchmark 5: held-out cross-entropy of the explicit weights (raw and calibrated) against
the best single layer L-BFGS finds on the same data (V = 1024, R = 1..4).

L-BFGS (PyTorch, full batch, strong-Wolfe line search, from zero) minimises the training
loss; the held-out loss is measured after every iteration and the best is kept (early
stopping: the unregularised optimum overfits a V x V x R layer).
"""

from __future__ import annotations

import os
import time

from . import common, data
from .softmax import SoftmaxLayer, positions


def grouped(ctx, tgt):
    """Positions grouped by unique context: (contexts (U, R), counts n_c (U,), position
    order sorted by context, group of each sorted position, targets in that order)."""
    import torch

    unique, inverse = torch.unique(ctx, dim=0, return_inverse=True)
    order = torch.argsort(inverse, stable=True)
    return unique, torch.bincount(inverse, minlength=unique.shape[0]), inverse[order], tgt[order]


def lbfgs(V, R, bos_id, train, test, iterations: int, chunk: int = 8192, init=None):
    """Full-batch L-BFGS from zero; the loss is summed per unique context (exactly the
    training cross-entropy, cheaper when contexts repeat)."""
    import torch

    torch.manual_seed(0)
    ctx, tgt = positions(train, R, bos_id)
    tctx, ttgt = positions(test, R, bos_id)
    uctx, n_c, group, targets = grouped(ctx, tgt)
    starts = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(n_c, 0)])
    layer = SoftmaxLayer(V, R)
    if init is not None:
        with torch.no_grad():
            layer.W.copy_(torch.from_numpy(init[0]))
            layer.b.copy_(torch.from_numpy(init[1]))
    opt = torch.optim.LBFGS(layer.params, lr=1.0, max_iter=1, max_eval=25, history_size=20,
                            line_search_fn="strong_wolfe")
    N = tgt.shape[0]
    U = uctx.shape[0]

    def closure():
        opt.zero_grad()
        total = 0.0
        for s in range(0, U, chunk):
            e = min(U, s + chunk)
            z = layer.logits(uctx[s:e])
            a, b = int(starts[s]), int(starts[e])
            loss = ((n_c[s:e] * torch.logsumexp(z, dim=1)).sum()
                    - z[group[a:b] - s, targets[a:b]].sum()) / N
            loss.backward()
            total += float(loss.detach())
        return torch.tensor(total)

    started = time.perf_counter()
    best, best_it, last = layer.mean_ce(tctx, ttgt), 0, None
    for it in range(1, iterations + 1):
        opt.step(closure)
        last = layer.mean_ce(tctx, ttgt)
        if last < best:
            best, best_it = last, it
    return best, best_it, last, time.perf_counter() - started


def run(full: bool) -> str:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    V = 1024
    train_tokens, iterations = (300_000, 40) if full else (50_000, 15)
    train_tokens = int(os.environ.get("STREAMSOLVE_BENCH_QUALITY_TOKENS", train_tokens))
    iterations = int(os.environ.get("STREAMSOLVE_BENCH_LBFGS_ITERATIONS", iterations))
    tok_text, bos_id, train, calib, test = data.split(V, train_tokens, 50_000 if full else 20_000,
                                                      30_000 if full else 15_000)
    rows = []
    for R in (1, 2, 3, 4):
        seconds, raw, cal, n, model = data.explicit(train, calib, test, V, R, bos_id)
        zero = lbfgs(V, R, bos_id, train, test, iterations)
        warm = lbfgs(V, R, bos_id, train, test, iterations, init=data.dense_layer(model))
        best = min(zero[0], warm[0])
        rows.append([R, f"{n:,}", f"{raw:.4f}", f"{cal:.4f}",
                     f"{zero[0]:.4f} (it. {zero[1]}; last {zero[2]:.4f})",
                     f"{warm[0]:.4f} (it. {warm[1]}; last {warm[2]:.4f})",
                     f"**{100 * (cal - best) / best:+.2f}%**", f"{100 * (raw - best) / best:+.2f}%",
                     f"{seconds:.2f}", f"{zero[3]:.0f} / {warm[3]:.0f}"])
    test_tokens = sum(d.size for d in test)
    notes = [
        f"data: byte-level BPE V = {V} trained on the bench corpus; training tokens from every "
        f"bench shard except {data.HELDOUT_SOURCE} (equal share per shard); held out by source: "
        f"{data.HELDOUT_SOURCE}, its documents alternating between calibration "
        f"({sum(d.size for d in calib):,} tokens) and test ({test_tokens:,} tokens)",
        "explicit: row form, Dirichlet mu = V; calibrated: R + 1 scalars fitted on the "
        "calibration documents (16,384 positions); cross-entropy in nats/token on the test part",
        f"L-BFGS: PyTorch, float32, full batch, history 20, strong Wolfe, from zero, "
        f"{iterations} iterations, from zero and from the calibrated explicit weights; 'best' = "
        "lowest test CE over the iterations (early stopping; iteration 0 = the starting point)",
        "gap = (explicit - best of both L-BFGS runs) / that best; target: calibrated within +1%",
        f"machine: {common.machine()}",
    ]
    return common.table("5. Quality: explicit vs the best single layer (L-BFGS)",
                        ["R", "train tokens", "explicit raw", "calibrated", "L-BFGS from zero: best",
                         "L-BFGS from explicit: best", "gap calibrated", "gap raw", "explicit s",
                         "L-BFGS s (zero / warm)"],
                        rows, notes)

"""Benchmark 4: seconds for the explicit solution (counting included) against seconds for
Adam (PyTorch, CPU, the same single softmax layer, batch 4096, tuned learning rate) to reach
the same held-out cross-entropy — or Adam's best within its time budget.

Adam's clock counts only its training steps (held-out evaluations every few seconds are
not counted; learning-rate tuning is reported separately). Knobs (environment):
``STREAMSOLVE_BENCH_ADAM_SECONDS`` (budget), ``STREAMSOLVE_BENCH_TUNE_SECONDS`` (per learning
rate), ``STREAMSOLVE_BENCH_RADII`` (``1,3``), ``STREAMSOLVE_BENCH_THREADS`` (torch threads; the
explicit solution is single-threaded NumPy). Adam's held-out curve is written to
``out/bench/adam-R{R}.json``.
"""

from __future__ import annotations

import json
import os
import time

from . import common, data
from .softmax import SoftmaxLayer, positions

LEARNING_RATES = (0.1, 0.03, 0.01, 0.003)


def adam(V, R, bos_id, train, test, lr: float, budget_s: float, target: float | None,
         batch: int = 4096, eval_every_s: float = 5.0, seed: int = 0):
    """Train until ``target`` held-out CE or ``budget_s`` seconds of steps.

    Returns ``(reached_seconds or None, best CE, train seconds, steps, epochs, curve)``;
    ``curve`` is the list of (training seconds, held-out CE) at each evaluation.
    """
    import torch

    torch.manual_seed(seed)
    ctx, tgt = positions(train, R, bos_id)
    tctx, ttgt = positions(test, R, bos_id)
    layer = SoftmaxLayer(V, R)
    opt = torch.optim.Adam(layer.params, lr=lr)
    N = tgt.shape[0]
    clock, since_eval, steps, best, reached = 0.0, 0.0, 0, float("inf"), None
    curve = []
    generator = torch.Generator().manual_seed(seed)
    while clock < budget_s and reached is None:
        order = torch.randperm(N, generator=generator)
        for s in range(0, N, batch):
            idx = order[s:s + batch]
            t0 = time.perf_counter()
            opt.zero_grad()
            loss = layer.loss_sum(ctx[idx], tgt[idx]) / idx.shape[0]
            loss.backward()
            opt.step()
            dt = time.perf_counter() - t0
            clock += dt
            since_eval += dt
            steps += 1
            if since_eval >= eval_every_s or clock >= budget_s:
                since_eval = 0.0
                ce = layer.mean_ce(tctx, ttgt)
                curve.append((round(clock, 2), round(ce, 5)))
                best = min(best, ce)
                if target is not None and ce <= target:
                    reached = clock
                    break
                if clock >= budget_s:
                    break
    return reached, best, clock, steps, steps * batch / N, curve


def run(full: bool) -> str:
    import torch

    threads = int(os.environ.get("STREAMSOLVE_BENCH_THREADS", os.cpu_count() or 1))
    torch.set_num_threads(threads)
    V = 4096
    train_tokens = 3_000_000 if full else 300_000
    budget = float(os.environ.get("STREAMSOLVE_BENCH_ADAM_SECONDS", 1800 if full else 120))
    tune_s = float(os.environ.get("STREAMSOLVE_BENCH_TUNE_SECONDS", budget / 10))
    radii = [int(r) for r in os.environ.get("STREAMSOLVE_BENCH_RADII", "1,3").split(",")]
    tok_text, bos_id, train, calib, test = data.split(V, train_tokens, 50_000 if full else 20_000,
                                                      30_000 if full else 15_000)
    rows = []
    for R in radii:
        seconds, raw, cal, n, _ = data.explicit(train, calib, test, V, R, bos_id)
        target = min(raw, cal)
        tuning = {}
        for lr in LEARNING_RATES:
            best = adam(V, R, bos_id, train, test, lr, tune_s, None)[1]
            tuning[lr] = best
        lr = min(tuning, key=tuning.get)
        reached, best, clock, steps, epochs, curve = adam(V, R, bos_id, train, test, lr, budget,
                                                          target)
        (common.WORK / f"adam-R{R}.json").write_text(json.dumps(
            {"radius": R, "lr": lr, "target": target, "explicit_seconds": seconds,
             "tuning": tuning, "curve": curve}))
        if reached is not None:
            verdict = f"reached in {reached:.0f} s"
            ratio = f"**{reached / seconds:,.0f}x**"
        else:
            verdict = f"not reached in {clock:.0f} s (best {best:.4f})"
            ratio = f"**> {clock / seconds:,.0f}x**"
        rows.append([R, f"{n:,}", f"{target:.4f}", f"{seconds:.2f}",
                     ", ".join(f"{k:g}: {v:.3f}" for k, v in tuning.items()), f"{lr:g}",
                     verdict, f"{steps:,} ({epochs:.1f} epochs)", ratio])
    notes = [
        f"data: byte-level BPE V = {V}; training tokens from the bench shards except "
        f"{data.HELDOUT_SOURCE} (held out by source; its documents alternate calibration/test)",
        "explicit: count (in memory, from token ids) + finalize (row form, Dirichlet mu = V) + "
        "calibrate; target = its held-out CE (the better of raw and calibrated)",
        f"threads: torch {threads}, explicit 1 (NumPy)" + (
            "" if threads == (os.cpu_count() or 1) else
            f" — each radius ran as its own process pinned to its own core (taskset)"),
        f"Adam: PyTorch {torch.__version__} CPU, float32, zero init, batch 4096, dense Adam; "
        f"learning rate tuned over {LEARNING_RATES} ({tune_s:.0f} s each, best held-out CE shown); "
        f"budget {budget:.0f} s of training steps",
        "ratio = Adam seconds to reach the explicit solution's held-out CE / explicit seconds",
        f"machine: {common.machine()}",
    ]
    return common.table("4. Explicit solution vs backpropagation (Adam)",
                        ["R", "train tokens", "target CE", "explicit s", "Adam lr tuning (best CE)",
                         "lr", "Adam", "steps", "ratio"], rows, notes)

"""Benchmark: seconds per ``streamsolve refine`` step, dense against row-sparse updates.

One Adam step of the dense explicit LM (`streamsolve.torch.ExplicitLM`: R tables V x V and a
bias) on a batch of B positions, as `streamsolve.refine.fit` takes it (zero_grad, forward,
cross-entropy, backward, optimizer step), measured side by side in one process:

- ``dense``: dense gradients and ``torch.optim.Adam`` over every parameter (``--dense-updates``);
- ``row-sparse``: ``nn.Embedding(sparse=True)`` gradients and `streamsolve.sparse_updates.LazyAdam`
  on the touched rows (the default).

Contexts are drawn from a Zipf law over token ranks (exponent `ZIPF`, close to BPE token
frequencies on the bench corpus), so the number of distinct rows per batch is realistic; a
uniform draw (the worst case for row-sparse updates: the most distinct rows) is shown at the
largest size. Knobs: ``STREAMSOLVE_BENCH_THREADS`` (torch threads, default 1),
``STREAMSOLVE_BENCH_REFINE_STEPS`` (timed steps per arm, default 3; median shown).
"""

from __future__ import annotations

import os
import statistics
import time
import types

import numpy as np

from . import common

ZIPF = 1.0
BATCH = 1024


def _module(V: int, R: int):
    """A dense ExplicitLM of zeros (the step's cost does not depend on the values)."""
    from streamsolve.torch import ExplicitLM

    block = types.SimpleNamespace(rows=lambda rows: np.zeros((rows.size, V), dtype=np.float32))
    warm = types.SimpleNamespace(blocks=[block] * R, bias=np.zeros(V), row_offsets=np.zeros((R, V)),
                                 offset=0.0, offset_blocks=tuple(range(R)))
    return ExplicitLM(warm)


def contexts(V: int, R: int, n: int, rng, law: str = "zipf"):
    """``(contexts (n, R), targets (n,))``: token ids drawn by ``law`` (zipf or uniform)."""
    import torch

    if law == "uniform":
        ids = rng.integers(0, V, size=(n, R + 1))
    else:
        p = 1.0 / np.arange(1, V + 1) ** ZIPF
        ids = rng.choice(V, size=(n, R + 1), p=p / p.sum())
    return torch.as_tensor(ids[:, :R]), torch.as_tensor(ids[:, R])


def seconds_per_step(V: int, R: int, updates: str, batches: list) -> float:
    """Median seconds of an Adam step (after one untimed step allocating the moments)."""
    import torch

    from streamsolve.refine import use_sparse_gradients, make_optimizer

    module = _module(V, R)
    sparse = updates == "row-sparse"
    use_sparse_gradients(module, sparse)
    opt = make_optimizer(list(module.parameters()), "adam", 1e-3, 0.0, sparse)
    times = []
    for i, (ctx, tgt) in enumerate(batches):
        started = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(module(ctx), tgt).backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - started)
    del module, opt
    return statistics.median(times)


def run(full: bool) -> str:
    import torch

    threads = int(os.environ.get("STREAMSOLVE_BENCH_THREADS", 1))
    steps = int(os.environ.get("STREAMSOLVE_BENCH_REFINE_STEPS", 5 if full else 3))
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    cases = [(V, R, "zipf") for V in (4096, 8192) for R in (1, 3)] + [(8192, 3, "uniform")]
    rows = []
    for V, R, law in cases:
        batches = [contexts(V, R, BATCH, rng, law) for _ in range(steps + 1)]
        distinct = np.mean([len(np.unique(c[:, 0].numpy())) for c, _ in batches])
        dense = seconds_per_step(V, R, "dense", batches)
        sparse = seconds_per_step(V, R, "row-sparse", batches)
        rows.append([f"{V:,}", R, law, f"{distinct:,.0f}", f"{dense:.3f}", f"{sparse:.3f}",
                     f"**{dense / sparse:.1f}x**", f"{BATCH / dense:,.0f}",
                     f"{BATCH / sparse:,.0f}"])
    notes = [
        f"one Adam step of `ExplicitLM` (R tables V x V + bias, float32) on B = {BATCH} "
        f"positions: zero_grad, forward, cross-entropy, backward, step; median of {steps} "
        "steps after one untimed step; both arms on the same batches in one process",
        "dense: `torch.optim.Adam`, dense gradients (`--dense-updates`); row-sparse: "
        "`nn.Embedding(sparse=True)` + `LazyAdam` on the touched rows (default)",
        f"contexts: Zipf (exponent {ZIPF}) over V token ranks, or uniform (worst case); "
        "distinct rows = distinct contexts of one offset per batch",
        f"PyTorch {torch.__version__} CPU, {threads} thread(s); machine: {common.machine()}",
    ]
    return common.table("Refinement step cost (dense vs row-sparse Adam)",
                        ["V", "R", "contexts", "distinct rows / batch", "dense s/step",
                         "row-sparse s/step", "speed-up", "dense tokens/s",
                         "row-sparse tokens/s"], rows, notes)

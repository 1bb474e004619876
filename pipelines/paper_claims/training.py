"""The measurement training loop: one small function (`train`) the lead can later swap for
``streamsolve.refine.fit``, plus the held-out evaluation and the distance to the explicit
solution (claim 2).

Clocks count training steps only (held-out evaluations and distance checkpoints are not
counted), like ``bench/backprop.py``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Heldout:
    """Held-out positions: ``ctx`` (N, R), ``tgt`` (N,), and a fixed subsample of contexts for
    the KL of claim 2."""

    ctx: object
    tgt: object
    kl_ctx: object


def mean_ce(module, ctx, tgt, chunk: int = 4096) -> float:
    """Mean held-out cross-entropy (nats) of ``module(ctx)`` against ``tgt``."""
    import torch
    import torch.nn.functional as F

    total = 0.0
    with torch.no_grad():
        for s in range(0, tgt.shape[0], chunk):
            total += float(F.cross_entropy(module(ctx[s:s + chunk]), tgt[s:s + chunk],
                                           reduction="sum"))
    return total / max(1, tgt.shape[0])


def randomize(module, std: float = 0.01, seed: int = 0):
    """Re-initialise every parameter: small Gaussian weights, zero biases (in place)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias") or p.dim() == 1:
                p.zero_()
            else:
                p.copy_(std * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return module


def centred_parts(module):
    """Minimum-norm representative of a dense LM module's weights (DESIGN 3b): the
    double-centred tables and the centred bias with each table's column means folded in."""
    import torch

    with torch.no_grad():
        bias = module.bias.detach().clone()
        tables = []
        for table in module.tables:
            W = table.weight.detach()
            col = W.mean(dim=0)
            D = W - W.mean(dim=1, keepdim=True) - col + W.mean()
            tables.append(D)
        for b in module.offset_blocks:
            bias = bias + module.tables[b].weight.detach().mean(dim=0)
        return tables, bias - bias.mean()


def distance(module, reference_parts, reference, kl_ctx) -> dict:
    """Relative L2 distance of the centred weights (dense modules only, else None) and the
    mean KL(explicit || module) of the predicted distributions on held-out contexts."""
    import torch
    import torch.nn.functional as F

    out = {"rel_l2": None}
    if reference_parts is not None and hasattr(module, "tables"):
        tables, bias = centred_parts(module)
        ref_tables, ref_bias = reference_parts
        num = sum(float(((a - b) ** 2).sum()) for a, b in zip(tables, ref_tables))
        num += float(((bias - ref_bias) ** 2).sum())
        den = sum(float((b ** 2).sum()) for b in ref_tables) + float((ref_bias ** 2).sum())
        out["rel_l2"] = math.sqrt(num / den)
    with torch.no_grad():
        kl = 0.0
        for s in range(0, kl_ctx.shape[0], 2048):
            p_ref = F.log_softmax(reference(kl_ctx[s:s + 2048]), dim=1)
            p_mod = F.log_softmax(module(kl_ctx[s:s + 2048]), dim=1)
            kl += float((p_ref.exp() * (p_ref - p_mod)).sum())
    out["kl"] = kl / kl_ctx.shape[0]
    return out


def train(module, ctx, tgt, heldout: Heldout, *, optimizer: str = "adam", lr: float = 1e-3,
          weight_decay: float = 0.0, seconds: float = 60.0, batch: int = 4096,
          eval_every: float = 5.0, patience: int | None = None, lbfgs_positions: int = 131072,
          checkpoint=None, epochs: float | None = None, seed: int = 0) -> dict:
    """Minimise the mean cross-entropy of ``module`` on ``(ctx, tgt)`` for ``seconds`` of steps.

    Parameters
    ----------
    module : torch.nn.Module
        ``module(contexts) -> logits``; trained in place.
    ctx, tgt : LongTensor
        Training positions.
    heldout : Heldout
        Evaluated at the start and every ``eval_every`` training seconds.
    optimizer : {"adam", "lbfgs"}
        ``adam``: minibatches of ``batch`` (decoupled weight decay): row-sparse lazy Adam for
        dense tables (`streamsolve.refine`, what ``streamsolve refine`` runs), AdamW otherwise.
        ``lbfgs``: full-batch L-BFGS (strong Wolfe) on a fixed random subsample of
        ``lbfgs_positions`` training positions (the whole set does not fit a step).
    patience : int, optional
        Early stopping: stop after this many evaluations without a better held-out CE.
    checkpoint : callable, optional
        ``checkpoint(module) -> dict`` merged into each curve point (claim 2's distances).
    epochs : float, optional
        Also stop after this many passes over the training positions, evaluating at every
        epoch boundary (instead of every ``eval_every`` seconds).

    Returns
    -------
    dict
        ``curve`` (list of ``{"seconds", "ce", ...}``), ``best_ce``, ``best_seconds``,
        ``seconds``, ``steps``, ``epochs``, ``stopped`` ("budget" or "early").
    """
    import torch
    import torch.nn.functional as F

    from streamsolve.refine import make_optimizer, resolve_updates, use_sparse_gradients

    torch.manual_seed(seed)
    params = [p for p in module.parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(seed)
    curve, clock, steps, seen = [], 0.0, 0, 0

    def evaluate():
        point = {"seconds": round(clock, 3), "ce": mean_ce(module, heldout.ctx, heldout.tgt)}
        if checkpoint is not None:
            point.update(checkpoint(module))
        curve.append(point)
        logger.info("  %s lr=%g wd=%g: %.1f s, %d steps, held-out CE %.4f%s", optimizer, lr,
                    weight_decay, clock, steps, point["ce"],
                    f", KL {point['kl']:.4f}" if "kl" in point else "")
        return point["ce"]

    best, since_best, stopped = evaluate(), 0, "budget"
    if not math.isfinite(best):
        best = float("inf")
    restore = []
    if optimizer == "adam":
        # the product's optimizer (streamsolve.refine): row-sparse lazy Adam on dense tables
        # (only the batch's context rows move, decoupled decay on them); AdamW otherwise
        sparse = resolve_updates(module, "adam") == "row-sparse"
        opt = make_optimizer(params, "adam", lr, weight_decay, sparse) if sparse else \
            torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        restore = use_sparse_gradients(module, sparse)
        N = tgt.shape[0]

        def batches():
            while True:
                order = torch.randperm(N, generator=generator)
                for s in range(0, N, batch):
                    yield order[s:s + batch]
        source = batches()

        def step():
            idx = next(source)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(module(ctx[idx]), tgt[idx])
            loss.backward()
            opt.step()
            return idx.shape[0]
    elif optimizer == "lbfgs":
        keep = torch.randperm(tgt.shape[0], generator=generator)[:lbfgs_positions]
        sub_ctx, sub_tgt = ctx[keep], tgt[keep]
        opt = torch.optim.LBFGS(params, lr=lr, max_iter=1, history_size=10,
                                line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad(set_to_none=True)
            total = 0.0
            for s in range(0, sub_tgt.shape[0], 16384):
                loss = F.cross_entropy(module(sub_ctx[s:s + 16384]), sub_tgt[s:s + 16384],
                                       reduction="sum") / sub_tgt.shape[0]
                loss.backward()
                total += loss.item()
            if weight_decay:
                reg = 0.5 * weight_decay * sum((p * p).sum() for p in params)
                reg.backward()
                total += reg.item()
            return torch.tensor(total)

        def step():
            opt.step(closure)
            return sub_tgt.shape[0]
    else:
        raise ValueError(f"optimizer must be 'adam' or 'lbfgs', got {optimizer!r}")
    try:
        since_eval, N_train = 0.0, tgt.shape[0]
        while clock < seconds and (epochs is None or seen < epochs * N_train):
            t0 = time.perf_counter()
            before = seen
            seen += step()
            dt = time.perf_counter() - t0
            clock += dt
            since_eval += dt
            steps += 1
            boundary = (seen // N_train > before // N_train or seen >= epochs * N_train
                        if epochs is not None else since_eval >= eval_every)
            if boundary or clock >= seconds:
                since_eval = 0.0
                ce = evaluate()
                if not math.isfinite(ce):
                    stopped = "diverged"
                    break
                if ce < best - 1e-5:
                    best, since_best = ce, 0
                else:
                    since_best += 1
                    if patience is not None and since_best >= patience:
                        stopped = "early"
                        break
    finally:
        for table, flag in restore:
            table.sparse = flag
    best_point = min(curve, key=lambda p: p["ce"] if math.isfinite(p["ce"]) else float("inf"))
    return {"curve": curve, "best_ce": best_point["ce"], "best_seconds": best_point["seconds"],
            "seconds": round(clock, 3), "steps": steps, "epochs": seen / tgt.shape[0],
            "stopped": stopped, "optimizer": optimizer, "lr": lr, "weight_decay": weight_decay,
            "updates": "row-sparse" if restore else "dense"}


def best_within(curve: list[dict], seconds: float) -> float:
    """Lowest held-out CE among the curve points at most ``seconds`` into training."""
    return min((p["ce"] for p in curve if p["seconds"] <= seconds + 1e-9), default=math.inf)


def first_reach(curve: list[dict], target: float):
    """Training seconds of the first curve point with CE <= target, or None."""
    for point in curve:
        if point["ce"] <= target:
            return point["seconds"]
    return None

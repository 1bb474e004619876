"""The training loop of ``streamsolve train``: Adam on streamed minibatches, held-out
evaluations, early stopping, and the test of an improvement beyond noise.

Compute is counted in CPU-seconds of this process (all its threads: `time.process_time`)
spent on training steps, reading and tokenizing included; held-out evaluations are
measured apart (``eval_cpu_seconds``) because they measure, they do not train.

An improvement counts only beyond the held-out noise: the paired per-token difference of
losses against the reference (the explicit model) must have a mean above ``Z`` standard
errors (`improvement`). `train_network` keeps the best state seen (the start included), so
it never ends worse than it started.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time

import numpy as np

from ..extras import import_torch

logger = logging.getLogger(__name__)

#: Standard errors a held-out gain must exceed to count.
Z = 2.0
#: Floats of (B, V) logits per evaluation batch.
EVAL_BATCH_FLOATS = 1 << 21


@dataclasses.dataclass
class Limits:
    """When a run stops (the first limit reached), and how often it evaluates."""

    steps: int | None = None
    tokens: int | None = None
    seconds: float | None = None      # CPU-seconds of training
    eval_every: int = 200
    patience: int | None = 4


@dataclasses.dataclass
class RunResult:
    """One network's training: its curve and its best held-out state.

    Attributes
    ----------
    name : str
    curve : list of dict
        ``{"step", "tokens", "cpu_seconds", "eval_cpu_seconds", "wall_seconds",
        "heldout_ce"}`` per evaluation, step 0 first.
    start_ce, best_ce : float
    best_step, steps, tokens : int
    stopped : str
        ``steps``, ``tokens``, ``seconds``, ``patience``, ``data`` or ``diverged``.
    best_losses : ndarray
        Per-token held-out losses of the best state.
    best_state : dict
        Its state dict (CPU tensors).
    """

    name: str
    curve: list
    start_ce: float
    best_ce: float
    best_step: int
    steps: int
    tokens: int
    stopped: str
    best_losses: np.ndarray = dataclasses.field(repr=False, default=None)
    best_state: dict = dataclasses.field(repr=False, default=None)

    def to_json(self) -> dict:
        return {"name": self.name, "start_ce": self.start_ce, "best_ce": self.best_ce,
                "best_step": self.best_step, "steps": self.steps, "tokens": self.tokens,
                "stopped": self.stopped, "curve": self.curve}


def token_losses(module, heldout, device=None) -> np.ndarray:
    """Per-token cross-entropy (nats, float64) of ``module`` on the held-out positions."""
    torch = import_torch()
    step = max(1, EVAL_BATCH_FLOATS // max(1, module.vocab_size))
    out = np.empty(heldout.targets.size)
    was_training = module.training
    module.eval()
    with torch.no_grad():
        for i in range(0, heldout.targets.size, step):
            ctx = torch.from_numpy(heldout.contexts[i:i + step]).to(device)
            tgt = torch.from_numpy(heldout.targets[i:i + step]).to(device)
            logits = module(ctx).double()
            out[i:i + step] = torch.nn.functional.cross_entropy(
                logits, tgt, reduction="none").cpu().numpy()
    module.train(was_training)
    return out


def improvement(reference: np.ndarray, losses: np.ndarray) -> tuple[float, float]:
    """``(gain, noise)``: the mean per-token gain over ``reference`` (nats) and ``Z``
    standard errors of it; the gain counts when ``gain > noise``."""
    diff = np.asarray(reference) - np.asarray(losses)
    noise = Z * float(diff.std(ddof=1)) / math.sqrt(diff.size) if diff.size > 1 else math.inf
    return float(diff.mean()), noise


def _state(module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


class _Clock:
    """CPU-seconds of training and of evaluations, and wall time, since the start."""

    def __init__(self):
        self.cpu0, self.wall0 = time.process_time(), time.perf_counter()
        self.eval_cpu = 0.0

    def evaluate(self, module, heldout, device):
        started = time.process_time()
        losses = token_losses(module, heldout, device)
        self.eval_cpu += time.process_time() - started
        return losses

    @property
    def train_cpu(self) -> float:
        return time.process_time() - self.cpu0 - self.eval_cpu

    def point(self, step: int, tokens: int, ce: float) -> dict:
        return {"step": step, "tokens": tokens, "cpu_seconds": round(self.train_cpu, 3),
                "eval_cpu_seconds": round(self.eval_cpu, 3),
                "wall_seconds": round(time.perf_counter() - self.wall0, 3), "heldout_ce": ce}


def _limit_reached(limits: Limits, steps: int, tokens: int, clock: _Clock) -> str | None:
    if limits.steps is not None and steps >= limits.steps:
        return "steps"
    if limits.tokens is not None and tokens >= limits.tokens:
        return "tokens"
    if limits.seconds is not None and clock.train_cpu >= limits.seconds:
        return "seconds"
    return None


def train_network(name: str, module, batches, heldout, limits: Limits, lr: float = 1e-3,
                  device=None) -> RunResult:
    """Train ``module`` with Adam on ``batches``, evaluating every ``limits.eval_every``
    steps; ends in (and returns) its best held-out state, the start included.

    Parameters
    ----------
    name : str
        The run's label in the log.
    module : ResidualLM
    batches : iterable of (LongTensor (B, K), LongTensor (B,))
    heldout : streamsolve.network.data.HeldOut
    limits : Limits
    lr : float
    device : torch.device, optional
    """
    torch = import_torch()
    clock = _Clock()
    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=lr)
    losses = clock.evaluate(module, heldout, device)
    best = RunResult(name, [clock.point(0, 0, float(losses.mean()))], float(losses.mean()),
                     float(losses.mean()), 0, 0, 0, "data", losses, _state(module))
    logger.info("train %s: held-out CE at the start %.5f", name, best.start_ce)
    steps = tokens = stale = 0
    module.train()
    for contexts, targets in batches:
        contexts, targets = contexts.to(device), targets.to(device)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(module(contexts), targets)
        loss.backward()
        opt.step()
        steps, tokens = steps + 1, tokens + int(targets.shape[0])
        if not math.isfinite(loss.item()):
            logger.warning("train %s: the loss is %s at step %d: stopping (lower --lr)", name,
                           loss.item(), steps)
            best.stopped = "diverged"
            break
        limit = _limit_reached(limits, steps, tokens, clock)
        if steps % limits.eval_every == 0 or limit:
            stale = 0 if _record(best, module, heldout, device, clock, steps, tokens) \
                else stale + 1
            if limits.patience is not None and stale >= limits.patience:
                best.stopped = "patience"
                break
        if limit:
            best.stopped = limit
            break
    if best.curve[-1]["step"] != steps:  # the data ran out between evaluations
        _record(best, module, heldout, device, clock, steps, tokens)
    best.steps, best.tokens = steps, tokens
    module.load_state_dict(best.best_state)
    module.eval()
    return best


def _record(best: RunResult, module, heldout, device, clock: _Clock, steps: int,
            tokens: int) -> bool:
    """Evaluate, add the point to the curve, keep the state when best; True if it was."""
    losses = clock.evaluate(module, heldout, device)
    ce = float(losses.mean())
    best.curve.append(clock.point(steps, tokens, ce))
    logger.info("train %s: step %d, %s tokens, %.0f CPU-s, held-out CE %.5f (best %.5f)",
                best.name, steps, f"{tokens:,}", clock.train_cpu, ce, min(ce, best.best_ce))
    if ce < best.best_ce:
        best.best_ce, best.best_step, best.best_losses = ce, steps, losses
        best.best_state = _state(module)
        return True
    return False

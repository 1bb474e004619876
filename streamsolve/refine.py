"""Refinement of the language model by backpropagation (``streamsolve refine``).

Three parts, each usable alone:

- `fit`: a small, generic training loop for any ``nn.Module`` mapping contexts ``(B, R)``
  to logits ``(B, V)`` (`streamsolve.torch.ExplicitLM` / `FactoredLM`), with early stopping
  on held-out positions. It records the held-out curve ``(step, seconds, tokens, CE)`` and
  ends with the module restored to its best held-out state, so it never ends worse than the
  start. A research pipeline can call it with its own batches.
- `position_batches`: minibatches ``(contexts, targets)`` streamed from text shards, made
  exactly as counting and ``eval`` make positions (the store's tokenizer and read options,
  the line-safe encoder, BOS padding, radius R), shuffled through a buffer of a fixed
  number of positions (bounded memory).
- `refine_store`: the command: load the store's explicit weights as a module (init
  ``explicit``: the minimum-norm warm start; ``random``; ``zeros``), fit, and commit the
  best weights as a new *refined* weights version with its provenance
  (`streamsolve.store.refined_weights`). ``eval``, ``score``, ``generate`` and ``info`` use
  it; a later ``finalize`` writes explicit weights again.

PyTorch is imported through `streamsolve.extras.import_torch` (one line naming the extra
when missing).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from .extras import import_torch, torch_device

logger = logging.getLogger(__name__)

INITS = ("explicit", "random", "zeros")
OPTIMIZERS = ("adam", "sgd", "lbfgs")
#: ``auto``: row-sparse for Adam / SGD on dense tables, else dense (`streamsolve.sparse_updates`).
UPDATES = ("auto", "row-sparse", "dense")
#: Positions held in the shuffle buffer of `position_batches`.
SHUFFLE_POSITIONS = 1 << 16
#: Held-out positions scored per forward pass of `heldout_cross_entropy`.
EVAL_BATCH_FLOATS = 1 << 22
#: Standard deviation of the ``random`` init.
RANDOM_STD = 0.01


@dataclasses.dataclass
class FitResult:
    """What `fit` did.

    Attributes
    ----------
    curve : list of (int, float, int, float)
        ``(step, seconds, tokens_seen, heldout_ce)`` at every evaluation, step 0 first.
    start_ce, best_ce : float
        Held-out cross-entropy (nats/token) at the start and at the best evaluation.
    best_step : int
        Step of the best evaluation (0: the start was best; the module is unchanged).
    steps, tokens : int
        Optimizer steps taken and training positions seen.
    seconds : float
        Wall time of the whole fit.
    stopped : str
        Why it ended: ``"steps"``, ``"seconds"``, ``"patience"``, ``"data"`` or
        ``"diverged"``.
    updates : str
        ``"row-sparse"`` (only the touched rows of the tables, `streamsolve.sparse_updates`)
        or ``"dense"``.
    """

    curve: list
    start_ce: float
    best_ce: float
    best_step: int
    steps: int
    tokens: int
    seconds: float
    stopped: str
    updates: str = "dense"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def heldout_cross_entropy(module, heldout, device=None) -> float:
    """Mean cross-entropy (nats/token) of ``module`` on held-out positions.

    ``heldout`` is one ``(contexts (N, R), targets (N,))`` pair (tensors or arrays) or an
    iterable of such pairs; it is scored in batches without gradients.
    """
    torch = import_torch()
    pairs = [heldout] if _is_pair(heldout) else list(heldout)
    total, count = 0.0, 0
    was_training = module.training
    module.eval()
    with torch.no_grad():
        for contexts, targets in pairs:
            contexts, targets = torch.as_tensor(contexts), torch.as_tensor(targets)
            vocab = int(getattr(module, "vocab_size", 0)) or 1
            step = max(1, EVAL_BATCH_FLOATS // vocab)
            for i in range(0, targets.shape[0], step):
                ctx = contexts[i:i + step].to(device) if device is not None else contexts[i:i + step]
                tgt = targets[i:i + step].to(ctx.device)
                logits = module(ctx).double()
                total += float(torch.nn.functional.cross_entropy(logits, tgt, reduction="sum"))
                count += int(tgt.shape[0])
    module.train(was_training)
    if count == 0:
        raise ValueError("the held-out text has no tokens: give --heldout text to stop on")
    return total / count


def _is_pair(value) -> bool:
    return (isinstance(value, tuple) and len(value) == 2
            and hasattr(value[1], "shape") and len(value[1].shape) == 1)


def make_optimizer(params, optimizer: str, lr: float, weight_decay: float,
                   sparse: bool = False):
    """A torch optimizer by name: ``adam`` (L2 ``weight_decay``), ``sgd`` (momentum 0.9)
    or ``lbfgs`` (strong Wolfe line search; weight decay added to the loss by `fit`).

    ``sparse``: the row-sparse `LazyAdam` (decoupled decay on touched rows) or `LazySGD`
    (momentum 0.9, L2 on touched rows) of `streamsolve.sparse_updates`, which accept the
    sparse gradients of ``nn.Embedding(sparse=True)`` and dense ones.
    """
    torch = import_torch()
    if sparse:
        from .sparse_updates import LazyAdam, LazySGD

        if optimizer == "adam":
            return LazyAdam(params, lr=lr, weight_decay=weight_decay)
        if optimizer == "sgd":
            return LazySGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
        raise ValueError(f"row-sparse updates need adam or sgd, not {optimizer!r}")
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if optimizer == "lbfgs":
        return torch.optim.LBFGS(params, lr=lr, max_iter=5, history_size=10,
                                 line_search_fn="strong_wolfe")
    raise ValueError(f"unknown optimizer {optimizer!r}: use one of {', '.join(OPTIMIZERS)}")


def fit(module, train_batches: Iterable, heldout, *, optimizer: str = "adam",
        lr: float = 1e-3, weight_decay: float = 0.0, max_steps: int | None = None,
        max_seconds: float | None = None, eval_every: int = 100, patience: int | None = 5,
        device=None, updates: str = "auto") -> FitResult:
    """Train ``module`` on minibatches with early stopping on held-out positions.

    Parameters
    ----------
    module : nn.Module
        ``module(contexts (B, R) LongTensor) -> logits (B, V)``; trained in place.
    train_batches : iterable of (LongTensor (B, R), LongTensor (B,))
        Training minibatches; consumed once (the fit ends when it is exhausted).
    heldout : (contexts, targets) or iterable of them
        Fixed held-out positions; evaluated at step 0, every ``eval_every`` steps and at
        the end.
    optimizer : {"adam", "sgd", "lbfgs"}
        ``lbfgs`` runs a few line-searched iterations per minibatch (use large batches).
    lr, weight_decay : float
        Learning rate; L2 penalty ``weight_decay / 2 * ||params||^2`` (Adam / SGD's), or
        with row-sparse updates: Adam's decoupled decay / SGD's L2 on the touched rows only.
    max_steps : int, optional
        Stop after this many optimizer steps.
    max_seconds : float, optional
        Stop after this much wall time (checked after each step).
    eval_every : int
        Steps between held-out evaluations.
    patience : int, optional
        Stop after this many evaluations without improvement (None: never).
    device : str or torch.device, optional
        Where to train (None: where the module is). CUDA without CUDA raises ValueError.
    updates : {"auto", "row-sparse", "dense"}
        ``row-sparse``: the tables of an `ExplicitLM` get sparse gradients and only their
        touched rows are updated (`streamsolve.sparse_updates`: lazy Adam with decoupled
        weight decay on touched rows, or SGD); ``auto`` chooses it for adam / sgd on dense
        tables, ``dense`` otherwise (lbfgs, factored modules).

    Returns
    -------
    FitResult
        The module is left in its best held-out state (the start when nothing improved):
        ``heldout_cross_entropy(module, heldout) == result.best_ce <= result.start_ce``.
    """
    torch = import_torch()
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
    sparse = resolve_updates(module, optimizer, updates) == "row-sparse"
    if not (eval_every >= 1 and lr > 0 and weight_decay >= 0):
        raise ValueError(f"need eval_every >= 1, lr > 0 and weight_decay >= 0 (got "
                         f"{eval_every}, {lr}, {weight_decay})")
    if device is not None:
        module.to(torch_device(torch, device))
    device = next(module.parameters()).device
    params = [p for p in module.parameters() if p.requires_grad]
    opt = make_optimizer(params, optimizer, lr, weight_decay, sparse)
    tables = use_sparse_gradients(module, sparse)
    try:
        return _fit_loop(module, train_batches, heldout, opt, params, optimizer, weight_decay,
                         max_steps, max_seconds, eval_every, patience, device, sparse)
    finally:
        for table, flag in tables:
            table.sparse = flag


def resolve_updates(module, optimizer: str, updates: str = "auto") -> str:
    """``"row-sparse"`` or ``"dense"``: what `fit` does for ``updates`` (see there)."""
    from .sparse_updates import sparse_embeddings

    if updates not in UPDATES:
        raise ValueError(f"unknown updates {updates!r}: use one of {', '.join(UPDATES)}")
    possible = optimizer in ("adam", "sgd") and bool(sparse_embeddings(module))
    if updates == "row-sparse" and not possible:
        raise ValueError("row-sparse updates need dense tables (no --rank) and adam or sgd")
    return "row-sparse" if possible and updates != "dense" else "dense"


def use_sparse_gradients(module, sparse: bool) -> list:
    """Switch the tables of ``module`` (`sparse_embeddings`) to sparse gradients when
    ``sparse``; returns ``(table, previous flag)`` pairs to restore them."""
    from .sparse_updates import sparse_embeddings

    if not sparse:
        return []
    tables = [(table, table.sparse) for table in sparse_embeddings(module)]
    for table, _ in tables:
        table.sparse = True
    return tables


def _fit_loop(module, train_batches, heldout, opt, params, optimizer, weight_decay, max_steps,
              max_seconds, eval_every, patience, device, sparse) -> FitResult:
    torch = import_torch()
    started = time.perf_counter()
    start_ce = heldout_cross_entropy(module, heldout, device)
    curve = [(0, 0.0, 0, start_ce)]
    best_ce, best_step = start_ce, 0
    best_state = _copy_state(module)
    steps = tokens = stale = 0
    stopped = "data"
    logger.info("refine: held-out CE at the start %.5f nats/token", start_ce)
    module.train()
    for contexts, targets in train_batches:
        contexts, targets = contexts.to(device), targets.to(device)

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(module(contexts), targets)
            if optimizer == "lbfgs" and weight_decay:
                loss = loss + 0.5 * weight_decay * sum((p * p).sum() for p in params)
            loss.backward()
            return loss

        loss = float(opt.step(closure).detach())
        if not math.isfinite(loss):
            logger.warning("refine: the training loss is %s at step %d: stopping (lower --lr)",
                           loss, steps + 1)
            stopped = "diverged"
            break
        steps += 1
        tokens += int(targets.shape[0])
        seconds = time.perf_counter() - started
        out_of_steps = max_steps is not None and steps >= max_steps
        out_of_time = max_seconds is not None and seconds >= max_seconds
        if steps % eval_every == 0 or out_of_steps or out_of_time:
            ce = heldout_cross_entropy(module, heldout, device)
            curve.append((steps, time.perf_counter() - started, tokens, ce))
            logger.info("refine: step %d, %s tokens, held-out CE %.5f (best %.5f)", steps,
                        f"{tokens:,}", ce, min(ce, best_ce))
            if ce < best_ce:
                best_ce, best_step, stale = ce, steps, 0
                best_state = _copy_state(module)
            else:
                stale += 1
                if patience is not None and stale >= patience:
                    stopped = "patience"
                    break
        if out_of_steps or out_of_time:
            stopped = "steps" if out_of_steps else "seconds"
            break
    if curve[-1][0] != steps:  # the data ran out between evaluations
        ce = heldout_cross_entropy(module, heldout, device)
        curve.append((steps, time.perf_counter() - started, tokens, ce))
        if ce < best_ce:
            best_ce, best_step, best_state = ce, steps, _copy_state(module)
    module.load_state_dict(best_state)
    module.eval()
    return FitResult(curve, start_ce, best_ce, best_step, steps, tokens,
                     time.perf_counter() - started, stopped,
                     "row-sparse" if sparse else "dense")


def _copy_state(module) -> dict:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


# -- minibatches from text -------------------------------------------------------------------

def text_positions(paths: Sequence[str], model, read_meta: dict,
                   storage_options: dict | None = None,
                   group_tokens: int = 1 << 15) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(contexts (n, R), targets (n,))`` of text files, as ``eval`` makes them.

    ``model`` is a `LanguageModel` (its tokenizer, radius and BOS id); ``read_meta`` the
    store's ``read_options`` (documents mode, text field, line bound).
    """
    from .core.positions import grouped_positions
    from .documents import iter_token_documents

    docs = iter_token_documents(paths, model, read_meta.get("documents", "blank-line"),
                                read_meta.get("text_field", "text"), storage_options, None,
                                read_meta.get("max_line_bytes"))
    yield from grouped_positions(docs, model.config.radius, model.bos_id, group_tokens)


def position_batches(positions, batch: int, epochs: int | None = 1,
                     shuffle_positions: int = SHUFFLE_POSITIONS, seed: int = 0) -> Iterator:
    """Shuffled minibatches ``(LongTensor (B, R), LongTensor (B,))`` of streamed positions.

    ``positions`` is a callable returning a fresh iterator of ``(contexts, targets)`` arrays
    (e.g. ``lambda: text_positions(...)``), read once per epoch (``epochs`` None: forever).
    Positions pass through a buffer of ``shuffle_positions``: when it is full it is
    shuffled and emitted in batches, the remainder kept; memory stays bounded by the buffer.
    """
    torch = import_torch()
    rng = np.random.default_rng(seed)
    epoch = 0
    while epochs is None or epoch < epochs:
        epoch += 1
        ctx_parts, tgt_parts, held, seen = [], [], 0, 0
        for contexts, targets in positions():
            ctx_parts.append(contexts)
            tgt_parts.append(targets)
            held += targets.size
            seen += targets.size
            if held >= shuffle_positions:
                ctx, tgt = np.concatenate(ctx_parts), np.concatenate(tgt_parts)
                order = rng.permutation(tgt.size)
                full = tgt.size - tgt.size % batch
                for i in range(0, full, batch):
                    take = order[i:i + batch]
                    yield torch.from_numpy(ctx[take]), torch.from_numpy(tgt[take])
                rest = order[full:]
                ctx_parts, tgt_parts, held = [ctx[rest]], [tgt[rest]], rest.size
        if held:
            ctx, tgt = np.concatenate(ctx_parts), np.concatenate(tgt_parts)
            order = rng.permutation(tgt.size)
            for i in range(0, tgt.size, batch):
                take = order[i:i + batch]
                yield torch.from_numpy(ctx[take]), torch.from_numpy(tgt[take])
        if seen == 0:
            raise ValueError("the training text has no tokens")


# -- the store command -----------------------------------------------------------------------

def initial_module(store, init: str = "explicit", rank: int | None = None, device=None,
                   seed: int = 0, max_bytes: int | None = None):
    """The module to refine: the store's explicit model (minimum-norm warm start), or the
    same architecture with ``random`` (normal, std `RANDOM_STD`, seeded) or ``zeros``
    parameters (and no per-sample constants)."""
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}: use one of {', '.join(INITS)}")
    from . import torch as bridge

    torch = bridge.torch
    module = bridge.load(store, device=device, rank=rank, max_bytes=max_bytes, seed=seed)
    if init != "explicit":
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param in module.parameters():
                values = (torch.randn(param.shape, generator=generator) * RANDOM_STD
                          if init == "random" else torch.zeros(param.shape))
                param.copy_(values.to(param.dtype))
            module.row_offsets.zero_()
            module.offset.zero_()
    return module


def module_arrays(module) -> dict:
    """The arrays `commit_refined` stores, folding the per-sample constants into them (so
    the stored logits equal the module's): ``bias`` and ``tables`` or ``factors``."""
    offsets = module.row_offsets.detach().cpu().double().numpy() if module.with_offsets \
        else np.zeros((module.row_offsets.shape[0], module.vocab_size))
    offset = float(module.offset) if module.with_offsets else 0.0
    bias = module.bias.detach().cpu().double().numpy() + offset
    if hasattr(module, "tables"):
        tables = [(t.weight.detach().cpu().double().numpy() + offsets[b][:, None])
                  .astype(np.float32) for b, t in enumerate(module.tables)]
        return {"bias": bias, "tables": tables}
    factors = [(E.weight.detach().cpu().numpy(), out.weight.detach().cpu().numpy().T.copy(),
                offsets[b]) for b, (E, out) in enumerate(zip(module.embeddings, module.outputs))]
    return {"bias": bias, "factors": factors}


def refine_store(store: str, train: Sequence[str], heldout: Sequence[str], *,
                 init: str = "explicit", optimizer: str = "adam", lr: float | None = None,
                 weight_decay: float = 0.0, steps: int | None = None,
                 epochs: int | None = None, batch: int = 256, rank: int | None = None,
                 device: str | None = None, patience: int | None = 5, eval_every: int = 100,
                 max_seconds: float | None = None, seed: int = 0,
                 shuffle_positions: int = SHUFFLE_POSITIONS, updates: str = "auto",
                 heldout_tokens: int | None = None, storage_options: dict | None = None,
                 wait: bool | float = False, break_lock: bool = False,
                 mode: int | str | None = None) -> dict:
    """Refine a finalized store's LM by backpropagation and commit the best weights.

    The writer lock is taken only for the commit, which refuses when the store's weights
    or counts changed while training (the refined weights would not describe them).
    Parameters as `fit` and ``streamsolve refine --help``; ``lr`` defaults to 1e-3 (adam),
    0.1 (sgd), 1 (lbfgs). ``updates``: as `fit` (``--dense-updates`` is ``"dense"``).
    ``heldout_tokens``: evaluate on a uniform sample (seeded by ``seed``) of this many
    held-out positions, so that each evaluation costs a bounded time (None: all).
    ``mode``: of the store's files on a local disk (`streamsolve.store.permissions`).

    Returns
    -------
    dict
        The new weights version, the start and best held-out CE, the curve and the
        provenance recorded.
    """
    from .store.permissions import parse_mode

    mode = None if mode is None else parse_mode(mode)  # before any work
    torch = import_torch()
    resolved = torch_device(torch, device)  # CUDA without CUDA: one line, before any work
    from .core.dense_lm import RefinedWeights
    from .documents import check_readable
    from .engine.progress import Stage
    from .language_model import LanguageModel
    from .store.model_store import ModelStore

    _check_arguments(init, optimizer, steps, epochs, batch, rank, patience, eval_every,
                     heldout_tokens)
    if updates not in UPDATES:
        raise ValueError(f"unknown updates {updates!r}: use one of {', '.join(UPDATES)}")
    if updates == "row-sparse" and (rank is not None or optimizer == "lbfgs"):
        raise ValueError("row-sparse updates need dense tables (no --rank) and adam or sgd")
    lr = lr if lr is not None else {"adam": 1e-3, "sgd": 0.1, "lbfgs": 1.0}[optimizer]
    train = check_readable(train, storage_options)
    if not heldout:
        raise ValueError("--heldout is required: early stopping needs held-out text")
    heldout = check_readable(heldout, storage_options)
    view = ModelStore(store, storage_options).snapshot()
    model = LanguageModel.open(view)
    if hasattr(model.weights, "ngram_parts"):  # issue 24 hook
        raise ValueError(f"{store} has n-gram blocks (--ngram): refine does not train them "
                         "yet; refine a store counted without --ngram")
    if isinstance(model.weights, RefinedWeights):
        raise ValueError(f"the weights of {store} are already refined: run `streamsolve "
                         f"finalize {store}` first to refine from explicit weights")
    start_weights = view.meta["weights"]
    read_meta = view.meta.get("read_options", {})
    with Stage("refine: held-out positions") as stage:
        pairs = list(text_positions(heldout, model, read_meta, storage_options))
        if not pairs:
            raise ValueError(f"the held-out text ({', '.join(heldout)}) has no tokens")
        held_ctx = np.concatenate([c for c, _ in pairs])
        held_tgt = np.concatenate([t for _, t in pairs])
        heldout_total = int(held_tgt.size)
        take = heldout_sample(heldout_total, heldout_tokens, seed)
        if take is not None:
            held_ctx, held_tgt = held_ctx[take], held_tgt[take]
        held = (torch.from_numpy(held_ctx), torch.from_numpy(held_tgt))
        stage.tokens = int(held[1].shape[0])
    budget = None
    if rank is None:
        from .torch import default_max_bytes

        # parameters, moments and a dense gradient; row-sparse gradients are O(B V)
        sparse = updates != "dense" and optimizer != "lbfgs"
        budget = default_max_bytes() // ({"adam": 4, "sgd": 3, "lbfgs": 3}[optimizer] - sparse)
    module = initial_module(model.weights, init, rank, resolved, seed, budget)
    batches = position_batches(
        lambda: text_positions(train, model, read_meta, storage_options), batch,
        None if steps is not None and epochs is None else (epochs or 1), shuffle_positions, seed)
    with Stage("refine: training") as stage:
        result = fit(module, batches, held, optimizer=optimizer, lr=lr,
                     weight_decay=weight_decay, max_steps=steps, max_seconds=max_seconds,
                     eval_every=eval_every, patience=patience, device=resolved,
                     updates=updates)
        stage.tokens = result.tokens
        stage.detail = (f"{result.steps} steps, held-out CE {result.start_ce:.4f} -> "
                        f"{result.best_ce:.4f} (best at step {result.best_step})")
    from .sparse_updates import WEIGHT_DECAY_MODES

    decay_mode = (WEIGHT_DECAY_MODES[optimizer] if result.updates == "row-sparse" else
                  "L2 loss" if optimizer == "lbfgs" else "L2 gradient")
    provenance = {"init": init, "optimizer": optimizer, "lr": lr, "weight_decay": weight_decay,
                  "updates": result.updates, "weight_decay_mode": decay_mode,
                  "batch": batch, "steps": result.steps, "tokens": result.tokens,
                  "best_step": result.best_step, "start_ce": result.start_ce,
                  "best_ce": result.best_ce, "stopped": result.stopped,
                  "seconds": round(result.seconds, 3), "device": str(resolved), "rank": rank,
                  "seed": seed, "from_weights": start_weights["id"],
                  "train": list(train), "heldout": list(heldout),
                  "heldout_tokens": int(held[1].shape[0]), "heldout_positions": heldout_total,
                  "curve": [list(point) for point in result.curve]}
    weights_id = _commit(store, storage_options, module, provenance, start_weights, wait,
                         break_lock, mode)
    return {"store": store, "weights_id": weights_id, **provenance}


def _commit(store, storage_options, module, provenance, start_weights, wait, break_lock,
            mode=None) -> str:
    from .store.layout import StoreError
    from .store.location import check_writable
    from .store.locking import StoreLock
    from .store.model_store import ModelStore
    from .store.permissions import store_file_mode
    from .store.refined_weights import commit_refined

    arrays = module_arrays(module)
    check_writable(str(store))
    # the store's lock itself, not api's re-entrant wrapper: api.refine imports this module
    with StoreLock(store, storage_options, wait=wait, break_lock=break_lock, command="refine"), \
            store_file_mode(store, mode):
        target = ModelStore(store, storage_options)
        current = target.meta.get("weights") or {}
        if current.get("id") != start_weights["id"] or \
                target.meta["counts"]["id"] != start_weights["counts_id"]:
            raise StoreError(f"the weights or counts of {store} changed while refining "
                             f"(weights {start_weights['id']} -> {current.get('id')}): nothing "
                             "was written; run refine again")
        return commit_refined(target, provenance=provenance, **arrays)


def heldout_sample(total: int, cap: int | None, seed: int = 0):
    """Sorted indices of a uniform sample (without replacement, seeded) of ``cap`` of
    ``total`` held-out positions; None when there is no cap or ``cap >= total``."""
    if cap is None or cap >= total:
        return None
    return np.sort(np.random.default_rng([seed, 0x4E1D]).choice(total, cap, replace=False))


def _check_arguments(init, optimizer, steps, epochs, batch, rank, patience, eval_every,
                     heldout_tokens=None):
    if init not in INITS:
        raise ValueError(f"unknown --init {init!r}: use one of {', '.join(INITS)}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown --optimizer {optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
    if steps is not None and epochs is not None:
        raise ValueError("give --steps or --epochs, not both")
    for name, value in (("--steps", steps), ("--epochs", epochs), ("--batch", batch),
                        ("--rank", rank), ("--patience", patience), ("--eval-every", eval_every),
                        ("--heldout-tokens", heldout_tokens)):
        if value is not None and not (isinstance(value, int) and value >= 1):
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")

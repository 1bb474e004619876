"""``streamsolve train``: the explicit model plus a neural residual, trained by backprop.

The command's shape (as the other commands): a frozen `Options` checked when made, a
`Result` with ``to_json()`` and ``lines()``, and ``run(ctx, options)`` as numbered stages:

1. open the store: its explicit weights (calibrated) and tokenizer, one weights version;
2. read the held-out positions and score them with the explicit model (the reference:
   the figures ``eval`` gives on the same text);
3. train the network (and, with ``baselines``, the same network from random init with the
   explicit branch and without it, on the same minibatches and budget);
4. write the main network beside the store (`streamsolve.network.files`) only if its best
   held-out CE beats the explicit model's beyond noise (`training.improvement`); else say so
   and write nothing; the curves go to ``log`` (JSON) when asked.

PyTorch is imported inside `run`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math

logger = logging.getLogger(__name__)

BASELINES = (("random-init", {"init": "random", "embed_init": "random"}),
             ("no-explicit", {"init": "random", "embed_init": "random", "explicit": False}))


@dataclasses.dataclass(frozen=True)
class Options:
    """What ``train`` does (`streamsolve.api.train`)."""

    store: str = ""
    train: tuple = ()
    heldout: tuple = ()
    arch: str = "mlp"
    context: int = 8
    width: int = 64
    hidden: int = 256
    layers: int = 1
    heads: int = 2
    init: str = "explicit"
    embed_init: str = "lowrank"
    explicit: bool = True
    baselines: bool = False
    batch: int = 256
    lr: float = 1e-3
    steps: int | None = None
    max_tokens: int | None = None
    max_seconds: float | None = None
    epochs: int | None = None
    eval_every: int = 200
    patience: int | None = 4
    heldout_tokens: int | None = None
    device: str | None = None
    threads: int | None = 1
    seed: int = 0
    out: str | None = None
    log: str | None = None
    storage_options: dict | None = None

    def __post_init__(self):
        for name in ("train", "heldout"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        if not self.store:
            raise ValueError("give the store to train on (STORE)")
        if not self.train:
            raise ValueError("give training text (TRAIN...)")
        if not self.heldout:
            raise ValueError("--heldout is required: early stopping needs held-out text")
        for name in ("batch", "eval_every", "steps", "max_tokens", "epochs", "patience",
                     "heldout_tokens", "threads"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and value >= 1):
                raise ValueError(f"--{name.replace('_', '-')} must be an integer >= 1, "
                                 f"got {value!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"--lr must be a positive number, got {self.lr!r}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"--max-seconds must be > 0, got {self.max_seconds!r}")
        self.network_config(0, 0)  # arch, init, sizes: one-line errors now

    def network_config(self, vocab_size: int, radius: int, **changes):
        from .config import NetworkConfig

        fields = {name: getattr(self, name) for name in
                  ("arch", "context", "width", "hidden", "layers", "heads", "init",
                   "embed_init", "explicit", "seed")}
        return NetworkConfig(**{**fields, **changes}, vocab_size=vocab_size, radius=radius)

    @property
    def epochs_or_default(self) -> int | None:
        """Passes over the training text: given, else unbounded under a budget, else 1."""
        if self.epochs is not None:
            return self.epochs
        limited = any(v is not None for v in (self.steps, self.max_tokens, self.max_seconds))
        return None if limited else 1


@dataclasses.dataclass
class Result:
    """The reference, each run's figures and curve, and what was written."""

    store: str
    reference: dict
    runs: list
    written: str | None
    verdict: str
    heldout: dict

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def lines(self) -> list[str]:
        out = [f"held-out: {self.heldout['tokens']:,} tokens scored of "
               f"{self.heldout['total_tokens']:,} ({self.heldout['bytes']:,} bytes)",
               f"{'model':<20} {'CE':>9} {'bits/byte':>10} {'steps':>7} {'tokens':>11} "
               f"{'CPU-s':>8}",
               f"{'explicit':<20} {self.reference['ce']:>9.5f} {self.reference['bpb']:>10.5f}"]
        for run in self.runs:
            out.append(f"{run['name']:<20} {run['best_ce']:>9.5f} {run['best_bpb']:>10.5f} "
                       f"{run['steps']:>7} {run['tokens']:>11,} "
                       f"{run['curve'][-1]['cpu_seconds']:>8.1f}")
        out.append(self.verdict)
        return out


@dataclasses.dataclass
class _Opened:
    """Stage 1's product: the store's model, its read options and weights id."""

    model: object
    read_meta: dict
    weights_id: str


def open_store(options: Options) -> _Opened:
    """Stage 1: the store's explicit model (one weights version); training text checked."""
    from ..core.weights import ExplicitWeights
    from ..documents import check_readable
    from ..language_model import LanguageModel
    from ..store.model_store import ModelStore

    check_readable(list(options.train), options.storage_options)
    check_readable(list(options.heldout), options.storage_options)
    view = ModelStore(options.store, options.storage_options).snapshot()
    model = LanguageModel.open(view)
    if not isinstance(model.weights, ExplicitWeights):
        raise ValueError(f"the weights of {options.store} are refined, not explicit: run "
                         f"`streamsolve finalize {options.store}` first")
    return _Opened(model, view.meta.get("read_options", {}), view.meta["weights"]["id"])


def reference_losses(model, heldout):
    """Stage 2: the explicit model's per-token losses (its O(nnz) scorer, as ``eval``)."""
    R = model.config.radius
    return -model.weights.target_log_probs(heldout.contexts[:, :R], heldout.targets)


def train_runs(options: Options, opened: _Opened, heldout, device) -> list:
    """Stage 3: the network (and the baselines), each on the same minibatch stream."""
    from .data import training_batches
    from .modules import build_network
    from .training import Limits, train_network

    weights = opened.model.weights
    V, R = weights.config.vocab_size, weights.config.radius
    variants = [("main", {})] + (list(BASELINES) if options.baselines else [])
    limits = Limits(options.steps, options.max_tokens, options.max_seconds,
                    options.eval_every, options.patience)
    runs = []
    for name, changes in variants:
        config = options.network_config(V, R, **changes)
        if name == "main":
            name = _run_name(config)
        module = build_network(config, weights).to(device)
        batches = training_batches(list(options.train), opened.model, opened.read_meta,
                                   max(config.columns, R), options.batch,
                                   options.storage_options, options.epochs_or_default,
                                   seed=options.seed)
        runs.append((config, module, train_network(name, module, batches, heldout, limits,
                                                   options.lr, device)))
    return runs


def _run_name(config) -> str:
    if not config.explicit:
        return "no-explicit"
    return "explicit+residual" if config.init == "explicit" else "random-init"


def run(ctx, options: Options) -> Result:
    """Train, compare, and write the network when it beats the explicit model.

    ``ctx`` is the command layer's run context (unused here: the storage options are in
    ``options``; kept for the commands' common signature).
    """
    from ..extras import import_torch, torch_device
    from ..engine.progress import Stage
    from .data import heldout_positions
    from .training import improvement

    torch = import_torch()
    device = torch_device(torch, options.device)  # CUDA without CUDA: one line, first
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    with Stage("train: open the store", 1, 4):
        opened = open_store(options)
    R = opened.model.config.radius
    columns = max(options.context, R)
    with Stage("train: held-out positions and the explicit model", 2, 4) as stage:
        heldout = heldout_positions(list(options.heldout), opened.model, opened.read_meta,
                                    columns, options.storage_options, options.heldout_tokens,
                                    options.seed)
        reference = reference_losses(opened.model, heldout)
        stage.tokens = int(heldout.targets.size)
    with Stage("train: training", 3, 4):
        runs = train_runs(options, opened, heldout, device)
    config, module, main = runs[0]
    gain, noise = improvement(reference, main.best_losses)
    written = None
    with Stage("train: write", 4, 4):
        if gain > noise:
            written = _write(options, opened, config, module, main, gain, noise, heldout)
            verdict = (f"{main.name}: held-out CE {gain:.5f} nats/token below the explicit "
                       f"model (noise {noise:.5f}); written to {written}")
        else:
            verdict = (f"{main.name}: no improvement over the explicit model beyond the "
                       f"held-out noise (gain {gain:.5f}, noise {noise:.5f} nats/token): "
                       "nothing written")
    result = _result(options, reference, runs, written, verdict, heldout)
    if options.log:
        with open(options.log, "w", encoding="utf-8") as handle:
            json.dump(result.to_json(), handle, indent=1)
    return result


def _write(options: Options, opened: _Opened, config, module, main, gain: float,
           noise: float, heldout) -> str:
    """Stage 4: the network file, with its provenance (`streamsolve.network.files`)."""
    import os

    from .files import networks_dir, save

    store = options.store if "://" in options.store else os.path.abspath(options.store)
    description = {
        "config": config.to_dict(), "store": store, "weights_id": opened.weights_id,
        "provenance": {"train": list(options.train), "heldout": list(options.heldout),
                       "heldout_tokens": int(heldout.targets.size), "lr": options.lr,
                       "batch": options.batch, "device": str(options.device or "cpu"),
                       "gain_nats": gain, "noise_nats": noise, **main.to_json()}}
    return save(module, options.out or networks_dir(options.store), description)


def _result(options: Options, reference, runs, written, verdict, heldout) -> Result:
    per_byte = 1.0 / math.log(2) / heldout.bytes_per_token
    ref_ce = float(reference.mean())
    runs_json = [{**run.to_json(), "best_bpb": run.best_ce * per_byte,
                  "config": config.to_dict()} for config, _, run in runs]
    return Result(options.store, {"ce": ref_ce, "bpb": ref_ce * per_byte}, runs_json,
                  written, verdict, {"tokens": int(heldout.targets.size),
                                     "total_tokens": heldout.total_tokens,
                                     "bytes": heldout.bytes})


# -- the command line ----------------------------------------------------------------------

def add_arguments(parser) -> None:
    """``streamsolve train``'s arguments."""
    parser.add_argument("store", help="a finalized store (path or fsspec URL)")
    parser.add_argument("train", nargs="+", metavar="TRAIN", help="training text files")
    parser.add_argument("--heldout", nargs="+", required=True, metavar="TEXT",
                        help="held-out text: early stopping and the figures")
    net = parser.add_argument_group("network")
    net.add_argument("--arch", default="mlp", help="mlp (default) or transformer")
    net.add_argument("--context", type=int, default=8, help="C, tokens the residual sees")
    net.add_argument("--width", type=int, default=64, help="embedding / model width d")
    net.add_argument("--hidden", type=int, default=256,
                     help="MLP hidden units / decoder feed-forward width")
    net.add_argument("--layers", type=int, default=1, help="hidden layers / decoder layers")
    net.add_argument("--heads", type=int, default=2, help="decoder attention heads")
    net.add_argument("--init", default="explicit",
                     help="explicit (residual output zero: step 0 is the explicit model) or "
                          "random (the whole residual random)")
    net.add_argument("--embed-init", default="lowrank",
                     help="lowrank (the explicit block's rank-d factors) or random")
    net.add_argument("--no-explicit", action="store_true",
                     help="without the explicit branch (the residual alone)")
    net.add_argument("--baselines", action="store_true",
                     help="also train random-init and no-explicit on the same batches")
    run_args = parser.add_argument_group("training")
    run_args.add_argument("--batch", type=int, default=256, help="positions per minibatch")
    run_args.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    run_args.add_argument("--steps", type=int, help="stop after this many steps")
    run_args.add_argument("--max-tokens", type=int, help="stop after this many tokens")
    run_args.add_argument("--max-seconds", type=float,
                          help="stop after this many CPU-seconds of training")
    run_args.add_argument("--epochs", type=int, help="passes over TRAIN (default 1 without "
                                                     "another limit)")
    run_args.add_argument("--eval-every", type=int, default=200, help="steps between "
                                                                      "evaluations")
    run_args.add_argument("--patience", type=int, default=4,
                          help="evaluations without improvement before stopping")
    run_args.add_argument("--heldout-tokens", type=int,
                          help="evaluate on a uniform sample of this many held-out positions")
    run_args.add_argument("--device", help="cpu (default) or cuda[:N]")
    run_args.add_argument("--threads", type=int, default=1,
                          help="PyTorch CPU threads (default 1: on 2 shared cores one thread "
                               "took a tenth of the CPU-seconds of two for this small network)")
    run_args.add_argument("--seed", type=int, default=0,
                          help="seed of the initialisation and the shuffle")
    parser.add_argument("--out", help="folder of the network files (default STORE.networks)")
    parser.add_argument("--log", help="write the runs' curves (JSON) here")


def options_from_args(args, storage_options: dict | None = None) -> Options:
    """The `Options` of parsed arguments."""
    return Options(store=args.store, train=tuple(args.train), heldout=tuple(args.heldout),
                   arch=args.arch, context=args.context, width=args.width,
                   hidden=args.hidden, layers=args.layers, heads=args.heads, init=args.init,
                   embed_init=args.embed_init, explicit=not args.no_explicit,
                   baselines=args.baselines, batch=args.batch, lr=args.lr, steps=args.steps,
                   max_tokens=args.max_tokens, max_seconds=args.max_seconds,
                   epochs=args.epochs, eval_every=args.eval_every, patience=args.patience,
                   heldout_tokens=args.heldout_tokens, device=args.device,
                   threads=args.threads, seed=args.seed,
                   out=args.out, log=args.log, storage_options=storage_options)

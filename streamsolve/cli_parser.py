"""The command line's arguments: `build_parser` (every command and its options) and the
argument types. Imported by `streamsolve.cli.main` once Ctrl-C is handled."""

from __future__ import annotations

import argparse
import os
import sys

from . import api
from .cli_cluster import add_cluster_arguments as _add_cluster_arguments
from .cli_cluster import add_jobqueue_arguments as _add_jobqueue_arguments
from .cli_cluster import positive_float as _positive_float
from .cli_cluster import positive_int as _positive_int
from .store.locking import DEFAULT_WAIT_SECONDS, wait_seconds
from .text.reading import DOCUMENT_MODES


def _discount(text: str) -> float | tuple[float, ...]:
    """``--discount D`` or ``D1,D2,D3`` (ranges checked by `check_smoothing`, one line)."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or three comma-separated numbers: {text!r}")
    return values[0] if len(values) == 1 else values








#: ``--memory`` of the commands that count or finalize (one budget, also each batch job's).
MEMORY_HELP = ("one memory budget: of this run (e.g. 2GB, 512MiB, 80%% of RAM; default 50%%, "
               "on a Dask cluster 80%% of the workers' memory limit; counts above it spill to "
               "--tmp), and with --cluster also the memory of each batch job (default 4GiB there)")


def _add_memory(parser: argparse.ArgumentParser, help: str = MEMORY_HELP):
    """``-S/--memory SIZE`` in the main options (``-S`` is lmplz's name; ``--memory-budget``
    an older spelling)."""
    parser.add_argument("-S", "--memory", "--memory-budget", dest="memory", default=None,
                        metavar="SIZE", help=help)
    parser.add_argument("--force-memory", action="store_true",
                        help="accept a --memory above the RAM (on a cluster: the workers' "
                             "limits) or below the 256MiB one process needs (refused otherwise)")






def _add_common(parser: argparse.ArgumentParser):
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--storage-options", metavar="JSON",
                        help="fsspec storage options (JSON object) for URLs; with --scheduler "
                             "or --cluster nothing secret (use --storage-secrets)")
    parser.add_argument("--storage-secrets", metavar="FILE",
                        help="JSON file (mode 0600) of secret storage options (keys, tokens, "
                             "headers), read where the URLs are opened: on a cluster by each "
                             "worker, so on a filesystem the workers see")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")


def _add_counting(parser: argparse.ArgumentParser, corpus_required: bool = True):
    parser.add_argument("corpus", nargs="+" if corpus_required else "*", metavar="CORPUS",
                        help="files, directories, globs or fsspec URLs; each file is a shard "
                             "(.txt, .gz, .bz2, .xz, .zst, .jsonl)")
    parser.add_argument("--store", required=True, help="store path or fsspec URL (Zarr v3)")
    tok = parser.add_mutually_exclusive_group()
    tok.add_argument("--tokenizer", metavar="PATH", help="a HuggingFace tokenizer.json to use")
    tok.add_argument("--vocab-size", type=int, default=None,
                     help="vocabulary of the byte-level BPE trained on a corpus sample for a new "
                          f"store (default {api.DEFAULT_VOCAB_SIZE}; an existing store keeps its own)")
    parser.add_argument("--bos-token", help="token padding the context at document starts "
                                            "(default: <|doc|>, or a known special token)")
    parser.add_argument("--radius", type=int, default=None,
                        help=f"context offsets R (default {api.DEFAULT_RADIUS}, or the store's)")
    parser.add_argument("--aggregation", choices=("cat", "sum"), default=None,
                        help="cat: one block per offset (default); sum: bag of context")
    parser.add_argument("--ngram", type=int, default=None, metavar="N",  # issue 24 hook
                        help="also count suffix n-gram blocks of orders 2..N (2..6), smoothed "
                             "by interpolated modified Kneser-Ney (default: the store's, or none)")
    parser.add_argument("--documents", choices=DOCUMENT_MODES, default="blank-line",
                        help="document boundaries that reset the context (default %(default)s)")
    parser.add_argument("--text-field", default="text", help="text field of .jsonl records")
    parser.add_argument("--scheduler", default=os.environ.get("DASK_SCHEDULER_ADDRESS"),
                        help="threads (default), processes, sync, or a dask.distributed "
                             "address tls://HOST:PORT or tcp://HOST:PORT (also "
                             "DASK_SCHEDULER_ADDRESS)")
    parser.add_argument("--workers", type=_positive_int, help="local workers (default: cores)")
    _add_memory(parser)
    parser.add_argument("-T", "--tmp", metavar="DIR",
                        help="directory for spill files (default: $STREAMSOLVE_TMP or the system "
                             "temp dir; on a multi-host cluster a directory every worker sees)")
    parser.add_argument("--allow-changed", action="store_true",
                        help="add shards whose path was ingested before with other bytes, as "
                             "new content (the old version's counts stay)")
    _add_locking(parser)


def _wait_seconds(text: str) -> float:
    try:
        return wait_seconds(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text!r}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _attach_wait_seconds(argv: list[str]) -> list[str]:
    """``--wait N`` -> ``--wait=N`` and plain ``--wait`` -> ``--wait=DEFAULT``.

    ``--wait`` takes an optional value, and argparse would swallow the word after a plain
    ``--wait`` (``finalize --wait STORE``) as that value: only a number is one.
    """
    out, rest = [], list(argv)
    while rest:
        token = rest.pop(0)
        if token == "--":
            return out + [token] + rest
        if token == "--wait":
            value = rest.pop(0) if rest and _is_number(rest[0]) else f"{DEFAULT_WAIT_SECONDS:g}"
            token = f"--wait={value}"
        out.append(token)
    return out


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        """One line, exit 2 (``--help`` shows the usage)."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else args
        return super().parse_known_args(_attach_wait_seconds(list(args)), namespace)


def _add_locking(parser: argparse.ArgumentParser):
    parser.add_argument("--wait", nargs="?", type=_wait_seconds, const=DEFAULT_WAIT_SECONDS,
                        default=False, metavar="SECONDS",
                        help="wait for another writer of the store to finish instead of failing, "
                             f"at most SECONDS (default {DEFAULT_WAIT_SECONDS:g})")
    parser.add_argument("--break-lock", action="store_true",
                        help="remove a writer lock held from another host (only if that job is gone)")
    parser.add_argument("--mode", metavar="OCTAL", help="mode of a local store's files, e.g. "
                        "0600 (default: the umask, never looser than the store's own)")


def _add_finalizing(parser: argparse.ArgumentParser):
    parser.add_argument("--form", choices=("row", "column"), default="row",
                        help="row (published, default) or column (naive Bayes) form")
    parser.add_argument("--smoothing", choices=("dirichlet", "additive", "none", "kneser-ney"),
                        help="default kneser-ney (row form; dirichlet for --form column, or "
                             "when --mu is given; additive when --alpha is given)")
    parser.add_argument("--mu", type=_positive_float, help="Dirichlet strength (default V)")
    parser.add_argument("--alpha", type=_positive_float, help="additive pseudo-count (default 0.1)")
    parser.add_argument("--discount", type=_discount, metavar="D | D1,D2,D3",
                        help="kneser-ney discounts for counts 1, 2, >= 3 (default: estimated per "
                             "offset from its counts-of-counts)")
    parser.add_argument("--smoothing-search", choices=("auto", "on", "off"), default="auto",
                        help="choose the smoothing strength (mu, or a scale on the discounts) "
                             "of each offset on the calibration text before calibrating; only "
                             "with calibration text and no --mu/--discount (default auto: "
                             "Dirichlet only, searched Kneser-Ney measured worse once "
                             "calibrated, BENCHMARKS.md section 8)")


def _add_refining(p: argparse.ArgumentParser):
    """The arguments of ``streamsolve refine`` (see `streamsolve.refine.refine_store`)."""
    p.add_argument("store", help="store path or fsspec URL (Zarr v3), finalized")
    p.add_argument("train", nargs="+", metavar="TRAIN", help="training text files (shards)")
    p.add_argument("--heldout", nargs="+", metavar="TEXT", required=True,
                   help="held-out text files: early stopping keeps the best weights on them")
    p.add_argument("--init", choices=("explicit", "random", "zeros"), default="explicit",
                   help="start from the minimum-norm explicit weights (default), small random "
                        "values (seeded) or zeros")
    p.add_argument("--optimizer", choices=("adam", "sgd", "lbfgs"), default="adam",
                   help="optimizer (default %(default)s)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=_positive_int, metavar="N",
                        help="stop after N optimizer steps")
    length.add_argument("--epochs", type=_positive_int, metavar="E",
                        help="passes over TRAIN (default 1 when --steps is not given)")
    p.add_argument("--lr", type=_positive_float, metavar="X",
                   help="learning rate (default 1e-3 adam, 0.1 sgd, 1 lbfgs)")
    p.add_argument("--batch", type=_positive_int, default=256, metavar="B",
                   help="positions per minibatch (default %(default)s)")
    p.add_argument("--weight-decay", type=float, default=0.0, metavar="X",
                   help="L2 penalty (default 0); row-sparse: on the batch's rows only, "
                        "decoupled (AdamW) for adam")
    p.add_argument("--rank", type=_positive_int, metavar="D",
                   help="refine rank-D factors (embedding V x D, output D x V) instead of "
                        "dense V x V tables (needed when the dense tables do not fit)")
    p.add_argument("--device", default="cpu", metavar="DEVICE",
                   help="cpu (default) or cuda[:N]")
    p.add_argument("--patience", type=_positive_int, default=5, metavar="K",
                   help="stop after K held-out evaluations without improvement (default "
                        "%(default)s)")
    p.add_argument("--eval-every", type=_positive_int, default=100, metavar="N",
                   help="steps between held-out evaluations (default %(default)s)")
    p.add_argument("--max-seconds", type=_positive_float, metavar="S",
                   help="stop training after S seconds of wall time")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the shuffle, random init and held-out sample (default 0)")
    p.add_argument("--dense-updates", action="store_true",
                   help="update every parameter each step; by default adam / sgd on dense "
                        "tables update only the batch's context rows (row-sparse, faster)")
    p.add_argument("--heldout-tokens", type=_positive_int, metavar="N",
                   help="evaluate on a uniform sample (seeded) of N held-out positions, "
                        "bounding the time of each evaluation (default: all)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="streamsolve",
        description="Train single-layer softmax language models without backpropagation.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"streamsolve {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("count", help="stream a corpus into sparse counts (adds to an existing store)")
    _add_counting(p)
    _add_cluster_arguments(p)
    _add_common(p)

    p = sub.add_parser("finalize", help="compute explicit weights from a store's counts")
    p.add_argument("store", help="store path or fsspec URL (Zarr v3)")
    _add_finalizing(p)
    p.add_argument("--calibrate", nargs="+", metavar="HELDOUT",
                   help="held-out text to fit the R + 1 calibration scalars on")
    _add_memory(p)
    _add_locking(p)
    _add_cluster_arguments(p, scheduler=True)
    _add_common(p)

    p = sub.add_parser("eval", help="held-out cross-entropy / perplexity of a finalized store")
    p.add_argument("store", help="store path or fsspec URL (Zarr v3)")
    p.add_argument("text", nargs="+", metavar="TEXT", help="held-out text files to score")
    p.add_argument("--uncalibrated", action="store_true", help="ignore calibration scalars")
    _add_memory(p, "memory budget (e.g. 1GB): a quarter caches weight row blocks")
    _add_common(p)

    p = sub.add_parser("score", help="log-probabilities of text, one JSON line per document "
                                     "(or token), then a summary line")
    p.add_argument("store", help="store path or fsspec URL (Zarr v3)")
    p.add_argument("text", nargs="*", metavar="TEXT", help="files, or - (default) for stdin")
    p.add_argument("--per-token", action="store_true", help="one line per token")
    p.add_argument("--uncalibrated", action="store_true", help="ignore calibration scalars")
    _add_memory(p, "memory budget (e.g. 1GB): a quarter caches weight row blocks")
    _add_common(p)

    p = sub.add_parser("info", help="describe a store")
    p.add_argument("store", help="store path or fsspec URL (Zarr v3)")
    _add_common(p)

    p = sub.add_parser("verify", help="check every block of a store against its checksums and "
                                      "digests (exit 2 naming the damaged blocks)")
    p.add_argument("store", help="store path or fsspec URL (Zarr v3)")
    _add_common(p)

    p = sub.add_parser("export", help="export counts (dense .npz), weights (safetensors or "
                                      ".npz) or the tokenizer")
    p.add_argument("store", help="store path or fsspec URL (Zarr v3)")
    p.add_argument("out", metavar="OUT", nargs="?",
                   help="output file (.npz or .safetensors) for --counts / --weights")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--counts", action="store_true",
                      help="export counts_1..counts_R (V x V) and unigram to OUT.npz")
    what.add_argument("--weights", action="store_true",
                      help="export the weights: sparse + rank-one parts (any V) by default")
    what.add_argument("--arpa", action="store_true",  # issue 24 hook
                      help="export the pure n-gram part (a store counted with --ngram) as "
                           "an ARPA file OUT, readable by KenLM")
    p.add_argument("--format", choices=("safetensors", "npz"),
                   help="weights file format (default: from OUT's suffix, else safetensors)")
    p.add_argument("--rank", type=_positive_int, metavar="D",
                   help="weights as rank-D embedding/output factors of the min-norm blocks")
    p.add_argument("--dense", action="store_true",
                   help="weights as dense min-norm V x V tables (within --memory)")
    _add_memory(p, "budget of --counts and --weights --dense (default: half the RAM)")
    p.add_argument("--tokenizer", metavar="OUT.json", dest="tokenizer_out",
                   help="also write the stored tokenizer JSON here")
    p.add_argument("--force", action="store_true",
                   help="replace existing output files (refused otherwise)")
    _add_common(p)

    p = sub.add_parser("generate", help="continue a prompt with a finalized store")
    p.add_argument("store", help="store path or fsspec URL (Zarr v3)")
    p.add_argument("prompt", nargs="?", default="", help="text to continue (default: empty)")
    p.add_argument("--tokens", type=_positive_int, default=20,
                   help="tokens to generate (default %(default)s)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--seed", type=int, default=0, help="random seed of sampling (default 0)")
    p.add_argument("--top-k", type=_positive_int, help="sample among the K most likely tokens")
    p.add_argument("--top-p", type=float, help="sample among the most likely tokens whose "
                                               "probability reaches P (nucleus, 0 < P <= 1)")
    p.add_argument("--top", type=_positive_int, default=5,
                   help="also show the top next tokens after the prompt")
    _add_common(p)

    p = sub.add_parser("refine", help="refine a finalized LM by backpropagation (PyTorch), "
                                      "early-stopped on held-out text; writes a new weights version")
    _add_refining(p)
    _add_locking(p)
    _add_common(p)

    # -- train (issue 25): the command module owns its arguments (streamsolve.network.command)
    from .network import command as train_command
    p = sub.add_parser("train", help="train the explicit model plus a neural residual "
                                     "(PyTorch), early-stopped on held-out text")
    train_command.add_arguments(p)
    _add_common(p)
    # -- end train

    p = sub.add_parser("solve", help="count + finalize + calibrate + evaluate on a held-out part")
    _add_counting(p, corpus_required=False)
    _add_finalizing(p)
    p.add_argument("--heldout", type=float, default=0.05,
                   help="fraction of runs of 64 lines or 16 kB held out (default %(default)s)")
    p.add_argument("--no-calibrate", action="store_true",
                   help="do not fit the calibration scalars on the held-out part")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing streamsolve store (nothing else is ever deleted)")
    _add_cluster_arguments(p)
    _add_common(p)

    p = sub.add_parser("cluster-script", help="print the batch job script --cluster would submit")
    _add_memory(p, "memory of each batch job (default 4GiB)")
    _add_jobqueue_arguments(p, required=True)
    _add_common(p)
    return parser

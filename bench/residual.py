"""Issue 25: the explicit layer as the base of a deeper network, side by side in one run.

``python -m bench.residual [--budget CPU_SECONDS] [--scratch DIR]`` (or ``python -m bench
--only residual``) on the quick split of BENCHMARKS.md section 8 (`bench.kenlm`: training =
two Bible translations, held out by source: the first 256 KiB of perl-doc calibrate, the
first 256 KiB of python-doc evaluate; byte-level BPE V = 8192, `bench_tokenizer`):

1. the explicit model: ``count --radius 3`` + ``finalize --calibrate`` (measured:
   CPU-seconds of the process tree);
2. ``streamsolve train STORE TRAIN --heldout EVAL --baselines`` (MLP over the last C
   tokens): explicit + residual, the same network from random init with the explicit
   branch, and without it, each with the same training budget in CPU-seconds;
3. KenLM 5-gram (``lmplz -o 5``) on the same tokens, scored on the same slice;

then one table (held-out CE, bits per byte, tokens, CPU-seconds, the compute each needed
to reach random-init's best) and the curves (PNG when matplotlib is installed, always a
CSV). The explicit model is counted on the first training shard and the networks are
trained on the second: trained on the text its counts came from, the explicit branch is
overconfident (it has seen every training n-gram), and training made the held-out CE worse
from the first evaluation (5.387 -> 5.606 -> 5.790 at steps 0, 50, 100). KenLM is built on
both shards. Early stopping uses the evaluation slice itself (a sample of it), for every network
alike: the figures are optimistic by that selection, equally for all.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import common
from . import kenlm
from . import kenlm_tools as kt

logger = logging.getLogger(__name__)

#: Held-out sources (calibration, evaluation), each absent from the training shards.
HELDOUT = {"python-doc": ("perl-doc.txt.gz", "python-doc.txt.gz"),
           "bible": ("bible-asv.txt.gz", "bible-web.txt.gz")}
KENLM_BIN = Path("/work/kenlm-src/build/bin")
NETWORK = ["--arch", "mlp", "--context", "8", "--width", "64", "--hidden", "256",
           "--batch", "256", "--lr", "1e-3", "--eval-every", "50", "--patience", "8",
           "--heldout-tokens", "4096"]


def build_explicit(split: dict, scratch: Path) -> tuple[Path, float]:
    """Count (R = 3) and finalize --calibrate; the store and the CPU-seconds of both."""
    import shutil

    store, logs, tmp = scratch / "r3.zarr", scratch / "logs", scratch / "tmp"
    for folder in (logs, tmp):
        folder.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(store, ignore_errors=True)
    counted, _ = kenlm.run_streamsolve_json(
        ["count", *split["train_paths"][:1], "--store", str(store), "--tokenizer",
         str(split["tokenizer"]), "--radius", "3", "-S", "2GB"], logs / "count.log",
        tmp / "count.json")
    finalized, _ = kenlm.run_streamsolve_json(
        ["finalize", str(store), "--calibrate", str(split["calib_path"])],
        logs / "finalize.log", tmp / "finalize.json")
    return store, counted.cpu + finalized.cpu


def kenlm_5gram(split: dict, scratch: Path) -> float:
    """Bits per byte of KenLM's 5-gram on the evaluation slice (without </s>, as
    `bench.kenlm` compares)."""
    kenlm.KENLM_ORDERS = (5,)
    models = kenlm.build_kenlm_models(KENLM_BIN, split, scratch)
    score = kenlm.kenlm_quality(KENLM_BIN, split, models, scratch)[5]
    return kt.bits_per_byte(score.bits(False), split["eval"]["bytes"])


def train(split: dict, store: Path, scratch: Path, budget: float) -> tuple[dict, kt.Measured]:
    log = scratch / "train-log.json"
    measured, result = kenlm.run_streamsolve_json(
        ["train", str(store), *split["train_paths"][1:], "--heldout", str(split["eval_path"]),
         *NETWORK, "--max-seconds", str(budget), "--baselines", "--log", str(log),
         "--out", str(scratch / "networks")], scratch / "logs" / "train.log",
        scratch / "tmp" / "train.json")
    return result, measured


def reach(curve: list, target: float, offset: float = 0.0) -> float | None:
    """CPU-seconds (plus ``offset``) at the first evaluation at or below ``target``."""
    for point in curve:
        if point["heldout_ce"] <= target:
            return point["cpu_seconds"] + offset
    return None


def report(result: dict, build_cpu: float, kenlm_bpb: float, loads: list) -> str:
    runs = {run["name"]: run for run in result["runs"]}
    target = runs["random-init"]["best_ce"]
    per_nat = result["reference"]["bpb"] / result["reference"]["ce"]
    rows = [["explicit (calibrated, R = 3)", f"{result['reference']['ce']:.4f}",
             f"{result['reference']['bpb']:.4f}", "", f"{build_cpu:.1f}", ""],
            ["KenLM 5-gram (without </s>)", "", f"{kenlm_bpb:.4f}", "", "", ""]]
    for name, run in runs.items():
        offset = build_cpu if name != "no-explicit" else 0.0
        spent = run["curve"][-1]["cpu_seconds"] + offset
        at = reach(run["curve"], target, offset)
        rows.append([name, f"{run['best_ce']:.4f}", f"{run['best_ce'] * per_nat:.4f}",
                     f"{run['tokens']:,}", f"{spent:.1f}",
                     "" if at is None else f"{at:.1f}"])
    main = runs["explicit+residual"]
    at_main = reach(main["curve"], target, build_cpu)
    at_random = reach(runs["random-init"]["curve"], target, build_cpu)
    verdicts = [
        f"reach random-init's best ({target:.4f}) in <= 1/3 of its compute: "
        + ("met" if at_main is not None and at_random and at_main <= at_random / 3 else
           "NOT met") + f" ({at_main} vs {at_random} CPU-s, explicit build counted)",
        "final CE equal or better than random-init: "
        + ("met" if main["best_ce"] <= target else "NOT met"),
        f">= 5% below the explicit model in bits per byte: "
        + ("met" if main["best_ce"] <= 0.95 * result["reference"]["ce"] else "NOT met")
        + f" ({100 * (1 - main['best_ce'] / result['reference']['ce']):.2f}% below)",
        "below KenLM 5-gram: " + ("met" if main["best_ce"] * per_nat < kenlm_bpb else
                                   "NOT met"),
        f"written: {result['written']}; {result['verdict']}",
        "CPU-seconds: training only for the networks (evaluations apart), plus the explicit "
        "build (count + finalize --calibrate) for the runs with the explicit branch",
        *loads]
    return common.table(f"Issue 25: explicit vs explicit + residual vs baselines (held out: "
                        f"{kenlm.EVAL_SOURCE})", ["model", "CE (nats/token)", "bits/byte",
                                              "tokens", "CPU-s", "CPU-s to random's best"],
                        rows, verdicts)


def plot(result: dict, build_cpu: float, scratch: Path) -> str:
    """The curves as CSV (always) and PNG (when matplotlib is installed)."""
    lines = ["run,tokens,cpu_seconds,cpu_with_build,heldout_ce"]
    for run in result["runs"]:
        offset = build_cpu if run["name"] != "no-explicit" else 0.0
        for p in run["curve"]:
            lines.append(f"{run['name']},{p['tokens']},{p['cpu_seconds']},"
                         f"{p['cpu_seconds'] + offset:.3f},{p['heldout_ce']}")
    (scratch / "curves.csv").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib
    except ImportError:
        return f"curves: {scratch / 'curves.csv'} (matplotlib is not installed: no PNG)"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for run in result["runs"]:
        offset = build_cpu if run["name"] != "no-explicit" else 0.0
        axes[0].plot([p["cpu_seconds"] + offset for p in run["curve"]],
                     [p["heldout_ce"] for p in run["curve"]], label=run["name"])
        axes[1].plot([p["tokens"] for p in run["curve"]],
                     [p["heldout_ce"] for p in run["curve"]], label=run["name"])
    for ax, label in zip(axes, ["CPU-seconds (explicit build counted)", "training tokens"]):
        ax.axhline(result["reference"]["ce"], color="grey", ls="--", label="explicit")
        ax.set_xlabel(label)
        ax.set_ylabel("held-out CE (nats/token)")
        ax.legend()
    fig.savefig(scratch / "curves.png", dpi=100)
    return f"curves: {scratch / 'curves.png'}, {scratch / 'curves.csv'}"


def run(full: bool = False, budget: float = 120.0, scratch: Path | None = None) -> str:
    scratch = scratch or common.WORK / "residual"
    scratch.mkdir(parents=True, exist_ok=True)
    loads = [kt.load_line()]
    split = kenlm.prepare_split(False, scratch)
    store, build_cpu = build_explicit(split, scratch)
    kenlm_bpb = kenlm_5gram(split, scratch)
    result, _ = train(split, store, scratch, budget)
    loads.append(kt.load_line())
    (scratch / "result.json").write_text(json.dumps(result, indent=1))
    return report(result, build_cpu, kenlm_bpb, loads) + "\n" + plot(result, build_cpu,
                                                                      scratch) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.residual", description=__doc__)
    parser.add_argument("--budget", type=float, default=120.0,
                        help="CPU-seconds of training per network (default %(default)s)")
    parser.add_argument("--scratch", type=Path)
    parser.add_argument("--heldout", choices=sorted(HELDOUT), default="python-doc",
                        help="held-out sources: python-doc (section 8: calibrate on perl-doc, "
                             "evaluate on python-doc) or bible (calibrate on the ASV, evaluate "
                             "on the WEB translation: the training domain)")
    args = parser.parse_args(argv)
    kenlm.CALIB_SOURCE, kenlm.EVAL_SOURCE = HELDOUT[args.heldout]
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    print(run(False, args.budget, args.scratch))
    return 0


if __name__ == "__main__":
    sys.exit(main())

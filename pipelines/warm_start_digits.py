"""Passes of `refine` to reach LogisticRegression's objective (within 1e-4 relative) on the
8x8 digits, from zeros and from explicit starts. Issue 15, claim (5), on a small problem.

    python pipelines/warm_start_digits.py          (needs scikit-learn)

1,200 training images (pixels / 16), 300 more for calibration; C = 1, so refine's
``l2 = 1 / (C N)`` (refine minimises the mean cross-entropy); 300 full-batch passes.
`passes_to_objective` is reused by ``pipelines/paper_claims.py`` (MNIST and digits).
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from streamsolve import ExplicitSoftmaxClassifier

STARTS = [("zeros", "zeros", False), ("explicit, minimum-norm", "explicit", False),
          ("calibrated explicit, minimum-norm", "explicit", True),
          ("calibrated explicit, raw (uncentred)", "current", True)]


def passes_to_objective(X_train, y_train, X_cal, y_cal, C: float = 1.0, passes: int = 300,
                        tolerance: float = 1e-4) -> tuple[float, list[dict]]:
    """LogisticRegression's objective, and per start of `STARTS` the refine passes to reach
    it within ``tolerance`` relative (None: not reached) and the objective curve."""
    n = len(y_train)
    l2 = 1 / (C * n)
    reference = LogisticRegression(C=C, tol=1e-12, max_iter=10_000).fit(X_train, y_train)
    log_proba = reference.predict_log_proba(X_train)
    target = (-log_proba[np.arange(n), np.searchsorted(reference.classes_, y_train)].mean()
              + 0.5 * l2 * np.sum(reference.coef_ ** 2))
    rows = []
    for name, init, calibrate in STARTS:
        model = ExplicitSoftmaxClassifier().fit(X_train, y_train)
        if calibrate:
            model.calibrate(X_cal, y_cal)
        model.refine(X_train, y_train, passes=passes, init=init, l2=l2)
        best = np.minimum.accumulate([h["objective"] for h in model.refine_history_])
        reached = np.nonzero(best <= target * (1 + tolerance))[0]
        rows.append({"start": name, "init": init, "calibrated": calibrate,
                     "objective_start": float(best[0]), "objective_end": float(best[-1]),
                     "passes_to_reach": int(reached[0]) if reached.size else None,
                     "curve": [float(v) for v in best]})
    return float(target), rows


def main(C: float = 1.0, passes: int = 300, tolerance: float = 1e-4) -> None:
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    order = np.random.default_rng(0).permutation(len(y))
    train, calibration = order[:1200], order[1200:1500]
    target, rows = passes_to_objective(X[train], y[train], X[calibration], y[calibration], C,
                                       passes, tolerance)
    print(f"LogisticRegression objective {target:.5f}")
    print("| start | objective at the start | passes to within 1e-4 | objective after "
          f"{passes} |\n|---|---|---|---|")
    for row in rows:
        reached = row["passes_to_reach"]
        print(f"| {row['start']} | {row['objective_start']:.3f} | "
              f"{reached if reached is not None else 'not reached'} | "
              f"{row['objective_end']:.5f} |")


if __name__ == "__main__":
    main()

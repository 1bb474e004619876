"""Passes of `refine` to reach LogisticRegression's objective (within 1e-4 relative) on the
8x8 digits, from zeros and from explicit starts. Issue 15, claim (5), on a small problem.

    python pipelines/warm_start_digits.py          (needs scikit-learn)

1,200 training images (pixels / 16), 300 more for calibration; C = 1, so refine's
``l2 = 1 / (C N)`` (refine minimises the mean cross-entropy); 300 full-batch passes.
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from streamsolve import ExplicitSoftmaxClassifier

STARTS = [("zeros", "zeros", False), ("explicit, minimum-norm", "explicit", False),
          ("calibrated explicit, minimum-norm", "explicit", True),
          ("calibrated explicit, raw (uncentred)", "current", True)]


def main(C: float = 1.0, passes: int = 300, tolerance: float = 1e-4) -> None:
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    order = np.random.default_rng(0).permutation(len(y))
    train, calibration = order[:1200], order[1200:1500]
    n = len(train)
    l2 = 1 / (C * n)
    reference = LogisticRegression(C=C, tol=1e-12, max_iter=10_000).fit(X[train], y[train])
    log_proba = reference.predict_log_proba(X[train])
    target = (-log_proba[np.arange(n), y[train]].mean()
              + 0.5 * l2 * np.sum(reference.coef_ ** 2))
    print(f"LogisticRegression objective {target:.5f}")
    print("| start | objective at the start | passes to within 1e-4 | objective after "
          f"{passes} |\n|---|---|---|---|")
    for name, init, calibrate in STARTS:
        model = ExplicitSoftmaxClassifier().fit(X[train], y[train])
        if calibrate:
            model.calibrate(X[calibration], y[calibration])
        model.refine(X[train], y[train], passes=passes, init=init, l2=l2)
        best = np.minimum.accumulate([h["objective"] for h in model.refine_history_])
        reached = np.nonzero(best <= target * (1 + tolerance))[0]
        print(f"| {name} | {best[0]:.3f} | {int(reached[0]) if reached.size else 'not reached'} "
              f"| {best[-1]:.5f} |")


if __name__ == "__main__":
    main()

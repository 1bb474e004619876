"""The O(nnz) scorer of DESIGN 3b equals the dense formula (log_softmax of the logits) to
1e-9 for every form, smoothing, aggregation, radius and calibration; the C kernel equals
its NumPy twin; cached and uncached results are identical; the calibration loss and
gradient on the same kernel equal the dense ones; calibration never worsens held-out CE."""

from __future__ import annotations

import random

import numpy as np
import pytest

from streamsolve.core import score_native
from streamsolve.core.calibration import logsumexp
from streamsolve.core.counting import CountConfig, count_sequences
from streamsolve.core.positions import positions as core_positions
from streamsolve.core.positions import sampled_positions
from streamsolve.core.scoring import (CalibrationObjective, Scorer, ScoringParts,
                                      fit_calibration_scored)
from streamsolve.core.weights import finalize
from streamsolve.language_model import LanguageModel

NATIVE = [False] + ([True] if score_native.available() else [])


def random_docs(seed, V, n_docs=120, max_len=30, skew=True):
    rng = random.Random(seed)
    weights = [1.0 / (i + 1) for i in range(V)] if skew else None
    return [rng.choices(range(V), weights=weights, k=rng.randrange(1, max_len))
            for _ in range(n_docs)]


def weights_of(docs, V, radius, aggregation="cat", form="row", smoothing="dirichlet"):
    counts = count_sequences([(np.asarray(d, dtype=np.int64), True) for d in docs],
                             CountConfig(V, radius, aggregation, bos_id=0))
    return finalize(counts, form=form, smoothing=smoothing)


def positions(docs, radius):
    return core_positions(docs, radius, 0)


def dense_log_probs(weights, ctx, tgt):
    logits = weights.logits(ctx)
    return logits[np.arange(tgt.size), tgt] - logsumexp(logits, axis=1)


CASES = [(form, smoothing, aggregation, radius)
         for form, smoothing in [("row", "dirichlet"), ("row", "additive"),
                                 ("column", "dirichlet"), ("column", "additive")]
         for aggregation in ("cat", "sum") for radius in (1, 2, 3)]


@pytest.mark.parametrize("native", NATIVE)
@pytest.mark.parametrize("form,smoothing,aggregation,radius", CASES)
@pytest.mark.parametrize("calibrated", [False, True])
def test_scorer_equals_dense_formula(form, smoothing, aggregation, radius, calibrated, native):
    V = 12
    weights = weights_of(random_docs(radius, V), V, radius, aggregation, form, smoothing)
    if calibrated:
        n_blocks = len(weights.blocks)
        weights = weights.with_calibration(np.linspace(0.4, 1.3, n_blocks), -0.7)
    ctx, tgt = positions(random_docs(100 + radius, V, n_docs=30), radius)
    parts = ScoringParts.from_weights(weights)
    scorer = Scorer(parts, weights.beta, weights.gamma, native=native)
    expected = dense_log_probs(weights, ctx, tgt)
    np.testing.assert_allclose(scorer.log_probs(ctx, tgt), expected, rtol=0, atol=1e-9)
    logits = weights.logits(ctx)
    np.testing.assert_allclose(scorer.log_normalizers(ctx), logsumexp(logits, axis=1),
                               rtol=0, atol=1e-9)
    np.testing.assert_allclose(weights.target_log_probs(ctx, tgt), expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("native", NATIVE)
def test_unsmoothed_bigram_and_negative_calibration(native):
    """smoothing='none' (full rows) and negative betas (the correction cancels U: dense path)."""
    V = 4
    docs = random_docs(0, V, n_docs=300, skew=False)
    weights = weights_of(docs, V, 1, smoothing="none")
    ctx, tgt = positions(docs[:40], 1)
    for beta, gamma in [(1.0, 0.0), (-3.0, 0.5), (-40.0, 2.0)]:
        w = weights.with_calibration([beta], gamma)
        scorer = Scorer(ScoringParts.from_weights(w), w.beta, w.gamma, native=native)
        np.testing.assert_allclose(scorer.log_probs(ctx, tgt), dense_log_probs(w, ctx, tgt),
                                   rtol=0, atol=1e-9)
    # a strongly negative beta on an R = 2 model makes the correction cancel U
    weights = weights_of(docs, V, 2).with_calibration([-30.0, -30.0], 0.0)
    ctx, tgt = positions(docs[:40], 2)
    scorer = Scorer(ScoringParts.from_weights(weights), weights.beta, weights.gamma, native=native)
    np.testing.assert_allclose(scorer.log_probs(ctx, tgt), dense_log_probs(weights, ctx, tgt),
                               rtol=0, atol=1e-9)


@pytest.mark.skipif(not score_native.available(), reason="C scoring kernel not built")
@pytest.mark.parametrize("aggregation,radius", [("cat", 1), ("cat", 3), ("sum", 3)])
def test_kernel_equals_numpy_fallback(aggregation, radius):
    V = 40
    weights = weights_of(random_docs(7, V, n_docs=400), V, radius, aggregation)
    weights = weights.with_calibration(np.linspace(0.5, 1.1, len(weights.blocks)), -0.4)
    parts = ScoringParts.from_weights(weights)
    ctx, tgt = positions(random_docs(8, V, n_docs=200), radius)  # > one kernel chunk: threads
    args = (parts, weights.beta, weights.gamma)
    c, f = Scorer(*args, native=True), Scorer(*args, native=False)
    np.testing.assert_allclose(c.log_probs(ctx, tgt), f.log_probs(ctx, tgt), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(c.target_values(ctx, tgt), f.target_values(ctx, tgt))
    for x, y in zip(c.context_terms(ctx[:300], gradient=True),
                    f.context_terms(ctx[:300], gradient=True)):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("native", NATIVE)
@pytest.mark.parametrize("radius", [1, 3])
def test_large_exponents_factor_out_the_largest_term(radius, native):
    """beta * S beyond the product kernel's bound: the max-factoring path, still exact."""
    V = 12
    weights = weights_of(random_docs(5, V), V, radius).with_calibration([150.0] * radius, 0.5)
    ctx, tgt = positions(random_docs(6, V, n_docs=30), radius)
    scorer = Scorer(ScoringParts.from_weights(weights), weights.beta, weights.gamma,
                    native=native)
    if native:
        assert scorer._product_factors() is None
    np.testing.assert_allclose(scorer.log_probs(ctx, tgt), dense_log_probs(weights, ctx, tgt),
                               rtol=1e-12, atol=1e-9)
    fallback = Scorer(scorer.parts, weights.beta, weights.gamma, native=False)
    for x, y in zip(scorer.context_terms(ctx, gradient=True),
                    fallback.context_terms(ctx, gradient=True)):
        np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("native", NATIVE)
@pytest.mark.parametrize("radius", [1, 3])
def test_cache_hits_give_identical_results(radius, native):
    V = 30
    weights = weights_of(random_docs(3, V, n_docs=300), V, radius)
    parts = ScoringParts.from_weights(weights)
    ctx, tgt = positions(random_docs(4, V, n_docs=200), radius)
    uncached = Scorer(parts, weights.beta, weights.gamma, cache_size=0, native=native)
    cached = Scorer(parts, weights.beta, weights.gamma, cache_size=64, native=native)
    expected = uncached.log_probs(ctx, tgt)
    first = np.concatenate([cached.log_probs(ctx[s:s + 97], tgt[s:s + 97])
                            for s in range(0, tgt.size, 97)])
    second = cached.log_probs(ctx, tgt)  # now mostly from the cache (collisions evict some)
    np.testing.assert_array_equal(first, expected)
    np.testing.assert_array_equal(second, expected)
    assert cached.cache.hits > 0


@pytest.mark.parametrize("native", NATIVE)
@pytest.mark.parametrize("form,aggregation,radius",
                         [("row", "cat", 1), ("row", "cat", 3), ("row", "sum", 2),
                          ("column", "cat", 2)])
def test_calibration_loss_and_gradient_equal_dense(form, aggregation, radius, native):
    V = 10
    weights = weights_of(random_docs(11, V), V, radius, aggregation, form)
    ctx, tgt = positions(random_docs(12, V, n_docs=40), radius)
    objective = CalibrationObjective(ScoringParts.from_weights(weights), ctx, tgt, native=native)

    def dense_loss(theta):
        w = weights.with_calibration(theta[:-1], theta[-1])
        return -float(np.mean(dense_log_probs(w, ctx, tgt)))

    theta = np.r_[np.linspace(0.6, 1.2, len(weights.blocks)), -0.3]
    loss, grad = objective(theta)
    assert loss == pytest.approx(dense_loss(theta), abs=1e-9)
    h = 1e-5
    numeric = [(dense_loss(theta + h * e) - dense_loss(theta - h * e)) / (2 * h)
               for e in np.eye(theta.size)]
    np.testing.assert_allclose(grad, numeric, rtol=0, atol=1e-7)


@pytest.mark.parametrize("aggregation,radius", [("cat", 3), ("sum", 3), ("cat", 1)])
def test_calibrated_heldout_cross_entropy_never_worse(aggregation, radius):
    V = 24
    docs = random_docs(21, V, n_docs=600)
    weights = weights_of(docs[:500], V, radius, aggregation)
    heldout = [np.asarray(d) for d in docs[500:]]
    model = LanguageModel(weights)
    raw = model.evaluate_ids(heldout).cross_entropy
    calibrated = model.calibrate(heldout, sample_size=10 ** 6)
    assert calibrated.weights.calibrated
    assert calibrated.evaluate_ids(heldout).cross_entropy <= raw + 1e-12
    ctx, tgt = positions(heldout, radius)
    fit = fit_calibration_scored(ScoringParts.from_weights(weights), ctx, tgt,
                                 np.r_[weights.beta, weights.gamma])
    assert fit.loss_after <= fit.loss_before
    assert fit.loss_before == pytest.approx(raw, abs=1e-9)


def test_scorer_rejects_bad_shapes():
    weights = weights_of(random_docs(0, 6), 6, 2)
    scorer = Scorer(ScoringParts.from_weights(weights), weights.beta, weights.gamma)
    with pytest.raises(ValueError, match="contexts must be"):
        scorer.log_probs(np.zeros((3, 1), dtype=np.int64), np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="beta values"):
        Scorer(scorer.parts, [1.0], 0.0)


@pytest.mark.skipif(not score_native.available(), reason="C scoring kernel not built")
@pytest.mark.parametrize("aggregation,radius", [("cat", 2), ("cat", 3), ("sum", 3)])
@pytest.mark.parametrize("dense_rows", [1, 3, 1000])
def test_dense_long_rows_equal_dense_formula(monkeypatch, aggregation, radius, dense_rows):
    """The product kernel with each context's longest row held densely (all, some or three
    of the rows qualify) equals the dense formula, calibrated or not."""
    import streamsolve.core.scoring as scoring

    V = 15
    monkeypatch.setattr(scoring, "DENSE_ROW_MIN_NNZ", 1)
    monkeypatch.setattr(scoring, "DENSE_ROW_BYTES", 8 * V * dense_rows)
    weights = weights_of(random_docs(radius, V, n_docs=300), V, radius, aggregation)
    ctx, tgt = positions(random_docs(50 + radius, V, n_docs=60), radius)
    for w in (weights, weights.with_calibration(np.linspace(0.4, 1.3, len(weights.blocks)),
                                                -0.7)):
        scorer = Scorer(ScoringParts.from_weights(w), w.beta, w.gamma, native=True)
        np.testing.assert_allclose(scorer.log_probs(ctx, tgt), dense_log_probs(w, ctx, tgt),
                                   rtol=0, atol=1e-9)
        held = scorer.dense_rows()
        assert held is not None
        assert sum(int((s >= 0).sum()) for s in held._keep[0]) == min(dense_rows, sum(
            int((np.diff(ip) >= 1).sum()) for ip in scorer.parts.indptr))


@pytest.mark.parametrize("radius", [1, 3])
@pytest.mark.parametrize("batch", [1, 7, 1 << 14])
def test_evaluation_in_batches_equals_per_document_positions(monkeypatch, radius, batch):
    """Positions are built for groups of documents at once and cut into batches of
    SPARSE_EVAL_BATCH: the same positions as document by document (empty ones skipped)."""
    import streamsolve.language_model as language_model

    V = 20
    monkeypatch.setattr(language_model, "SPARSE_EVAL_BATCH", batch)
    weights = weights_of(random_docs(3, V, n_docs=200), V, radius)
    heldout = [np.asarray(d) for d in random_docs(4, V, n_docs=80)] + [np.zeros(0, np.int64)]
    ctx, tgt = positions(heldout, radius)
    expected = -np.mean(dense_log_probs(weights, ctx, tgt))
    got = LanguageModel(weights).evaluate_ids(heldout[::-1][1:] + heldout[-1:])
    ctx, tgt = positions(heldout[::-1][1:], radius)
    assert got.tokens == tgt.size
    assert got.cross_entropy == pytest.approx(-np.mean(dense_log_probs(weights, ctx, tgt)),
                                              abs=1e-9)
    assert LanguageModel(weights).evaluate_ids(heldout).cross_entropy == pytest.approx(
        expected, abs=1e-9)


def test_prefetched_documents_keep_order_and_raise_the_producers_error():
    from streamsolve.language_model import prefetched

    docs = [np.arange(n) for n in range(50)]
    got = list(prefetched(iter(docs), tokens=30, depth=2))
    assert len(got) == 50 and all(np.array_equal(a, b) for a, b in zip(got, docs))

    def broken():
        yield np.arange(3)
        raise OSError("unreadable shard")

    with pytest.raises(OSError, match="unreadable shard"):
        list(prefetched(broken(), tokens=1))
    stream = prefetched(iter(docs * 100), tokens=1, depth=1)
    next(stream)
    stream.close()  # leaving early stops the producer (it does not block forever)


@pytest.mark.skipif(not score_native.available(), reason="C scoring kernel not built")
@pytest.mark.parametrize("aggregation,radius", [("cat", 1), ("cat", 3), ("sum", 2)])
@pytest.mark.parametrize("dense_rows", [0, 3, 1000])
def test_newton_hessian_and_optimum_equal_dense_and_lbfgs(monkeypatch, aggregation, radius,
                                                          dense_rows):
    """The kernel's Hessian equals finite differences of the gradient, and damped Newton
    reaches the L-BFGS optimum (to 1e-6) in fewer passes."""
    from streamsolve.core import newton
    from streamsolve.core.calibration import minimize_kept

    V = 24
    monkeypatch.setattr(newton, "DENSE_ROW_MIN_NNZ", 1 if dense_rows else 10 ** 9)
    monkeypatch.setattr(newton, "DENSE_ROW_BYTES", 16 * V * dense_rows)
    docs = random_docs(5, V, n_docs=500)
    weights = weights_of(docs[:400], V, radius, aggregation)
    ctx, tgt = positions(docs[400:], radius)
    parts = ScoringParts.from_weights(weights)
    objective = CalibrationObjective(parts, ctx, tgt, native=True)
    assert newton.newton_available(objective)
    theta = np.r_[np.linspace(0.6, 1.1, parts.n_blocks), -0.3]
    loss, grad, hessian = newton.loss_gradient_hessian(objective, theta)
    ref_loss, ref_grad = objective(theta)
    assert loss == pytest.approx(ref_loss, abs=1e-12)
    np.testing.assert_allclose(grad, ref_grad, atol=1e-12)
    h = 1e-6
    numeric = np.column_stack([(objective(theta + h * e)[1] - objective(theta - h * e)[1]) / (2 * h)
                               for e in np.eye(theta.size)])
    np.testing.assert_allclose(hessian, numeric, atol=1e-6)
    theta0 = np.r_[weights.beta, weights.gamma]
    default = newton.fit_newton(CalibrationObjective(parts, ctx, tgt, native=True), theta0)
    monkeypatch.setattr(newton, "NEWTON_DECREMENT", 0.0)
    fit = newton.fit_newton(CalibrationObjective(parts, ctx, tgt, native=True), theta0)
    reference = minimize_kept(objective, theta0, 500, objective.n)
    from scipy.optimize import minimize

    tight = minimize(objective, reference.theta, jac=True, method="L-BFGS-B",
                     options={"maxiter": 500, "gtol": 1e-12, "ftol": 1e-15})
    np.testing.assert_allclose(fit.theta, tight.x, atol=1e-6)
    assert fit.loss_after <= tight.fun + 1e-12
    assert fit.loss_after <= fit.loss_before
    assert default.loss_after == pytest.approx(tight.fun, abs=1e-8)  # stopped by the decrement


@pytest.mark.skipif(not score_native.available(), reason="C scoring kernel not built")
@pytest.mark.parametrize("aggregation,radius,dense_rows", [("cat", 3, 0), ("cat", 3, 3),
                                                           ("cat", 2, 3), ("sum", 2, 1000)])
def test_coarse_to_fine_newton_reaches_the_full_sample_optimum(monkeypatch, aggregation, radius,
                                                               dense_rows):
    """`fit_calibration_scored` takes its first Newton steps on a uniform subsample and
    finishes on all positions (one Hessian pass, then a loss-only check): the loss it
    reaches is the full sample's optimum to the fit's decrement (1e-6), never above the
    start, and `loss_only` equals the objective's loss."""
    from scipy.optimize import minimize

    from streamsolve.core import newton

    V = 24
    monkeypatch.setattr(newton, "DENSE_ROW_MIN_NNZ", 1 if dense_rows else 10 ** 9)
    monkeypatch.setattr(newton, "DENSE_ROW_BYTES", 16 * V * dense_rows)
    monkeypatch.setattr(newton, "COARSE_POSITIONS", 200)
    docs = random_docs(7, V, n_docs=600)
    weights = weights_of(docs[:400], V, radius, aggregation, smoothing="kneser-ney")
    ctx, tgt = positions(docs[400:], radius)
    assert tgt.size > 2 * newton.COARSE_POSITIONS
    parts = ScoringParts.from_weights(weights)
    objective = CalibrationObjective(parts, ctx, tgt, native=True)
    theta0 = np.r_[weights.beta, weights.gamma]
    assert newton.loss_only(objective, theta0 * 0.8) == pytest.approx(
        objective(theta0 * 0.8)[0], abs=1e-12)
    loss, grad, _ = newton.loss_gradient_hessian(objective, theta0 * 0.8)  # C kernel per B
    assert loss == pytest.approx(objective(theta0 * 0.8)[0], abs=1e-12)
    np.testing.assert_allclose(grad, objective(theta0 * 0.8)[1], atol=1e-12)
    passes, hessian_pass = [], newton.loss_gradient_hessian
    monkeypatch.setattr(newton, "loss_gradient_hessian",
                        lambda o, t: passes.append(o.n) or hessian_pass(o, t))
    fit = fit_calibration_scored(parts, ctx, tgt, theta0)
    tight = minimize(objective, fit.theta, jac=True, method="L-BFGS-B",
                     options={"maxiter": 500, "gtol": 1e-12, "ftol": 1e-15})
    assert fit.loss_before == pytest.approx(objective(theta0)[0], abs=1e-12)
    assert fit.loss_after == pytest.approx(objective(fit.theta)[0], abs=1e-12)
    assert tight.fun - 1e-12 <= fit.loss_after <= tight.fun + 1e-6
    assert fit.loss_after < fit.loss_before
    assert passes.count(tgt.size) <= 2 and passes.count(200) >= 2  # most passes are coarse


@pytest.mark.skipif(not score_native.available(), reason="C scoring kernel not built")
@pytest.mark.parametrize("aggregation,radius", [("cat", 3), ("sum", 2)])
def test_start_loss_kept_from_the_raw_evaluation(monkeypatch, aggregation, radius):
    """The raw evaluation keeps the log-probabilities of the positions `calibrate` draws:
    their mean is the fit's start loss (the loss-only pass it replaces, to 1e-12), and the
    calibrated model is the same with or without it (two coarse levels here)."""
    from streamsolve.core import newton
    from streamsolve.language_model import calibration_keep

    monkeypatch.setattr(newton, "COARSE_POSITIONS", 200)
    monkeypatch.setattr(newton, "COARSE_FIRST_POSITIONS", 64)
    V = 24
    docs = random_docs(5, V, n_docs=700)
    weights = weights_of(docs[:400], V, radius, aggregation, smoothing="kneser-ney")
    heldout = [np.asarray(d) for d in docs[400:]]
    model = LanguageModel(weights)
    index, kept = calibration_keep(heldout, 1000, seed=3)
    raw = model.evaluate_ids(heldout, keep=(index, kept))
    ctx, tgt = sampled_positions(heldout, radius, model.bos_id, 1000, seed=3)
    np.testing.assert_allclose(kept, weights.target_log_probs(ctx, tgt), rtol=0, atol=1e-12)
    assert raw.tokens > 1000
    objective = CalibrationObjective(ScoringParts.from_weights(weights), ctx, tgt, native=True)
    theta0 = np.r_[weights.beta, weights.gamma]
    assert -np.mean(kept) == pytest.approx(newton.loss_only(objective, theta0), abs=1e-12)
    passes = []
    monkeypatch.setattr(newton, "loss_only", lambda o, t, f=newton.loss_only: passes.append(o.n)
                        or f(o, t))
    with_start = model.calibrate(heldout, sample_size=1000, seed=3, start_log_probs=kept)
    spent = passes.count(1000)
    passes.clear()
    without = model.calibrate(heldout, sample_size=1000, seed=3)
    assert passes[0] == 1000 and passes.count(1000) == spent + 1  # the start's pass, saved
    np.testing.assert_array_equal(with_start.weights.beta, without.weights.beta)
    assert with_start.weights.gamma == without.weights.gamma
    assert with_start.evaluate_ids(heldout).cross_entropy <= raw.cross_entropy + 1e-12


@pytest.mark.skipif(not score_native.available(), reason="C scoring kernel not built")
def test_calibrate_checked_checks_the_last_step_on_its_calibrated_eval(monkeypatch):
    """`calibrate_checked` fits without the last loss-only pass and reads the sample's loss
    off its calibrated evaluation: the same scalars as a checked fit; and when that loss
    went up (a bad unchecked fit, forced here) it fits again with the check."""
    from streamsolve import api
    from streamsolve.core import newton

    monkeypatch.setattr(newton, "COARSE_POSITIONS", 200)
    monkeypatch.setattr(newton, "COARSE_FIRST_POSITIONS", 64)
    V, radius = 24, 3
    docs = random_docs(9, V, n_docs=700)
    weights = weights_of(docs[:400], V, radius, "cat", smoothing="kneser-ney")
    heldout = [np.asarray(d) for d in docs[400:]]
    model = LanguageModel(weights)
    checked = model.calibrate(heldout, sample_size=1000)
    calibrated, raw, cal = api.calibrate_checked(model, heldout, 1, sample=1000)
    np.testing.assert_allclose(calibrated.weights.beta, checked.weights.beta, rtol=0, atol=1e-9)
    assert calibrated.weights.gamma == pytest.approx(checked.weights.gamma, abs=1e-9)
    assert cal.cross_entropy <= raw.cross_entropy

    real, calls = LanguageModel.calibrate, []

    def bad_unchecked(self, *args, check=True, **kwargs):
        calls.append(check)
        fitted = real(self, *args, check=check, **kwargs)
        if check:
            return fitted
        uniform = fitted.weights.with_calibration(0 * fitted.weights.beta, 0.0)
        return LanguageModel(uniform, None, self.bos_id)  # worse than raw on the sample

    monkeypatch.setattr(LanguageModel, "calibrate", bad_unchecked)
    again, _, cal_again = api.calibrate_checked(model, heldout, 1, sample=1000)
    assert calls == [False, True]
    np.testing.assert_allclose(again.weights.beta, checked.weights.beta, rtol=0, atol=1e-9)
    assert cal_again.cross_entropy == pytest.approx(cal.cross_entropy, abs=1e-12)

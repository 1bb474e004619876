"""Modified Kneser–Ney smoothing (issue 17): the explicit weights equal a brute-force
interpolated modified Kneser–Ney bigram, per offset block, in memory and from a store."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import scipy.sparse as sp

from streamsolve import api
from streamsolve.cli import main
from streamsolve.core.counting import CountConfig, count_sequences
from streamsolve.core.kneser_ney import (FALLBACK_DISCOUNTS, KneserNeyStatistics,
                                         block_statistics, estimate_discounts,
                                         row_counts_of_counts)
from streamsolve.core.smoothing import check_smoothing
from streamsolve.core.weights import finalize
from streamsolve.language_model import LanguageModel
from streamsolve.store.model_store import ModelStore

from ..conftest import write_text

V = 16


# -- the reference: a straightforward loop implementation of the same formulas -------------
def reference_kn_log_probs(F: np.ndarray, discount=None) -> np.ndarray:
    """Dense ``log P(j | i)`` of interpolated modified Kneser–Ney, one cell at a time."""
    rows, cols = F.shape
    n = [0, 0, 0, 0]
    for i in range(rows):
        for j in range(cols):
            if 1 <= F[i, j] <= 4:
                n[F[i, j] - 1] += 1
    if discount is None:
        Y = n[0] / (n[0] + 2 * n[1])
        D = (1 - 2 * Y * n[1] / n[0], 2 - 3 * Y * n[2] / n[1], 3 - 4 * Y * n[3] / n[2])
    else:
        D = tuple(discount)

    def d_of(count):
        return 0.0 if count == 0 else D[min(count, 3) - 1]

    continuation = [sum(1 for i in range(rows) if F[i, j] > 0) for j in range(cols)]
    q = [(continuation[j] + 1) / (sum(continuation) + cols) for j in range(cols)]
    P = np.zeros((rows, cols))
    for i in range(rows):
        f = sum(F[i])
        if f == 0:
            P[i] = q
            continue
        lam = sum(d_of(F[i, j]) for j in range(cols)) / f
        for j in range(cols):
            P[i, j] = max(F[i, j] - d_of(F[i, j]), 0) / f + lam * q[j]
    return np.log(P)


def zipf_counts(radius=1, aggregation="cat", n_tokens=700, seed=0):
    """Counts of Zipf-distributed documents; the last token never occurs (an empty row)."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, V) ** 1.1
    tokens = rng.choice(V - 1, size=n_tokens, p=p / p.sum())
    docs = np.split(tokens, np.sort(rng.choice(n_tokens, 30, replace=False)))
    return count_sequences([(d.astype(np.int64), True) for d in docs if d.size],
                           CountConfig(V, radius, aggregation, bos_id=0))


def log_softmax(logits):
    peak = logits.max(axis=1, keepdims=True)
    return logits - peak - np.log(np.exp(logits - peak).sum(axis=1, keepdims=True))


# -- the formula ------------------------------------------------------------------------
def test_r1_weights_equal_a_brute_force_kneser_ney_bigram():
    counts = zipf_counts()
    F = counts.dense(0)
    assert estimate_discounts(block_statistics(*_csr(F), V).counts_of_counts) is not None
    assert not F[V - 1].any(), "the test needs a row with f_i = 0"
    weights = finalize(counts, smoothing="kneser-ney")
    reference = reference_kn_log_probs(F)
    np.testing.assert_allclose(weights.blocks[0].dense(), reference, rtol=0, atol=1e-9)
    # R = 1: no bias, so the model's log-probabilities are the weights themselves
    contexts = np.arange(V)[:, None]
    np.testing.assert_allclose(log_softmax(weights.logits(contexts)), reference, atol=1e-9)
    targets = np.arange(V)[::-1].copy()
    np.testing.assert_allclose(weights.target_log_probs(contexts, targets),
                               reference[np.arange(V), targets], atol=1e-9)


def test_rows_sum_to_one_and_unseen_rows_are_the_continuation_distribution():
    for counts in (zipf_counts(3, "cat"), zipf_counts(3, "sum")):
        weights = finalize(counts, smoothing="kneser-ney")
        for r, block in enumerate(weights.blocks):
            P = np.exp(block.dense())
            np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=0, atol=1e-12)
            continuation = (counts.dense(r) > 0).sum(axis=0)
            np.testing.assert_allclose(P[V - 1], (continuation + 1) / (continuation.sum() + V),
                                       atol=1e-15)


def test_sparse_plus_rank_one_equals_dense():
    counts = zipf_counts(2)
    for r, block in enumerate(finalize(counts, smoothing="kneser-ney").blocks):
        F = counts.dense(r)
        S = block.sparse.toarray()
        assert not S[F == 0].any(), "S is non-zero only on observed cells"
        assert block.sparse.nnz == np.count_nonzero(F)
        dense = S + block.row_terms[:, None] + block.col_terms[None, :]
        np.testing.assert_allclose(dense, reference_kn_log_probs(F), atol=1e-9)
        # an unseen cell is log lambda_i + log q_j
        rows = F.sum(axis=1) > 0
        lam = np.exp(block.row_terms[rows])
        assert np.all((lam > 0) & (lam < 1))


@pytest.mark.parametrize("aggregation", ["cat", "sum"])
def test_every_offset_block_equals_its_own_reference(aggregation):
    counts = zipf_counts(3, aggregation, n_tokens=900, seed=1)
    weights = finalize(counts, smoothing="kneser-ney")
    assert len(weights.blocks) == (3 if aggregation == "cat" else 1)
    for r, block in enumerate(weights.blocks):
        F = counts.dense(r)
        expected = estimate_discounts(block_statistics(*_csr(F), V).counts_of_counts)
        assert expected is not None and weights.discounts[r] == pytest.approx(expected)
        np.testing.assert_allclose(block.dense(), reference_kn_log_probs(F), atol=1e-9)


def test_given_discounts_are_used_for_every_block():
    counts = zipf_counts(2)
    for discount, triple in [(0.7, (0.7, 0.7, 0.7)), ((0.4, 1.1, 2.5), (0.4, 1.1, 2.5))]:
        weights = finalize(counts, smoothing="kneser-ney", discount=discount)
        assert weights.discounts == [triple, triple]
        for r, block in enumerate(weights.blocks):
            np.testing.assert_allclose(block.dense(), reference_kn_log_probs(counts.dense(r),
                                                                             triple), atol=1e-9)


# -- the statistics ---------------------------------------------------------------------
def test_discounts_from_counts_of_counts_match_a_hand_computation():
    F = np.array([[1, 1, 2, 0],
                  [3, 4, 1, 0],
                  [0, 2, 1, 7]])
    stats = block_statistics(*_csr(F), 4)
    assert stats.counts_of_counts.tolist() == [4, 2, 1, 1]    # 7 is beyond n4
    assert stats.continuation.tolist() == [2, 3, 3, 1]
    # Y = 4 / (4 + 2 * 2) = 1/2; D1 = 1 - 2 Y 2/4; D2 = 2 - 3 Y 1/2; D3+ = 3 - 4 Y 1/1
    assert estimate_discounts(stats.counts_of_counts) == pytest.approx((0.5, 1.25, 1.0))
    assert row_counts_of_counts(*_csr(F)[::2]).tolist() == [[2, 1, 0], [1, 0, 2], [1, 1, 1]]
    # row blocks' statistics add up to the whole block's
    parts = [block_statistics(*_csr(F[a:b]), 4) for a, b in [(0, 1), (1, 3)]]
    total = KneserNeyStatistics.empty(4) + parts[0] + parts[1]
    assert total.counts_of_counts.tolist() == stats.counts_of_counts.tolist()
    assert total.continuation.tolist() == stats.continuation.tolist()


def test_degenerate_blocks_fall_back_with_a_warning(caplog):
    assert estimate_discounts([5, 0, 1, 1]) is None        # no doubletons
    assert estimate_discounts([5, 2, 0, 1]) is None        # no count 3
    assert estimate_discounts([10, 1, 10, 1]) is None      # D2 = 2 - 3 (10/12) 10 < 0
    counts = count_sequences([(np.arange(V, dtype=np.int64).repeat(5), True)],
                             CountConfig(V, 1, "cat", bos_id=0))    # counts 1, 4, 5 only
    with caplog.at_level(logging.WARNING, logger="streamsolve.core.kneser_ney"):
        weights = finalize(counts, smoothing="kneser-ney")
    assert weights.discounts == [FALLBACK_DISCOUNTS]
    assert "fallback" in caplog.text
    np.testing.assert_allclose(np.exp(weights.blocks[0].dense()).sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(weights.blocks[0].dense(),
                               reference_kn_log_probs(counts.dense(0), FALLBACK_DISCOUNTS),
                               atol=1e-9)


def _csr(F):
    F = sp.csr_array(np.asarray(F))
    return F.indptr, F.indices, F.data


# -- validation -------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,message", [
    ({"mu": 5.0}, "--mu/--alpha do not apply to kneser-ney"),
    ({"alpha": 0.5}, "--mu/--alpha do not apply to kneser-ney"),
    ({"form": "column"}, "row-form smoothing"),
    ({"discount": 0.0}, "D1 = 0.0 is outside (0, 1]"),
    ({"discount": 1.5}, "D1 = 1.5 is outside (0, 1]"),
    ({"discount": (0.5, 2.5, 1.0)}, "D2 = 2.5 is outside (0, 2]"),
    ({"discount": (0.5, 1.0, 3.5)}, "D3+ = 3.5 is outside (0, 3]"),
    ({"discount": (0.5, float("nan"), 1.0)}, "D2 = nan"),
    ({"discount": float("inf")}, "D1 = inf"),
    ({"discount": (0.5, 1.0)}, "one number D or three"),
])
def test_bad_kneser_ney_parameters_are_refused(kwargs, message):
    form = kwargs.pop("form", "row")
    with pytest.raises(ValueError) as exc:
        check_smoothing("kneser-ney", kwargs.get("mu"), kwargs.get("alpha"), form,
                        kwargs.get("discount"))
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_discount_without_kneser_ney_is_refused():
    with pytest.raises(ValueError, match="--discount applies to kneser-ney"):
        check_smoothing("dirichlet", None, None, "row", 0.5)


@pytest.mark.parametrize("args,message", [
    (["--smoothing", "kneser-ney", "--discount", "1.5"], "D1 = 1.5 is outside (0, 1]"),
    (["--smoothing", "kneser-ney", "--discount", "0.5,1,4"], "D3+ = 4.0 is outside (0, 3]"),
    (["--smoothing", "kneser-ney", "--mu", "3"], "do not apply to kneser-ney"),
    (["--smoothing", "dirichlet", "--discount", "0.5"], "--discount applies to kneser-ney"),
    (["--mu", "3", "--discount", "0.5"], "--discount applies to kneser-ney"),
])
def test_cli_refuses_bad_discounts_in_one_line(capsys, tmp_path, args, message):
    code = main(["finalize", str(tmp_path / "m.zarr"), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err
    assert len(err.strip().splitlines()) == 1


def test_cli_refuses_a_discount_that_is_not_numbers(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["finalize", str(tmp_path / "m.zarr"), "--smoothing", "kneser-ney",
              "--discount", "a,b"])
    assert exc.value.code == 2 and "not a number" in capsys.readouterr().err


# -- the store path -------------------------------------------------------------------
def test_store_finalize_equals_in_memory_and_is_recorded(tmp_path, sharded_corpus,
                                                         tokenizer_file):
    store = str(tmp_path / "m.zarr")
    api.count(sharded_corpus(2), store, tokenizer=tokenizer_file, radius=2, rows_per_block=64)
    model = api.finalize(store, smoothing="kneser-ney")
    memory = finalize(ModelStore(store).read_counts(), smoothing="kneser-ney")
    assert model.weights.discounts == memory.discounts
    for a, b in zip(model.weights.dense_blocks(), memory.dense_blocks()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    reopened = LanguageModel.open(store).weights
    assert reopened.smoothing == "kneser-ney"
    assert reopened.params()["discounts"] == [list(d) for d in memory.discounts]
    for a, b in zip(reopened.dense_blocks(), memory.dense_blocks()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    # other discounts change every weight row block's recipe: none is reused
    given = api.finalize(store, smoothing="kneser-ney", discount=(0.6, 1.2, 1.8))
    assert given.weights.discounts == [(0.6, 1.2, 1.8)] * 2 and given.weights.reused_blocks == 0
    memory = finalize(ModelStore(store).read_counts(), smoothing="kneser-ney",
                      discount=(0.6, 1.2, 1.8))
    for a, b in zip(given.weights.dense_blocks(), memory.dense_blocks()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    # the sum aggregation: one block
    summed = str(tmp_path / "sum.zarr")
    api.count(sharded_corpus(2), summed, tokenizer=tokenizer_file, radius=2, aggregation="sum",
              rows_per_block=64)
    model = api.finalize(summed, smoothing="kneser-ney")
    memory = finalize(ModelStore(summed).read_counts(), smoothing="kneser-ney")
    assert len(model.weights.blocks) == 1 and model.weights.discounts == memory.discounts
    np.testing.assert_allclose(model.weights.dense_blocks()[0], memory.dense_blocks()[0],
                               rtol=0, atol=1e-12)


def test_incremental_counts_then_finalize_equal_one_build(tmp_path, sharded_corpus,
                                                         tokenizer_file):
    shards = sharded_corpus(4)
    grown = str(tmp_path / "grown.zarr")
    api.count(shards[:2], grown, tokenizer=tokenizer_file, radius=2, rows_per_block=32)
    api.finalize(grown, smoothing="kneser-ney")        # stale afterwards: all inputs change
    api.count(shards[2:], grown)
    lm_grown = api.finalize(grown, smoothing="kneser-ney")
    scratch = str(tmp_path / "scratch.zarr")
    api.count(shards, scratch, tokenizer=tokenizer_file, radius=2, rows_per_block=32)
    lm_scratch = api.finalize(scratch, smoothing="kneser-ney")
    assert lm_grown.weights.discounts == lm_scratch.weights.discounts
    for a, b in zip(lm_grown.weights.dense_blocks(), lm_scratch.weights.dense_blocks()):
        np.testing.assert_array_equal(a, b)


def test_calibration_runs_on_kneser_ney_weights(tmp_path, sharded_corpus, tokenizer_file):
    from tests.conftest import pydoc_documents

    store = str(tmp_path / "m.zarr")
    api.count(sharded_corpus(2), store, tokenizer=tokenizer_file, radius=3)
    heldout_text = "\n\n".join(pydoc_documents()[40:43]) + "\n"
    model = api.finalize(store, smoothing="kneser-ney")
    docs = [model.encode(doc) for doc in heldout_text.split("\n\n")]
    raw = model.evaluate_ids(docs)
    calibrated = model.calibrate(docs, sample_size=10 ** 6)     # every held-out position
    assert np.all(np.isfinite(calibrated.weights.beta))
    assert calibrated.evaluate_ids(docs).cross_entropy <= raw.cross_entropy + 1e-12
    # through the API: a calibration is kept only if it does not make held-out CE worse
    heldout = write_text(tmp_path / "held.txt", heldout_text)
    fitted = api.finalize(store, smoothing="kneser-ney", calibrate=[str(heldout)])
    info = fitted.weights.params()["calibration"]
    assert info is not None and info["calibrated_cross_entropy"] <= info["raw_cross_entropy"]
    assert LanguageModel.open(store).weights.calibrated


def test_statistics_docstring_examples_run():
    import doctest

    from streamsolve.core import kneser_ney

    result = doctest.testmod(kneser_ney, verbose=False)
    assert result.attempted >= 3 and result.failed == 0

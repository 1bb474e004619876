"""The smoothing strength chosen per offset on held-out text (issue 17): the search finds the
minimum of a brute-force grid, never loses to the default strength, is recorded in the
store and shown by `info`, and explicit ``mu``/``discount`` (or ``--smoothing-search off``)
disable it."""

from __future__ import annotations

import doctest
import json

import numpy as np
import pytest

from streamsolve import api
from streamsolve.cli import main
from streamsolve.core import strength_search
from streamsolve.core.kneser_ney import block_discounts, block_statistics
from streamsolve.core.positions import sampled_positions
from streamsolve.core.weights import finalize
from streamsolve.store.model_store import ModelStore
from tests.conftest import pydoc_documents, write_text

HELDOUT = "\n\n".join(pydoc_documents()[40:44]) + "\n"


@pytest.fixture
def store(tmp_path, sharded_corpus, tokenizer_file) -> str:
    path = str(tmp_path / "m.zarr")
    api.count(sharded_corpus(2), path, tokenizer=tokenizer_file, radius=2)
    return path


@pytest.fixture
def heldout(tmp_path) -> str:
    return str(write_text(tmp_path / "held.txt", HELDOUT))


def _positions(store: str):
    """Every held-out position (fewer than the calibration's sample size)."""
    model = api.finalize(store, calibrate=False)
    docs = [model.encode(doc) for doc in HELDOUT.split("\n\n")]
    total = sum(d.size for d in docs)
    return sampled_positions(docs, 2, model.config.bos_id, 10 ** 6), total, docs


def _dense_cross_entropy(log_p_block: np.ndarray, contexts: np.ndarray, targets: np.ndarray):
    return float(-np.mean(log_p_block[contexts, targets]))


def test_doctests_run():
    assert doctest.testmod(strength_search, verbose=False).failed == 0


@pytest.mark.parametrize("smoothing", ["kneser-ney", "dirichlet"])
def test_search_finds_the_minimum_of_a_brute_force_grid(store, smoothing):
    (ctx, tgt), total, _docs = _positions(store)
    assert tgt.size == total
    counts = ModelStore(store).read_counts()
    V = counts.config.vocab_size
    positions = (ctx, tgt)
    pending = api.compute_store_weights(ModelStore(store), smoothing=smoothing,
                                        search_positions=positions)
    search = pending.weights.params()["smoothing_search"]
    assert search["positions"] == total
    low, high = strength_search.SEARCH_RANGES[smoothing]
    grid = 2.0 ** np.linspace(low, high, 33)
    for r in range(2):
        F = ModelStore(store).read_count_block(r)
        estimated = block_discounts(block_statistics(F.indptr, F.indices, F.data, V))

        def dense_ce(s):  # brute force: the dense R = 1 model of offset r at strength s
            if smoothing == "kneser-ney":
                w = finalize(counts, smoothing=smoothing,
                             discount=strength_search.scaled_discounts(estimated, s))
            else:
                w = finalize(counts, smoothing=smoothing, mu=s * V)
            return _dense_cross_entropy(w.dense_blocks()[r], ctx[:, r], tgt)

        chosen = search["blocks"][r]
        # the closed form the search uses is the dense model's cross-entropy (to 1e-9)
        assert chosen["cross_entropy"] == pytest.approx(dense_ce(chosen["scale"]), abs=1e-9)
        assert chosen["default_cross_entropy"] == pytest.approx(dense_ce(1.0), abs=1e-9)
        best_grid = min(dense_ce(s) for s in grid)
        assert chosen["cross_entropy"] <= best_grid + 1e-4
        assert chosen["cross_entropy"] <= chosen["default_cross_entropy"]
        # and the weights written are the dense model at the chosen strength, exactly
        if smoothing == "kneser-ney":
            assert tuple(pending.weights.discounts[r]) == \
                strength_search.scaled_discounts(estimated, chosen["scale"])
            w = finalize(counts, smoothing=smoothing, discount=pending.weights.discounts[r])
        else:
            assert pending.weights.mu[r] == chosen["scale"] * V
            w = finalize(counts, smoothing=smoothing, mu=pending.weights.mu[r])
        np.testing.assert_allclose(pending.weights.dense_blocks()[r], w.dense_blocks()[r],
                                   rtol=0, atol=1e-9)


def test_never_worse_on_the_heldout_split_than_the_default(tmp_path, sharded_corpus,
                                                           tokenizer_file, heldout):
    store = str(tmp_path / "r1.zarr")
    api.count(sharded_corpus(2), store, tokenizer=tokenizer_file, radius=1)
    for smoothing in ("kneser-ney", "dirichlet"):
        default = api.finalize(store, smoothing=smoothing, calibrate=False)
        docs = [default.encode(doc) for doc in HELDOUT.split("\n\n")]
        searched = api.finalize(store, smoothing=smoothing, calibrate=[heldout],
                                smoothing_search=True)
        assert searched.weights.smoothing_search is not None
        raw = searched.weights.params()["calibration"]["raw_cross_entropy"]
        assert raw == pytest.approx(searched.weights.smoothing_search["blocks"][0]
                                    ["cross_entropy"], abs=1e-9)
        assert raw <= default.evaluate_ids(docs).cross_entropy + 1e-12


def test_recorded_shown_by_info_and_disabled_by_explicit_values(capsys, store, heldout):
    api.finalize(store, calibrate=[heldout], smoothing_search=True)
    values = api.info(store)["smoothing"]
    search = api.info(store)["weights"]["smoothing_search"]
    assert set(values["search"]["blocks"]) == {"r1", "r2"}
    assert values["search"]["blocks"]["r1"]["scale"] == search["blocks"][0]["scale"]
    assert len(search["blocks"][1]["curve"]) == search["blocks"][1]["evaluations"] >= 10
    assert main(["info", store, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["smoothing"]["search"] == values["search"]
    assert main(["info", store]) == 0
    assert "held-out positions: r1 s=" in capsys.readouterr().out
    # re-finalize re-uses the recorded calibration text, so it searches again: same values
    again = api.finalize(store, smoothing_search=True)
    assert again.weights.smoothing_search == search
    # explicit values, or the switch, disable the search
    for kwargs in ({"discount": 0.5}, {"mu": 50.0}, {"smoothing_search": False},
                   {"smoothing": "dirichlet", "mu": 400.0}):
        model = api.finalize(store, **kwargs)
        assert model.weights.smoothing_search is None
        assert "search" not in api.info(store)["smoothing"]
    assert main(["finalize", store, "--smoothing-search", "off", "--json"]) == 0
    assert "smoothing_search" not in json.loads(capsys.readouterr().out)
    api.finalize(store, smoothing="dirichlet")
    mu = api.info(store)["smoothing"]["mu"]
    assert set(mu) == {"r1", "r2"} and all(v > 0 for v in mu.values())


def test_solve_searches_on_its_heldout_split(tmp_path, sharded_corpus, tokenizer_file):
    path = str(tmp_path / "solved.zarr")
    summary = api.solve(sharded_corpus(2), path, tokenizer=tokenizer_file, radius=2,
                        heldout_fraction=0.2, smoothing_search=True)
    assert summary["smoothing_search"]["positions"] > 0
    assert api.info(path)["smoothing"]["search"]["positions"] == \
        summary["smoothing_search"]["positions"]
    off = api.solve(sharded_corpus(2), str(tmp_path / "off.zarr"), tokenizer=tokenizer_file,
                    radius=2, heldout_fraction=0.2, smoothing_search=False)
    assert off["smoothing_search"] is None
    assert summary["heldout_cross_entropy"] <= off["heldout_cross_entropy"] + 1e-3


def test_auto_searches_dirichlet_only(capsys, store, heldout):
    """The default ("auto"): searched Kneser-Ney measured worse once calibrated (BENCHMARKS
    section 8), searched Dirichlet better, so only Dirichlet is searched unless asked."""
    assert api.finalize(store, calibrate=[heldout]).weights.smoothing_search is None
    assert api.finalize(store, smoothing="dirichlet",
                        calibrate=[heldout]).weights.smoothing_search is not None
    assert main(["finalize", store, "--calibrate", heldout, "--smoothing-search", "on",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["smoothing_search"] is not None
    with pytest.raises(ValueError, match="smoothing_search must be 'auto', True or False"):
        api.finalize(store, calibrate=[heldout], smoothing_search="yes")


@pytest.mark.parametrize("smoothing", ["kneser-ney", "dirichlet"])
def test_in_memory_finalize_searches_like_the_store(store, smoothing):
    (ctx, tgt), _total, _docs = _positions(store)
    counts = ModelStore(store).read_counts()
    memory = finalize(counts, smoothing=smoothing, search_positions=(ctx, tgt))
    stored = api.compute_store_weights(ModelStore(store), smoothing=smoothing,
                                       search_positions=(ctx, tgt)).weights
    assert memory.params() == stored.params()
    for a, b in zip(memory.dense_blocks(), stored.dense_blocks()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    assert finalize(counts, smoothing=smoothing, mu=None if smoothing == "kneser-ney" else 9.0,
                    discount=0.5 if smoothing == "kneser-ney" else None,
                    search_positions=(ctx, tgt)).smoothing_search is None


def test_sum_aggregation_searches_its_one_block_on_every_offset(tmp_path, sharded_corpus,
                                                                tokenizer_file, heldout):
    path = str(tmp_path / "sum.zarr")
    api.count(sharded_corpus(2), path, tokenizer=tokenizer_file, radius=2, aggregation="sum")
    model = api.finalize(path, calibrate=[heldout], smoothing_search=True)
    search = model.weights.smoothing_search
    docs, _ = api.read_documents([heldout], model)  # as finalize reads its calibration text
    ctx, tgt = sampled_positions(docs, 2, model.config.bos_id, 10 ** 6)
    assert search["positions"] == tgt.size and len(search["blocks"]) == 1
    assert set(api.info(path)["smoothing"]["search"]["blocks"]) == {"sum"}
    memory = finalize(ModelStore(path).read_counts(), smoothing="kneser-ney",
                      search_positions=(ctx, tgt))
    assert memory.smoothing_search == search and memory.discounts == model.weights.discounts


def test_gather_positions_matches_a_dense_lookup_sorted_or_not():
    rng = np.random.default_rng(0)
    dense = rng.integers(0, 4, size=(6, 5)) * (rng.random((6, 5)) < 0.5)
    import scipy.sparse as sp

    F = sp.csr_array(dense)
    shuffled = F.copy()
    for i in range(6):  # reverse the columns within each row
        lo, hi = shuffled.indptr[i], shuffled.indptr[i + 1]
        shuffled.indices[lo:hi] = shuffled.indices[lo:hi][::-1].copy()
        shuffled.data[lo:hi] = shuffled.data[lo:hi][::-1].copy()
    ctx, tgt = rng.integers(0, 6, 40), rng.integers(0, 5, 40)
    for block in (F, shuffled):
        stats = strength_search.PositionStatistics.empty(40)
        for start in (0, 3):  # two row blocks
            part = block[start:start + 3]
            strength_search.gather_positions(part.indptr, part.indices, part.data, start,
                                             ctx, tgt, stats)
        np.testing.assert_array_equal(stats.pair, dense[ctx, tgt])
        np.testing.assert_array_equal(stats.row_total, dense.sum(axis=1)[ctx])
        np.testing.assert_array_equal(stats.row_counts_of_counts[:, 0], (dense == 1).sum(1)[ctx])
        np.testing.assert_array_equal(stats.row_counts_of_counts[:, 2], (dense >= 3).sum(1)[ctx])

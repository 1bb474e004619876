"""Kneser–Ney is the default smoothing of finalize/solve (row form), and `info` shows the
smoothing values the weights were computed with (issue 17)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from streamsolve import api
from streamsolve.cli import main
from streamsolve.cli_output import describe_smoothing
from streamsolve.core.smoothing import default_smoothing
from streamsolve.core.weights import finalize
from streamsolve.store.model_store import ModelStore



@pytest.fixture
def store(tmp_path, sharded_corpus, tokenizer_file) -> str:
    path = str(tmp_path / "m.zarr")
    api.count(sharded_corpus(2), path, tokenizer=tokenizer_file, radius=2)
    return path


@pytest.mark.parametrize("smoothing,form,mu,alpha,expected", [
    (None, "row", None, None, "kneser-ney"), (None, "column", None, None, "dirichlet"),
    (None, "row", 5.0, None, "dirichlet"), (None, "row", None, 0.5, "additive"),
    ("none", "row", None, None, "none"), ("dirichlet", "row", None, None, "dirichlet")])
def test_default_smoothing(smoothing, form, mu, alpha, expected):
    assert default_smoothing(smoothing, form, mu, alpha) == expected


def test_api_finalize_defaults_to_kneser_ney_exactly(store):
    model = api.finalize(store)
    assert model.weights.smoothing == "kneser-ney"
    reference = finalize(ModelStore(store).read_counts(), smoothing="kneser-ney")
    assert model.weights.discounts == reference.discounts
    for a, b in zip(model.weights.dense_blocks(), reference.dense_blocks()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-9)
    assert api.finalize(store, mu=50.0).weights.smoothing == "dirichlet"
    assert api.finalize(store, alpha=0.5).weights.smoothing == "additive"
    assert api.finalize(store, form="column").weights.smoothing == "dirichlet"


def test_cli_finalize_and_solve_default_to_kneser_ney(capsys, tmp_path, store, sharded_corpus,
                                                      tokenizer_file):
    assert main(["finalize", store, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["smoothing"] == "kneser-ney"
    assert main(["finalize", store, "--mu", "50", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["smoothing"] == "dirichlet"
    solved = str(tmp_path / "solved.zarr")
    assert main(["solve", *sharded_corpus(2), "--store", solved, "--tokenizer", tokenizer_file,
                 "--radius", "2", "--json"]) == 0
    capsys.readouterr()
    assert api.info(solved)["smoothing"]["smoothing"] == "kneser-ney"


def test_info_shows_the_smoothing_values(capsys, store):
    assert api.info(store)["smoothing"] is None
    api.finalize(store, discount=(0.25, 0.5, 0.75))
    values = api.info(store)["smoothing"]
    assert values == {"smoothing": "kneser-ney", "form": "row",
                      "discounts": {"r1": [0.25, 0.5, 0.75], "r2": [0.25, 0.5, 0.75]}}
    estimated = api.finalize(store)
    assert api.info(store)["smoothing"]["discounts"] == {
        f"r{r + 1}": list(d) for r, d in enumerate(estimated.weights.discounts)}
    assert main(["info", store, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["smoothing"]["discounts"]["r2"] == \
        list(estimated.weights.discounts[1])
    assert main(["info", store]) == 0
    out = capsys.readouterr().out
    d1, d2, d3 = estimated.weights.discounts[0]
    line = ("kneser-ney (row form), discounts D1/D2/D3+ "
            f"r1 {d1:.4f}/{d2:.4f}/{d3:.4f}, r2 ")
    assert re.search(r"^smoothing +" + re.escape(line), out, re.M), out  # an aligned table
    api.finalize(store, mu=50.0)
    assert api.info(store)["smoothing"] == {"smoothing": "dirichlet", "form": "row", "mu": 50.0}
    assert main(["info", store]) == 0
    assert re.search(r"^smoothing +dirichlet \(row form\), mu 50$", capsys.readouterr().out, re.M)


def test_describe_smoothing_of_a_sum_store_and_of_no_weights():
    assert describe_smoothing(None) == "None (not finalized)"
    assert describe_smoothing({"smoothing": "kneser-ney", "form": "row",
                               "discounts": {"sum": [0.5, 1.0, 1.5]}}) == \
        "kneser-ney (row form), discounts D1/D2/D3+ sum 0.5000/1.0000/1.5000"
    assert api.smoothing_values({"smoothing": "kneser-ney", "form": "row", "mu": None,
                                 "discounts": [[0.5, 1.0, 1.5]]}, {"aggregation": "sum"}) == \
        {"smoothing": "kneser-ney", "form": "row", "discounts": {"sum": [0.5, 1.0, 1.5]}}

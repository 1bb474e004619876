"""Calibration survives `add` + `finalize` and `count` + `finalize` (issue 16)."""

from __future__ import annotations

import logging
import os

from streamsolve import api
from streamsolve.incremental import Model
from streamsolve.store.model_store import ModelStore
from tests.conftest import write_shards


def _calibration(store):
    return ModelStore(str(store)).meta["weights"]["calibration"]


def test_calibration_survives_add_and_finalize(tmp_path, documents, tokenizer_file, caplog):
    shards = write_shards(tmp_path / "corpus", 3, "", documents)
    store = tmp_path / "m.zarr"
    summary = api.solve([str(p) for p in shards[:2]], str(store), tokenizer=tokenizer_file,
                        radius=1, heldout_fraction=0.3)
    assert summary["heldout_tokens"] > 0 and _calibration(store)
    source = ModelStore(str(store)).meta["calibration_source"]
    assert source["kind"] == "heldout" and source["shards"] == [str(p) for p in shards[:2]]

    model = Model.open(str(store)).add(str(shards[2])).finalize()
    calibration = _calibration(store)
    assert calibration and calibration["heldout_tokens"] == summary["heldout_tokens"]
    # exactly what calibrating the new weights on the recorded hold-out gives
    from streamsolve.engine.finalize import recorded_heldout

    # (the re-finalize chose the discounts on the hold-out first: the same weights)
    raw = api.finalize(str(store), calibrate=False, discount=model.weights.discounts[0])
    assert _calibration(store) is None
    docs, n_bytes = recorded_heldout(ModelStore(str(store)), source)
    expected, _, _ = api.calibrate_checked(raw, docs, n_bytes)
    assert expected.weights.params()["calibration"] == model.weights.params()["calibration"]

    # the hold-out cannot be read again: the re-finalize says so loudly
    os.remove(shards[0])
    with caplog.at_level(logging.WARNING):
        api.finalize(str(store))
    assert "CALIBRATION DROPPED" in caplog.text and _calibration(store) is None


def test_calibration_files_are_recorded_for_the_next_finalize(tmp_path, documents,
                                                              tokenizer_file):
    shards = write_shards(tmp_path / "corpus", 3, "", documents)
    store = str(tmp_path / "m.zarr")
    api.count([str(shards[0])], store, tokenizer=tokenizer_file, radius=1)
    api.finalize(store, calibrate=[str(shards[2])])
    assert _calibration(store)
    api.count([str(shards[1])], store)
    api.finalize(store)
    assert _calibration(store)

"""Provenance as history: one event per commit, finalize and calibration, appended in the
commit's own attribute write; earlier events never change; older stores open without one."""

from __future__ import annotations

import json

import pytest

from streamsolve import api
from streamsolve.cli import main
from streamsolve.store.model_store import ModelStore
from streamsolve.versions import library_versions


@pytest.fixture
def shards(sharded_corpus) -> list[str]:
    return sharded_corpus(3)


def test_each_commit_appends_exactly_one_event(tmp_path, shards, tokenizer_file):
    store = str(tmp_path / "m.zarr")
    api.count(shards[:1], store, tokenizer=tokenizer_file, radius=2, rows_per_block=64)
    history = ModelStore(store).history
    assert [e["event"] for e in history] == ["created", "ingest"]
    created, ingest = history
    assert created["versions"] == library_versions()
    assert created["config"]["radius"] == 2
    assert ingest["generation"] == 1 and ingest["versions"] == library_versions()
    assert [s["path"] for s in ingest["shards"]] == shards[:1]
    assert set(ingest["shards"][0]) == {"path", "sha256", "bytes", "tokens"}
    assert ingest["tokens"] == ModelStore(store).meta["counts"]["tokens"]

    api.count(shards[1:], store)
    grown = ModelStore(store).history
    assert grown[:2] == history and [e["event"] for e in grown[2:]] == ["ingest"]
    assert grown[2]["generation"] == 2 and [s["path"] for s in grown[2]["shards"]] == shards[1:]

    api.count(shards, store)  # nothing new: no commit, no event
    assert ModelStore(store).history == grown

    api.finalize(store, smoothing="additive", alpha=0.5)
    finalized = ModelStore(store).history
    assert finalized[:3] == grown and len(finalized) == 4
    event = finalized[-1]
    assert event["event"] == "finalized"
    assert event["weights_id"] == ModelStore(store).meta["weights"]["id"]
    assert event["parameters"] == {"form": "row", "smoothing": "additive", "mu": None,
                                   "alpha": 0.5}
    assert event["reused_blocks"] == 0

    api.finalize(store, smoothing="additive", alpha=0.5)
    again = ModelStore(store).history
    assert again[:4] == finalized and again[-1]["reused_blocks"] > 0

    calibration = {"beta": [0.9, 0.4], "gamma": -0.2, "heldout_tokens": 1234,
                   "raw_cross_entropy": 4.5, "calibrated_cross_entropy": 4.25}
    ModelStore(store).set_calibration(calibration)
    calibrated = ModelStore(store).history
    assert calibrated[:5] == again and len(calibrated) == 6
    assert calibrated[-1] == {**calibrated[-1], "event": "calibrated", "beta": [0.9, 0.4],
                              "gamma": -0.2, "heldout_tokens": 1234,
                              "cross_entropy_before": 4.5, "cross_entropy_after": 4.25,
                              "weights_id": again[-1]["weights_id"]}


def test_a_store_without_history_opens_and_starts_one(tmp_path, shards, tokenizer_file):
    store = str(tmp_path / "old.zarr")
    api.count(shards[:1], store, tokenizer=tokenizer_file, rows_per_block=64)
    model_store = ModelStore(store)
    old = {k: v for k, v in model_store.meta.items()
           if k not in ("history", "attributes_sha256")}
    model_store.group.attrs.put(old)  # as written before the history (and digest) existed

    assert ModelStore(store).exists() and ModelStore(store).history == []
    assert api.info(store)["history"] == []
    api.count(shards[1:2], store)
    assert [e["event"] for e in ModelStore(store).history] == ["ingest"]


def test_info_shows_the_history(tmp_path, shards, tokenizer_file, capsys):
    store = str(tmp_path / "m.zarr")
    api.count(shards[:1], store, tokenizer=tokenizer_file, rows_per_block=64)
    api.finalize(store)
    assert main(["info", store, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [e["event"] for e in shown["history"]] == ["created", "ingest", "finalized"]
    assert main(["info", store]) == 0
    human = capsys.readouterr().out
    assert "history: 3 event(s):" in human
    assert [line.split()[1] for line in human.splitlines() if line.startswith("  ")] == \
        ["created", "ingest", "finalized"]

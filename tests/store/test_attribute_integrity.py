"""The store's attributes under integrity (issue 26, F1, F2, F4).

``zarr.json`` carries a digest of its own attributes, checked on every open and by
``verify``: a hand-edited calibration scalar, block list, BOS id, read option or shard hash
stops every command with one line instead of scoring with other numbers. A store from before
the digest still opens ("legacy") and gets one on its next commit. A recorded counts
generation that is missing is refused, never "cleaned" (the real one deleted), and every
attribute (``retired`` included) is validated with one line naming the store.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from streamsolve import api
from streamsolve.cli import main
from streamsolve.store.model_store import ModelStore
from tests.test_hostile_cli import _tree


DIGEST = "attributes_sha256"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, corpus, tokenizer_file) -> Path:
    """A store counted, finalized and calibrated on held-out text (radius 2)."""
    store = tmp_path_factory.mktemp("pristine") / "m.zarr"
    api.count([corpus["first"]], str(store), tokenizer=tokenizer_file, radius=2,
              rows_per_block=100)
    api.finalize(str(store), calibrate=[corpus["second"]])
    assert ModelStore(str(store)).meta["weights"]["calibration"]["beta"]
    return store


@pytest.fixture
def store(tmp_path, pristine) -> str:
    copy = tmp_path / "m.zarr"
    shutil.copytree(pristine, copy)
    return str(copy)


def edit_attributes(store: str, change) -> None:
    """Hand-edit ``zarr.json``'s attributes as a user with a text editor would."""
    path = Path(store) / "zarr.json"
    node = json.loads(path.read_text())
    change(node["attributes"])
    path.write_text(json.dumps(node, indent=2))


def make_legacy(store: str) -> None:
    """Drop the attribute digest: a store written before it existed."""
    edit_attributes(store, lambda attrs: attrs.pop(DIGEST, None))


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([*map(str, argv), "-q"])
    out, err = capsys.readouterr()
    return code, out, err.strip()


def _scale_beta(attrs):
    attrs["weights"]["calibration"]["beta"][0] *= 10


def _reverse_blocks(attrs):
    attrs["weights"]["blocks"] = attrs["weights"]["blocks"][::-1]


def _bos(attrs):
    attrs["config"]["bos_id"] = 1


def _read_options(attrs):
    attrs["read_options"]["documents"] = "line"


def _shard_sha(attrs):
    attrs["shards"][0]["sha256"] = "0" * 64


def _gamma(attrs):
    attrs["weights"]["calibration"]["gamma"] = 0.0


EDITS = {"beta": _scale_beta, "blocks": _reverse_blocks, "bos_id": _bos,
         "read_options": _read_options, "shard_sha256": _shard_sha, "gamma": _gamma}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_an_edited_attribute_stops_every_command_in_one_line(store, corpus, capsys, edit):
    before = _tree(Path(store))
    edit_attributes(store, EDITS[edit])
    edited = _tree(Path(store))
    for argv in (["eval", store, corpus["second"]], ["info", store],
                 ["count", corpus["second"], "--store", store], ["finalize", store]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2, (argv, err)
        assert len(err.splitlines()) == 1, err
        assert store in err and "digest" in err and "verify" in err and "restore" in err, err
    assert _tree(Path(store)) == edited, "nothing is written on top of edited attributes"
    code, out, err = run_cli(capsys, "verify", store, "--json")
    report = json.loads(out)
    assert code == 2 and not report["ok"]
    assert [d["path"] for d in report["damaged"]] == ["zarr.json"], report
    assert err.startswith("streamsolve verify: error: zarr.json") and "digest" in err
    assert before != edited


def test_attribute_digest_is_written_with_every_commit(store, corpus):
    attrs = json.loads(Path(store, "zarr.json").read_text())["attributes"]
    assert len(attrs[DIGEST]) == 64
    report = api.verify(store)
    assert report["ok"] and report["attributes"] == "digest ok"
    api.count([corpus["second"]], store)
    after = json.loads(Path(store, "zarr.json").read_text())["attributes"]
    assert after[DIGEST] != attrs[DIGEST] and api.verify(store)["attributes"] == "digest ok"


def test_a_legacy_store_opens_and_gets_a_digest_on_its_next_commit(store, corpus, capsys):
    make_legacy(store)
    code, out, _ = run_cli(capsys, "verify", store, "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"], report
    assert report["attributes"] == "legacy, no attribute digest"
    assert run_cli(capsys, "eval", store, corpus["second"])[0] == 0
    api.finalize(store, calibrate=False)
    assert DIGEST in json.loads(Path(store, "zarr.json").read_text())["attributes"]
    assert api.verify(store)["attributes"] == "digest ok"


def test_a_recorded_generation_that_is_missing_is_refused_never_cleaned(store, corpus, capsys):
    """F1: counts.generation 1 -> 2 once deleted the real counts/g1 on the next count."""
    generation = ModelStore(store).meta["counts"]["generation"]
    real = Path(store, "counts", f"g{generation}")
    real_files = _tree(real)
    for legacy in (False, True):  # with a digest the edit is caught first; without, by name
        if legacy:
            make_legacy(store)
        edit_attributes(store, lambda attrs: attrs["counts"].update(generation=generation + 1))
        for argv in (["count", corpus["second"], "--store", store], ["finalize", store]):
            code, _, err = run_cli(capsys, *argv)
            assert code == 2 and len(err.splitlines()) == 1, err
            assert store in err, err
            if legacy:
                assert f"counts/g{generation + 1}" in err and "missing" in err, err
            assert _tree(real) == real_files, "the real generation is never deleted"
        edit_attributes(store, lambda attrs: attrs["counts"].update(generation=generation))
    assert api.count([corpus["second"]], store).new_tokens > 0  # restored: works again


@pytest.mark.parametrize("stamp", ["yesterday", "2026-13-45T00:00:00", 12, None])
def test_a_junk_retired_stamp_is_one_line_naming_the_store(store, corpus, capsys, stamp):
    """F4: a junk ``retired`` timestamp blocked every write with "Invalid isoformat string"
    (store not named), after finalize had written an uncommitted weights version."""
    make_legacy(store)  # the digest would catch the edit first; validation must as well
    edit_attributes(store, lambda attrs: attrs.setdefault("retired", {}).update(
        {"counts/g7": stamp}))
    versions = sorted(p.name for p in Path(store, "weights").iterdir())
    for argv in (["count", corpus["second"], "--store", store], ["finalize", store],
                 ["eval", store, corpus["second"]]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and len(err.splitlines()) == 1, err
        assert store in err and "retired" in err, err
    assert sorted(p.name for p in Path(store, "weights").iterdir()) == versions, \
        "no uncommitted weights version is left behind"


@pytest.mark.parametrize("path", ["counts", "tokenizer", "weights", "counts/g1/../..", "zarr.json"])
def test_a_retired_path_outside_generations_and_versions_is_refused(store, capsys, path):
    """A ``retired`` entry is deleted by a later commit: it may only name a generation, a
    weights version or a weight block, never the store's other entries."""
    make_legacy(store)
    edit_attributes(store, lambda attrs: attrs.setdefault("retired", {}).update(
        {path: "2020-01-01T00:00:00+00:00"}))
    before = _tree(Path(store))
    code, _, err = run_cli(capsys, "finalize", store)
    assert code == 2 and "retired" in err and store in err, err
    assert _tree(Path(store)) == before

"""Integrity: a flipped byte or a deleted chunk in a store is detected, never read back as
other counts or weights, and nothing is built on top of it (issue 12, item 3).

Every command reads through checksummed chunks and per-block digests: ``count`` (merging
into a new generation), ``finalize``, ``eval`` and ``verify`` stop naming the damaged block.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from streamsolve import api
from streamsolve.cli import main
from streamsolve.store.model_store import ModelStore


DAMAGES = ("flip", "delete")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, corpus, tokenizer_file) -> Path:
    """A finalized store (V = 400, radius 2, 4 row blocks per count block)."""
    store = tmp_path_factory.mktemp("pristine") / "m.zarr"
    api.count([corpus["first"]], str(store), tokenizer=tokenizer_file, radius=2,
              rows_per_block=100)
    api.finalize(str(store))
    return store


@pytest.fixture
def store(tmp_path, pristine) -> str:
    copy = tmp_path / "m.zarr"
    shutil.copytree(pristine, copy)
    return str(copy)


def counts_block(store: str, r: int = 2, k: int = 1) -> str:
    generation = ModelStore(store).meta["counts"]["generation"]
    return f"counts/g{generation}/r{r}/b{k}"


def weights_block(store: str) -> str:
    return f"weights/blocks/{ModelStore(store).meta['weights']['blocks'][1][1]}"


def damage(store: str, block: str, how: str, array: str = "data"):
    """Flip one byte in the middle of the chunk of ``block/array``, or delete that chunk."""
    chunk = Path(store) / block / array / "c" / "0"
    assert chunk.is_file(), chunk
    if how == "delete":
        chunk.unlink()
        return
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("how", DAMAGES)
def test_count_refuses_to_merge_damaged_counts(store, corpus, capsys, how):
    before = ModelStore(store).meta["counts"]
    block = counts_block(store)
    damage(store, block, how)
    code, _, err = run_cli(capsys, "count", corpus["second"], "--store", store, "-q")
    assert code == 2
    assert f"{block}: " in err and "damaged" in err, err
    after = ModelStore(store).meta["counts"]
    assert after == before, "nothing may be committed on top of damaged counts"
    assert sorted(p.name for p in (Path(store) / "counts").iterdir() if p.is_dir()) == \
        [f"g{before['generation']}"], "the half-built generation is discarded"


@pytest.mark.parametrize("how", DAMAGES)
def test_finalize_stops_on_damaged_counts(store, capsys, how):
    weights_before = ModelStore(store).meta["weights"]
    block = counts_block(store, r=1, k=2)
    damage(store, block, how, array="indices")
    code, _, err = run_cli(capsys, "finalize", store, "-q")
    assert code == 2
    assert f"{block}: " in err, err
    assert ModelStore(store).meta["weights"] == weights_before


@pytest.mark.parametrize("how", DAMAGES)
def test_eval_stops_on_damaged_weights(store, corpus, capsys, how):
    block = weights_block(store)
    damage(store, block, how)
    code, _, err = run_cli(capsys, "eval", store, corpus["second"], "-q")
    assert code == 2
    assert f"{block}: " in err, err


def test_finalize_rewrites_a_damaged_weight_block_from_verified_counts(store, corpus, capsys):
    block = weights_block(store)
    damage(store, block, "flip")
    code, _, _ = run_cli(capsys, "finalize", store, "-q")
    assert code == 0, "weights are derived data: a damaged block is recomputed, not reused"
    assert api.verify(store)["ok"]
    assert run_cli(capsys, "eval", store, corpus["second"], "-q")[0] == 0


@pytest.mark.parametrize("how", DAMAGES)
def test_verify_names_every_damaged_block(store, capsys, how):
    code, out, _ = run_cli(capsys, "verify", store, "--json", "-q")
    clean = json.loads(out)
    assert code == 0 and clean["ok"] and clean["damaged"] == []
    assert clean["checked"] == 1 + 1 + 2 * 4 + 3 + 2 * 4  # tokenizer, unigram, counts, weights
    counts, weights = counts_block(store, r=1, k=0), weights_block(store)
    damage(store, counts, how)
    damage(store, weights, how, array="row_terms")
    code, out, err = run_cli(capsys, "verify", store, "--json", "-q")
    report = json.loads(out)
    assert code == 2 and not report["ok"]
    assert [d["path"] for d in report["damaged"]] == [counts, weights]
    assert err.startswith(f"streamsolve verify: error: {counts}: ") and weights in err


def test_damaged_unigram_and_tokenizer_are_detected(store, corpus, capsys):
    generation = ModelStore(store).meta["counts"]["generation"]
    damage(store, f"counts/g{generation}", "delete", array="unigram")
    damage(store, ".", "flip", array="tokenizer")
    report = api.verify(store)
    assert [d["path"] for d in report["damaged"]] == ["tokenizer", f"counts/g{generation}/unigram"]
    code, _, err = run_cli(capsys, "count", corpus["second"], "--store", store, "-q")
    assert code == 2 and "damaged" in err


def make_legacy(store: str):
    """Make the counts look written before digests: no block digest, no ``counts.digests``
    and no attribute digest."""
    for meta_file in (Path(store) / "counts").glob("g*/r*/b*/zarr.json"):
        node = json.loads(meta_file.read_text())
        node["attributes"].pop("digest")
        meta_file.write_text(json.dumps(node))
    root = Path(store) / "zarr.json"
    node = json.loads(root.read_text())
    node["attributes"]["counts"].pop("digests", None)
    node["attributes"].pop("attributes_sha256", None)
    root.write_text(json.dumps(node))


def test_store_without_digests_keeps_working(store, corpus, capsys):
    """Stores written before digests were recorded: reads and merges work, verify says
    what it could not check, and a lost indptr chunk is still caught by the shape check."""
    make_legacy(store)
    report = api.verify(store)
    assert report["ok"] and len(report["without_digest"]) == 8
    assert api.count([corpus["second"]], store).new_tokens > 0
    assert api.verify(store)["without_digest"] == [], "new writes record digests"
    damage(store, counts_block(store, r=1, k=3), "delete", array="indptr")
    assert [d["path"] for d in api.verify(store)["damaged"]] == [counts_block(store, r=1, k=3)]


@pytest.mark.parametrize("renamed", [None, "digest_old"])
def test_a_block_without_digest_and_a_lost_chunk_is_never_verified_or_merged(store, corpus,
                                                                            capsys, renamed):
    """F3 of issue 26: a count block whose digest key was removed (or renamed) and whose
    data chunk was deleted passed verify ("without digest") and was merged, zeroed, into the
    next generation with a fresh digest."""
    block = counts_block(store, r=2, k=1)
    if renamed:  # in a store written with digests
        meta_file = Path(store) / block / "zarr.json"
        node = json.loads(meta_file.read_text())
        node["attributes"][renamed] = node["attributes"].pop("digest")
        meta_file.write_text(json.dumps(node))
    else:  # in a store written before digests
        make_legacy(store)
    damage(store, block, "delete")
    before = ModelStore(store).meta["counts"]
    code, out, err = run_cli(capsys, "verify", store, "--json", "-q")
    report = json.loads(out)
    assert code == 2 and not report["ok"], report
    offset = block.rsplit("/", 1)[0]
    assert [d["path"] for d in report["damaged"]] == [block if renamed else offset], report
    assert "b1" in err and "damaged" in err and len(err.splitlines()) == 1, err
    code, _, err = run_cli(capsys, "count", corpus["second"], "--store", store, "-q")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert (block if renamed else offset) in err and "damaged" in err, err
    assert ModelStore(store).meta["counts"] == before, "nothing is merged on top of it"


def test_a_removed_digest_in_a_generation_committed_with_digests_is_damage(store, corpus,
                                                                           capsys):
    block = counts_block(store, r=1, k=2)
    meta_file = Path(store) / block / "zarr.json"
    node = json.loads(meta_file.read_text())
    node["attributes"] = {}
    meta_file.write_text(json.dumps(node))
    report = api.verify(store)
    assert [d["path"] for d in report["damaged"]] == [block]
    assert "digest missing" in report["damaged"][0]["problem"]
    code, _, err = run_cli(capsys, "count", corpus["second"], "--store", store, "-q")
    assert code == 2 and f"{block}: digest missing" in err, err


def test_the_content_check_holds_on_real_legacy_stores(tmp_path, corpus, tokenizer_file):
    """The column sums of every count block equal the unigram (R times it for ``sum``),
    with BOS padding, a hold-out and documents of every kind: legacy stores verify clean."""
    for aggregation, documents, heldout in (("cat", "blank-line", 0.3), ("sum", "line", 0.0)):
        store = str(tmp_path / f"{aggregation}.zarr")
        api.count([corpus["first"]], store, tokenizer=tokenizer_file, radius=3,
                  aggregation=aggregation, documents=documents, heldout_fraction=heldout,
                  rows_per_block=64)
        make_legacy(store)
        report = api.verify(store)
        assert report["ok"] and len(report["without_digest"]) > 1, report
        api.count([corpus["second"]], store, documents=documents)  # merges the legacy blocks
        assert api.verify(store)["ok"]


def test_every_array_is_written_with_checksummed_codecs(store):
    names = [codec["name"] for codec in
             json.loads((Path(store) / counts_block(store) / "data" / "zarr.json").read_text())["codecs"]]
    assert names == ["bytes", "zstd", "crc32c"]
    for array_meta in Path(store).rglob("zarr.json"):
        node = json.loads(array_meta.read_text())
        if node["node_type"] == "array":
            assert any(codec["name"] == "crc32c" for codec in node["codecs"]), array_meta


def test_a_weight_block_without_its_digest_is_damage_and_is_recomputed(store, corpus, capsys):
    """A weight block of a version committed with digests whose digest was removed, and a
    chunk of it lost: eval and verify stop naming it; finalize recomputes it (never reuses
    a block it cannot check)."""
    block = weights_block(store)
    meta_file = Path(store) / block / "zarr.json"
    node = json.loads(meta_file.read_text())
    del node["attributes"]["digest"]
    meta_file.write_text(json.dumps(node))
    damage(store, block, "delete")
    code, _, err = run_cli(capsys, "eval", store, corpus["second"], "-q")
    assert code == 2 and f"{block}: digest missing" in err, err
    assert [d["path"] for d in api.verify(store)["damaged"]] == [block]
    assert run_cli(capsys, "finalize", store, "-q")[0] == 0
    assert api.verify(store)["ok"]

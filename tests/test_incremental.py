"""Incremental updates: idempotent re-adds, changed content, nothing committed on failure,
and re-finalize that reuses unchanged row blocks yet equals a full finalize (one writer at a
time: see test_locking.py)."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from streamsolve import Model, api
from streamsolve.store import transaction
from streamsolve.store.layout import StoreError
from streamsolve.store.model_store import ModelStore

from .conftest import write_text


@pytest.fixture
def shards(sharded_corpus) -> list[str]:
    return sharded_corpus(4)


def counts_id(store):
    return ModelStore(store).meta["counts"]["id"]


def test_model_api_add_then_finalize_equals_one_build(tmp_path, shards, tokenizer_file):
    grown = Model.create(str(tmp_path / "grown.zarr"), tokenizer=tokenizer_file, radius=2,
                         rows_per_block=16)
    for shard in shards:
        grown.add([shard])
    lm = grown.finalize()
    scratch = tmp_path / "scratch.zarr"
    api.count(shards, str(scratch), tokenizer=tokenizer_file, radius=2, rows_per_block=16)
    lm_scratch = api.finalize(str(scratch))
    assert ModelStore(grown.store).read_counts().equal_counts(ModelStore(str(scratch)).read_counts())
    for a, b in zip(lm.weights.dense_blocks(), lm_scratch.weights.dense_blocks()):
        np.testing.assert_array_equal(a, b)
    assert Model.open(grown.store).evaluate([shards[0]]).tokens > 0


def test_readding_a_shard_is_a_noop(tmp_path, shards, tokenizer_file):
    store = str(tmp_path / "m.zarr")
    api.count(shards[:2], store, tokenizer=tokenizer_file)
    before = counts_id(store)
    again = api.count(shards[:2], store)
    assert again.new_tokens == 0 and sorted(a["path"] for a in again.already) == sorted(shards[:2])
    assert counts_id(store) == before, "a no-op must not write a new generation"
    # the same bytes under another name are the same content: skipped too
    copy = tmp_path / "copy.txt.gz"
    copy.write_bytes(open(shards[0], "rb").read())
    mixed = api.count([str(copy), shards[2]], store)
    assert [a["path"] for a in mixed.already] == [str(copy)]
    assert [s["path"] for s in mixed.shards] == [shards[2]]
    # one shard listed twice in one run is counted once
    twice = api.count([shards[3], shards[3]], store)
    assert len(twice.shards) == 1 and len(twice.already) == 1
    manifest = ModelStore(store).meta["shards"]
    assert sorted(e["path"] for e in manifest if not e.get("alias_of")) == sorted(shards)
    assert [(e["path"], e["alias_of"]) for e in manifest if e.get("alias_of")] == \
        [(str(copy), shards[0])], "the copy's path is recorded, its content counted once"


def test_changed_content_is_refused_unless_allowed(tmp_path, documents, tokenizer_file):
    store = str(tmp_path / "m.zarr")
    path = write_text(tmp_path / "day.txt", "\n\n".join(documents[:5]) + "\n")
    api.count([str(path)], store, tokenizer=tokenizer_file)
    before = ModelStore(store).read_counts()
    write_text(path, "\n\n".join(documents[:6]) + "\n")  # the file grew
    with pytest.raises(StoreError, match=r"different content: .*day.txt.*--allow-changed"):
        api.count([str(path)], store)
    assert ModelStore(store).read_counts().equal_counts(before)
    added = api.count([str(path)], store, allow_changed=True)
    assert added.changed and added.new_tokens > before.tokens
    entries = [s for s in ModelStore(store).meta["shards"] if s["path"] == str(path)]
    assert len(entries) == 2 and entries[0]["sha256"] != entries[1]["sha256"]


@pytest.mark.parametrize("same_run", [False, True])
def test_an_edited_copy_of_an_ingested_file_is_a_change(tmp_path, documents, tokenizer_file,
                                                       same_run):
    """Issue 21.5: a copy (content counted once) that is then edited is refused as changed,
    not counted whole a second time; with --allow-changed its new content is added as for
    any changed shard."""
    store = str(tmp_path / "m.zarr")
    original = write_text(tmp_path / "day.txt", "\n\n".join(documents[:5]) + "\n")
    copy = tmp_path / "copy.txt"
    if same_run:
        copy.write_bytes(original.read_bytes())
        api.count([str(original), str(copy)], store, tokenizer=tokenizer_file)
    else:
        api.count([str(original)], store, tokenizer=tokenizer_file)
        copy.write_bytes(original.read_bytes())
        before = counts_id(store)
        again = api.count([str(original), str(copy)], store)
        assert again.new_tokens == 0 and counts_id(store) == before, "no new generation"
        assert {a["path"]: a["same_as"] for a in again.already}[str(copy)] == str(original)
    counted = ModelStore(store).read_counts()
    write_text(copy, "\n\n".join(documents[:6]) + "\n")  # the copy is edited
    with pytest.raises(StoreError, match=r"different content: .*copy.txt.*--allow-changed"):
        api.count([str(tmp_path)], store)
    assert ModelStore(store).read_counts().equal_counts(counted)
    added = api.count([str(tmp_path)], store, allow_changed=True)
    assert [c["path"] for c in added.changed] == [str(copy)]
    alone = api.count([str(copy)], str(tmp_path / "alone.zarr"), tokenizer=tokenizer_file)
    assert added.new_tokens == alone.new_tokens, "the changed copy's content, added whole"
    assert api.count([str(tmp_path)], store).new_tokens == 0


def test_a_known_path_whose_content_is_now_another_shards_is_changed(tmp_path, documents,
                                                                    tokenizer_file):
    store = str(tmp_path / "m.zarr")
    a = write_text(tmp_path / "a.txt", documents[0] + "\n")
    b = write_text(tmp_path / "b.txt", documents[1] + "\n")
    api.count([str(a), str(b)], store, tokenizer=tokenizer_file)
    b.write_bytes(a.read_bytes())
    with pytest.raises(StoreError, match=r"different content: .*b.txt"):
        api.count([str(a), str(b)], store)
    again = api.count([str(a), str(b)], store, allow_changed=True)
    assert again.new_tokens == 0 and [c["path"] for c in again.changed] == [str(b)]
    manifest = ModelStore(store).meta["shards"]
    assert manifest[-1] == {"path": str(b), "sha256": manifest[0]["sha256"], "alias_of": str(a)}
    assert api.count([str(a), str(b)], store).new_tokens == 0


def test_unreadable_shard_commits_nothing(tmp_path, shards, tokenizer_file):
    import gzip

    store = str(tmp_path / "m.zarr")
    api.count(shards[:1], store, tokenizer=tokenizer_file)
    before = ModelStore(store).meta
    broken = tmp_path / "broken.txt.gz"
    broken.write_bytes(gzip.compress(os.urandom(50_000).hex().encode())[:-1000])
    with pytest.raises(Exception, match="broken.txt.gz"):
        api.count([shards[1], str(broken), shards[2]], store)
    after = ModelStore(store).meta
    assert after["counts"] == before["counts"] and after["shards"] == before["shards"]


def test_disk_full_leaves_the_store_intact(tmp_path, shards, tokenizer_file, monkeypatch):
    store = str(tmp_path / "m.zarr")
    api.count(shards[:1], store, tokenizer=tokenizer_file, rows_per_block=32)
    before = ModelStore(store).read_counts()
    calls = {"n": 0}
    original = transaction.write_count_block

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(transaction, "write_count_block", failing)
    with pytest.raises(StoreError, match="disk is full.*unchanged"):
        api.count(shards[1:], store)
    monkeypatch.undo()
    assert ModelStore(store).read_counts().equal_counts(before)
    api.count(shards[1:], store)  # the same command completes the work
    reopened = ModelStore(store)
    assert reopened.read_counts().tokens > before.tokens
    retired = {path.split("/")[1] for path in reopened.meta.get("retired", {})}
    assert retired == {"g1"}, "the replaced generation is kept for readers (grace period)"
    assert {name for name, _ in reopened.group["counts"].groups()} - retired == \
        {f"g{reopened.meta['counts']['generation']}"}, "debris of the failed ingest is removed"
    # a failure while creating a new store leaves no store at all
    monkeypatch.setattr(transaction, "write_count_block", failing)
    calls["n"] = 0
    fresh = tmp_path / "fresh.zarr"
    with pytest.raises(StoreError, match="disk is full"):
        api.count(shards[:1], str(fresh), tokenizer=tokenizer_file, rows_per_block=32)
    assert not ModelStore(str(fresh)).exists()


def test_refinalize_reuses_unchanged_blocks_and_equals_full(tmp_path, sharded_corpus,
                                                           tokenizer_file, monkeypatch):
    store = str(tmp_path / "m.zarr")
    api.count(sharded_corpus(1, ""), store, tokenizer=tokenizer_file, radius=2, rows_per_block=8)
    first = api.finalize(store, smoothing="additive")
    assert first.weights.reused_blocks == 0
    again = api.finalize(store, smoothing="additive")
    n_blocks = 2 * len(ModelStore(store).meta["weights"]["blocks"][0])
    assert again.weights.reused_blocks == n_blocks, "nothing changed: everything is reused"
    # a small update touches few context rows: the other row blocks are reused
    api.count([str(write_text(tmp_path / "b.txt", "assert assert assert\n"))], store)
    updated = api.finalize(store, smoothing="additive")
    assert 0 < updated.weights.reused_blocks < n_blocks
    full = api.finalize(store, smoothing="additive")  # reuses all: compare with a recompute
    from streamsolve.engine.finalize import finalize_store

    recomputed = finalize_store(ModelStore(store), "row", "additive", reuse=False)
    for a, b, c in zip(updated.weights.dense_blocks(), full.weights.dense_blocks(),
                       recomputed.dense_blocks()):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    # Dirichlet weights depend on the unigram, so an update recomputes every block
    api.finalize(store, smoothing="dirichlet")
    api.count([str(write_text(tmp_path / "c.txt", "assert\n"))], store)
    assert api.finalize(store, smoothing="dirichlet").weights.reused_blocks == 0
    # unreferenced weight blocks are garbage-collected once retired for the grace period
    monkeypatch.setenv("STREAMSOLVE_RETIRE_SECONDS", "0")
    api.finalize(store)
    meta = ModelStore(store).meta
    keys = {k for ks in meta["weights"]["blocks"] for k in ks}
    on_disk = {name for name, _ in ModelStore(store).group["weights/blocks"].groups()}
    assert on_disk == keys

"""The counts transaction: refuses without the store's held writer lock, discards its
generation on failure (the store is unchanged), commits in one attribute write."""

from __future__ import annotations

import numpy as np
import pytest

from streamsolve import api
from streamsolve.core.counting import CountConfig, count_sequences
from streamsolve.store.layout import StoreError, csr_of_rows, row_blocks
from streamsolve.store.locking import StoreLock, held_lock
from streamsolve.store.model_store import ModelStore


def small_counts(seed: int = 0, vocab_size: int = 11, radius: int = 2):
    rng = np.random.default_rng(seed)
    sequences = [(rng.integers(1, vocab_size, size=40), True) for _ in range(6)]
    return count_sequences(sequences, CountConfig(vocab_size, radius, "cat", 0))


@pytest.fixture
def store(tmp_path) -> ModelStore:
    counts = small_counts()
    store = ModelStore.create(str(tmp_path / "t.zarr"), counts.config, "{}", "x" * 64,
                              "<|doc|>", {"documents": "blank-line", "text_field": "text"},
                              rows_per_block=4)
    with StoreLock(store.url) as lock:
        store.commit_counts(counts, [], {}, lock)
    return store


def state(store: ModelStore) -> tuple:
    """What a reader can see of the store, and every counts generation on disk."""
    return (store.meta, sorted(name for name, _ in store.group["counts"].groups()))


def write_all(txn, counts, rows_per_block: int):
    V = counts.config.vocab_size
    for r in range(counts.config.n_blocks):
        for k, (start, stop) in enumerate(row_blocks(V, rows_per_block)):
            txn.write_block(r, k, *csr_of_rows(counts.keys[r], counts.values[r], V, start, stop))


def test_refuses_without_a_held_lock(store, tmp_path):
    before = state(store)
    with pytest.raises(StoreError, match="without holding its writer lock"):
        with store.counts_transaction(None):
            pass
    released = StoreLock(store.url)
    with released:
        pass
    with pytest.raises(StoreError, match="writer lock"):
        with store.counts_transaction(released):
            pass
    with StoreLock(str(tmp_path / "other.zarr")) as other_store_lock:
        with pytest.raises(StoreError, match="writer lock"):
            with store.counts_transaction(other_store_lock):
                pass
    assert state(store) == before


def test_any_spelling_of_the_store_lock_is_accepted(store):
    with StoreLock(store.url + "/.") as lock:
        assert held_lock(store.url) is lock
        with store.counts_transaction(lock) as txn:
            write_all(txn, small_counts(1), store.meta["rows_per_block"])
            txn.commit(small_counts(1).unigram, small_counts(1).nnz, [], {})
    assert held_lock(store.url) is None
    assert store.read_counts().equal_counts(small_counts(1))


def test_an_exception_discards_the_generation_and_leaves_the_store_unchanged(store):
    before, counts_before = state(store), store.read_counts()
    with StoreLock(store.url) as lock:
        with pytest.raises(RuntimeError, match="boom"):
            with store.counts_transaction(lock) as txn:
                write_all(txn, small_counts(2), store.meta["rows_per_block"])
                raise RuntimeError("boom")
        assert not txn.committed
        # leaving without a commit discards too
        with store.counts_transaction(lock) as txn:
            write_all(txn, small_counts(2), store.meta["rows_per_block"])
    assert state(store) == before
    assert store.read_counts().equal_counts(counts_before)


def test_commit_switches_in_one_write_and_records_one_event(store):
    history = store.history
    new = small_counts(3)
    with StoreLock(store.url) as lock, store.counts_transaction(lock) as txn:
        write_all(txn, new, store.meta["rows_per_block"])
        assert ModelStore(store.url).read_counts().equal_counts(small_counts()), \
            "readers see the previous counts until the commit"
        txn.commit(new.unigram, new.nnz, [{"path": "a.txt", "sha256": "0" * 64, "bytes": 3,
                                           "tokens": new.tokens}], {"documents": 6})
    assert store.read_counts().equal_counts(new)
    assert store.meta["counts"]["generation"] == txn.generation
    assert store.history[:-1] == history
    event = store.history[-1]
    assert event["event"] == "ingest" and event["generation"] == txn.generation
    assert event["shards"] == [{"path": "a.txt", "sha256": "0" * 64, "bytes": 3,
                                "tokens": new.tokens}]
    assert event["totals"] == {"documents": 6} and event["tokens"] == new.tokens


def test_writing_counts_outside_a_locked_section_is_refused(tmp_path, sharded_corpus,
                                                             tokenizer_file):
    from streamsolve.ingest import write_counts

    store = str(tmp_path / "m.zarr")
    api.count(sharded_corpus(2), store, tokenizer=tokenizer_file, rows_per_block=64)
    model_store = ModelStore(store)
    before = state(model_store)
    with pytest.raises(StoreError, match="writer lock"):
        write_counts(model_store, model_store.read_counts(), [], {}, add=True,
                     lock=None, scheduler="sync", progress=False)
    assert state(model_store) == before


def test_a_commit_with_a_row_block_missing_is_refused(store):
    """Every row block of the generation must have been written before the switch."""
    before = state(store)
    new = small_counts(seed=2)
    with StoreLock(store.url) as lock, pytest.raises(StoreError, match="was not written"):
        with store.counts_transaction(lock) as txn:
            write_all(txn, new, 4)
            generation = txn.generation
            block = store.group[f"counts/g{generation}/r2/b1"]
            block.attrs.put({})  # as if its task had died before finishing it
            txn.commit(new.unigram, new.nnz, [], {})
    assert state(store) == before


def test_leftover_generations_are_retired_by_the_next_commit_not_deleted_before(store):
    """A generation left by a crashed writer is not deleted when the next one begins (its
    store's state is not proven yet), but retired with the commit like replaced data."""
    leftover = store.group.require_group("counts/g7")
    leftover.require_group("r1/b0")
    new = small_counts(seed=3)
    with StoreLock(store.url) as lock:
        with store.counts_transaction(lock) as txn:
            assert "counts/g7" in store.group and txn.generation == 8
            write_all(txn, new, 4)
            txn.commit(new.unigram, new.nnz, [], {})
    assert {"counts/g1", "counts/g7"} == set(store.meta["retired"])

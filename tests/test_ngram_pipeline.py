"""Suffix n-gram blocks end to end (issue 24): counted into the store exactly (brute force on
real text, every order, BOS padding and document boundaries), incremental and invariant under
re-sharding bit for bit; finalized, calibrated, scored, exported."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer

from streamsolve import api
from streamsolve.core.ngram_counts import NgramConfig
from streamsolve.engine.ngram_tasks import ngram_config
from streamsolve.store import ngram_blocks
from streamsolve.store.layout import StoreMismatchError
from streamsolve.store.model_store import ModelStore

from .core.test_counting import paragraphs, reference_ids
from .core.test_ngram_counts import as_dicts, brute_force


def stored_ngrams(store: str):
    view = ModelStore(store).snapshot()
    return ngram_blocks.read_ngram_counts(view, view.committed_generation(),
                                          ngram_config(view.config))


@pytest.mark.parametrize("block_bytes", [512, 1 << 20])
def test_store_ngram_counts_equal_brute_force(tmp_path, sharded_corpus, documents,
                                              tokenizer_file, tokenizer_text, block_bytes):
    [path] = sharded_corpus(1, "")
    store = str(tmp_path / "m.zarr")
    api.count([path], store, tokenizer=tokenizer_file, radius=2, ngram=5,
              block_bytes=block_bytes)
    counts = stored_ngrams(store)
    config = ModelStore(store).config
    assert counts.config == NgramConfig(config.vocab_size, 5, config.bos_id)
    ids = reference_ids(Tokenizer.from_str(tokenizer_text), paragraphs(documents))
    expected = brute_force(ids, 5, config.bos_id)
    got = as_dicts(counts)
    for k in range(2, 6):
        assert got[k] == dict(expected[k]), f"order {k}"
    np.testing.assert_array_equal(counts.unigram, ModelStore(store).read_unigram())
    summary = ngram_blocks.ngram_summary(ModelStore(store), ModelStore(store).committed_generation())
    assert summary["contexts"] == [o.rows for o in counts.orders]


def test_incremental_and_resharded_ngram_counts_are_identical(tmp_path, sharded_corpus,
                                                              tokenizer_file):
    four = sharded_corpus(4)
    two = sharded_corpus(2, "")
    grown = str(tmp_path / "grown.zarr")
    for shard in four:  # one ingest per shard: each adds the committed generation's counts
        api.count([shard], grown, tokenizer=tokenizer_file, radius=1, ngram=4)
    at_once = str(tmp_path / "once.zarr")
    api.count(four[::-1], at_once, tokenizer=tokenizer_file, radius=1, ngram=4)
    resharded = str(tmp_path / "two.zarr")
    api.count(two, resharded, tokenizer=tokenizer_file, radius=1, ngram=4, block_bytes=700)
    a, b = stored_ngrams(grown), stored_ngrams(at_once)
    assert a.equal_counts(b)
    # the 2-shard corpus holds the same documents in another order: same counts
    assert stored_ngrams(resharded).equal_counts(b)
    assert a.orders[-1].nnz > 1000


def test_ngram_order_must_match_the_store(tmp_path, sharded_corpus, tokenizer_file):
    shards = sharded_corpus(2)
    store = str(tmp_path / "m.zarr")
    api.count(shards[:1], store, tokenizer=tokenizer_file, radius=1)
    with pytest.raises(StoreMismatchError, match="ngram: store has 0, this run has 3"):
        api.count(shards[1:], store, ngram=3)
    assert "ngram" not in ModelStore(store).meta["config"]

"""Exact counts: vectorised counting against a brute-force pure-Python reference, and
invariance under re-sharding, block sizes, worker counts and merge order."""

from __future__ import annotations

import random

import numpy as np
import pytest
from tokenizers import Tokenizer

from streamsolve.core.counting import ContextCarry, CountConfig, Counts, count_sequences, merge_counts
from streamsolve.engine.tasks import count_shard
from streamsolve.ingest import count_corpus
from streamsolve.text.holdout import HoldOut
from streamsolve.text.reading import ReadOptions


def brute_force(documents, config):
    """Reference counts by plain loops: ({(block, ctx, tgt): n}, unigram)."""
    pairs = {}
    unigram = np.zeros(config.vocab_size, dtype=np.int64)
    for doc in documents:
        for t, target in enumerate(doc):
            unigram[target] += 1
            for r in range(1, config.radius + 1):
                context = doc[t - r] if t - r >= 0 else config.bos_id
                block = r - 1 if config.aggregation == "cat" else 0
                pairs[(block, context, target)] = pairs.get((block, context, target), 0) + 1
    return pairs, unigram


def as_dict(counts: Counts):
    V = counts.config.vocab_size
    out = {}
    for block, (keys, values) in enumerate(zip(counts.keys, counts.values)):
        for k, v in zip(keys.tolist(), values.tolist()):
            out[(block, k // V, k % V)] = v
    return out


def random_documents(seed, n_docs=30, vocab=13, max_len=25):
    rng = random.Random(seed)
    return [[rng.randrange(1, vocab) for _ in range(rng.randrange(0, max_len))]
            for _ in range(n_docs)]


@pytest.mark.parametrize("aggregation", ["cat", "sum"])
@pytest.mark.parametrize("radius", [1, 2, 3, 4])
def test_counts_equal_brute_force(radius, aggregation):
    docs = random_documents(radius * 7 + len(aggregation))
    config = CountConfig(vocab_size=13, radius=radius, aggregation=aggregation, bos_id=0)
    counts = count_sequences([(np.array(d, dtype=np.int64), True) for d in docs], config)
    pairs, unigram = brute_force(docs, config)
    assert as_dict(counts) == pairs
    np.testing.assert_array_equal(counts.unigram, unigram)
    assert counts.tokens == sum(len(d) for d in docs)
    for keys in counts.keys:
        assert np.all(np.diff(keys) > 0), "keys must be sorted and unique"
        assert keys.dtype == np.int64


@pytest.mark.parametrize("aggregation", ["cat", "sum"])
def test_sum_is_sum_of_cat_blocks(aggregation):
    docs = random_documents(5)
    cat = count_sequences([(np.array(d), True) for d in docs], CountConfig(13, 3, "cat"))
    summed = count_sequences([(np.array(d), True) for d in docs], CountConfig(13, 3, "sum"))
    np.testing.assert_array_equal(summed.dense(0), sum(cat.dense(r) for r in range(3)))


def test_carry_makes_pieces_equal_whole_documents():
    """A document split into pieces across blocks counts exactly like the whole."""
    docs = random_documents(11, n_docs=8, max_len=40)
    config = CountConfig(13, 4, "cat")
    whole = count_sequences([(np.array(d), True) for d in docs], config)
    rng = random.Random(3)
    carry = ContextCarry(config)
    parts = []
    for doc in docs:
        cuts = sorted(rng.sample(range(1, max(2, len(doc))), k=min(3, max(0, len(doc) - 1))))
        pieces = [doc[a:b] for a, b in zip([0] + cuts, cuts + [len(doc)])]
        for i, piece in enumerate(pieces):
            # each piece alone in a block; only the first piece starts the document
            parts.append(count_sequences([(np.array(piece, dtype=np.int64), i == 0)], config, carry))
    assert merge_counts(*parts).equal_counts(whole)


def test_monoid_laws():
    config = CountConfig(13, 2, "cat")
    a, b, c = (count_sequences([(np.array(d), True) for d in random_documents(s)], config)
               for s in (1, 2, 3))
    empty = Counts.empty(config)
    assert (a + b).equal_counts(b + a)
    assert ((a + b) + c).equal_counts(a + (b + c))
    assert (a + empty).equal_counts(a) and (empty + a).equal_counts(a)
    both = count_sequences([(np.array(d), True) for d in random_documents(1) + random_documents(2)],
                           config)
    assert (a + b).equal_counts(both)


def test_adding_counts_of_other_configuration_is_refused():
    a = Counts.empty(CountConfig(13, 2, "cat"))
    b = Counts.empty(CountConfig(13, 3, "cat"))
    with pytest.raises(ValueError, match="different configurations"):
        a + b


def test_invalid_config_is_refused():
    with pytest.raises(ValueError, match="radius must be an integer >= 1"):
        CountConfig(13, 0)
    with pytest.raises(ValueError, match="aggregation must be"):
        CountConfig(13, 1, "mean")
    with pytest.raises(ValueError, match="bos_id"):
        CountConfig(13, 1, "cat", bos_id=13)


# -- counting real text through the shard pipeline --------------------------------------------

def reference_ids(tokenizer: Tokenizer, documents: list[str]) -> list[list[int]]:
    """Token ids per document: each line (with its newline) encoded on its own."""
    out = []
    for doc in documents:
        ids = []
        for line in doc.split("\n"):
            ids.extend(tokenizer.encode(line + "\n", add_special_tokens=False).ids)
        out.append(ids)
    return out


def paragraphs(documents):
    """Documents as the blank-line reader sees them (paragraphs)."""
    out = []
    for doc in documents:
        for para in doc.split("\n\n"):
            lines = [line for line in para.split("\n") if line.strip()]
            if lines:
                out.append("\n".join(lines))
    return out


@pytest.mark.parametrize("aggregation,radius", [("cat", 1), ("cat", 3), ("sum", 2)])
def test_shard_counts_equal_brute_force_on_real_text(sharded_corpus, documents, tokenizer_text,
                                                     aggregation, radius):
    tokenizer = Tokenizer.from_str(tokenizer_text)
    V = tokenizer.get_vocab_size()
    config = CountConfig(V, radius, aggregation, bos_id=0)
    [path] = sharded_corpus(1, "")
    result = count_shard(path, tokenizer_text, config, ReadOptions(block_bytes=4096))
    pairs, unigram = brute_force(reference_ids(tokenizer, paragraphs(documents)), config)
    assert as_dict(result.counts) == pairs
    np.testing.assert_array_equal(result.counts.unigram, unigram)


@pytest.mark.parametrize("mode", ["blank-line", "line", "file"])
def test_counts_invariant_under_block_size(sharded_corpus, tokenizer_text, mode):
    V = Tokenizer.from_str(tokenizer_text).get_vocab_size()
    config = CountConfig(V, 3, "cat")
    [path] = sharded_corpus(1, "gz")
    results = [count_shard(path, tokenizer_text, config,
                           ReadOptions(documents=mode, block_bytes=size)).counts
               for size in (97, 1000, 1 << 16, 1 << 24)]
    for other in results[1:]:
        assert other.equal_counts(results[0])


def test_counts_invariant_under_resharding_order_and_workers(sharded_corpus, tokenizer_text):
    V = Tokenizer.from_str(tokenizer_text).get_vocab_size()
    config = CountConfig(V, 2, "cat")
    options = ReadOptions()
    reference = count_corpus(sharded_corpus(1, ""), tokenizer_text, config, options,
                             scheduler="sync").counts
    for n_shards, workers, compression in [(2, 1, ""), (5, 2, "gz"), (11, 3, "zst")]:
        paths = sharded_corpus(n_shards, compression)
        for order in (paths, paths[::-1]):
            counts = count_corpus(order, tokenizer_text, config, options, scheduler="threads",
                                  workers=workers, split_every=2).counts
            assert counts.equal_counts(reference), (n_shards, workers)


def test_processes_scheduler_gives_identical_counts(sharded_corpus, tokenizer_text):
    V = Tokenizer.from_str(tokenizer_text).get_vocab_size()
    config = CountConfig(V, 2, "sum")
    paths = sharded_corpus(3, "")
    threads = count_corpus(paths, tokenizer_text, config, ReadOptions(), scheduler="threads").counts
    procs = count_corpus(paths, tokenizer_text, config, ReadOptions(), scheduler="processes",
                         workers=2).counts
    assert procs.equal_counts(threads)


def test_heldout_is_deterministic_and_disjoint(sharded_corpus, tokenizer_text):
    V = Tokenizer.from_str(tokenizer_text).get_vocab_size()
    config = CountConfig(V, 2, "cat")
    [path] = sharded_corpus(1, "")
    full = count_shard(path, tokenizer_text, config, ReadOptions())
    holdout = HoldOut(fraction=0.3, group_lines=8)
    runs = [count_shard(path, tokenizer_text, config, ReadOptions(block_bytes=b), holdout)
            for b in (500, 1 << 20)]
    assert runs[0].counts.equal_counts(runs[1].counts)
    train, held = runs[0].counts.tokens, sum(d.size for d in runs[0].heldout)
    assert held > 0 and train > 0
    assert train + held == full.counts.tokens
    assert 0.1 < held / full.counts.tokens < 0.5

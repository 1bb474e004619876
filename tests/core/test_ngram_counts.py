"""N-gram counts: exact against a brute-force reference (BOS padding, document boundaries,
pieces carried across blocks), a monoid bit for bit, and exact wide keys."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import numpy as np
import pytest

from streamsolve.core import ngram_keys
from streamsolve.core.ngram_counts import (NgramConfig, NgramCounts, count_ngram_documents,
                                           count_ngram_sequences, merge_ngram_counts, new_carry)
from streamsolve.core.ngram_keys import KeyLayout


def brute_force(documents, order, bos):
    """{k: Counter{(suffix oldest-first, target): n}} for k = 2..order, by plain loops."""
    out = {k: Counter() for k in range(2, order + 1)}
    for doc in documents:
        for t, target in enumerate(doc):
            for k in range(2, order + 1):
                suffix = tuple(doc[t - r] if t - r >= 0 else bos for r in range(k - 1, 0, -1))
                out[k][(suffix, target)] += 1
    return out


def as_dicts(counts: NgramCounts):
    """The counts as {k: {(suffix oldest-first, target): n}}, decoded from the keys."""
    out = {}
    for order in counts.orders:
        digits = counts.config.suffix_layout(order.order).unpack(order.keys)
        suffixes = [tuple(reversed(d)) for d in zip(*[c.tolist() for c in digits])]
        rows = order.entry_rows().tolist()
        out[order.order] = {(suffixes[r], t): n for r, t, n in
                            zip(rows, order.targets.tolist(), order.counts.tolist())}
    return out


def random_documents(seed, n_docs=40, vocab=9, max_len=20, low=1):
    rng = random.Random(seed)
    return [[rng.randrange(low, vocab) for _ in range(rng.randrange(0, max_len))]
            for _ in range(n_docs)]


def check_layout(counts: NgramCounts):
    for order in counts.orders:
        assert order.indptr[0] == 0 and order.indptr[-1] == order.nnz
        assert np.all(np.diff(order.indptr) > 0), "every row holds a target"
        grams = order.grams(counts.config)
        if ngram_keys.is_wide(grams):
            assert np.all(ngram_keys.argsort_keys(grams) == np.arange(grams.size))
            assert np.all(grams[1:] != grams[:-1])
        else:
            assert np.all(grams[1:] > grams[:-1]), "k-gram keys sorted and distinct"
        assert order.counts.dtype == np.int64 and order.targets.dtype == np.int32


@pytest.mark.parametrize("order", [2, 3, 4, 5, 6])
def test_counts_equal_brute_force(order):
    docs = random_documents(order)
    counts = count_ngram_documents(docs, NgramConfig(9, order, bos_id=0))
    assert as_dicts(counts) == {k: dict(v) for k, v in brute_force(docs, order, 0).items()}
    assert counts.tokens == sum(len(d) for d in docs) == counts.stats["tokens"]
    np.testing.assert_array_equal(counts.unigram,
                                  np.bincount([w for d in docs for w in d], minlength=9))
    check_layout(counts)


def test_bos_padding_and_document_boundaries():
    """Contexts never reach into the previous document: they see BOS instead."""
    counts = count_ngram_documents([[1, 2], [3]], NgramConfig(5, 4, bos_id=0))
    got = as_dicts(counts)
    assert got[4] == {((0, 0, 0), 1): 1, ((0, 0, 1), 2): 1, ((0, 0, 0), 3): 1}
    assert got[2] == {((0,), 1): 1, ((1,), 2): 1, ((0,), 3): 1}
    # a BOS id that is not 0, and one the text also uses
    counts = count_ngram_documents([[1, 4, 4]], NgramConfig(5, 3, bos_id=4))
    assert as_dicts(counts)[3] == {((4, 4), 1): 1, ((4, 1), 4): 1, ((1, 4), 4): 1}


def test_pieces_with_carry_equal_whole_documents():
    docs = random_documents(7, n_docs=10, max_len=30)
    config = NgramConfig(9, 5, bos_id=0)
    whole = count_ngram_documents(docs, config)
    rng = random.Random(1)
    pieces = []
    for doc in docs:
        cuts = sorted(rng.sample(range(1, len(doc)), k=min(2, len(doc) - 1))) if len(doc) > 1 else []
        bounds = [0, *cuts, len(doc)]
        pieces += [(np.array(doc[a:b], dtype=np.int64), a == 0) for a, b in zip(bounds, bounds[1:])]
    carry, blocks = new_carry(config), []
    block = []
    for piece in pieces:  # a block may start with a continuing piece only
        if block and not piece[1]:
            blocks.append(count_ngram_sequences(block, config, carry))
            block = []
        block.append(piece)
    blocks.append(count_ngram_sequences(block, config, carry))
    assert merge_ngram_counts(*blocks).equal_counts(whole)


def test_monoid_shards_add_to_whole_in_any_order():
    docs = random_documents(3, n_docs=60)
    config = NgramConfig(9, 4, bos_id=0)
    whole = count_ngram_documents(docs, config)
    shards = [count_ngram_documents(docs[i:i + 15], config) for i in range(0, 60, 15)]
    for permutation in itertools.islice(itertools.permutations(shards), 0, 24, 5):
        chained = NgramCounts.empty(config)
        for shard in permutation:
            chained = chained + shard
        assert chained.equal_counts(whole)
        tree = (permutation[0] + permutation[1]) + (permutation[2] + permutation[3])
        assert tree.equal_counts(whole)
        assert merge_ngram_counts(*permutation).equal_counts(whole)
    empty = NgramCounts.empty(config)
    assert (empty + whole).equal_counts(whole) and (whole + empty).equal_counts(whole)
    assert (empty + empty).equal_counts(empty)
    assert chained.stats["tokens"] == whole.stats["tokens"]


def test_counts_of_different_configurations_do_not_add():
    a = count_ngram_documents([[1, 2]], NgramConfig(5, 3))
    b = count_ngram_documents([[1, 2]], NgramConfig(5, 4))
    with pytest.raises(ValueError, match="different configurations"):
        a + b


@pytest.mark.parametrize("vocab_size, order", [(1 << 20, 5), (1 << 22, 4), (1 << 13, 6)])
def test_wide_keys_count_exactly(vocab_size, order):
    """(k - 1) tokens beyond 64 bits: structured keys of several words, still exact."""
    rng = random.Random(vocab_size % 97)
    alphabet = [0, 1, 2, vocab_size - 1, vocab_size - 2, 12345 % vocab_size, vocab_size // 2]
    docs = [[rng.choice(alphabet[1:]) for _ in range(rng.randrange(1, 12))] for _ in range(40)]
    config = NgramConfig(vocab_size, order, bos_id=0)
    counts = count_ngram_documents(docs, config)
    assert as_dicts(counts) == {k: dict(v) for k, v in brute_force(docs, order, 0).items()}
    widest = counts.order(order)
    assert ngram_keys.is_wide(widest.keys) == (config.bits * (order - 1) > 64)
    check_layout(counts)
    halves = (count_ngram_documents(docs[20:], config) + count_ngram_documents(docs[:20], config))
    assert halves.equal_counts(counts)


def test_key_layout_round_trip_and_order():
    rng = np.random.default_rng(0)
    for bits, digits in [(13, 4), (20, 5), (32, 3), (1, 70)]:
        layout = KeyLayout(bits, digits)
        columns = [rng.integers(0, 1 << bits, 500) for _ in range(digits)]
        keys = layout.pack(columns)
        assert [c.tolist() for c in layout.unpack(keys)] == [c.tolist() for c in columns]
        order = ngram_keys.argsort_keys(keys)
        tuples = list(zip(*[c.tolist() for c in columns]))
        assert [tuples[i] for i in order] == sorted(tuples)
        shorter = layout.drop_last(keys)
        assert [c.tolist() for c in layout.with_digits(digits - 1).unpack(shorter)] == \
            [c.tolist() for c in columns[:-1]]
        assert layout.last(keys).tolist() == columns[-1].tolist()
        back = layout.with_digits(digits - 1).append(shorter, columns[-1])
        assert np.all(back == keys)
        front = layout.with_digits(digits - 1).prepend(columns[0], layout.with_digits(
            digits - 1).pack(columns[1:]))
        assert np.all(front == keys)
        distinct, n = ngram_keys.count_distinct(np.concatenate([keys, keys[:7]]))
        assert n.sum() == 507 and distinct.size == len(set(tuples))
        found = ngram_keys.search(distinct, keys[:20])
        assert np.all(distinct[found] == keys[:20])
        missing = layout.pack([np.zeros(1, np.int64)] * (digits - 1) + [np.ones(1, np.int64)])
        if tuple([0] * (digits - 1) + [1]) not in set(tuples):
            assert ngram_keys.search(distinct, missing)[0] == -1

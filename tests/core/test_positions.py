"""The one position builder (`core.positions`) equals a brute-force reference: every token
of every document is a target, its context the R tokens before it in its own document
(offset 1 first), BOS where there are none; with documents that hold BOS themselves, short
and empty documents, R = 1..4; its sampled and grouped variants are the same positions."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from streamsolve.core import positions as positions_module
from streamsolve.core.positions import (grouped_positions, positions, sample_index,
                                        sampled_positions)

BOS = 3


def reference(documents, radius, bos_id):
    """Position by position, in plain Python."""
    contexts, targets = [], []
    for doc in documents:
        doc = [int(t) for t in doc]
        for t in range(len(doc)):
            contexts.append([doc[t - r] if t - r >= 0 else bos_id for r in range(1, radius + 1)])
            targets.append(doc[t])
    return (np.asarray(contexts, dtype=np.int64).reshape(len(targets), radius),
            np.asarray(targets, dtype=np.int64))


def corpus(seed: int, with_bos: bool) -> list:
    """Documents of 0..7 tokens over 10 ids; ``with_bos``: BOS also occurs inside them."""
    rng = np.random.default_rng(seed)
    ids = np.arange(10) if with_bos else np.setdiff1d(np.arange(10), [BOS])
    docs = [rng.choice(ids, size=int(rng.integers(0, 8))) for _ in range(int(rng.integers(1, 9)))]
    if with_bos:
        docs.append(np.array([BOS, BOS, 5]))
    return docs + [np.zeros(0, dtype=np.int64), [7]]  # an empty and a one-token (list) doc


@pytest.mark.parametrize("radius", [1, 2, 3, 4])
@pytest.mark.parametrize("with_bos", [False, True])
def test_positions_equal_the_reference(radius, with_bos):
    for seed in range(20):
        docs = corpus(seed, with_bos)
        ctx, tgt = positions(docs, radius, BOS)
        ref_ctx, ref_tgt = reference(docs, radius, BOS)
        assert ctx.dtype == tgt.dtype == np.int64
        np.testing.assert_array_equal(ctx, ref_ctx)
        np.testing.assert_array_equal(tgt, ref_tgt)


@pytest.mark.parametrize("radius", [1, 4])
def test_no_documents_or_only_empty_ones_have_no_positions(radius):
    for docs in ([], [[]], [np.zeros(0, dtype=np.int64)] * 3):
        ctx, tgt = positions(docs, radius, BOS)
        assert ctx.shape == (0, radius) and tgt.shape == (0,)
    assert list(grouped_positions([[], []], radius, BOS, 4)) == []


@pytest.mark.parametrize("radius", [1, 2, 3, 4])
def test_positions_at_an_index_are_rows_of_all_positions(radius):
    docs = corpus(7, with_bos=True)
    ref_ctx, ref_tgt = reference(docs, radius, BOS)
    index = np.array([ref_tgt.size - 1, 0, 4, 4, 2])  # any order, repeats
    ctx, tgt = positions(docs, radius, BOS, index=index)
    np.testing.assert_array_equal(ctx, ref_ctx[index])
    np.testing.assert_array_equal(tgt, ref_tgt[index])


@pytest.mark.parametrize("radius", [1, 3])
def test_sampled_positions_are_the_drawn_rows(radius):
    docs = corpus(11, with_bos=False)
    ref_ctx, ref_tgt = reference(docs, radius, BOS)
    index = sample_index(ref_tgt.size, 9, seed=5)
    assert index.size == min(9, ref_tgt.size) and np.all(np.diff(index) > 0)
    ctx, tgt = sampled_positions(docs, radius, BOS, 9, seed=5)
    np.testing.assert_array_equal(ctx, ref_ctx[index])
    np.testing.assert_array_equal(tgt, ref_tgt[index])
    ctx, tgt = sampled_positions(docs, radius, BOS, 10 ** 6)  # more than there are: all
    np.testing.assert_array_equal(ctx, ref_ctx)
    with pytest.raises(ValueError, match="no held-out tokens"):
        sampled_positions([[], []], radius, BOS, 5)


@pytest.mark.parametrize("group_tokens", [1, 5, 1000])
def test_grouped_positions_concatenate_to_all_positions(group_tokens):
    docs = corpus(3, with_bos=True)
    groups = list(grouped_positions(iter(docs), 3, BOS, group_tokens))
    ref_ctx, ref_tgt = reference(docs, 3, BOS)
    np.testing.assert_array_equal(np.concatenate([c for c, _ in groups]), ref_ctx)
    np.testing.assert_array_equal(np.concatenate([t for _, t in groups]), ref_tgt)
    if group_tokens == 1:  # one group per non-empty document
        assert len(groups) == sum(1 for d in docs if len(d))


def test_doctests_run():
    assert doctest.testmod(positions_module, raise_on_error=True).failed == 0

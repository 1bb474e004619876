"""Interpolated modified Kneser–Ney across orders: equal to a straightforward reference
written here from dicts (not from the module), normalised over the V ids, and the discount
rule and fallback."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict

import numpy as np
import pytest

from streamsolve.core.ngram_counts import NgramConfig, count_ngram_documents
from streamsolve.core.ngram_kneser_ney import estimate_kneser_ney, kenlm_discounts


class ReferenceKneserNey:
    """Interpolated modified Kneser–Ney from plain dicts of n-grams (tuples oldest first).

    Conventions of the docstring of `streamsolve.core.ngram_kneser_ney`, written out
    directly: BOS padding of N - 1, contexts holding two adjacent BOS have no row, the top
    order and contexts starting with BOS use raw counts, the others the number of distinct
    left extensions, discounts from counts-of-counts (n1, n2, n3 > 0, each in (0, k],
    else 0.5, 1, 1.5), the unigram interpolated with 1/V.
    """

    def __init__(self, documents, N, V, bos):
        self.N, self.V, self.bos = N, V, bos
        raw = {k: Counter() for k in range(1, N + 1)}
        for doc in documents:
            padded = [bos] * (N - 1) + list(doc)
            for t in range(N - 1, len(padded)):
                for k in range(1, N + 1):
                    raw[k][(tuple(padded[t - k + 1:t]), padded[t])] += 1
        kept = {k: {g: n for g, n in raw[k].items() if not self.collapsed(g[0])}
                for k in raw}
        self.adjusted = {N: dict(kept[N])}
        for k in range(N - 1, 0, -1):
            extensions = Counter((ctx[1:], j) for ctx, j in kept[k + 1])
            self.adjusted[k] = {(ctx, j): (n if ctx and ctx[0] == bos else extensions[(ctx, j)])
                                for (ctx, j), n in kept[k].items()}
        self.discounts = {k: self.estimate(Counter(self.adjusted[k].values()))
                          for k in range(1, N + 1)}
        self.rows = {k: defaultdict(dict) for k in range(1, N + 1)}
        for k in range(1, N + 1):
            for (ctx, j), a in self.adjusted[k].items():
                self.rows[k][ctx][j] = a

    def collapsed(self, ctx):
        return any(a == self.bos and b == self.bos for a, b in zip(ctx, ctx[1:]))

    @staticmethod
    def estimate(coc):
        n1, n2, n3, n4 = (coc.get(i, 0) for i in (1, 2, 3, 4))
        if n1 == 0 or n2 == 0 or n3 == 0:
            return (0.5, 1.0, 1.5)
        y = n1 / (n1 + 2 * n2)
        d = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
        return d if all(0 < x <= i + 1 for i, x in enumerate(d)) else (0.5, 1.0, 1.5)

    def discount(self, k, a):
        return 0.0 if a == 0 else self.discounts[k][min(a, 3) - 1]

    def prob(self, history, j, k=None):
        """P_k(j | the last k - 1 tokens of history); history oldest first, BOS-padded."""
        k = self.N if k is None else k
        ctx = tuple(history[len(history) - (k - 1):]) if k > 1 else ()
        row = self.rows[k].get(ctx)
        lower = 1.0 / self.V if k == 1 else self.prob(history, j, k - 1)
        if not row:
            return lower
        total = sum(row.values())
        gamma = sum(self.discount(k, a) for a in row.values())
        a = row.get(j, 0)
        return (max(a - self.discount(k, a), 0.0) + gamma * lower) / total


def zipf_documents(seed, n_docs, V, low=1, max_len=18):
    """Documents of a Markov chain with skewed transitions (real n-gram structure)."""
    rng = np.random.default_rng(seed)
    size = V - low
    cumulative = np.cumsum(rng.dirichlet(np.full(size, 0.2), size=size), axis=1)
    docs = []
    for _ in range(n_docs):
        word = [int(rng.integers(size))]
        for u in rng.random(int(rng.integers(0, max_len))):
            word.append(min(size - 1, int(np.searchsorted(cumulative[word[-1]], u))))
        docs.append([w + low for w in word])
    return docs


def positions(docs, N, bos):
    """(contexts (n, N - 1) newest first, histories oldest first, targets) of documents."""
    contexts, histories, targets = [], [], []
    for doc in docs:
        padded = [bos] * (N - 1) + doc
        for t in range(N - 1, len(padded)):
            histories.append(padded[t - N + 1:t])
            contexts.append(padded[t - N + 1:t][::-1])
            targets.append(padded[t])
    return np.array(contexts, dtype=np.int64).reshape(-1, N - 1), histories, np.array(targets)


@pytest.mark.parametrize("N", [2, 3, 4, 5])
def test_equals_reference_on_held_out_positions(N):
    V = 24
    train, held = zipf_documents(N, 700, V), zipf_documents(N + 100, 60, V)
    model = estimate_kneser_ney(count_ngram_documents(train, NgramConfig(V, N, bos_id=0)))
    reference = ReferenceKneserNey(train, N, V, 0)
    for k in range(1, N + 1):
        assert model.discounts[k - 1] == pytest.approx(reference.discounts[k], abs=1e-12)
    assert any(kenlm_discounts(c) is not None for c in model.counts_of_counts[1:])
    contexts, histories, targets = positions(held, N, 0)
    expected = np.log([reference.prob(h, t) for h, t in zip(histories, targets)])
    np.testing.assert_allclose(model.log_probs(contexts, targets), expected, atol=1e-6, rtol=0)
    every_order = model.order_probs(model.find_rows(contexts), targets)
    for k in range(1, N + 1):
        np.testing.assert_allclose(
            every_order[:, k - 1], [reference.prob(h, t, k) for h, t in zip(histories, targets)],
            rtol=1e-9)


@pytest.mark.parametrize("N", [2, 3, 5])
def test_distributions_sum_to_one(N):
    V = 20
    model = estimate_kneser_ney(count_ngram_documents(zipf_documents(1, 300, V),
                                                      NgramConfig(V, N, bos_id=0)))
    rng = np.random.default_rng(N)
    contexts = rng.integers(0, V, size=(200, N - 1))
    contexts[:20, :] = 0                    # the first position of a document
    contexts[20:40, 1:] = 0                 # the second
    train = zipf_documents(1, 300, V)
    seen, _, _ = positions(train[:30], N, 0)
    contexts = np.vstack([contexts, seen])  # contexts with rows at every order
    rows = model.find_rows(contexts)
    assert np.all(rows[:, -1] >= 0) or N == 2 or (rows[:, -1] >= 0).sum() > 30
    np.testing.assert_allclose(model.distribution(contexts).sum(axis=1), 1.0, atol=1e-12)
    for k in range(1, N):
        np.testing.assert_allclose(model.distribution(contexts, k).sum(axis=1), 1.0, atol=1e-12)


def test_bos_pairs_back_off_to_the_shorter_context():
    """A context of two BOS says only 'document start': block k scores as block k - 1."""
    docs = zipf_documents(4, 200, 12)
    model = estimate_kneser_ney(count_ngram_documents(docs, NgramConfig(12, 4, bos_id=0)))
    assert model.find_rows(np.array([[0, 0, 0]]))[0].tolist()[1:] == [-1, -1]
    first = np.array([[0, 0, 0]] * 11)
    targets = np.arange(1, 12)
    probs = model.order_probs(model.find_rows(first), targets)
    np.testing.assert_array_equal(probs[:, 3], probs[:, 1])
    assert not np.allclose(probs[:, 1], probs[:, 0])


def test_discount_rule_and_fallback(caplog):
    assert kenlm_discounts([10, 4, 2, 0]) == pytest.approx((10 / 18, 2 - 3 * 10 / 18 * 2 / 4, 3.0))
    assert kenlm_discounts([0, 4, 2, 1]) is None
    assert kenlm_discounts([10, 1, 20, 1]) is None   # D2 = 2 - 3 (10/12) 20 < 0
    docs = [[1, 2, 3], [1, 2, 3]]   # every count is 2: nothing to estimate from
    with caplog.at_level(logging.WARNING):
        model = estimate_kneser_ney(count_ngram_documents(docs, NgramConfig(5, 3, bos_id=0)))
    assert "fallback" in caplog.text
    np.testing.assert_array_equal(model.discounts, [[0.5, 1.0, 1.5]] * 3)
    given = estimate_kneser_ney(count_ngram_documents(docs, NgramConfig(5, 3, bos_id=0)),
                                discounts=[0.7, (0.2, 0.4, 0.6), None])
    np.testing.assert_allclose(given.discounts, [[0.7] * 3, [0.2, 0.4, 0.6], [0.5, 1.0, 1.5]])
    with pytest.raises(ValueError, match="D2 = 2.5"):
        estimate_kneser_ney(count_ngram_documents(docs, NgramConfig(5, 3)),
                            discounts=[None, (0.5, 2.5, 1), None])


def test_empty_counts_give_the_uniform_distribution():
    model = estimate_kneser_ney(count_ngram_documents([], NgramConfig(6, 3, bos_id=0)))
    np.testing.assert_allclose(model.distribution(np.array([[1, 2], [0, 0]])), 1 / 6)

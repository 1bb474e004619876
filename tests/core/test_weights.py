"""Explicit weights: the R = 1 optimum has zero gradient, sparse + rank-one equals the dense
formulas of DESIGN §3, the store's row-block finalize equals the in-memory one, the column
form equals scikit-learn's MultinomialNB, and calibration never makes held-out loss worse."""

from __future__ import annotations

import random

import numpy as np
import pytest
from tokenizers import Tokenizer

from streamsolve.api import calibrate_checked
from streamsolve.core.counting import CountConfig, count_sequences
from streamsolve.language_model import LanguageModel, logsumexp
from streamsolve.core.weights import finalize, smoothed_unigram
from streamsolve.engine.finalize import finalize_store, read_store_weights
from streamsolve.store.locking import StoreLock
from streamsolve.store.model_store import ModelStore


def counts_of(docs, V, radius, aggregation="cat"):
    return count_sequences([(np.asarray(d, dtype=np.int64), True) for d in docs],
                           CountConfig(V, radius, aggregation, bos_id=0))


def random_docs(seed, V, n_docs=200, max_len=30):
    rng = random.Random(seed)
    return [[rng.randrange(0, V) for _ in range(rng.randrange(1, max_len))] for _ in range(n_docs)]


def softmax(z):
    return np.exp(z - logsumexp(z, axis=1)[:, None])


def design_matrix(docs, V, radius, bos=0):
    """Dense one-hot features X (N x R*V) and targets y, as DESIGN §1 defines them (cat)."""
    rows, ys = [], []
    for doc in docs:
        for t, y in enumerate(doc):
            x = np.zeros(radius * V)
            for r in range(1, radius + 1):
                c = doc[t - r] if t - r >= 0 else bos
                x[(r - 1) * V + c] = 1
            rows.append(x)
            ys.append(y)
    return np.array(rows), np.array(ys)


def test_bigram_explicit_weights_have_zero_gradient():
    V = 5
    docs = random_docs(0, V)
    counts = counts_of(docs, V, 1)
    assert np.all(counts.dense(0) > 0), "test needs every pair observed"
    weights = finalize(counts, smoothing="none")
    W = weights.dense_blocks()[0]
    b = weights.bias
    X, y = design_matrix(docs, V, 1)
    Y = np.eye(V)[y]
    P = softmax(X @ W + b)
    grad_W = X.T @ (P - Y)
    grad_b = (P - Y).sum(axis=0)
    scale = np.abs(X.T @ Y).max()
    assert np.abs(grad_W).max() / scale < 1e-8
    assert np.abs(grad_b).max() / scale < 1e-8
    # and it is a minimum: moving W in a random direction raises the loss
    loss = lambda W_: -np.sum(np.log(softmax(X @ W_ + b)[np.arange(len(y)), y]))
    rng = np.random.default_rng(0)
    for _ in range(3):
        assert loss(W + 1e-3 * rng.standard_normal(W.shape)) > loss(W)


def test_none_smoothing_refuses_zero_counts():
    counts = counts_of([[1, 2, 3]], 6, 1)
    with pytest.raises(ValueError, match="needs every count"):
        finalize(counts, smoothing="none")


@pytest.mark.parametrize("form,smoothing,param", [
    ("row", "dirichlet", {"mu": 7.0}), ("row", "dirichlet", {}),
    ("row", "additive", {"alpha": 0.3}), ("column", "dirichlet", {"mu": 3.0}),
    ("column", "additive", {"alpha": 0.5}),
])
@pytest.mark.parametrize("aggregation", ["cat", "sum"])
def test_sparse_rank_one_equals_dense_formula(form, smoothing, param, aggregation):
    V, R = 9, 3
    counts = counts_of(random_docs(1, V, n_docs=15, max_len=12), V, R, aggregation)
    weights = finalize(counts, form=form, smoothing=smoothing, **param)
    p = smoothed_unigram(counts.unigram)
    mu = param.get("mu", float(V))
    alpha = param.get("alpha")
    for block, W in enumerate(weights.dense_blocks()):
        F = counts.dense(block).astype(float)
        f, g = F.sum(axis=1, keepdims=True), F.sum(axis=0, keepdims=True)
        if form == "row" and smoothing == "dirichlet":
            expected = np.log((F + mu * p[None, :]) / (f + mu))
        elif form == "row":
            expected = np.log((F + alpha) / (f + alpha * V))
        elif smoothing == "dirichlet":
            q = smoothed_unigram(F.sum(axis=1))
            expected = np.log((F + mu * q[:, None]) / (g + mu))
        else:
            expected = np.log((F + alpha) / (g + alpha * V))
        np.testing.assert_allclose(W, expected, rtol=1e-12, atol=1e-12)
        if form == "row":  # each row is a distribution over targets
            np.testing.assert_allclose(np.exp(W).sum(axis=1), 1.0, rtol=1e-12)
    # logits = sum_r W^(r)[c_r] + b, b = -(R-1) log p (row) or log p (column)
    contexts = np.array([[1, 2, 3], [0, 0, 0], [8, 1, 4]])
    dense = weights.dense_blocks()
    gamma = -(R - 1) if form == "row" else 1
    expected = np.stack([
        sum(dense[r if aggregation == "cat" else 0][c[r]] for r in range(R)) + gamma * np.log(p)
        for c in contexts])
    np.testing.assert_allclose(weights.logits(contexts), expected, rtol=1e-12)


@pytest.mark.parametrize("form,smoothing", [("row", "dirichlet"), ("row", "additive"),
                                            ("column", "dirichlet"), ("column", "additive")])
def test_store_finalize_equals_in_memory(tmp_path, form, smoothing):
    V = 23
    counts = counts_of(random_docs(2, V, n_docs=60), V, 2)
    store = ModelStore.create(str(tmp_path / "s.zarr"), counts.config, "{}", "x" * 64, "<|doc|>",
                              {"documents": "blank-line", "text_field": "text"}, rows_per_block=5)
    with StoreLock(store.url) as lock:
        store.commit_counts(counts, [], {}, lock)
    assert store.read_counts().equal_counts(counts)
    from_store = finalize_store(store, form, smoothing)
    in_memory = finalize(counts, form, smoothing)
    reread = read_store_weights(store)
    for a, b, c in zip(from_store.dense_blocks(), in_memory.dense_blocks(), reread.dense_blocks()):
        np.testing.assert_allclose(a, b, rtol=1e-13)
        np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(reread.bias, in_memory.bias)


def test_column_form_equals_multinomial_nb():
    sklearn = pytest.importorskip("sklearn.naive_bayes")
    V, R, alpha = 11, 3, 0.4
    docs = random_docs(4, V, n_docs=80)
    counts = counts_of(docs, V, R)
    weights = finalize(counts, form="column", smoothing="additive", alpha=alpha)
    X, y = design_matrix(docs, V, R)
    p = smoothed_unigram(counts.unigram)
    nb = sklearn.MultinomialNB(alpha=alpha, class_prior=p[np.unique(y)]).fit(X, y)
    assert list(nb.classes_) == list(range(V)), "test needs every class observed"
    contexts = np.stack([np.flatnonzero(x) % V for x in X])  # offsets 1..R in order
    ours = weights.logits(contexts)
    ours_log_proba = ours - logsumexp(ours, axis=1)[:, None]
    np.testing.assert_allclose(ours_log_proba, nb.predict_log_proba(X), atol=1e-10)
    np.testing.assert_array_equal(np.argmax(ours, axis=1), nb.predict(X))


def test_calibration_never_worse_on_real_text(documents, tokenizer_text):
    tokenizer = Tokenizer.from_str(tokenizer_text)
    V = tokenizer.get_vocab_size()
    encode = lambda doc: np.array([i for line in doc.split("\n")
                                   for i in tokenizer.encode(line + "\n").ids])
    train = [encode(d) for d in documents[:30]]
    held = [encode(d) for d in documents[30:]]
    for R in (1, 3):
        counts = count_sequences([(d, True) for d in train], CountConfig(V, R, "cat"))
        for smoothing in ("dirichlet", "additive"):
            model = LanguageModel(finalize(counts, smoothing=smoothing), tokenizer)
            calibrated, raw, cal = calibrate_checked(model, held, 1000, sample=2000)
            assert cal.cross_entropy <= raw.cross_entropy
            assert raw.tokens == cal.tokens == sum(len(d) for d in held)
            if R == 3 and smoothing == "additive":
                # additive smoothing over-counts evidence a lot: calibration must help
                assert cal.cross_entropy < raw.cross_entropy - 0.05


def test_generation_and_log_prob_consistency(documents, tokenizer_text):
    tokenizer = Tokenizer.from_str(tokenizer_text)
    V = tokenizer.get_vocab_size()
    docs = [np.array([i for line in d.split("\n") for i in tokenizer.encode(line + "\n").ids])
            for d in documents]
    model = LanguageModel(finalize(count_sequences([(d, True) for d in docs],
                                                   CountConfig(V, 2, "cat"))), tokenizer)
    text = "The assert statement"
    ids = model.encode(text)
    # log_prob of the whole = sum of next-token log-probabilities, step by step
    total = 0.0
    for t in range(len(ids)):
        logits = model.logits(ids[:t])
        total += logits[ids[t]] - logsumexp(logits)
    assert model.log_prob(text) == pytest.approx(total, rel=1e-10)
    greedy = model.generate(text, max_tokens=5)
    assert greedy == model.generate(text, max_tokens=5) and len(greedy) > 0
    sampled = [model.generate(text, max_tokens=5, temperature=1.0, seed=s) for s in range(4)]
    assert len(set(sampled)) > 1
    top = model.next_token_distribution(text, top_k=3)
    assert len(top) == 3 and top[0][1] >= top[1][1] >= top[2][1]


@pytest.mark.parametrize("form,smoothing", [("row", "dirichlet"), ("row", "additive"),
                                            ("column", "dirichlet")])
@pytest.mark.parametrize("aggregation", ["cat", "sum"])
def test_sparse_target_log_probs_equal_dense(form, smoothing, aggregation):
    V, R = 31, 3
    docs = random_docs(7, V, n_docs=40)
    weights = finalize(counts_of(docs, V, R, aggregation), form=form, smoothing=smoothing)
    rng = np.random.default_rng(1)
    contexts = rng.integers(0, V, size=(200, R))
    targets = rng.integers(0, V, size=200)
    for w in (weights, weights.with_calibration(rng.uniform(-0.5, 2, len(weights.blocks)), -1.3)):
        logits = w.logits(contexts)
        expected = logits[np.arange(200), targets] - logsumexp(logits, axis=1)
        np.testing.assert_allclose(w.target_log_probs(contexts, targets), expected,
                                   rtol=1e-10, atol=1e-10)

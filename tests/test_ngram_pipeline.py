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
    summary = api.info(store)["ngram"]
    assert summary["contexts"] == [o.rows for o in counts.orders]
    assert summary["entries"] == [o.nnz for o in counts.orders] and summary["order"] == 5


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


# -- finalize, calibration, scoring, ARPA -----------------------------------------------------

def positions_of(documents, order, bos):
    """(contexts (n, N - 1) offset 1 first, targets) of every position, BOS-padded."""
    contexts, targets = [], []
    for doc in documents:
        padded = [bos] * (order - 1) + list(doc)
        for t in range(order - 1, len(padded)):
            contexts.append(padded[t - order + 1:t][::-1])
            targets.append(padded[t])
    return np.array(contexts, dtype=np.int64), np.array(targets, dtype=np.int64)


@pytest.fixture
def finalized(tmp_path, sharded_corpus, documents, tokenizer_file, tokenizer_text):
    """A store counted with --ngram 3 --radius 2 (30 documents), finalized uncalibrated; the
    token ids of the counted documents and of 10 others."""
    store = str(tmp_path / "m.zarr")
    shards = sharded_corpus(2, "", documents=documents[:30])
    api.count(shards, store, tokenizer=tokenizer_file, radius=2, ngram=3)
    api.finalize(store, calibrate=False)
    tokenizer = Tokenizer.from_str(tokenizer_text)
    train = reference_ids(tokenizer, paragraphs(documents[:30]))
    held = reference_ids(tokenizer, paragraphs(documents[30:]))
    return store, train, held


def test_finalized_store_scores_exactly_the_kneser_ney_model(finalized, tmp_path):
    from streamsolve.core.ngram_counts import count_ngram_documents
    from streamsolve.core.ngram_kneser_ney import estimate_kneser_ney
    from streamsolve.core.ngram_weights import NgramWeights
    from streamsolve.language_model import LanguageModel

    store, train, held = finalized
    config = ModelStore(store).config
    lm = LanguageModel.open(store)
    assert isinstance(lm.weights, NgramWeights) and not lm.weights.calibrated
    assert lm.config.radius == 2
    reference = estimate_kneser_ney(count_ngram_documents(
        train, NgramConfig(config.vocab_size, 3, config.bos_id)))
    contexts, targets = positions_of(held, 3, config.bos_id)
    np.testing.assert_allclose(lm.weights.target_log_probs(contexts, targets),
                               reference.log_probs(contexts, targets), atol=1e-10, rtol=0)
    evaluation = lm.evaluate_ids([np.array(d) for d in held if d])
    assert evaluation.cross_entropy == pytest.approx(
        -reference.log_probs(contexts, targets).mean(), abs=1e-9)
    # the logits generation uses are the same distribution
    logits = lm.weights.logits(contexts[:50])
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(log_p[np.arange(50), targets[:50]],
                               reference.log_probs(contexts[:50], targets[:50]), atol=1e-9)
    assert isinstance(lm.generate("The ", max_tokens=8), str)


def test_calibration_fits_every_block_and_is_stored(finalized, tmp_path, sharded_corpus,
                                                    documents):
    from streamsolve.language_model import LanguageModel

    store, _, _ = finalized
    [calibration] = sharded_corpus(1, "", documents=documents[30:], folder="calib")
    raw = api.evaluate(store, [calibration])
    lm = api.finalize(store, calibrate=[calibration])
    assert lm.weights.calibrated and lm.weights.theta.size == 2 + 2 + 1
    calibrated = api.evaluate(store, [calibration])
    assert calibrated.cross_entropy < raw.cross_entropy
    stored = ModelStore(store).meta["weights"]
    assert len(stored["calibration"]["ngram_beta"]) == 2 and stored["ngram"]["order"] == 3
    np.testing.assert_array_equal(LanguageModel.open(store).weights.theta, lm.weights.theta)


def test_export_arpa_is_read_by_kenlm_as_the_model(finalized, tmp_path):
    from streamsolve.cli import main
    from streamsolve.language_model import LanguageModel

    kenlm = pytest.importorskip("kenlm", reason="KenLM's Python module is not installed")
    store, _, held = finalized
    out = tmp_path / "m.arpa"
    assert main(["export", store, str(out), "--arpa", "-q"]) == 0
    reader = kenlm.Model(str(out))
    assert reader.order == 3
    lm = LanguageModel.open(store)
    bos = lm.config.bos_id
    for doc in [d for d in held if d][:5]:
        contexts, targets = positions_of([doc], 3, bos)
        ours = lm.weights.target_log_probs(contexts, targets) / np.log(10)
        theirs = [s for s, _, _ in reader.full_scores(" ".join(map(str, doc)), bos=True,
                                                      eos=False)]
        np.testing.assert_allclose(theirs, ours, atol=1e-5, rtol=0)


def test_export_arpa_refuses_to_overwrite_and_a_store_without_ngrams(finalized, tmp_path,
                                                                     capsys, sharded_corpus,
                                                                     tokenizer_file):
    from streamsolve.cli import main

    store, _, _ = finalized
    out = tmp_path / "m.arpa"
    out.write_text("mine\n")
    capsys.readouterr()
    assert main(["export", store, str(out), "--arpa", "-q"]) == 2
    err = capsys.readouterr().err
    assert "already exists: refusing to replace it" in err and err.count("\n") == 1
    assert out.read_text() == "mine\n"
    assert main(["export", store, str(out), "--arpa", "--force", "-q"]) == 0
    assert out.read_text().startswith("\\data\\")
    plain = str(tmp_path / "plain.zarr")
    api.count(sharded_corpus(1, "", folder="plain"), plain, tokenizer=tokenizer_file, radius=1)
    api.finalize(plain, calibrate=False)
    capsys.readouterr()
    assert main(["export", plain, str(tmp_path / "p.arpa"), "--arpa", "-q"]) == 2
    err = capsys.readouterr().err
    assert "has no n-gram blocks to export as ARPA" in err and err.count("\n") == 1
    assert not (tmp_path / "p.arpa").exists()


def test_cli_refuses_an_ngram_order_out_of_range(tmp_path, sharded_corpus, capsys):
    from streamsolve.cli import main

    shards = sharded_corpus(1, "")
    assert main(["count", *shards, "--store", str(tmp_path / "x.zarr"), "--ngram", "7",
                 "-q"]) == 2
    err = capsys.readouterr().err
    assert "--ngram must be an integer in 2..6, got 7" in err and err.count("\n") == 1
    assert not (tmp_path / "x.zarr").exists()


def test_export_weights_includes_the_ngram_blocks(finalized, tmp_path):
    from streamsolve.cli import main
    from streamsolve.export import read_export
    from streamsolve.language_model import LanguageModel

    store, _, _ = finalized
    out = tmp_path / "w.safetensors"
    assert main(["export", store, str(out), "--weights", "-q"]) == 0
    arrays, metadata = read_export(str(out))
    model = LanguageModel.open(store).weights.model
    assert metadata["ngram"]["order"] == 3 and metadata["ngram"]["beta"] == [0.0, 1.0]
    for level in model.levels:
        np.testing.assert_array_equal(arrays[f"ngram{level.order}.probs"], level.probs)
        np.testing.assert_array_equal(arrays[f"ngram{level.order}.indptr"], level.indptr)
    np.testing.assert_array_equal(arrays["ngram.unigram"], model.unigram)
    assert "block0.data" in arrays and "block1.data" in arrays
    with pytest.raises(ValueError, match="n-gram blocks"):
        import streamsolve.torch as bridge
        bridge.load(store)

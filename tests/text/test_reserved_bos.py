"""A tokenizer.json without special tokens: BOS is an id reserved past its vocabulary (V + 1
ids, recorded in the store), and the counts are exact with BOS = V (issue 16)."""

from __future__ import annotations

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from streamsolve import api
from streamsolve.store.model_store import ModelStore
from tests.core.test_counting import as_dict, brute_force, reference_ids


def _tokenizer_without_special_tokens(documents) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=[], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([line + "\n" for doc in documents for line in doc.split("\n")],
                            trainer=trainer)
    return tok


def test_reserved_bos_counts_exactly(tmp_path, documents):
    tok = _tokenizer_without_special_tokens(documents)
    assert not tok.get_added_tokens_decoder()
    V = tok.get_vocab_size(with_added_tokens=True)
    path = tmp_path / "tokenizer.json"
    path.write_text(tok.to_str())
    lines = [line for doc in documents[:6] for line in doc.split("\n") if line.strip()]
    shard = tmp_path / "lines.txt"
    shard.write_text("\n".join(lines) + "\n")
    store = str(tmp_path / "m.zarr")
    api.count([str(shard)], store, tokenizer=str(path), radius=2, documents="line")

    model_store = ModelStore(store)
    config = model_store.config
    assert config.vocab_size == V + 1 and config.bos_id == V
    assert model_store.meta["tokenizer"]["bos_token"] is None
    counts = model_store.read_counts()
    pairs, unigram = brute_force(reference_ids(tok, lines), config)
    assert as_dict(counts) == pairs
    np.testing.assert_array_equal(counts.unigram, unigram)
    assert unigram[V] == 0  # the reserved id only pads contexts

    model = api.finalize(store, calibrate=False)
    assert np.isfinite(model.evaluate_ids([np.array(reference_ids(tok, lines[:3])[0])]).perplexity)
    assert model.generate("The ", max_tokens=5)  # never emits the reserved id

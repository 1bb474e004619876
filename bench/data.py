"""Token data for the quality and backpropagation benchmarks, held out by source."""

from __future__ import annotations

import os

from . import common

HELDOUT_SOURCE = "python-doc.txt.gz"


def split(vocab_size: int, train_tokens: int, test_tokens: int, calib_tokens: int):
    """``(tokenizer_text, bos_id, train_docs, calibration_docs, test_docs)``.

    Training documents come from every bench shard but the held-out source, the same number
    of tokens from each; the held-out source's documents alternate between calibration
    (even) and test (odd), so both are spread over the whole source.
    """
    from streamsolve.text.tokenizer import find_bos, tokenizer_from_json

    tok_path = common.bench_tokenizer(vocab_size)
    text = tok_path.read_text(encoding="utf-8")
    _, bos_id = find_bos(tokenizer_from_json(text))
    paths = common.shards()
    train_paths = [p for p in paths if os.path.basename(p) != HELDOUT_SOURCE]
    held_paths = [p for p in paths if os.path.basename(p) == HELDOUT_SOURCE]
    if not held_paths:
        raise common.Skip(f"held-out source {HELDOUT_SOURCE} not in {common.CORPUS}")
    per_shard = max(1, train_tokens // len(train_paths))
    train = []
    for path in train_paths:
        docs, n = [], 0
        for doc in common.read_token_documents([path], text, per_shard):
            if n >= per_shard:
                break
            doc = doc[:per_shard - n]
            docs.append(doc)
            n += doc.size
        train.extend(docs)
    held = common.read_token_documents(held_paths, text, 2 * (test_tokens + calib_tokens))
    calib = _take(held[0::2], calib_tokens)
    test = _take(held[1::2], test_tokens)
    return text, bos_id, train, calib, test


def _take(docs, tokens):
    out, n = [], 0
    for doc in docs:
        if n >= tokens:
            break
        out.append(doc)
        n += doc.size
    return out


def explicit(train, calib, test, vocab_size, radius, bos_id, sample_size=16384):
    """Count + finalize + calibrate (timed): ``(seconds, raw CE, calibrated CE, tokens,
    calibrated model)``."""
    import time

    from streamsolve.core.counting import CountConfig, count_token_documents
    from streamsolve.language_model import LanguageModel
    from streamsolve.core.weights import finalize

    started = time.perf_counter()
    counts = count_token_documents(train, CountConfig(vocab_size, radius, "cat", bos_id))
    model = LanguageModel(finalize(counts))
    calibrated = model.calibrate(calib, sample_size=sample_size)
    seconds = time.perf_counter() - started
    raw = model.evaluate_ids(test).cross_entropy
    cal = calibrated.evaluate_ids(test).cross_entropy
    return seconds, raw, cal, counts.tokens, calibrated


def dense_layer(model):
    """(W (R, V, V), b (V,)) of a (calibrated) explicit model as one dense softmax layer."""
    import numpy as np

    w = model.weights
    R = w.config.radius
    W = np.stack([w.beta[w.block_of_offset(r)] * w.blocks[w.block_of_offset(r)].dense()
                  for r in range(R)])
    return W.astype(np.float32), np.asarray(w.bias, dtype=np.float32)

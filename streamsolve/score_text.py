"""Scoring text with a finalized model, KenLM ``query`` style: per-document (or per-token)
log-probabilities as records, then a summary.

Documents are read as when counting (the store's ``documents`` mode: blank-line, line or
file), from files through `streamsolve.text.reading` or from a binary stream (stdin), and
tokenized line by line. They are scored in batches of about `SCORE_BATCH` positions (one
call of the O(nnz) scorer per batch), and records are yielded as soon as their batch is
scored, so memory stays bounded however long the input.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import numpy as np

from .core.positions import positions
from .language_model import LanguageModel
from .text.reading import ReadOptions, ReadStats, iter_document_pieces
from .text.shards import expand_corpus

#: Positions scored per call of the scorer.
SCORE_BATCH = 1 << 14


def stream_documents(stream, documents: str = "blank-line") -> Iterator[tuple[list[str], int]]:
    """``(lines, n_bytes)`` of each document of a binary stream (UTF-8, invalid bytes replaced).

    ``documents``: "blank-line" (blank lines separate documents), "line" (each non-blank
    line is one) or "file" (the whole stream is one). Every byte of the stream is in some
    document's ``n_bytes``: blank lines count with the stream's last document (as in
    `file_documents`), so the total is every byte, as `streamsolve.api.evaluate` counts.
    """
    current: list[str] = []
    size = blank_bytes = 0
    ended = False
    for raw in stream:
        line = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
        n = len(raw) if isinstance(raw, bytes) else len(line.encode("utf-8"))
        blank = not line.strip()
        if documents == "line":
            if blank:
                blank_bytes += n
                continue
            if current:
                yield current, size
            current, size = [line], n
            continue
        if documents == "blank-line" and blank:
            blank_bytes += n
            ended = bool(current)
            continue
        if ended:
            yield current, size
            current, size, ended = [], 0, False
        current.append(line)
        size += n
    if current and any(line.strip() for line in current):
        yield current, size + blank_bytes


def file_documents(paths: Iterable[str], documents: str = "blank-line", text_field: str = "text",
                   storage_options: dict | None = None) -> Iterator[tuple[list[str], int]]:
    """``(lines, n_bytes)`` of each document of text files (pieces of one document split by
    the read block size are joined). The bytes the reader drops (blank lines) count with a
    file's last document, so the total is every byte of the input, as in `api.evaluate`."""
    options = ReadOptions(documents=documents, text_field=text_field,
                          storage_options=storage_options)
    for path in expand_corpus(list(paths), storage_options):
        pending, size, yielded = None, 0, 0
        stats = ReadStats()
        for pieces in iter_document_pieces(path, options, stats):
            for lines, starts in pieces:
                n = sum(len(line.encode("utf-8")) for line in lines)
                if pending is not None and not starts:
                    pending, size = pending + lines, size + n
                    continue
                if pending is not None:
                    yield pending, size
                    yielded += size
                pending, size = list(lines), n
        if pending is not None:
            yield pending, max(size, stats.bytes - yielded)


def score_documents(model: LanguageModel, documents: Iterable[tuple[list[str], int]],
                    per_token: bool = False) -> Iterator[dict]:
    """Records of scored documents, then a summary record (natural logarithms).

    Parameters
    ----------
    model : LanguageModel
    documents : iterable of (lines, n_bytes)
    per_token : bool
        One record per token ``{"document", "token", "text", "log_prob"}`` instead of one per
        document ``{"document", "tokens", "log_prob", "bytes"}``.

    Yields
    ------
    dict
        The last one is ``{"summary": True, "documents", "tokens", "bytes", "log_prob",
        "cross_entropy", "perplexity", "bits_per_byte"}``.

    Raises
    ------
    ValueError
        If the text is empty, or no document of it has a token.
    """
    totals = {"documents": 0, "tokens": 0, "bytes": 0, "log_prob": 0.0}
    size = 0
    texts: list[tuple[int, list[str], int]] = []
    for index, (lines, n_bytes) in enumerate(documents):
        texts.append((index, lines, n_bytes))
        size += sum(len(line) for line in lines)
        if size >= SCORE_BATCH * 4:  # about SCORE_BATCH tokens: one tokenizer call
            yield from _scored_batch(model, _encoded(model, texts), per_token, totals)
            texts, size = [], 0
    if texts:
        yield from _scored_batch(model, _encoded(model, texts), per_token, totals)
    if totals["documents"] == 0:
        raise ValueError("no text to score: the input is empty (or only blank lines)")
    if totals["tokens"] == 0:
        raise ValueError(f"no tokens to score: the text ({totals['bytes']} bytes) tokenizes to "
                         "nothing")
    ce = -totals["log_prob"] / totals["tokens"]
    yield {"summary": True, **totals, "cross_entropy": ce, "perplexity": math.exp(ce),
           "bits_per_byte": (-totals["log_prob"] / math.log(2) / totals["bytes"]
                             if totals["bytes"] else None)}


def _encoded(model: LanguageModel, texts) -> list[tuple[int, np.ndarray, int]]:
    encoded = model.encode_many([lines for _, lines, _ in texts])
    return [(index, ids, n_bytes) for (index, _, n_bytes), ids in zip(texts, encoded)]


def _scored_batch(model: LanguageModel, batch, per_token: bool, totals: dict) -> Iterator[dict]:
    docs = [ids for _, ids, _ in batch]
    contexts, targets = positions(docs, model.config.radius, model.bos_id)
    log_probs = np.zeros(0)
    if targets.size:
        log_probs = model.weights.target_log_probs(contexts, targets)
    at = 0
    for index, ids, n_bytes in batch:
        values = log_probs[at:at + ids.size]
        at += ids.size
        totals["documents"] += 1
        totals["tokens"] += int(ids.size)
        totals["bytes"] += int(n_bytes)
        totals["log_prob"] += float(values.sum())
        if per_token:
            for token, value in zip(ids.tolist(), values.tolist()):
                yield {"document": index, "token": token,
                       "text": model.tokenizer.decode([token], skip_special_tokens=False),
                       "log_prob": value}
        else:
            yield {"document": index, "tokens": int(ids.size), "log_prob": float(values.sum()),
                   "bytes": int(n_bytes)}

"""Scoring text with a finalized model, KenLM ``query`` style: per-document (or per-token)
log-probabilities as records, then a summary.

Documents are read as when counting (the store's ``documents`` mode: blank-line, line or
file), from files through `streamsolve.text.reading` or from a binary stream (stdin), and
tokenized line by line. Text comes in *pieces* ``(lines, n_bytes, starts)`` of at most about
a window of bytes (`streamsolve.documents.window_bytes`): a document longer than a window
is several pieces, the later ones continuing it (``starts`` False, their first positions
seeing the document's last ``radius`` tokens), and its record sums them. Pieces are scored in
batches of about `SCORE_BATCH` positions (one call of the O(nnz) scorer per batch), and
records are yielded as soon as their document is scored, so memory stays bounded however
long the input or any document in it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import numpy as np

from .core.positions import piece_positions
from .documents import trimmed_heap
from .language_model import LanguageModel
from .text.reading import DEFAULT_BLOCK_BYTES, ReadOptions, ReadStats, iter_document_pieces
from .text.shards import expand_corpus

#: Positions scored per call of the scorer.
SCORE_BATCH = 1 << 14


def stream_documents(stream, documents: str = "blank-line",
                     window: int = DEFAULT_BLOCK_BYTES) -> Iterator[tuple[list[str], int, bool]]:
    """Pieces ``(lines, n_bytes, starts)`` of the documents of a binary stream (UTF-8,
    invalid bytes replaced); a document of more than ``window`` bytes comes in pieces.

    ``documents``: "blank-line" (blank lines separate documents), "line" (each non-blank
    line is one) or "file" (the whole stream is one). Every byte of the stream is in some
    piece's ``n_bytes``: blank lines count with the stream's last document (as in
    `file_documents`), so the total is every byte, as `streamsolve.api.evaluate` counts.
    """
    current: list[str] = []
    size = blank_bytes = 0
    starts, ended = True, False
    for raw in stream:
        line = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
        n = len(raw) if isinstance(raw, bytes) else len(line.encode("utf-8"))
        blank = not line.strip()
        if documents == "line":
            if blank:
                blank_bytes += n
                continue
            if current:
                yield current, size, True
            current, size = [line], n
            continue
        if documents == "blank-line" and blank:
            blank_bytes += n
            ended = bool(current) or not starts
            continue
        if ended:
            if current:
                yield current, size, starts
            current, size, starts, ended = [], 0, True, False
        current.append(line)
        size += n
        if size >= window:  # a long document: this piece now, the rest continues it
            yield current, size, starts
            current, size, starts = [], 0, False
    if current and any(line.strip() for line in current):
        yield current, size + blank_bytes, starts
    elif not starts:  # the last document's last piece was already given: its blank bytes
        yield [], blank_bytes, False


def file_documents(paths: Iterable[str], documents: str = "blank-line", text_field: str = "text",
                   storage_options: dict | None = None, window: int = DEFAULT_BLOCK_BYTES
                   ) -> Iterator[tuple[list[str], int, bool]]:
    """Pieces ``(lines, n_bytes, starts)`` of the documents of text files, read ``window``
    bytes at a time (a document split by a read block continues in the next piece). The
    bytes the reader drops (blank lines) count with a file's last piece, so the total is
    every byte of the input, as in `api.evaluate`."""
    options = ReadOptions(documents=documents, text_field=text_field,
                          storage_options=storage_options, block_bytes=window)
    for path in expand_corpus(list(paths), storage_options):
        pending, yielded = None, 0
        stats = ReadStats()
        for pieces in iter_document_pieces(path, options, stats):
            for lines, starts in pieces:
                if pending is not None:
                    yield pending
                    yielded += pending[1]
                pending = (lines, sum(len(line.encode("utf-8")) for line in lines), starts)
        if pending is not None:  # the bytes read and not yet given: blank lines, not the
            lines, _, starts = pending  # newline the reader adds to an unended last line
            yield lines, max(0, stats.bytes - yielded), starts


def score_documents(model: LanguageModel, documents: Iterable[tuple],
                    per_token: bool = False, trim_above: int = 0) -> Iterator[dict]:
    """Records of scored documents, then a summary record (natural logarithms).

    Parameters
    ----------
    model : LanguageModel
    documents : iterable of (lines, n_bytes) or (lines, n_bytes, starts)
        Whole documents, or pieces of them (``starts`` False: the piece continues the
        document of the piece before it; the document's record sums its pieces).
    per_token : bool
        One record per token ``{"document", "token", "text", "log_prob"}`` instead of one per
        document ``{"document", "tokens", "log_prob", "bytes"}``.
    trim_above : int
        Resident bytes above which freed heap is given back after each batch is tokenized
        (`streamsolve.documents.heap_limit`; 0: never).

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
    scorer = _PieceScorer(model, per_token, trimmed_heap(trim_above))
    size = 0
    texts: list[tuple[list[str], int, bool]] = []
    for item in documents:
        texts.append((item[0], item[1], item[2] if len(item) > 2 else True))
        size += sum(len(line) for line in item[0])
        if size >= SCORE_BATCH * 4:  # about SCORE_BATCH tokens: one tokenizer call
            yield from scorer.score(texts)
            texts, size = [], 0
    if texts:
        yield from scorer.score(texts)
    yield from scorer.close()
    totals = scorer.totals
    if totals["documents"] == 0:
        raise ValueError("no text to score: the input is empty (or only blank lines)")
    if totals["tokens"] == 0:
        raise ValueError(f"no tokens to score: the text ({totals['bytes']} bytes) tokenizes to "
                         "nothing")
    ce = -totals["log_prob"] / totals["tokens"]
    yield {"summary": True, **totals, "cross_entropy": ce, "perplexity": math.exp(ce),
           "bits_per_byte": (-totals["log_prob"] / math.log(2) / totals["bytes"]
                             if totals["bytes"] else None)}


class _PieceScorer:
    """Scores batches of pieces, keeping the open document (its record and its last tokens)
    from one batch to the next."""

    def __init__(self, model: LanguageModel, per_token: bool, after_encoding=None):
        self.model = model
        self.per_token = per_token
        self.after_encoding = after_encoding  # heap trimming (`trimmed_heap`) or None
        self.totals = {"documents": 0, "tokens": 0, "bytes": 0, "log_prob": 0.0}
        self.record: dict | None = None  # the open document's
        self.history = np.zeros(0, dtype=np.int64)  # its last tokens

    def score(self, texts: list[tuple[list[str], int, bool]]) -> Iterator[dict]:
        """Records of the documents the pieces ``texts`` complete (per token: of their
        tokens)."""
        encoded = self.model.encode_many([lines for lines, _, _ in texts])
        if self.after_encoding is not None:
            self.after_encoding()
        starts = [begins or (i == 0 and self.record is None)
                  for i, (_, _, begins) in enumerate(texts)]
        log_probs = self._log_probs(encoded, starts)
        at = 0
        for (_, n_bytes, _), ids, begins in zip(texts, encoded, starts):
            values = log_probs[at:at + ids.size]
            at += ids.size
            if begins:
                yield from self.close()
                self.record = {"document": self.totals["documents"], "tokens": 0,
                               "log_prob": 0.0, "bytes": 0}
                self.totals["documents"] += 1
            log_prob = float(values.sum())
            for totals in (self.totals, self.record):
                totals["tokens"] += int(ids.size)
                totals["bytes"] += int(n_bytes)
                totals["log_prob"] += log_prob
            if self.per_token:
                yield from self._token_records(ids, values)

    def _log_probs(self, encoded: list[np.ndarray], starts: list[bool]) -> np.ndarray:
        """``log p`` of every position of a batch's pieces, in one scorer call (as many
        positions as a window holds at most: cutting a batch would change the last bits of
        later documents, the scorer caching each context's normaliser as first computed)."""
        model = self.model
        contexts, targets, self.history = piece_positions(
            encoded, starts, model.config.radius, model.bos_id, self.history)
        if not targets.size:
            return np.zeros(0)
        return model.weights.target_log_probs(contexts, targets)

    def _token_records(self, ids: np.ndarray, values: np.ndarray) -> Iterator[dict]:
        decode = self.model.tokenizer.decode
        for token, value in zip(ids.tolist(), values.tolist()):
            yield {"document": self.record["document"], "token": token,
                   "text": decode([token], skip_special_tokens=False), "log_prob": value}

    def close(self) -> Iterator[dict]:
        """The open document's record (none per token); the document is then closed."""
        if self.record is not None and not self.per_token:
            yield self.record
        self.record = None

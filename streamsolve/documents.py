"""Text to documents of token ids for evaluation and calibration (streamed, as counting reads it).

The same reader (`text.reading`) and the same line-safe encoder (`text.encoding.LineEncoder`)
as counting, so held-out text is tokenized exactly as the counts were.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import numpy as np

from .language_model import LanguageModel
from .text.encoding import LineEncoder
from .text.reading import (DEFAULT_BLOCK_BYTES, DEFAULT_MAX_LINE_BYTES, CorpusError,
                           ReadOptions, ReadStats, iter_document_pieces)
from .text.shards import expand_corpus


#: Share of a ``--memory`` budget that one window of text read by ``eval`` and ``score``
#: may take: a window costs about 20 times its bytes while it is tokenized and scored
#: (ids, positions, the scorer's batch), and a quarter of the budget caches weights.
WINDOW_SHARE = 1 / 256
#: Smallest window (a longer line is still read whole, up to the store's line bound).
MIN_WINDOW_BYTES = 64 << 10


def window_bytes(memory: str | int | None = None) -> int:
    """Bytes of text ``eval`` and ``score`` read and tokenize at a time within ``memory``
    (e.g. ``"1GB"``): the reader's block, at most `DEFAULT_BLOCK_BYTES` (its size without a
    budget). A document longer than a window is streamed window by window; the figures do
    not depend on the window size."""
    if memory is None:
        return DEFAULT_BLOCK_BYTES
    from .engine.memory import parse_memory

    return int(min(DEFAULT_BLOCK_BYTES,
                   max(MIN_WINDOW_BYTES, parse_memory(memory) * WINDOW_SHARE)))


def heap_limit(memory: str | int | None = None) -> int:
    """Resident bytes above which ``eval`` and ``score`` give freed heap back to the OS after
    each tokenizer batch, as counting does under a budget (half of ``memory``; 0: never).
    The tokenizer's threads leave 100-200 MB of freed pages in glibc's arenas per batch."""
    if memory is None:
        return 0
    from .engine.memory import parse_memory

    return parse_memory(memory) // 2


def trimmed_heap(trim_above: int):
    """The ``after_batch`` of a `LineEncoder` that keeps the heap under ``trim_above``
    resident bytes (None when 0); the allocator is tuned as for counting."""
    if not trim_above:
        return None
    from .engine.memory import release_free_memory, tune_allocator

    tune_allocator()
    return functools.partial(release_free_memory, trim_above)


def iter_token_pieces(paths: Sequence[str], model: LanguageModel, documents: str = "blank-line",
                      text_field: str = "text", storage_options: dict | None = None,
                      stats: ReadStats | None = None, max_line_bytes: int | None = None,
                      block_bytes: int = DEFAULT_BLOCK_BYTES, trim_above: int = 0):
    """Yield ``(ids, starts)`` pieces of documents of token ids from text files, streaming:
    at most about ``block_bytes`` of text at a time, whatever the length of a document.

    ``starts`` is False when a piece continues the document of the piece before it (a
    document longer than a read block); `LanguageModel.evaluate_ids` then carries the
    context over, so the figures are those of whole documents. Lines are tokenized as
    counting tokenizes them (`streamsolve.text.encoding.LineEncoder`; lines over
    ``max_line_bytes``, the store's bound, cut alike); with ``trim_above`` (`heap_limit`),
    freed heap is given back after each tokenizer batch. ``stats.bytes`` ends up holding every
    byte of the input text (decompressed; blank lines and newlines included; for JSON lines,
    the UTF-8 bytes of the text fields), so bits per byte compare with tools that score
    every byte.
    """
    options = ReadOptions(documents=documents, text_field=text_field,
                          storage_options=storage_options, block_bytes=block_bytes,
                          max_line_bytes=max_line_bytes or DEFAULT_MAX_LINE_BYTES)
    stats = stats if stats is not None else ReadStats()
    if model.tokenizer is None:
        raise ValueError("this model has no tokenizer; pass token ids")
    encoder = LineEncoder(model.tokenizer.to_str(), model.bos_id,
                          after_batch=trimmed_heap(trim_above))
    for path in expand_corpus(paths, storage_options):
        file_stats = ReadStats()
        for pieces in iter_document_pieces(path, options, file_stats):
            for (_, starts), (ids, _) in zip(pieces, encoder.encode_documents(pieces)):
                yield ids, starts
        stats.bytes += file_stats.bytes


def iter_token_documents(paths: Sequence[str], model: LanguageModel, documents: str = "blank-line",
                         text_field: str = "text", storage_options: dict | None = None,
                         stats: ReadStats | None = None, max_line_bytes: int | None = None):
    """Yield whole documents of token ids from text files (the pieces of `iter_token_pieces`
    joined: a document is held whole, so prefer the pieces for long documents)."""
    parts: list[np.ndarray] = []
    for ids, starts in iter_token_pieces(paths, model, documents, text_field, storage_options,
                                         stats, max_line_bytes):
        if starts and parts:
            yield parts[0] if len(parts) == 1 else np.concatenate(parts)
            parts = []
        parts.append(ids)
    if parts:
        yield parts[0] if len(parts) == 1 else np.concatenate(parts)


def read_documents(paths: Sequence[str], model: LanguageModel, documents: str = "blank-line",
                   text_field: str = "text", storage_options: dict | None = None,
                   max_line_bytes: int | None = None):
    """Tokenize text files into a list of documents of ids; returns ``(documents, n_bytes)``."""
    stats = ReadStats()
    docs = list(iter_token_documents(paths, model, documents, text_field, storage_options, stats,
                                     max_line_bytes))
    return docs, stats.bytes


def check_readable(paths: Sequence[str], storage_options: dict | None = None) -> list[str]:
    """The files ``paths`` expand to, each opened once to prove it is readable.

    Raises
    ------
    CorpusError
        Naming every path that matches nothing or cannot be read.
    """
    import fsspec

    files = expand_corpus(paths, storage_options)
    unreadable = []
    for path in files:
        if "://" not in path and not os.path.isfile(path):  # a FIFO or device would block
            unreadable.append(f"{path} (not a regular file)")
            continue
        try:
            with fsspec.open(path, "rb", **(storage_options or {})) as handle:
                handle.read(1)
        except OSError as exc:
            unreadable.append(f"{path} ({exc.strerror or exc})")
    if unreadable:
        raise CorpusError("cannot read: " + ", ".join(unreadable) + "; nothing was changed")
    return files

"""Text to documents of token ids for evaluation and calibration (streamed, as counting reads it).

The same reader (`text.reading`) and the same line-safe encoder (`text.encoding.LineEncoder`)
as counting, so held-out text is tokenized exactly as the counts were.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from .language_model import LanguageModel
from .text.encoding import LineEncoder
from .text.reading import (DEFAULT_MAX_LINE_BYTES, CorpusError, ReadOptions, ReadStats,
                           iter_document_pieces)
from .text.shards import expand_corpus


def iter_token_documents(paths: Sequence[str], model: LanguageModel, documents: str = "blank-line",
                         text_field: str = "text", storage_options: dict | None = None,
                         stats: ReadStats | None = None, max_line_bytes: int | None = None):
    """Yield documents of token ids from text files, streaming (block by block).

    Lines are tokenized as counting tokenizes them (`streamsolve.text.encoding.LineEncoder`;
    lines over ``max_line_bytes``, the store's bound, cut alike). A document split across
    read blocks is yielded in pieces that each restart the context only if ``starts`` says
    so; to keep evaluation exact, pieces of one document are joined. ``stats.bytes`` ends up
    holding every byte of the input text (decompressed; blank lines and newlines included;
    for JSON lines, the UTF-8 bytes of the text fields), so bits per byte compare with
    tools that score every byte.
    """
    options = ReadOptions(documents=documents, text_field=text_field,
                          storage_options=storage_options,
                          max_line_bytes=max_line_bytes or DEFAULT_MAX_LINE_BYTES)
    stats = stats if stats is not None else ReadStats()
    if model.tokenizer is None:
        raise ValueError("this model has no tokenizer; pass token ids")
    encoder = LineEncoder(model.tokenizer.to_str(), model.bos_id)
    for path in expand_corpus(paths, storage_options):
        pending = None
        file_stats = ReadStats()
        for pieces in iter_document_pieces(path, options, file_stats):
            for (lines, starts), (ids, _) in zip(pieces, encoder.encode_documents(pieces)):
                if pending is not None and not starts:
                    pending = np.concatenate([pending, ids])
                    continue
                if pending is not None:
                    yield pending
                pending = ids
        stats.bytes += file_stats.bytes
        if pending is not None:
            yield pending


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

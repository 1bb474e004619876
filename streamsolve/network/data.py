"""Positions for ``streamsolve train``: streamed from text shards, as ``eval`` makes them.

Text is read with the store's tokenizer and read options (`streamsolve.documents`, the
line-safe encoder), positions are BOS-padded contexts of K columns (offset 1 first;
`streamsolve.core.positions`), shuffled through a buffer of a fixed number of positions
(`streamsolve.refine.position_batches`), so memory is bounded by the buffer, never by the
corpus. The held-out set is kept in memory (optionally a uniform sample of it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

from ..core.positions import grouped_positions
from ..documents import iter_token_documents
from ..text.reading import ReadStats


def text_positions(paths: Sequence[str], model, read_meta: dict, columns: int,
                   storage_options: dict | None = None, stats: ReadStats | None = None,
                   group_tokens: int = 1 << 15) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(contexts (n, K), targets (n,))`` groups of the text files' positions, in order.

    ``model`` is the store's `LanguageModel` (tokenizer, BOS id); ``read_meta`` its
    ``read_options``; ``stats.bytes`` receives the bytes read (bits per byte).
    """
    docs = iter_token_documents(paths, model, read_meta.get("documents", "blank-line"),
                                read_meta.get("text_field", "text"), storage_options, stats,
                                read_meta.get("max_line_bytes"))
    yield from grouped_positions(docs, columns, model.bos_id, group_tokens)


@dataclasses.dataclass
class HeldOut:
    """The held-out positions evaluations score, and what they stand for.

    Attributes
    ----------
    contexts : ndarray (n, K)
    targets : ndarray (n,)
    total_tokens : int
        Positions of the whole held-out text (``n`` is a sample of them when smaller).
    bytes : int
        Bytes of the whole held-out text.
    """

    contexts: np.ndarray
    targets: np.ndarray
    total_tokens: int
    bytes: int

    @property
    def bytes_per_token(self) -> float:
        return self.bytes / self.total_tokens


def heldout_positions(paths: Sequence[str], model, read_meta: dict, columns: int,
                      storage_options: dict | None = None, cap: int | None = None,
                      seed: int = 0) -> HeldOut:
    """The held-out text's positions (a seeded uniform sample of ``cap`` when given).

    Raises
    ------
    ValueError
        The held-out text has no tokens.
    """
    stats = ReadStats()
    pairs = list(text_positions(paths, model, read_meta, columns, storage_options, stats))
    if not pairs or not sum(t.size for _, t in pairs):
        raise ValueError(f"the held-out text ({', '.join(map(str, paths))}) has no tokens: "
                         "give --heldout text with some")
    contexts = np.concatenate([c for c, _ in pairs])
    targets = np.concatenate([t for _, t in pairs])
    total = int(targets.size)
    if cap is not None and cap < total:
        take = np.sort(np.random.default_rng([seed, 0x4E1D]).choice(total, cap, replace=False))
        contexts, targets = contexts[take], targets[take]
    return HeldOut(contexts, targets, total, int(stats.bytes))


def training_batches(paths: Sequence[str], model, read_meta: dict, columns: int, batch: int,
                     storage_options: dict | None = None, epochs: int | None = None,
                     shuffle_positions: int = 1 << 16, seed: int = 0) -> Iterator:
    """Shuffled minibatches ``(LongTensor (B, K), LongTensor (B,))`` streamed from the
    training shards, ``epochs`` passes (None: until the caller stops)."""
    from ..refine import position_batches

    return position_batches(
        lambda: text_positions(paths, model, read_meta, columns, storage_options), batch,
        epochs, shuffle_positions, seed)

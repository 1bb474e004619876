"""The suffix n-gram blocks in an ingest (issue 24): counted beside the offsets, written
beside the offsets' row blocks.

`count_shard` keeps one `ShardNgrams` per shard (its own `ContextCarry`, reset where the
offsets' is, so both see the same documents) and adds block after block; shard results add
by `NgramCounts` ``+`` in the tree reduction (`merge_ngrams`), and `write_ngram_generation`
adds the committed generation's n-gram counts to the new ones and writes every order into the
new generation (`streamsolve.store.ngram_blocks`). Counts of a store counted in several
ingests equal those of one ingest of all its shards, bit for bit (the monoid of
`streamsolve.core.ngram_counts`).

Memory: a shard's pending blocks are merged every `PENDING_BLOCKS` blocks; the merged counts
stay in memory (they are not spilled to disk as the offsets' are).
"""

from __future__ import annotations

import logging

import numpy as np

from ..core.counting import CountConfig
from ..core.ngram_counts import NgramConfig, NgramCounts, count_ngram_flat, merge_ngram_counts, \
    new_carry
from ..store import ngram_blocks
from .memory import PENDING_BLOCKS

logger = logging.getLogger(__name__)


def ngram_config(config: CountConfig) -> NgramConfig | None:
    """The n-gram configuration of a count configuration (None without ``--ngram``)."""
    if not getattr(config, "ngram", 0):
        return None
    return NgramConfig(config.vocab_size, config.ngram, config.bos_id)


class ShardNgrams:
    """A shard's n-gram counts, block by block (a no-op without ``--ngram``)."""

    def __init__(self, config: CountConfig):
        self.config = ngram_config(config)
        self.carry = new_carry(self.config) if self.config is not None else None
        self.merged = NgramCounts.empty(self.config) if self.config is not None else None
        self.pending: list[NgramCounts] = []

    def add(self, flat: np.ndarray, lengths: np.ndarray, continues: bool) -> None:
        """Count one encoded block (the arguments of `streamsolve.core.counting.count_flat`)."""
        if self.config is None:
            return
        self.pending.append(count_ngram_flat(flat, lengths, continues, self.config, self.carry))
        if len(self.pending) >= PENDING_BLOCKS:
            self.flush()

    def reset(self) -> None:
        """A held-out run ended the document: the next block starts a new context."""
        if self.carry is not None:
            self.carry.reset()

    def flush(self) -> NgramCounts | None:
        if self.pending:
            self.merged = merge_ngram_counts(self.merged, *self.pending)
            self.pending = []
        return self.merged

    def discard(self) -> None:
        """Drop everything counted (a shard found binary late)."""
        if self.config is not None:
            self.merged, self.pending = NgramCounts.empty(self.config), []
            self.carry = new_carry(self.config)


def merge_ngrams(results) -> NgramCounts | None:
    """The sum of the shard results' n-gram counts (None without ``--ngram``)."""
    parts = [r.ngram for r in results if getattr(r, "ngram", None) is not None]
    return merge_ngram_counts(*parts) if parts else None


def write_ngram_generation(store, generation: int, base: int | None,
                           new: NgramCounts | None) -> dict | None:
    """Write the generation's n-gram counts: ``new`` plus the ``base`` generation's.

    Returns the per-order summary recorded with the generation (None without n-grams).
    """
    config = ngram_config(store.config)
    if config is None:
        return None
    total = new if new is not None else NgramCounts.empty(config)
    if base is not None:
        total = ngram_blocks.read_ngram_counts(store, base, config) + total
    summary = ngram_blocks.write_ngram_counts(store, generation, total)
    logger.info("n-gram counts: distinct contexts per order %s, entries %s",
                summary["contexts"], summary["entries"])
    return summary

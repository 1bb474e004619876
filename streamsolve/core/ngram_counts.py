"""N-gram counting: the sufficient statistics of the suffix n-gram blocks (DESIGN §3c).

For a target ``w[t]`` and an order k = 2..N, the active row of block k is the suffix
``s_k = (w[t-k+1], ..., w[t-1])`` of its context, BOS-padded at document starts exactly as
`streamsolve.core.counting` pads the offsets (a document is preceded by N - 1 BOS ids, so
``s_k`` of an early position holds BOS for every place before the document); the statistic
is ``F^(k)[s, j] = #(suffix s then target j)``, the k-gram counts, exact int64.

Layout of one order (`OrderCounts`), a CSR over the distinct suffixes:

- ``keys``: the distinct suffix keys, ascending, each the k - 1 ids packed most recent first
  (`streamsolve.core.ngram_keys`: one ``uint64`` when ``(k - 1) * bits <= 64``, else a
  structured key of several ``uint64`` words; ``bits`` = bits of the largest id);
- ``indptr`` (int64, rows + 1), ``targets`` (int32, ascending within a row), ``counts``
  (int64, >= 1): row i's targets and counts are ``targets[indptr[i]:indptr[i + 1]]``.

`NgramCounts` (orders 2..N, the target unigram counts, reading statistics) is a monoid like
`streamsolve.core.counting.Counts`: ``a + b`` is associative and commutative, `empty` is its
identity, and the arrays do not depend on how documents were split into shards or the order
the shards were added — bit for bit. Counting is a pure function of one block of documents.
Pure numpy: no I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

from . import ngram_keys
from .counting import ContextCarry, flatten_sequences, pad_sequences
from .ngram_keys import KeyLayout


@dataclasses.dataclass(frozen=True)
class NgramConfig:
    """What is counted.

    Parameters
    ----------
    vocab_size : int
        Number of token ids V (ids 0..V-1, the BOS id included).
    order : int
        The largest n-gram order N (>= 2): blocks k = 2..N, suffixes of k - 1 tokens.
    bos_id : int
        Id padding the context before a document's first tokens.
    """

    vocab_size: int
    order: int = 5
    bos_id: int = 0

    def __post_init__(self):
        if not isinstance(self.order, (int, np.integer)) or self.order < 2:
            raise ValueError(f"n-gram order must be an integer >= 2, got {self.order!r}")
        if not 2 <= self.vocab_size <= 1 << 31:  # targets are int32
            raise ValueError(f"vocab_size must be in 2..2**31, got {self.vocab_size}")
        if not 0 <= self.bos_id < self.vocab_size:
            raise ValueError(f"bos_id {self.bos_id} outside the vocabulary 0..{self.vocab_size - 1}")

    @property
    def radius(self) -> int:
        """Context tokens a position needs: N - 1 (what `ContextCarry` keeps)."""
        return self.order - 1

    @property
    def bits(self) -> int:
        """Bits per token id in a key."""
        return ngram_keys.vocabulary_bits(self.vocab_size)

    def suffix_layout(self, k: int) -> KeyLayout:
        """Key layout of the order-k suffixes (k - 1 tokens)."""
        return KeyLayout(self.bits, k - 1)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class SuffixRows:
    """What a CSR over suffixes (``indptr``, ``targets``) says of its shape."""

    indptr: np.ndarray
    targets: np.ndarray

    @property
    def rows(self) -> int:
        """Number of suffixes (rows)."""
        return int(self.indptr.size - 1)

    @property
    def nnz(self) -> int:
        """Number of (suffix, target) entries."""
        return int(self.targets.size)

    def entry_rows(self) -> np.ndarray:
        """The row of every entry (int64)."""
        return np.repeat(np.arange(self.rows, dtype=np.int64), np.diff(self.indptr))


@dataclasses.dataclass
class OrderCounts(SuffixRows):
    """The counts of one order k, a CSR over its distinct suffixes (module doc).

    Attributes
    ----------
    order : int
    keys : ndarray
        Distinct suffix keys, ascending (``uint64`` or a structured wide key).
    indptr : ndarray of int64, shape (rows + 1,)
    targets : ndarray of int32
    counts : ndarray of int64
    """

    order: int
    keys: np.ndarray
    indptr: np.ndarray
    targets: np.ndarray
    counts: np.ndarray

    @classmethod
    def empty(cls, config: NgramConfig, k: int) -> "OrderCounts":
        return cls(k, config.suffix_layout(k).empty(), np.zeros(1, np.int64),
                   np.zeros(0, np.int32), np.zeros(0, np.int64))

    @classmethod
    def from_grams(cls, config: NgramConfig, k: int, grams: np.ndarray,
                   counts: np.ndarray) -> "OrderCounts":
        """The CSR of sorted distinct k-gram keys (suffix key, target appended) and counts."""
        layout = KeyLayout(config.bits, k)
        if grams.size == 0:
            return cls.empty(config, k)
        rows = layout.drop_last(grams)
        starts = ngram_keys.run_starts(rows)
        return cls(k, rows[starts], np.r_[starts, grams.size].astype(np.int64),
                   layout.last(grams).astype(np.int32), np.asarray(counts, dtype=np.int64))

    def grams(self, config: NgramConfig) -> np.ndarray:
        """The k-gram key of every entry (suffix key with the target appended), ascending."""
        return config.suffix_layout(self.order).append(
            np.repeat(self.keys, np.diff(self.indptr)), self.targets)

    def equal(self, other: "OrderCounts") -> bool:
        """Whether both hold the same arrays, bit for bit."""
        return (self.order == other.order and self.keys.dtype == other.keys.dtype
                and all(np.array_equal(a, b) for a, b in
                        zip(self.arrays(), other.arrays())))

    def arrays(self) -> tuple:
        return self.keys, self.indptr, self.targets, self.counts

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays())


@dataclasses.dataclass
class NgramCounts:
    """The n-gram counts of one or more blocks of documents; ``a + b`` adds them.

    Attributes
    ----------
    config : NgramConfig
    orders : list of OrderCounts
        Orders 2..N (``orders[k - 2]`` is order k; see `order`).
    unigram : ndarray of int64, shape (V,)
        Target counts n_j.
    stats : dict
        Summed statistics (``tokens``, ...).
    """

    config: NgramConfig
    orders: list
    unigram: np.ndarray
    stats: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def empty(cls, config: NgramConfig) -> "NgramCounts":
        """The identity of ``+``."""
        return cls(config, [OrderCounts.empty(config, k) for k in range(2, config.order + 1)],
                   np.zeros(config.vocab_size, dtype=np.int64))

    def order(self, k: int) -> OrderCounts:
        """The counts of order k (2..N)."""
        if not 2 <= k <= self.config.order:
            raise ValueError(f"order {k} outside 2..{self.config.order}")
        return self.orders[k - 2]

    @property
    def tokens(self) -> int:
        """Number of targets counted."""
        return int(self.unigram.sum())

    def __add__(self, other: "NgramCounts") -> "NgramCounts":
        if not isinstance(other, NgramCounts):
            return NotImplemented
        return merge_ngram_counts(self, other)

    def equal_counts(self, other: "NgramCounts") -> bool:
        """Whether the counts (not the statistics) are identical, bit for bit."""
        return (self.config == other.config and np.array_equal(self.unigram, other.unigram)
                and all(a.equal(b) for a, b in zip(self.orders, other.orders)))

    @property
    def nbytes(self) -> int:
        """Bytes of the count arrays."""
        return self.unigram.nbytes + sum(o.nbytes for o in self.orders)


def merge_ngram_counts(*parts: NgramCounts) -> NgramCounts:
    """Add any number of `NgramCounts` at once (one node of a tree reduction).

    Each order's k-gram keys of all parts are sorted together and equal keys' counts added,
    so the result is the same for any order and grouping of the parts.
    """
    if not parts:
        raise ValueError("nothing to merge")
    config = parts[0].config
    for part in parts[1:]:
        if part.config != config:
            raise ValueError(f"cannot add n-gram counts of different configurations: "
                             f"{config} vs {part.config}")
    orders = []
    for k in range(2, config.order + 1):
        present = [p.order(k) for p in parts if p.order(k).nnz]
        if len(present) <= 1:
            orders.append(present[0] if present else OrderCounts.empty(config, k))
            continue
        grams, counts = ngram_keys.add_counted([o.grams(config) for o in present],
                                               [o.counts for o in present])
        orders.append(OrderCounts.from_grams(config, k, grams, counts))
    stats: dict = {}
    for part in parts:
        for name, value in part.stats.items():
            stats[name] = stats.get(name, 0) + value
    return NgramCounts(config, orders, np.sum([p.unigram for p in parts], axis=0), stats)


def count_ngram_flat(flat: np.ndarray, lengths: np.ndarray, continues: bool,
                     config: NgramConfig, carry: ContextCarry | None = None) -> NgramCounts:
    """Count the n-grams of concatenated token-id sequences, vectorised.

    Parameters
    ----------
    flat : ndarray
        Token ids of all sequences, concatenated.
    lengths : ndarray of int
        Length of each sequence (they sum to ``flat.size``).
    continues : bool
        Whether the first sequence continues the document carried in ``carry``.
    config : NgramConfig
    carry : ContextCarry, optional
        The last N - 1 ids of an unfinished document (``ContextCarry(config)``); updated.

    Returns
    -------
    NgramCounts
    """
    padded, positions = pad_sequences(np.asarray(flat, dtype=np.int64), lengths, continues,
                                      config, np.uint64, carry)
    if positions.size * config.vocab_size >= 1 << 62:
        raise ValueError(f"{positions.size} positions are too many for one block of a "
                         f"{config.vocab_size}-id vocabulary: count smaller blocks")
    targets = padded[positions]
    suffix, ranked = padded[positions - 1], None
    orders = []
    for k in range(2, config.order + 1):
        if k > 2:  # the next older token becomes the suffix's last digit
            digit = padded[positions - (k - 1)]
            if suffix is not None and config.suffix_layout(k).narrow:
                suffix, ranked = config.suffix_layout(k - 1).append(suffix, digit), None
            else:
                ranked = _extend_ranks(config, k, ranked or _ranks(suffix), digit)
                suffix = None
        if suffix is not None and KeyLayout(config.bits, k).narrow:
            grams, counts = ngram_keys.count_distinct(config.suffix_layout(k).append(suffix, targets))
            orders.append(OrderCounts.from_grams(config, k, grams, counts))
        else:
            ranked = ranked or _ranks(suffix)
            orders.append(_count_ranked(config, k, ranked, targets))
    unigram = np.bincount(targets.astype(np.int64), minlength=config.vocab_size)
    return NgramCounts(config, orders, unigram.astype(np.int64), {"tokens": int(targets.size)})


def _ranks(suffix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(distinct suffix keys, each position's index among them)`` of narrow suffixes."""
    table, rank = np.unique(suffix, return_inverse=True)
    return table, rank.reshape(-1).astype(np.int64)


def _extend_ranks(config: NgramConfig, k: int, ranked: tuple, digit: np.ndarray) -> tuple:
    """The ranks of the order-k suffixes from those of order k - 1 and the older digit:
    ``rank * V + digit`` orders the suffixes as their keys do, so no wide key is sorted."""
    table, rank = ranked
    pairs, rank = np.unique(rank * config.vocab_size + digit.astype(np.int64),
                            return_inverse=True)
    keys = config.suffix_layout(k - 1).append(table[pairs // config.vocab_size],
                                              pairs % config.vocab_size)
    return keys, rank.reshape(-1)


def _count_ranked(config: NgramConfig, k: int, ranked: tuple, targets: np.ndarray) -> OrderCounts:
    """Order k counted as ``rank * V + target`` int64 pairs (used when the k-gram key would
    be wider than 64 bits): one integer sort, then the rows' keys from the rank table."""
    table, rank = ranked
    V = config.vocab_size
    pairs, counts = ngram_keys.count_distinct(rank * V + targets.astype(np.int64))
    rows = pairs // V
    starts = ngram_keys.run_starts(rows)
    return OrderCounts(k, table[rows[starts]], np.r_[starts, pairs.size].astype(np.int64),
                       (pairs % V).astype(np.int32), counts)


def count_ngram_sequences(sequences: Sequence[tuple[np.ndarray, bool]], config: NgramConfig,
                          carry: ContextCarry | None = None) -> NgramCounts:
    """Count the n-grams of a block of token-id sequences (as `counting.count_sequences`).

    Parameters
    ----------
    sequences : sequence of (ids, starts_document)
        Token ids of each document or piece of one; only the first piece of a block may
        continue a document (``starts_document`` False), with ``carry`` holding its context.
    config : NgramConfig
    carry : ContextCarry, optional

    Returns
    -------
    NgramCounts
    """
    return count_ngram_flat(*flatten_sequences(sequences), config, carry)


def count_ngram_documents(documents: Iterable[Sequence[int]], config: NgramConfig) -> NgramCounts:
    """Count whole documents given as token-id sequences (in-memory convenience)."""
    return count_ngram_sequences([(np.asarray(d, dtype=np.int64), True) for d in documents],
                                 config)


def new_carry(config: NgramConfig) -> ContextCarry:
    """An empty carry of the last N - 1 ids of an unfinished document."""
    return ContextCarry(config)

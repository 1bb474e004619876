"""Counting: token ids to the sufficient statistics of DESIGN §2, as a mergeable monoid.

For target position t and offset r = 1..R the context token is ``w[t - r]``; positions
before the start of a document see the BOS id (every target has exactly R context tokens,
so the model is one softmax layer over D = R·V one-hot features for ``cat``). A pair is
encoded as the key ``context * V + target`` (int64); counts are exact int64.

`Counts` objects add: ``a + b`` is associative and commutative with `Counts.empty` as the
identity, so the result does not depend on sharding, order, or number of workers.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence

import numpy as np

from . import native

logger = logging.getLogger(__name__)

AGGREGATIONS = ("cat", "sum")
#: Largest order of the suffix n-gram blocks (``CountConfig.ngram``).
MAX_NGRAM = 6


@dataclasses.dataclass(frozen=True)
class CountConfig:
    """What is counted.

    Parameters
    ----------
    vocab_size : int
        Number of token ids V (targets and context tokens are in 0..V-1).
    radius : int
        Number of context offsets R (1 = bigram).
    aggregation : {"cat", "sum"}
        ``cat``: one V x V block per offset; ``sum``: one V x V block, the bag of context.
    bos_id : int
        Id padding the context before a document's first tokens.
    ngram : int
        Largest order N of the suffix n-gram blocks counted beside the offsets
        (`streamsolve.core.ngram_counts`; 0: none).
    """

    vocab_size: int
    radius: int = 3
    aggregation: str = "cat"
    bos_id: int = 0
    ngram: int = 0

    def __post_init__(self):
        if not isinstance(self.radius, (int, np.integer)) or self.radius < 1:
            raise ValueError(f"radius must be an integer >= 1, got {self.radius!r}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(
                f"aggregation must be 'cat' or 'sum', got {self.aggregation!r}")
        if self.vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {self.vocab_size}")
        if self.vocab_size > 3_000_000_000:
            raise ValueError("vocab_size too large for int64 pair keys")
        if not 0 <= self.bos_id < self.vocab_size:
            raise ValueError(f"bos_id {self.bos_id} outside the vocabulary 0..{self.vocab_size - 1}")
        if not (isinstance(self.ngram, (int, np.integer))
                and (self.ngram == 0 or 2 <= self.ngram <= MAX_NGRAM)):
            raise ValueError(f"--ngram must be an integer in 2..{MAX_NGRAM}, got {self.ngram!r}")

    @property
    def n_blocks(self) -> int:
        """Number of V x V count blocks: R for ``cat``, 1 for ``sum``."""
        return self.radius if self.aggregation == "cat" else 1

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        if not self.ngram:  # stores without n-gram blocks keep their attributes as before
            del out["ngram"]
        return out


def sum_duplicates(keys: np.ndarray, values: np.ndarray | None = None,
                   key_bound: int | None = None,
                   overwrite: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Sort keys and add the values of equal keys (values default to 1 per key).

    ``key_bound`` (all keys are below it), when at most 2**32 and without ``values``, sorts
    uint32 keys with the radix kernel of `streamsolve.core.native` (``overwrite``: the keys may
    serve as its buffer); the result is int64 either way.
    """
    if keys.size == 0:
        return keys.astype(np.int64), np.zeros(0, dtype=np.int64)
    if values is None:
        if key_bound is not None and key_bound <= 1 << 32:
            return native.count_keys_u32(keys, key_bound, overwrite=overwrite)
        unique, counts = np.unique(keys, return_counts=True)
        return unique, counts.astype(np.int64)
    return native.add_duplicates(keys, values)


def merge_sorted(keys_a, values_a, keys_b, values_b) -> tuple[np.ndarray, np.ndarray]:
    """Merge two sorted (key, count) lists, adding counts of equal keys."""
    if keys_a.size == 0:
        return keys_b, values_b
    if keys_b.size == 0:
        return keys_a, values_a
    return native.merge_runs([keys_a, keys_b], [values_a, values_b])


@dataclasses.dataclass
class Counts:
    """Sparse co-occurrence counts, unigram counts and provenance of one or more shards.

    Attributes
    ----------
    config : CountConfig
    keys : list of ndarray
        Per block (offset for ``cat``), sorted unique int64 keys ``context * V + target``.
    values : list of ndarray
        Per block, the int64 count of each key.
    unigram : ndarray
        Target counts n_j (int64, length V).
    stats : dict
        Summed reading statistics (bytes, lines, documents, invalid_bytes, ...).
    shards : list of dict
        Manifest entries of the shards counted.
    """

    config: CountConfig
    keys: list
    values: list
    unigram: np.ndarray
    stats: dict = dataclasses.field(default_factory=dict)
    shards: list = dataclasses.field(default_factory=list)

    @classmethod
    def empty(cls, config: CountConfig) -> "Counts":
        """The identity of ``+``."""
        zero = np.zeros(0, dtype=np.int64)
        return cls(config, [zero] * config.n_blocks, [zero] * config.n_blocks,
                   np.zeros(config.vocab_size, dtype=np.int64))

    @property
    def tokens(self) -> int:
        """Number of targets counted (N)."""
        return int(self.unigram.sum())

    @property
    def nnz(self) -> list[int]:
        """Distinct (context, target) pairs per block."""
        return [int(k.size) for k in self.keys]

    def __add__(self, other: "Counts") -> "Counts":
        if not isinstance(other, Counts):
            return NotImplemented
        if self.config != other.config:
            raise ValueError(f"cannot add counts of different configurations: "
                             f"{self.config} vs {other.config}")
        keys, values = [], []
        for ka, va, kb, vb in zip(self.keys, self.values, other.keys, other.values):
            k, v = merge_sorted(ka, va, kb, vb)
            keys.append(k)
            values.append(v)
        stats = dict(self.stats)
        for name, value in other.stats.items():
            stats[name] = stats.get(name, 0) + value
        return Counts(self.config, keys, values, self.unigram + other.unigram, stats,
                      self.shards + other.shards)

    def equal_counts(self, other: "Counts") -> bool:
        """Whether the count statistics (not the provenance) are identical, bit for bit."""
        return (self.config == other.config
                and np.array_equal(self.unigram, other.unigram)
                and all(np.array_equal(a, b) for a, b in zip(self.keys, other.keys))
                and all(np.array_equal(a, b) for a, b in zip(self.values, other.values)))

    def block_csr(self, block: int):
        """Block ``block`` as a ``scipy.sparse.csr_array`` of shape (V, V), int64."""
        import scipy.sparse as sp

        V = self.config.vocab_size
        k = self.keys[block]
        return sp.csr_array((self.values[block], (k // V, k % V)), shape=(V, V))

    def dense(self, block: int) -> np.ndarray:
        """Block ``block`` as a dense V x V array (small vocabularies only)."""
        V = self.config.vocab_size
        out = np.zeros(V * V, dtype=np.int64)
        out[self.keys[block]] = self.values[block]
        return out.reshape(V, V)


def merge_counts(*parts: Counts) -> Counts:
    """Add any number of `Counts` (one node of a tree reduction).

    Same result as ``a + b + ...``, but each block's sorted parts are merged in one pass
    (`streamsolve.core.native.merge_runs`) instead of a chain of pairwise merges.
    """
    if len(parts) <= 2:
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        return total
    config = parts[0].config
    for part in parts[1:]:
        if part.config != config:
            raise ValueError(f"cannot add counts of different configurations: "
                             f"{config} vs {part.config}")
    keys, values = [], []
    for b in range(config.n_blocks):
        ks = [p.keys[b] for p in parts if p.keys[b].size]
        vs = [p.values[b] for p in parts if p.keys[b].size]
        if len(ks) <= 1:
            keys.append(ks[0] if ks else np.zeros(0, np.int64))
            values.append(vs[0] if vs else np.zeros(0, np.int64))
            continue
        k, v = native.merge_runs(ks, vs)
        keys.append(k)
        values.append(v)
    stats: dict = {}
    for part in parts:
        for name, value in part.stats.items():
            stats[name] = stats.get(name, 0) + value
    unigram = np.sum([p.unigram for p in parts], axis=0)
    return Counts(config, keys, values, unigram, stats, [s for p in parts for s in p.shards])


class ContextCarry:
    """The last R ids of an unfinished document, carried from one block to the next."""

    def __init__(self, config: CountConfig):
        self.config = config
        self.tail = np.full(config.radius, config.bos_id, dtype=np.int64)

    def reset(self):
        self.tail[:] = self.config.bos_id


def count_sequences(sequences: Sequence[tuple[np.ndarray, bool]], config: CountConfig,
                    carry: ContextCarry | None = None) -> Counts:
    """Count the pairs of a block of token-id sequences, vectorised.

    Parameters
    ----------
    sequences : sequence of (ids, starts_document)
        Token ids of each document (or piece of one). A piece with ``starts_document``
        False continues the previous piece (only the first piece of a block may).
    config : CountConfig
    carry : ContextCarry, optional
        Context of an unfinished document from the previous block; updated in place.

    Returns
    -------
    Counts
    """
    return count_flat(*flatten_sequences(sequences), config, carry)


def flatten_sequences(sequences: Sequence[tuple[np.ndarray, bool]]
                      ) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(flat ids, lengths, continues)`` of a block of ``(ids, starts_document)`` pieces,
    checking that only the first piece continues a document."""
    for ids, starts in sequences[1:]:
        if not starts:
            raise ValueError("only the first piece of a block may continue a document")
    lengths = np.fromiter((len(ids) for ids, _ in sequences), dtype=np.int64,
                          count=len(sequences))
    flat = (np.concatenate([np.asarray(ids, dtype=np.int64) for ids, _ in sequences])
            if len(sequences) else np.zeros(0, np.int64))
    return flat, lengths, bool(sequences) and not sequences[0][1]


def pad_sequences(flat: np.ndarray, lengths: np.ndarray, continues: bool, config,
                  dtype, carry: ContextCarry | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated sequences, each after ``config.radius`` BOS ids (or, for a first piece
    that ``continues`` a document, the ids carried from it), and the target positions.

    Parameters as `count_flat` (``config`` needs ``radius``, ``vocab_size``, ``bos_id``);
    ``dtype``: of the padded array. Returns ``(padded, positions)``: every id of ``flat`` at
    ``padded[positions]``, its context at offset r at ``padded[positions - r]``, r <= radius.
    """
    R, V = config.radius, config.vocab_size
    lengths = np.asarray(lengths, dtype=np.int64)
    n_seq = lengths.size
    n_targets = int(lengths.sum())
    if n_targets != flat.size:
        raise ValueError(f"lengths sum to {n_targets} but {flat.size} ids were given")
    total = n_targets + R * n_seq
    padded = np.full(total, config.bos_id, dtype=dtype)
    is_target = np.ones(total, dtype=bool)
    seg_starts = np.concatenate([[0], np.cumsum(lengths + R)[:-1]]) if n_seq else np.zeros(0, np.int64)
    for offset in range(R):
        is_target[seg_starts + offset] = False
    if n_targets:
        if flat.min() < 0 or flat.max() >= V:
            raise ValueError(f"token id outside 0..{V - 1}: the tokenizer does not match the vocabulary size")
        padded[is_target] = flat
    if carry is not None and n_seq:
        if continues:
            padded[:R] = carry.tail
        last_start = seg_starts[-1]
        tail = padded[last_start:last_start + R + lengths[-1]][-R:]
        carry.tail[:] = tail
    return padded, np.flatnonzero(is_target)


def count_flat(flat: np.ndarray, lengths: np.ndarray, continues: bool, config: CountConfig,
               carry: ContextCarry | None = None) -> Counts:
    """Count the pairs of concatenated token-id sequences (the fast path of `count_sequences`).

    Parameters
    ----------
    flat : ndarray
        Token ids of all sequences, concatenated.
    lengths : ndarray of int
        Length of each sequence (they sum to ``flat.size``).
    continues : bool
        Whether the first sequence continues the document carried in ``carry``.
    config : CountConfig
    carry : ContextCarry, optional
        Context of an unfinished document from the previous block; updated in place.

    Returns
    -------
    Counts
    """
    R, V = config.radius, config.vocab_size
    # Pair keys fit in uint32 up to V = 65536: half the memory traffic of int64, and the
    # radix kernel's key type.
    key_type = np.uint32 if V * V <= 1 << 32 else np.int64
    padded, positions = pad_sequences(flat, lengths, continues, config, key_type, carry)
    n_targets = positions.size
    targets = padded[positions]
    scale = key_type(V)

    def offset_keys(r: int) -> np.ndarray:
        return padded[positions - r] * scale + targets

    keys, values = [], []
    if config.aggregation == "cat":
        for r in range(1, R + 1):  # one offset's keys at a time: less memory
            k, v = sum_duplicates(offset_keys(r), key_bound=V * V, overwrite=True)
            keys.append(k)
            values.append(v)
    else:
        k, v = sum_duplicates(np.concatenate([offset_keys(r) for r in range(1, R + 1)]),
                              key_bound=V * V, overwrite=True)
        keys.append(k)
        values.append(v)
    unigram = np.bincount(targets, minlength=V).astype(np.int64)
    return Counts(config, keys, values, unigram, {"tokens": n_targets})


def count_token_documents(documents: Iterable[Sequence[int]], config: CountConfig) -> Counts:
    """Count whole documents given as token-id sequences (in-memory convenience)."""
    return count_sequences([(np.asarray(d, dtype=np.int64), True) for d in documents], config)

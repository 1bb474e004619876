"""Exact keys of n-gram contexts: token ids packed into integers that sort like tuples.

A key holds ``digits`` token ids of ``bits`` bits each (``bits`` = `vocabulary_bits`, the
bits of the largest id), the first digit most significant. The n-gram modules put the most
recent token first: the suffix ``s = (w[t-k+1], ..., w[t-1])`` of order k is the key of the
digits ``(w[t-1], w[t-2], ..., w[t-k+1])``, so

- dropping the oldest token (the back-off suffix ``s'``) is dropping the last digit, a shift
  right (`KeyLayout.drop_last`): keys sharing ``s'`` are one contiguous run, and a sorted run
  of order-k keys maps to a sorted run of order-(k-1) keys;
- the k-gram ``(s, j)`` is ``s`` with the target appended as the last digit
  (`KeyLayout.append`), so sorted k-gram keys are row-major: by suffix, then by target.

**Narrow** keys (``digits * bits <= 64``) are one ``uint64``. **Wide** keys are a structured
dtype of ``words`` little-endian ``uint64`` fields ``w0, w1, ...``: word ``w`` holds the digits
``w * per_word .. (w + 1) * per_word - 1`` (``per_word = 64 // bits``, none split across
words), packed the same way, and numpy compares structured values field by field, so wide keys
sort like the tuples of their digits too. Both are exact and invertible (`KeyLayout.unpack`):
no hashing.

The helpers sort, count, merge and search 1-D key arrays of either kind. Pure numpy.
"""

from __future__ import annotations

import dataclasses

import numpy as np

#: Bits of one key word.
WORD_BITS = 64


def vocabulary_bits(vocab_size: int) -> int:
    """Bits per token id of a vocabulary of ``vocab_size`` ids (0..V-1); at least 1.

    Examples
    --------
    >>> vocabulary_bits(8192), vocabulary_bits(8193), vocabulary_bits(2)
    (13, 14, 1)
    """
    return max(1, int(vocab_size - 1).bit_length())


@dataclasses.dataclass(frozen=True)
class KeyLayout:
    """How ``digits`` token ids of ``bits`` bits are packed into one key (module doc)."""

    bits: int
    digits: int

    def __post_init__(self):
        if not 1 <= self.bits <= 32:
            raise ValueError(f"token ids of {self.bits} bits are not supported (1..32)")
        if self.digits < 1:
            raise ValueError(f"a key holds at least one token, got {self.digits}")

    @property
    def per_word(self) -> int:
        """Digits per 64-bit word."""
        return WORD_BITS // self.bits

    @property
    def words(self) -> int:
        """64-bit words per key."""
        return -(-self.digits // self.per_word)

    @property
    def narrow(self) -> bool:
        """Whether a key is one ``uint64``."""
        return self.digits * self.bits <= WORD_BITS

    @property
    def dtype(self) -> np.dtype:
        """``uint64`` (narrow) or the structured dtype of the words (wide)."""
        if self.narrow:
            return np.dtype(np.uint64)
        return np.dtype([(f"w{w}", "<u8") for w in range(self.words)])

    def with_digits(self, digits: int) -> "KeyLayout":
        return KeyLayout(self.bits, digits)

    def empty(self) -> np.ndarray:
        return np.zeros(0, dtype=self.dtype)

    def _word_digits(self, word: int) -> range:
        return range(word * self.per_word, min(self.digits, (word + 1) * self.per_word))

    def pack(self, columns) -> np.ndarray:
        """Keys of the digit columns (``digits`` integer arrays, most significant first)."""
        columns = [np.asarray(c).astype(np.uint64) for c in columns]
        if len(columns) != self.digits:
            raise ValueError(f"need {self.digits} digit columns, got {len(columns)}")
        shift = np.uint64(self.bits)
        if self.narrow:
            return _pack_word(columns, shift)
        out = np.empty(columns[0].size, dtype=self.dtype)
        for w in range(self.words):
            out[f"w{w}"] = _pack_word([columns[d] for d in self._word_digits(w)], shift)
        return out

    def unpack(self, keys: np.ndarray) -> list[np.ndarray]:
        """The digit columns of keys (int64, most significant first)."""
        if self.narrow:
            return _unpack_word(keys, self.digits, self.bits)
        columns = []
        for w in range(self.words):
            columns += _unpack_word(keys[f"w{w}"], len(self._word_digits(w)), self.bits)
        return columns

    def append(self, keys: np.ndarray, digit) -> np.ndarray:
        """Keys of ``digits + 1`` digits: ``digit`` appended as the least significant one."""
        longer = self.with_digits(self.digits + 1)
        if longer.narrow:
            return (keys << np.uint64(self.bits)) | np.asarray(digit).astype(np.uint64)
        return longer.pack(self.unpack(keys) + [np.asarray(digit)])

    def prepend(self, digit, keys: np.ndarray) -> np.ndarray:
        """Keys of ``digits + 1`` digits: ``digit`` put in front, as the most significant."""
        longer = self.with_digits(self.digits + 1)
        if longer.narrow:
            high = np.asarray(digit).astype(np.uint64) << np.uint64(self.bits * self.digits)
            return high | keys
        return longer.pack([np.asarray(digit)] + self.unpack(keys))

    def drop_last(self, keys: np.ndarray) -> np.ndarray:
        """Keys of ``digits - 1`` digits: the least significant digit removed."""
        if self.digits < 2:
            raise ValueError("a one-digit key has no shorter key")
        if self.narrow:
            return keys >> np.uint64(self.bits)
        return self.with_digits(self.digits - 1).pack(self.unpack(keys)[:-1])

    def last(self, keys: np.ndarray) -> np.ndarray:
        """The least significant digit of each key (int64)."""
        if self.narrow:
            return (keys & np.uint64((1 << self.bits) - 1)).astype(np.int64)
        return self.unpack(keys)[-1]


def _pack_word(columns: list, shift: np.uint64) -> np.ndarray:
    word = np.zeros(columns[0].size if columns else 0, dtype=np.uint64)
    for column in columns:
        word <<= shift
        word |= column
    return word


def _unpack_word(word: np.ndarray, n: int, bits: int) -> list[np.ndarray]:
    mask = np.uint64((1 << bits) - 1)
    return [((word >> np.uint64(bits * (n - 1 - d))) & mask).astype(np.int64) for d in range(n)]


def is_wide(keys: np.ndarray) -> bool:
    """Whether keys are of a wide (structured) layout."""
    return keys.dtype.names is not None


def argsort_keys(keys: np.ndarray) -> np.ndarray:
    """A stable ascending order of keys of either kind."""
    if is_wide(keys):
        return np.lexsort([keys[name] for name in reversed(keys.dtype.names)])
    return np.argsort(keys, kind="stable")


def run_starts(sorted_keys: np.ndarray) -> np.ndarray:
    """Indices where a run of equal keys starts in a sorted key array."""
    if sorted_keys.size == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])


def count_distinct(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct keys and how often each occurs (int64).

    Examples
    --------
    >>> k, n = count_distinct(np.array([5, 3, 5], dtype=np.uint64))
    >>> k.tolist(), n.tolist()
    ([3, 5], [1, 2])
    """
    ordered = keys[argsort_keys(keys)] if is_wide(keys) else np.sort(keys)
    starts = run_starts(ordered)
    return ordered[starts], np.diff(np.r_[starts, ordered.size]).astype(np.int64)


def add_counted(key_parts: list, count_parts: list) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct keys of several (keys, counts) lists and the summed counts (int64).

    The result depends only on the multiset of (key, count) pairs: any order of the parts,
    any split of them, gives the same arrays.
    """
    keys = np.concatenate(key_parts)
    counts = np.concatenate(count_parts).astype(np.int64)
    order = argsort_keys(keys)
    keys, counts = keys[order], counts[order]
    starts = run_starts(keys)
    if starts.size == 0:
        return keys, counts
    return keys[starts], np.add.reduceat(counts, starts)


def search(sorted_keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Index of each query in sorted distinct keys, -1 where it is absent (int64)."""
    queries = np.asarray(queries, dtype=sorted_keys.dtype)
    if sorted_keys.size == 0:
        return np.full(queries.size, -1, dtype=np.int64)
    at = np.searchsorted(sorted_keys, queries)
    clipped = np.minimum(at, sorted_keys.size - 1)
    return np.where(sorted_keys[clipped] == queries, clipped, -1).astype(np.int64)

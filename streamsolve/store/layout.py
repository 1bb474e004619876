"""The store's layout: format constants, errors, row blocks, CSR helpers, attribute checks.

Layout (``g`` = counts generation, ``w`` = weights version id)::

    STORE/zarr.json                      attrs: format, config, tokenizer hash, versions,
                                         manifest of shards, totals, pointers, history
    STORE/tokenizer                      uint8: the tokenizer JSON
    STORE/counts/g{g}/unigram            int64 [V]
    STORE/counts/g{g}/r{r}/b{k}/indptr   int64 [rows in block + 1]   (CSR of row block k
    STORE/counts/g{g}/r{r}/b{k}/indices  int32 [nnz]                  of count block r;
    STORE/counts/g{g}/r{r}/b{k}/data     int64 [nnz]                  never dense V x V)
    STORE/weights/blocks/{key}/...       a weight row block: the same CSR (float64 sparse
                                         part S) plus row_terms
    STORE/weights/v{w}/                  col_terms [blocks, V], bias, log_unigram [V]
                                         (a refined version instead: bias, table{b} or
                                         embedding{b}, output{b}, row_offsets{b})

Everything here is pure: it reads no store, so every other module of the package may use it.
"""

from __future__ import annotations

import datetime
import errno
import math
import os
import re

import numpy as np

from ..core.counting import merge_sorted

FORMAT = "streamsolve"
FORMAT_VERSION = 1
DEFAULT_ROWS_PER_BLOCK = 4096
#: The top-level entries of a store directory: the only names a store creates or removes.
STORE_ENTRIES = ("zarr.json", "tokenizer", "counts", "weights")
#: Largest radius a store may record (R count blocks of V x V each).
MAX_RADIUS = 1024
#: Seconds a replaced counts generation / weights version stays readable (see model_store).
DEFAULT_RETIRE_SECONDS = 600.0
RETIRE_SECONDS_VARIABLE = "STREAMSOLVE_RETIRE_SECONDS"


class StoreError(ValueError):
    """A store cannot be opened or used as asked; the message names the store and the fix."""


class StoreMismatchError(StoreError):
    """An existing store was built with another tokenizer, radius, aggregation, ..."""


class StoreConfigError(StoreError):
    """A store's recorded attributes are malformed, out of range or from a newer format."""


class StoreCorruptError(StoreError):
    """Stored data fails its checksum, digest or shape check: the store is damaged."""


class DiskFullError(StoreError):
    """A write ran out of disk space; the message names the path and the fix."""


#: NumPy's short write (``ndarray.tofile``/``np.save`` on a full disk), raised without errno.
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` reports a full disk (or quota): ``ENOSPC``, ``EDQUOT``, or NumPy's
    errno-less short write (``OSError: 17172 requested and 12784 written``)."""
    if not isinstance(exc, OSError):
        return False
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return exc.errno is None and bool(_SHORT_WRITE.fullmatch(str(exc)))


def retire_seconds() -> float:
    """The grace period (seconds) before a retired generation or weights version is deleted.

    Read from ``STREAMSOLVE_RETIRE_SECONDS`` (default `DEFAULT_RETIRE_SECONDS`).

    Raises
    ------
    ValueError
        If the variable is not a number of seconds >= 0.
    """
    text = os.environ.get(RETIRE_SECONDS_VARIABLE)
    if text is None or not text.strip():
        return DEFAULT_RETIRE_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{RETIRE_SECONDS_VARIABLE} must be a number of seconds >= 0, got {text!r}")
    return value


def utc_now(timespec: str = "seconds") -> str:
    """The current UTC time in ISO 8601 (the stamp of every commit and event)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec=timespec)


def age_seconds(stamp: str) -> float:
    """Seconds since an ISO 8601 stamp written by `utc_now`."""
    then = datetime.datetime.fromisoformat(stamp)
    return (datetime.datetime.now(datetime.timezone.utc) - then).total_seconds()


# -- row blocks and CSR ----------------------------------------------------------------------

def row_blocks(vocab_size: int, rows_per_block: int) -> list[tuple[int, int]]:
    """The (start, stop) row ranges of the store's row blocks."""
    return [(start, min(start + rows_per_block, vocab_size))
            for start in range(0, vocab_size, rows_per_block)]


def count_block_path(generation: int, r: int, k: int) -> str:
    """The group of row block ``k`` of count block ``r`` (0-based) in a generation."""
    return f"counts/g{generation}/r{r + 1}/b{k}"


def merge_csr_block(a: tuple, b: tuple) -> tuple:
    """Add two CSR row blocks of the same shape: ``(indptr, indices, data)`` each."""
    n_rows = a[0].size - 1
    width = 1 << 32
    rows_a = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(a[0]))
    rows_b = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(b[0]))
    keys, values = merge_sorted(rows_a * width + a[1], np.asarray(a[2], dtype=np.int64),
                                rows_b * width + b[1], np.asarray(b[2], dtype=np.int64))
    rows = keys // width
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
    return indptr, (keys % width).astype(np.int32), values


def csr_of_rows(keys: np.ndarray, values: np.ndarray, vocab_size: int, start: int, stop: int):
    """CSR arrays (indptr, indices, data) of rows start..stop from sorted pair keys."""
    lo, hi = np.searchsorted(keys, [start * vocab_size, stop * vocab_size])
    k = keys[lo:hi]
    rows = k // vocab_size - start
    indptr = np.zeros(stop - start + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=stop - start), out=indptr[1:])
    return indptr, (k % vocab_size).astype(np.int32), values[lo:hi]


def stack_row_blocks(blocks: list[tuple], n_cols: int, dtype):
    """One ``csr_array`` from consecutive CSR row blocks ``(indptr, indices, data)``."""
    import scipy.sparse as sp

    indptrs, offset = [np.zeros(1, np.int64)], 0
    for indptr, _, _ in blocks:
        indptrs.append(np.asarray(indptr[1:], dtype=np.int64) + offset)
        offset = int(indptrs[-1][-1]) if indptrs[-1].size else offset
    indptr = np.concatenate(indptrs)
    indices = (np.concatenate([b[1] for b in blocks]) if blocks else np.zeros(0, np.int32))
    data = (np.concatenate([b[2] for b in blocks]) if blocks else np.zeros(0, dtype))
    return sp.csr_array((data, indices, indptr), shape=(indptr.size - 1, n_cols))


def live_paths(meta: dict) -> set[str]:
    """The nodes the state described by ``meta`` reads: its generation, weights and blocks."""
    live = set()
    if meta.get("counts"):
        live.add(f"counts/g{meta['counts']['generation']}")
    weights = meta.get("weights")
    if weights:
        live.add(f"weights/v{weights['id']}")
        live.update(f"weights/blocks/{key}" for keys in weights["blocks"] for key in keys)
    return live


#: ``attrs["weights"]["kind"]`` of a refined version.
REFINED = "refined"


def is_refined(weights_meta: dict | None) -> bool:
    """Whether a store's ``attrs["weights"]`` describe a refined version."""
    return bool(weights_meta) and weights_meta.get("kind") == REFINED


def refined_arrays(weights_meta: dict) -> list[str]:
    """Names of the arrays of a refined version (relative to ``weights/v{id}``)."""
    n = int(weights_meta["n_blocks"])
    if weights_meta["layout"] == "dense":
        return ["bias"] + [f"table{b}" for b in range(n)]
    return ["bias"] + [f"{name}{b}" for b in range(n)
                       for name in ("embedding", "output", "row_offsets")]


# -- validation of a store's attributes ------------------------------------------------------

def _is_int(value, low: int, high: int | None = None) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool) and value >= low
            and (high is None or value <= high))


def _config_problems(meta: dict) -> list[str]:
    config = meta.get("config")
    if not isinstance(config, dict):
        return ["config is missing or not an object"]
    problems = []
    vocab_size = config.get("vocab_size")
    if not _is_int(vocab_size, 2, 3_000_000_000):
        problems.append(f"config.vocab_size {vocab_size!r} is not an integer in 2..3e9")
    if not _is_int(config.get("radius"), 1, MAX_RADIUS):
        problems.append(f"config.radius {config.get('radius')!r} is not an integer in "
                        f"1..{MAX_RADIUS}")
    if config.get("aggregation") not in ("cat", "sum"):
        problems.append(f"config.aggregation {config.get('aggregation')!r} is not 'cat' or 'sum'")
    if _is_int(vocab_size, 2) and not _is_int(config.get("bos_id"), 0, vocab_size - 1):
        problems.append(f"config.bos_id {config.get('bos_id')!r} is outside 0..{vocab_size - 1}")
    tokenizer = meta.get("tokenizer")
    if not isinstance(tokenizer, dict) or tokenizer.get("vocab_size") != vocab_size:
        problems.append("tokenizer.vocab_size does not match config.vocab_size")
    if not _is_int(meta.get("rows_per_block"), 1):
        problems.append(f"rows_per_block {meta.get('rows_per_block')!r} is not an integer >= 1")
    return problems


def _counts_problems(meta: dict) -> list[str]:
    counts = meta.get("counts")
    if counts is None:
        return []
    if not isinstance(counts, dict):
        return ["counts is not an object"]
    problems = []
    if not _is_int(counts.get("generation"), 1):
        problems.append(f"counts.generation {counts.get('generation')!r} is not an integer >= 1")
    if not _is_int(counts.get("tokens"), 0):
        problems.append(f"counts.tokens {counts.get('tokens')!r} is not an integer >= 0")
    nnz = counts.get("nnz")
    config = meta["config"]
    n_blocks = config["radius"] if config["aggregation"] == "cat" else 1
    if not (isinstance(nnz, list) and len(nnz) == n_blocks and all(_is_int(n, 0) for n in nnz)):
        problems.append(f"counts.nnz {str(nnz)[:40]} is not {n_blocks} non-negative integers "
                        f"(one per count block of radius {config['radius']}, aggregation "
                        f"{config['aggregation']})")
    return problems


def _weights_problems(meta: dict) -> list[str]:
    weights = meta.get("weights")
    if weights is None:
        return []
    names = [weights.get("id")] if isinstance(weights, dict) else [None]
    blocks = weights.get("blocks") if isinstance(weights, dict) else None
    if isinstance(blocks, list) and all(isinstance(keys, list) for keys in blocks):
        names += [key for keys in blocks for key in keys]
    else:
        names.append(None)
    if not all(isinstance(name, str) and name.isalnum() for name in names):
        return ["weights.id / weights.blocks are not alphanumeric names"]
    return []


def _history_problems(meta: dict) -> list[str]:
    history = meta.get("history", [])
    if not (isinstance(history, list)
            and all(isinstance(event, dict) and isinstance(event.get("event"), str)
                    for event in history)):
        return ["history is not a list of events (objects with an 'event' name)"]
    return []


def validate_meta(meta: dict, url: str):
    """Check a store's attributes for type and range before anything is read by them.

    Raises
    ------
    StoreConfigError
        One line naming the store, every bad attribute, and the fix.
    """
    version = meta.get("format_version")
    if not _is_int(version, 1):
        problems = [f"format_version {version!r} is not an integer >= 1"]
    elif version > FORMAT_VERSION:
        raise StoreConfigError(f"store {url} has format_version {version}, newer than this "
                               f"streamsolve reads (up to {FORMAT_VERSION}): upgrade streamsolve")
    else:
        problems = _config_problems(meta)
        if not problems:
            problems = (_counts_problems(meta) + _weights_problems(meta)
                        + _history_problems(meta))
    if problems:
        raise StoreConfigError(f"store {url} has invalid attributes (hand-edited or damaged "
                               f"zarr.json): {'; '.join(problems)}. Restore zarr.json or "
                               "rebuild the store.")

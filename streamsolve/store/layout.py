"""The store's layout: format constants, errors, row blocks, CSR helpers.

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

The attributes' digest and validation are in `streamsolve.store.attributes`. Everything here
is pure: it reads no store, so every other module of the package may use it.
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


class StoreWriteError(StoreError):
    """A write to a store failed (full disk, file-size limit, permissions, read-only file
    system, ...); the message names the errno, the store's state and the fix."""


class DiskFullError(StoreWriteError):
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


def errno_name(exc: OSError) -> str:
    """The symbolic errno of ``exc`` (``ENOSPC``, ``EFBIG``, ...), or ``"OSError"``."""
    if is_disk_full(exc) and exc.errno is None:
        return "ENOSPC"  # NumPy's short write
    return errno.errorcode.get(exc.errno, "OSError") if exc.errno else "OSError"


_WRITE_FIXES = {
    "EFBIG": ("a file reached the file-size limit", "raise the limit (`ulimit -f`) or put the "
              "store on a file system that holds larger files"),
    "EACCES": ("permission denied", "fix the permissions of the store and its directory"),
    "EPERM": ("operation not permitted", "fix the permissions of the store and its directory"),
    "EROFS": ("the file system is read-only", "remount it read-write or choose another store "
              "path"),
}


def write_failure(exc: OSError, what: str, state: str) -> StoreWriteError:
    """The one-line error for an ``OSError`` raised by a store write.

    Parameters
    ----------
    exc : OSError
        What the write raised.
    what : str
        What was being done, e.g. ``"writing the weights to STORE"``.
    state : str
        What the store holds now, e.g. ``"the store is unchanged"``.

    Returns
    -------
    StoreWriteError
        `DiskFullError` for a full disk or quota; the errno's name in every message.
    """
    name = errno_name(exc)
    where = f" on {exc.filename}" if getattr(exc, "filename", None) else ""
    if is_disk_full(exc):
        return DiskFullError(f"{what} failed: the disk is full ({name}{where}). {state}; free "
                             "space there and run the same command again.")
    reason, fix = _WRITE_FIXES.get(name, ((exc.strerror or str(exc)).rstrip("."),
                                          "fix that"))
    return StoreWriteError(f"{what} failed: {reason} ({name}{where}). {state}; {fix} and run "
                           "the same command again.")


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

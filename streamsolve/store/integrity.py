"""Integrity: checksummed arrays, content digests, verified reads and ``streamsolve verify``.

Every array is written with a checksummed codec pipeline (zstd with its content checksum,
then a CRC32C of the stored bytes), so a damaged chunk fails to decode instead of reading
back as other numbers. A *missing* chunk would still read back as the fill value, so every
block also records a digest of its content: a counts or weights row block in its group's
attributes (``digest``, over all its arrays), every other array in its own attributes. Reads
verify them: a mismatch raises `StoreCorruptError` naming the block (``counts/g3/r2/b0:
digest mismatch ...``). Stores written before digests existed still open: their blocks are
checked structurally only (CSR shapes), and new writes add digests.

The array writer and the digests are shared with the classifier's counts store.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .layout import (RETIRE_SECONDS_VARIABLE, StoreCorruptError, StoreError, count_block_path,
                     live_paths, refined_arrays, retire_seconds, row_blocks)

#: Largest number of elements in one chunk of a written array.
CHUNK_ELEMENTS = 1 << 22
#: What a damaged block's error message tells the user to do.
DAMAGE_FIX = ("the store is damaged and nothing was committed; restore it from a backup, or "
              "rebuild it from the corpus with `streamsolve count` into a new store")


def checksummed_codecs() -> list:
    """The bytes-to-bytes codecs of every array: zstd with its content checksum, then CRC32C."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return [ZstdCodec(level=0, checksum=True), Crc32cCodec()]


def array_digest(*arrays) -> str:
    """Content digest of arrays (dtype, shape and bytes of each, in order)."""
    hasher = hashlib.blake2b(digest_size=16)
    for array in arrays:
        array = np.ascontiguousarray(array)
        hasher.update(f"{array.dtype.str}{array.shape}".encode())
        hasher.update(array.tobytes())
    return hasher.hexdigest()


def block_digest(indptr, indices, data) -> str:
    """Content digest of a CSR count row block."""
    hasher = hashlib.blake2b(digest_size=16)
    for array, dtype in ((indptr, np.int64), (indices, np.int32), (data, np.int64)):
        hasher.update(np.ascontiguousarray(array, dtype=dtype).tobytes())
    return hasher.hexdigest()


def write_checksummed_array(group, name: str, data: np.ndarray, *,
                            chunk_elements: int = CHUNK_ELEMENTS):
    """Write ``data`` as array ``name`` of a Zarr group, checksummed, with its digest.

    Chunks run along the first axis (``chunk_elements`` elements at most); the content
    digest is recorded in the array's attributes (``digest``) for `verified_array`.
    """
    rows_per_chunk = max(1, chunk_elements // max(1, int(np.prod(data.shape[1:]))))
    chunks = (max(1, min(len(data), rows_per_chunk)),) + tuple(data.shape[1:])
    array = group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=chunks,
                               compressors=checksummed_codecs(),
                               attributes={"digest": array_digest(data)}, overwrite=True)
    if data.size:
        array[:] = data
    return array


class VerifiedReads:
    """Reads that check checksums, digests and CSR shapes (mixed into `ModelStore`).

    Expects ``self.group``, ``self.url``, ``self.storage_options``, ``self._pinned_meta``
    and ``self.meta`` from the store class.
    """

    def _read_arrays(self, path: str, names: tuple) -> tuple:
        """``(node, [arrays])``: the named arrays of the node at ``path``, decoded (checksums)."""
        try:
            node = self.group[path] if path else self.group
            return node, [node[name][:] for name in names]
        except (KeyError, ValueError, RuntimeError, TypeError) as exc:
            raise self._unreadable(path, exc) from exc

    def _read_single(self, path: str) -> np.ndarray:
        """One array, verified against the digest in its own attributes (when recorded)."""
        try:
            array = self.group[path]
            values = array[:]
        except (KeyError, ValueError, RuntimeError, TypeError) as exc:
            raise self._unreadable(path, exc) from exc
        self._check_digest(path, array.attrs.get("digest"), lambda: array_digest(values))
        return values

    def _unreadable(self, path: str, exc: Exception) -> StoreError:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0]
        missing = isinstance(exc, KeyError)
        return self._damaged(path, "missing" if missing else
                             f"cannot be decoded ({type(exc).__name__}: {reason})")

    def _damaged(self, path: str, problem: str) -> StoreError:
        """The error for a block that fails a check: damage, or (for a snapshot that outlived
        the grace period) data a later commit has removed."""
        if self._pinned_meta is not None and self._was_retired(path):
            return StoreError(
                f"{path} of store {self.url} was replaced by a newer commit and removed while "
                f"this reader still used it (readers must finish within {RETIRE_SECONDS_VARIABLE}"
                f"={retire_seconds():g} s of starting); run the command again")
        return StoreCorruptError(f"{path}: {problem} in store {self.url}: {DAMAGE_FIX}")

    def _was_retired(self, path: str) -> bool:
        """Whether ``path`` is no longer part of the store's current state."""
        try:
            current = type(self)(self.url, self.storage_options).meta
        except StoreError:
            return False
        return not any(path.startswith(live + "/") or path == live
                       for live in live_paths(current))

    def _check_digest(self, path: str, recorded: str | None, compute):
        if recorded is None:  # written before digests were recorded
            return
        actual = compute()
        if actual != recorded:
            raise self._damaged(path, f"digest mismatch (recorded {recorded[:12]}..., read "
                                      f"{actual[:12]}...)")

    def _check_csr(self, path: str, indptr, indices, data):
        """Shape checks that catch a lost chunk even in stores without digests."""
        ok = (indptr.ndim == 1 and indptr.size >= 1 and indptr[0] == 0
              and int(indptr[-1]) == indices.size == data.size
              and bool(np.all(np.diff(indptr) >= 0)))
        if not ok:
            end = int(indptr[-1]) if indptr.size else None
            raise self._damaged(path, f"inconsistent CSR arrays (indptr ends at {end}, "
                                      f"{indices.size} indices, {data.size} values)")


def verify_store(store) -> dict:
    """Read and check every committed count block, the unigram, the tokenizer and the
    current weights of ``store`` (one snapshot), collecting all damage instead of stopping
    at the first.

    Returns
    -------
    dict
        ``ok`` (bool), ``checked`` (blocks and arrays read), ``damaged`` (list of
        ``{"path", "problem"}``), ``without_digest`` (paths written before digests were
        recorded: checked for shape only), ``counts_generation`` and ``weights_id``.
    """
    view = store.snapshot()
    meta = view.meta
    generation = view.committed_generation()
    report = {"store": store.url, "ok": True, "checked": 0, "damaged": [],
              "without_digest": [], "counts_generation": generation,
              "weights_id": (meta.get("weights") or {}).get("id")}
    _verify_counts(view, generation, report)
    if meta.get("weights"):
        _verify_weights(view, meta["weights"], report)
    report["ok"] = not report["damaged"]
    return report


def _verify_one(view, report: dict, path: str, read):
    """Run ``read`` (a verified read of ``path``); record damage; return its result."""
    report["checked"] += 1
    try:
        result = read()
    except StoreError as exc:
        report["damaged"].append({"path": path, "problem": str(exc)})
        return None
    if path != "tokenizer" and "digest" not in view.group[path].attrs:
        report["without_digest"].append(path)
    return result


def _verify_counts(view, generation: int, report: dict):
    counts = view.meta["counts"]
    _verify_one(view, report, "tokenizer", view.tokenizer_text)
    unigram_path = f"counts/g{generation}/unigram"
    unigram = _verify_one(view, report, unigram_path, lambda: view.read_unigram(generation))
    if unigram is not None and int(unigram.sum()) != int(counts["tokens"]):
        report["damaged"].append({"path": unigram_path, "problem": (
            f"{unigram_path}: holds {int(unigram.sum())} tokens but the commit recorded "
            f"{counts['tokens']} in store {view.url}: {DAMAGE_FIX}")})
    config = view.config
    for r in range(config.n_blocks):
        stored, complete = 0, True
        for k, _ in enumerate(row_blocks(config.vocab_size, view.meta["rows_per_block"])):
            path = count_block_path(generation, r, k)
            csr = _verify_one(view, report, path,
                              lambda: view.read_count_block_csr(generation, r, k))
            complete = complete and csr is not None
            stored += csr[1].size if csr is not None else 0
        expected = counts.get("nnz", [None] * config.n_blocks)[r]
        if complete and expected is not None and stored != int(expected):
            path = f"counts/g{generation}/r{r + 1}"
            report["damaged"].append({"path": path, "problem": (
                f"{path}: holds {stored} pairs but the commit recorded {expected} in store "
                f"{view.url}: {DAMAGE_FIX}")})


def _verify_weights(view, weights: dict, report: dict):
    root = f"weights/v{weights['id']}"
    if weights.get("kind") == "refined":  # dense / factored tables (store.refined_weights)
        for name in refined_arrays(weights):
            path = f"{root}/{name}"
            _verify_one(view, report, path, lambda: view._read_single(path))
        return
    for name in ("col_terms", "bias", "log_unigram"):
        path = f"{root}/{name}"
        _verify_one(view, report, path, lambda: view._read_single(path))
    for keys in weights["blocks"]:
        for key in keys:
            path = f"weights/blocks/{key}"
            _verify_one(view, report, path, lambda: view.read_weight_block(key))

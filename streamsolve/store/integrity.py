"""Integrity: checksummed arrays, content digests, verified reads and ``streamsolve verify``.

Every array is written with a checksummed codec pipeline (zstd with its content checksum,
then a CRC32C of the stored bytes), so a damaged chunk fails to decode instead of reading
back as other numbers. A *missing* chunk would still read back as the fill value, so every
block also records a digest of its content: a counts or weights row block in its group's
attributes (``digest``, over all its arrays), every other array in its own attributes. Reads
verify them: a mismatch raises `StoreCorruptError` naming the block (``counts/g3/r2/b0:
digest mismatch ...``). A generation committed since digests are required records
``counts.digests``: a block of it without one is damage.

Stores written before digests existed still open. Their count blocks are checked by content
(`legacy_counts_problem`): every target position is counted once per offset, its context
padded with BOS at document starts and held-out text left out of both, so the column sums of
each count block equal the unigram (R times it for ``sum`` aggregation). ``verify`` checks
that, and so does a new generation before it merges the old one (`prove_generation`); a
block without a digest that nonetheless has other attributes (a renamed digest) is damage.

The array writer and the digests are shared with the classifier's counts store.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .attributes import DIGEST_MISMATCH, attributes_status, digest_problem, validate_meta
from .layout import (RETIRE_SECONDS_VARIABLE, StoreConfigError, StoreCorruptError, StoreError,
                     count_block_path, live_paths, refined_arrays, retire_seconds, row_blocks)

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

    Expects ``self.group``, ``self.url``, ``self.storage_options``, ``self._pinned_meta``,
    ``self.meta``, ``self.config``, ``self.group_names``, ``self.read_unigram`` and
    ``self.read_count_block_csr`` from the store class.
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

    def _check_count_digest(self, path: str, node, generation: int, compute):
        """A count block's digest: checked when recorded; when absent the block must be a
        legacy one (no attributes at all, in a generation committed before digests)."""
        recorded = node.attrs.get("digest")
        if recorded is None:
            others = sorted(node.attrs)
            if others:
                raise self._damaged(path, f"no digest but attributes {', '.join(others)} (a "
                                          "renamed or damaged digest)")
            if self._digests_required(generation):
                raise self._damaged(path, "digest missing (its generation recorded one for "
                                          "every block)")
        self._check_digest(path, recorded, compute)

    def _digests_required(self, generation: int) -> bool:
        """Whether ``generation`` is the committed one and was committed with block digests."""
        counts = self.meta.get("counts") or {}
        return counts.get("generation") == generation and counts.get("digests") is True

    def legacy_blocks(self, generation: int) -> dict[int, list[str]]:
        """Count block index -> its row blocks without a digest (proving that every row block
        of ``generation`` is there).

        Raises
        ------
        StoreCorruptError
            Naming the first missing row block.
        """
        config = self.config
        legacy: dict[int, list[str]] = {}
        for r in range(config.n_blocks):
            for k, _ in enumerate(row_blocks(config.vocab_size, self.meta["rows_per_block"])):
                path = count_block_path(generation, r, k)
                try:
                    attrs = self.group[path].attrs
                except (KeyError, ValueError, TypeError) as exc:
                    raise self._unreadable(path, exc) from exc
                if "digest" not in attrs:
                    legacy.setdefault(r, []).append(path)
        return legacy

    def prove_generation(self, generation: int):
        """Prove the committed ``generation`` is there and sound before a new one is begun
        on top of it: its group, unigram and every row block exist, and its count blocks
        with row blocks without a digest pass `legacy_counts_problem`. Reads only; blocks
        with digests are verified as the new generation merges them.

        Raises
        ------
        StoreCorruptError
            Naming what is missing or inconsistent; nothing was changed or deleted.
        """
        root = f"counts/g{generation}"
        if root not in self.group or f"{root}/unigram" not in self.group:
            present = ", ".join(sorted(self.group_names("counts"))) or "none"
            raise StoreCorruptError(
                f"{root}: missing in store {self.url}, whose attributes record counts "
                f"generation {generation} (generations present: {present}): zarr.json was "
                "hand-edited or damaged, and nothing was changed or deleted; restore zarr.json "
                "from a backup, or rebuild the store from the corpus")
        legacy = self.legacy_blocks(generation)
        if not legacy:
            return
        unigram = self.read_unigram(generation)
        for r, paths in legacy.items():
            V = self.config.vocab_size
            sums = column_sums((self.read_count_block_csr(generation, r, k) for k, _ in
                                enumerate(row_blocks(V, self.meta["rows_per_block"]))), V)
            problem = legacy_counts_problem(self, generation, r, sums, unigram, paths)
            if problem:
                raise StoreCorruptError(problem)

    def _check_csr(self, path: str, indptr, indices, data):
        """Shape checks that catch a lost chunk even in stores without digests."""
        ok = (indptr.ndim == 1 and indptr.size >= 1 and indptr[0] == 0
              and int(indptr[-1]) == indices.size == data.size
              and bool(np.all(np.diff(indptr) >= 0)))
        if not ok:
            end = int(indptr[-1]) if indptr.size else None
            raise self._damaged(path, f"inconsistent CSR arrays (indptr ends at {end}, "
                                      f"{indices.size} indices, {data.size} values)")


def column_sums(blocks, vocab_size: int) -> np.ndarray:
    """Column sums (int64, at least [V]) of CSR count row blocks ``(indptr, indices, data)``
    (longer than V when a damaged block holds a column past the vocabulary)."""
    total = np.zeros(vocab_size, np.int64)
    for _, indices, data in blocks:
        sums = np.bincount(indices, weights=data, minlength=vocab_size)
        total = _add(total, np.rint(sums).astype(np.int64))
    return total


def legacy_counts_problem(view, generation: int, r: int, sums: np.ndarray,
                          unigram: np.ndarray, legacy: list[str]) -> str | None:
    """What is wrong with count block ``r`` whose row blocks ``legacy`` carry no digest, or
    None: every counted target has one context token per offset (BOS-padded at document
    starts; held-out text is in neither), so the block's column sums ``sums`` equal the
    unigram (R times it for ``sum`` aggregation); a lost chunk reads back as zeros and
    breaks that."""
    config = view.config
    expected = np.asarray(unigram, dtype=np.int64) * (config.radius
                                                      if config.aggregation == "sum" else 1)
    size = max(sums.size, expected.size)
    sums = np.pad(sums, (0, size - sums.size))
    expected = np.pad(expected, (0, size - expected.size))
    if np.array_equal(sums, expected):
        return None
    bad = np.flatnonzero(sums != expected)
    path = f"counts/g{generation}/r{r + 1}"
    return (f"{path}: its column sums differ from the unigram at {bad.size} token(s) (id "
            f"{bad[0]}: {sums[bad[0]]}, unigram {expected[bad[0]]}), and its row block(s) "
            f"{', '.join(p.rsplit('/', 1)[1] for p in legacy)} carry no digest: damaged "
            f"(e.g. a lost chunk) in store {view.url}: {DAMAGE_FIX}")


def verify_store(store) -> dict:
    """Check a store's attributes, then read and check every committed count block, the
    unigram, the tokenizer and the current weights (one snapshot), collecting all damage
    instead of stopping at the first.

    Returns
    -------
    dict
        ``ok`` (bool), ``attributes`` (`attributes_status`: "digest ok", "legacy, no
        attribute digest" or "digest mismatch"), ``checked`` (blocks and arrays read),
        ``damaged`` (list of ``{"path", "problem"}``), ``without_digest`` (paths written
        before digests were recorded: count blocks checked by content, the rest by shape),
        ``counts_generation`` and ``weights_id``.

    Raises
    ------
    StoreError
        When there is no streamsolve store with counts at the URL.
    """
    meta = store.unchecked_meta()
    report = {"store": store.url, "ok": False, "attributes": attributes_status(meta),
              "checked": 0, "damaged": [], "without_digest": [], "counts_generation": None,
              "weights_id": None}
    try:
        validate_meta(meta, store.url)
    except StoreConfigError as exc:
        report["damaged"].append({"path": "zarr.json", "problem": f"zarr.json: {exc}"})
        return report
    if report["attributes"] == DIGEST_MISMATCH:
        report["damaged"].append({"path": "zarr.json", "problem": digest_problem(store.url)})
    if "counts" not in meta:
        raise StoreError(f"no streamsolve store with counts at {store.url}")
    view = store.snapshot_of(meta)
    report["counts_generation"] = generation = view.committed_generation()
    report["weights_id"] = (meta.get("weights") or {}).get("id")
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


def _damage(report: dict, path: str, problem: str):
    report["damaged"].append({"path": path, "problem": problem})


def _verify_counts(view, generation: int, report: dict):
    counts = view.meta["counts"]
    _verify_one(view, report, "tokenizer", view.tokenizer_text)
    unigram_path = f"counts/g{generation}/unigram"
    unigram = _verify_one(view, report, unigram_path, lambda: view.read_unigram(generation))
    if unigram is not None and int(unigram.sum()) != int(counts["tokens"]):
        _damage(report, unigram_path, f"{unigram_path}: holds {int(unigram.sum())} tokens but "
                f"the commit recorded {counts['tokens']} in store {view.url}: {DAMAGE_FIX}")
    config = view.config
    V = config.vocab_size
    for r in range(config.n_blocks):
        path = f"counts/g{generation}/r{r + 1}"
        stored, complete, sums = 0, True, np.zeros(V, np.int64)
        for k, _ in enumerate(row_blocks(V, view.meta["rows_per_block"])):
            csr = _verify_one(view, report, count_block_path(generation, r, k),
                              lambda: view.read_count_block_csr(generation, r, k))
            complete = complete and csr is not None
            if csr is not None:
                stored += csr[1].size
                sums = _add(sums, column_sums([csr], V))
        expected = counts["nnz"][r]
        if complete and stored != int(expected):
            _damage(report, path, f"{path}: holds {stored} pairs but the commit recorded "
                                  f"{expected} in store {view.url}: {DAMAGE_FIX}")
            continue
        legacy = [p for p in report["without_digest"] if p.startswith(path + "/")]
        if complete and legacy and unigram is not None:
            problem = legacy_counts_problem(view, generation, r, sums, unigram, legacy)
            if problem:
                _damage(report, path, problem)


def _add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a + b`` of column sums of possibly different lengths."""
    if a.size < b.size:
        a, b = b, a
    a = a.copy()
    a[:b.size] += b
    return a


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

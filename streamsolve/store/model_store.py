"""Storage: counts and explicit weights in a Zarr v3 group (local path or fsspec URL).

Layout (``g`` = counts generation, ``w`` = weights id)::

    STORE/zarr.json                      attrs["streamsolve"]: format, config, tokenizer hash,
                                         versions, manifest of shards, totals, pointers
    STORE/tokenizer                      uint8: the tokenizer JSON
    STORE/counts/g{g}/unigram            int64 [V]
    STORE/counts/g{g}/r{r}/b{k}/indptr   int64 [rows in block + 1]   (CSR of row block k
    STORE/counts/g{g}/r{r}/b{k}/indices  int32 [nnz]                  of count block r;
    STORE/counts/g{g}/r{r}/b{k}/data     int64 [nnz]                  never dense V x V)
    STORE/weights/w{w}/...               the same CSR layout (float64 sparse part S) plus
                                         row_terms, col_terms [blocks, V], bias, log_unigram [V]

Each row block is written by exactly one writer. New counts go to a new generation; the
attributes are switched to it only once every array is written, and the old generation is
deleted afterwards, so a reader never sees half-written counts.
"""

from __future__ import annotations

import datetime
import logging
import uuid
from collections.abc import Iterator

import numpy as np

from ..core.counting import CountConfig, Counts, merge_sorted

logger = logging.getLogger(__name__)

FORMAT = "streamsolve"
FORMAT_VERSION = 1
DEFAULT_ROWS_PER_BLOCK = 4096
_CHUNK = 1 << 22


class StoreError(ValueError):
    """A store cannot be opened or used as asked; the message names the store and the fix."""


class StoreMismatchError(StoreError):
    """An existing store was built with another tokenizer, radius, aggregation, ..."""


def library_versions() -> dict:
    """Versions of the libraries that produced a store (provenance)."""
    import dask
    import scipy
    import tokenizers
    import zarr

    from .. import __version__

    return {"streamsolve": __version__, "numpy": np.__version__, "scipy": scipy.__version__,
            "dask": dask.__version__, "zarr": zarr.__version__,
            "tokenizers": tokenizers.__version__}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _write_array(group, name: str, data: np.ndarray):
    rows_per_chunk = max(1, _CHUNK // max(1, int(np.prod(data.shape[1:]))))
    chunks = (max(1, min(len(data), rows_per_chunk)),) + tuple(data.shape[1:])
    array = group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=chunks,
                               overwrite=True)
    if data.size:
        array[:] = data
    return array


def row_blocks(vocab_size: int, rows_per_block: int) -> list[tuple[int, int]]:
    """The (start, stop) row ranges of the store's row blocks."""
    return [(start, min(start + rows_per_block, vocab_size))
            for start in range(0, vocab_size, rows_per_block)]


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


class ModelStore:
    """A streamsolve store: counts, tokenizer, provenance and explicit weights.

    Parameters
    ----------
    url : str
        Local path or fsspec URL of the Zarr group.
    storage_options : dict, optional
        Passed to fsspec / Zarr.
    """

    def __init__(self, url: str, storage_options: dict | None = None):
        self.url = str(url)
        self.storage_options = storage_options or None
        self._group = None

    # -- opening ---------------------------------------------------------------------------
    def _open(self, mode: str):
        import zarr

        kwargs = {"mode": mode}
        if self.storage_options and "://" in self.url:
            kwargs["storage_options"] = self.storage_options
        return zarr.open_group(self.url, **kwargs)

    @property
    def group(self):
        if self._group is None:
            try:
                self._group = self._open("r+")
            except (FileNotFoundError, KeyError) as exc:
                raise StoreError(f"no streamsolve store at {self.url}") from exc
            except Exception as exc:
                if type(exc).__name__ in ("GroupNotFoundError", "NodeNotFoundError"):
                    raise StoreError(f"no streamsolve store at {self.url}") from exc
                raise
        return self._group

    def exists(self) -> bool:
        """Whether a streamsolve store with committed counts is at this URL."""
        try:
            return "counts" in self.meta
        except StoreError:
            return False

    @property
    def meta(self) -> dict:
        """The store's attributes (``attrs["streamsolve"]``)."""
        self._group = None  # re-read: another process may have committed since
        attrs = dict(self.group.attrs)
        if attrs.get("format") != FORMAT:
            raise StoreError(f"{self.url} is a Zarr group but not a streamsolve store")
        return attrs

    def _set_meta(self, meta: dict):
        """Replace the attributes in one write (zarr writes zarr.json atomically)."""
        self.group.attrs.put(meta)

    # -- creation and compatibility ----------------------------------------------------------
    @classmethod
    def create(cls, url: str, config: CountConfig, tokenizer_text: str, tokenizer_sha256: str,
               bos_token: str, read_options: dict, storage_options: dict | None = None,
               rows_per_block: int = DEFAULT_ROWS_PER_BLOCK) -> "ModelStore":
        """Create an empty store (refuses to overwrite an existing streamsolve store)."""
        store = cls(url, storage_options)
        if store.exists():
            raise StoreError(f"a streamsolve store already exists at {url}")
        group = store._open("w")
        store._group = group
        _write_array(group, "tokenizer", np.frombuffer(tokenizer_text.encode("utf-8"), dtype=np.uint8))
        group.attrs.update({
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": _now(),
            "config": config.to_dict(),
            "read_options": read_options,
            "tokenizer": {"sha256": tokenizer_sha256, "bos_token": bos_token,
                          "vocab_size": config.vocab_size},
            "rows_per_block": int(rows_per_block),
            "versions": library_versions(),
            "shards": [],
            "totals": {},
        })
        return store

    @property
    def config(self) -> CountConfig:
        return CountConfig(**self.meta["config"])

    def tokenizer_text(self) -> str:
        """The tokenizer JSON stored with the counts."""
        return bytes(self.group["tokenizer"][:]).decode("utf-8")

    def check_compatible(self, config: CountConfig, tokenizer_sha256: str,
                         read_options: dict | None = None):
        """Refuse to add counts made with another tokenizer, radius or aggregation.

        Raises
        ------
        StoreMismatchError
            Naming the store's value and the requested one.
        """
        meta = self.meta
        stored = meta["config"]
        problems = []
        if meta["tokenizer"]["sha256"] != tokenizer_sha256:
            problems.append(f"tokenizer: store has sha256 {meta['tokenizer']['sha256'][:12]}..., "
                            f"this run has {tokenizer_sha256[:12]}...")
        for name in ("radius", "aggregation", "vocab_size", "bos_id"):
            if stored[name] != getattr(config, name):
                problems.append(f"{name}: store has {stored[name]!r}, this run has "
                                f"{getattr(config, name)!r}")
        if read_options:
            for name in ("documents", "text_field"):
                if name in meta.get("read_options", {}) and meta["read_options"][name] != read_options.get(name):
                    problems.append(f"{name}: store has {meta['read_options'][name]!r}, this run has "
                                    f"{read_options.get(name)!r}")
        if problems:
            raise StoreMismatchError(f"store {self.url} was built differently; refusing to mix "
                                     "counts:\n  " + "\n  ".join(problems))

    # -- counts ----------------------------------------------------------------------------
    def begin_counts_generation(self) -> int:
        """Create an empty, uncommitted counts generation; returns its number.

        Row blocks are then written by `write_count_block` (one writer per block, from any
        process) and made visible by `commit_counts_generation`. An uncommitted generation
        left by a crash is never read, and is removed by the next one.
        """
        meta = self.meta
        previous = meta.get("counts")
        current = previous["generation"] if previous else 0
        existing = [int(name[1:]) for name in self._group_names("counts") if name[1:].isdigit()]
        generation = max([current, *existing]) + 1
        for name in existing:
            if name != current:
                del self.group[f"counts/g{name}"]  # debris of an interrupted ingest
        config = CountConfig(**meta["config"])
        gen_group = self.group.require_group(f"counts/g{generation}")
        for r in range(config.n_blocks):
            for k, _ in enumerate(row_blocks(config.vocab_size, meta["rows_per_block"])):
                gen_group.require_group(f"r{r + 1}/b{k}")
        return generation

    def discard_uncommitted(self):
        """Remove counts generations that are not committed (after a failed write).

        A store created by the failed run itself (no committed counts) is removed whole.
        """
        try:
            meta = self.meta
        except StoreError:
            return
        previous = meta.get("counts")
        if previous is None:
            try:
                import fsspec

                fs, _, (root,) = fsspec.get_fs_token_paths(self.url, storage_options=self.storage_options or {})
                fs.rm(root, recursive=True)
            except Exception:  # best effort: an uncommitted store is never read anyway
                logger.warning("could not remove the unfinished store %s", self.url)
            return
        for name in self._group_names("counts"):
            if name != f"g{previous['generation']}":
                try:
                    del self.group[f"counts/{name}"]
                except Exception:
                    logger.warning("could not remove uncommitted %s/counts/%s", self.url, name)

    def _group_names(self, path: str) -> list[str]:
        if path not in self.group:
            return []
        return [name for name, _ in self.group[path].groups()]

    def write_count_block(self, generation: int, r: int, k: int, indptr: np.ndarray,
                          indices: np.ndarray, data: np.ndarray):
        """Write row block ``k`` of count block ``r`` (0-based) into an uncommitted generation."""
        block = self.group[f"counts/g{generation}/r{r + 1}/b{k}"]
        _write_array(block, "indptr", np.asarray(indptr, dtype=np.int64))
        _write_array(block, "indices", np.asarray(indices, dtype=np.int32))
        _write_array(block, "data", np.asarray(data, dtype=np.int64))
        block.attrs.put({"digest": block_digest(indptr, indices, data)})

    def read_count_block_csr(self, generation: int, r: int, k: int):
        """Raw CSR arrays ``(indptr, indices, data)`` of one row block of a generation."""
        block = self.group[f"counts/g{generation}/r{r + 1}/b{k}"]
        return block["indptr"][:], block["indices"][:], block["data"][:]

    def commit_counts_generation(self, generation: int, unigram: np.ndarray, nnz: list[int],
                                 new_shards: list[dict], totals: dict):
        """Make a fully written generation the store's counts (one atomic metadata write)."""
        gen_group = self.group[f"counts/g{generation}"]
        _write_array(gen_group, "unigram", np.asarray(unigram, dtype=np.int64))
        meta = dict(self.meta)
        previous = meta.get("counts")
        meta["counts"] = {"generation": generation, "id": uuid.uuid4().hex,
                          "nnz": [int(n) for n in nnz], "tokens": int(np.sum(unigram)),
                          "committed": _now()}
        meta["shards"] = list(meta.get("shards", [])) + list(new_shards)
        meta["totals"] = totals
        meta["versions"] = library_versions()
        self._set_meta(meta)
        if previous and f"counts/g{previous['generation']}" in self.group:
            del self.group[f"counts/g{previous['generation']}"]
        logger.info("committed counts generation %d to %s (%d tokens, nnz %s)",
                    generation, self.url, meta["counts"]["tokens"], meta["counts"]["nnz"])

    def commit_counts(self, counts: Counts, new_shards: list[dict], totals: dict):
        """Write ``counts`` (the store's complete new counts) as a new generation and switch to it."""
        generation = self.begin_counts_generation()
        config = counts.config
        V = config.vocab_size
        for r in range(config.n_blocks):
            for k, (start, stop) in enumerate(row_blocks(V, self.meta["rows_per_block"])):
                self.write_count_block(generation, r, k,
                                       *csr_of_rows(counts.keys[r], counts.values[r], V, start, stop))
        self.commit_counts_generation(generation, counts.unigram, counts.nnz, new_shards, totals)

    def _counts_group(self):
        meta = self.meta
        if "counts" not in meta:
            raise StoreError(f"store {self.url} has no counts yet: run `streamsolve count` first")
        return self.group[f"counts/g{meta['counts']['generation']}"]

    def read_unigram(self) -> np.ndarray:
        return self._counts_group()["unigram"][:]

    def iter_count_blocks(self, r: int) -> Iterator[tuple[int, int, tuple]]:
        """Yield ``(start, stop, (indptr, indices, data))`` row blocks of count block ``r`` (0-based)."""
        group = self._counts_group()
        V = self.config.vocab_size
        for k, (start, stop) in enumerate(row_blocks(V, self.meta["rows_per_block"])):
            block = group[f"r{r + 1}/b{k}"]
            yield start, stop, (block["indptr"][:], block["indices"][:], block["data"][:])

    def read_count_block(self, r: int):
        """Count block ``r`` (0-based) as a ``scipy.sparse.csr_array`` (V x V, int64)."""

        V = self.config.vocab_size
        return stack_row_blocks([csr for _, _, csr in self.iter_count_blocks(r)], V, np.int64)

    def read_counts(self) -> Counts:
        """All counts of the store as a `Counts` (sorted keys), with the manifest."""
        config = self.config
        V = config.vocab_size
        keys, values = [], []
        for r in range(config.n_blocks):
            csr = self.read_count_block(r)
            rows = np.repeat(np.arange(V, dtype=np.int64), np.diff(csr.indptr))
            keys.append(rows * V + csr.indices.astype(np.int64))
            values.append(csr.data.astype(np.int64))
        meta = self.meta
        return Counts(config, keys, values, self.read_unigram(), dict(meta.get("totals", {})),
                      list(meta.get("shards", [])))

    # -- weights ---------------------------------------------------------------------------
    # Weight row blocks are content-addressed: a block's key hashes the digest of the count
    # block it came from and every global input of its formula (see weights.finalize_store),
    # so re-finalizing after an update recomputes only blocks whose inputs changed.
    def count_block_digest(self, r: int, k: int) -> str:
        """Digest of row block ``k`` of count block ``r`` in the committed generation."""
        generation = self.meta["counts"]["generation"]
        block = self.group[f"counts/g{generation}/r{r + 1}/b{k}"]
        digest = block.attrs.get("digest")
        if digest is None:  # stores written before digests were recorded
            digest = block_digest(*self.read_count_block_csr(generation, r, k))
        return digest

    def has_weight_block(self, key: str) -> bool:
        path = f"weights/blocks/{key}"
        return path in self.group and bool(self.group[path].attrs.get("complete"))

    def write_weight_block(self, key: str, indptr, indices, data, row_terms):
        """Write one weight row block (marked complete only after all its arrays)."""
        group = self.group.require_group(f"weights/blocks/{key}")
        _write_array(group, "indptr", np.asarray(indptr, dtype=np.int64))
        _write_array(group, "indices", np.asarray(indices, dtype=np.int32))
        _write_array(group, "data", np.asarray(data, dtype=np.float64))
        _write_array(group, "row_terms", np.asarray(row_terms, dtype=np.float64))
        group.attrs.put({"complete": True})

    def read_weight_block(self, key: str):
        """``(indptr, indices, data, row_terms)`` of a weight row block."""
        group = self.group[f"weights/blocks/{key}"]
        return group["indptr"][:], group["indices"][:], group["data"][:], group["row_terms"][:]

    def commit_weights(self, params: dict, block_keys: list[list[str]], col_terms: np.ndarray,
                       bias: np.ndarray, log_unigram: np.ndarray) -> str:
        """Make written weight blocks plus the rank-one vectors the store's weights."""
        meta = self.meta
        weights_id = uuid.uuid4().hex[:12]
        root = self.group.require_group(f"weights/v{weights_id}")
        _write_array(root, "col_terms", np.asarray(col_terms, dtype=np.float64))
        _write_array(root, "bias", np.asarray(bias, dtype=np.float64))
        _write_array(root, "log_unigram", np.asarray(log_unigram, dtype=np.float64))
        meta = dict(meta)
        meta["weights"] = {"id": weights_id, "counts_id": meta["counts"]["id"],
                           "written": _now(), "blocks": block_keys, **params}
        self._set_meta(meta)
        self._collect_weight_garbage(weights_id, block_keys)
        return weights_id

    def _collect_weight_garbage(self, weights_id: str, block_keys: list[list[str]]):
        keep = {key for keys in block_keys for key in keys}
        for name in self._group_names("weights"):
            if name.startswith("v") and name != f"v{weights_id}":
                del self.group[f"weights/{name}"]
        for name in self._group_names("weights/blocks"):
            if name not in keep:
                del self.group[f"weights/blocks/{name}"]

    def set_calibration(self, calibration: dict | None):
        """Record calibration scalars on the current weights."""
        meta = dict(self.meta)
        if "weights" not in meta:
            raise StoreError(f"store {self.url} has no weights to calibrate")
        meta["weights"] = {**meta["weights"], "calibration": calibration}
        self._set_meta(meta)

    def read_weights(self, allow_stale: bool = False):
        """The store's explicit weights as an `ExplicitWeights`.

        Raises
        ------
        StoreError
            If there are no weights, or they were computed from older counts (stale).
        """

        from ..core.weights import ExplicitWeights, SparseRankOne

        meta = self.meta
        info = meta.get("weights")
        if not info:
            raise StoreError(f"store {self.url} has no weights: run `streamsolve finalize {self.url}`")
        if info["counts_id"] != meta.get("counts", {}).get("id") and not allow_stale:
            raise StoreError(f"the weights in {self.url} are stale (counts changed since they were "
                             f"computed): run `streamsolve finalize {self.url}` again")
        root = self.group[f"weights/v{info['id']}"]
        V = self.config.vocab_size
        col_terms = root["col_terms"][:]
        blocks = []
        for r, keys in enumerate(info["blocks"]):
            pieces = [self.read_weight_block(key) for key in keys]
            sparse = stack_row_blocks([p[:3] for p in pieces], V, np.float64)
            row_terms = [p[3] for p in pieces]
            blocks.append(SparseRankOne(sparse, np.concatenate(row_terms), col_terms[r]))
        params = {k: v for k, v in info.items()
                  if k not in ("id", "counts_id", "written", "blocks", "reused_blocks")}
        return ExplicitWeights.from_params(blocks, root["bias"][:], root["log_unigram"][:],
                                           self.config, params)


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


def block_digest(indptr, indices, data) -> str:
    """Content digest of a CSR row block."""
    import hashlib

    hasher = hashlib.blake2b(digest_size=16)
    for array, dtype in ((indptr, np.int64), (indices, np.int32), (data, np.int64)):
        hasher.update(np.ascontiguousarray(array, dtype=dtype).tobytes())
    return hasher.hexdigest()

"""The language-model store: `ModelStore` opens, creates and reads a Zarr v3 group.

The layout is in `streamsolve.store.layout`; writing counts goes through
`streamsolve.store.transaction` (``store.counts_transaction(lock)``), weights through
`streamsolve.store.weight_blocks`, checks through `streamsolve.store.integrity`, the
provenance history through `streamsolve.store.history`.

Snapshot reads. A reader resolves the store's attributes once (`ModelStore.snapshot`) and reads
only the counts generation and the weights version they name; every ``read_*`` method does so
for its own call, and a caller that needs several reads to agree (``export``: the unigram and
the pair counts; ``eval``: the weights and the tokenizer) holds one snapshot for all of them.

Retirement (a grace period, not reader leases: readers need no write access). A commit never
deletes what it replaces: the previous counts generation, weights version and unreferenced
weight blocks are recorded in ``attrs["retired"]`` with the time of that commit, and deleted by
a later commit once they have been retired for longer than the grace period
(`retire_seconds`: ``STREAMSOLVE_RETIRE_SECONDS``, default 600). A reader that resolves its
snapshot and finishes within the grace period can therefore never lose its data; one that takes
longer gets a clear error asking it to run again, never other data. Uncommitted generations
(debris of a crashed writer) were never visible to readers; the next commit retires them like
replaced ones (nothing is deleted before a commit has proven the store's state).

Attributes. Every open checks ``zarr.json``'s attributes against their digest and validates
them (`streamsolve.store.attributes`); every write records the digest in the same atomic write.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator

import numpy as np

from ..core.counting import CountConfig, Counts
from .history import created_event, history_of
from .attributes import check_attributes, validate_meta, with_digest
from .integrity import VerifiedReads, block_digest, verify_store, write_checksummed_array
from .layout import (DEFAULT_ROWS_PER_BLOCK, FORMAT, FORMAT_VERSION, STORE_ENTRIES,
                     StoreConfigError, StoreCorruptError, StoreError, StoreMismatchError,
                     age_seconds, count_block_path, csr_of_rows, live_paths, retire_seconds,
                     row_blocks, stack_row_blocks, utc_now, write_failure)
from .location import creatable_location, is_local, remove_entries, zarr_location
from .locking import StoreLock
from .manifest import manifest_entries
from .transaction import CountsTransaction
from .weight_blocks import WeightBlocks

logger = logging.getLogger(__name__)


class ModelStore(VerifiedReads, WeightBlocks):
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
        self._created_here = False  # set by `create`: this object wrote the store's entries
        self._created_root = False  # ... and made its directory (nothing was there)
        self._pinned_meta = None  # set on a snapshot: the attributes it reads by

    # -- opening ---------------------------------------------------------------------------
    def _open(self, mode: str, **kwargs):
        import zarr

        location = zarr_location(self.url)
        if self.storage_options and "://" in location:
            kwargs["storage_options"] = self.storage_options
        return zarr.open_group(location, mode=mode, **kwargs)

    @property
    def group(self):
        """The store's Zarr group (opened on first use)."""
        if self._group is None:
            try:
                self._group = self._open("r+")
            except Exception as exc:
                error = self._open_error(exc)
                if error is exc:
                    raise
                raise error from exc
        return self._group

    def _open_error(self, exc: Exception) -> Exception:
        """The error to raise for a failure to open the group (``exc`` itself if unknown)."""
        missing = (FileNotFoundError, FileExistsError, NotADirectoryError, KeyError)
        if isinstance(exc, missing) or type(exc).__name__ in (
                "GroupNotFoundError", "NodeNotFoundError", "ContainsArrayError"):
            return StoreError(f"no streamsolve store at {self.url}")
        if isinstance(exc, (ValueError, TypeError)):  # zarr.json is not JSON / not metadata
            return StoreConfigError(f"{self.url}/zarr.json is unreadable ({exc}): restore it "
                                    "or rebuild the store")
        return exc

    def exists(self) -> bool:
        """Whether a streamsolve store with committed counts is at this URL.

        Raises
        ------
        StoreConfigError, StoreCorruptError
            If a streamsolve store is there but its attributes are invalid, or differ from
            their digest.
        """
        try:
            return "counts" in self.meta
        except (StoreConfigError, StoreCorruptError):
            raise
        except StoreError:
            return False

    @property
    def meta(self) -> dict:
        """The store's attributes, checked against their digest and validated
        (`streamsolve.store.attributes`); a snapshot's are fixed."""
        if self._pinned_meta is not None:
            return self._pinned_meta
        attrs = self.unchecked_meta()
        check_attributes(attrs, self.url)
        return attrs

    def unchecked_meta(self) -> dict:
        """The attributes as stored, re-read, not checked beyond being a streamsolve store's
        (for `verify`, which reports what is wrong with them instead of stopping)."""
        self._group = None  # re-read: another process may have committed since
        attrs = dict(self.group.attrs)
        if attrs.get("format") != FORMAT:
            raise StoreError(f"{self.url} is a Zarr group but not a streamsolve store")
        return attrs

    @property
    def history(self) -> list[dict]:
        """The store's provenance events, oldest first (see `streamsolve.store.history`)."""
        return history_of(self.meta)

    def _set_meta(self, meta: dict):
        """Replace the attributes, with their digest, in one write (zarr writes zarr.json
        atomically: a failed write leaves the previous attributes).

        Raises
        ------
        StoreWriteError
            One line naming the errno when the write fails (the store is unchanged).
        """
        if self._pinned_meta is not None:
            raise StoreError(f"a snapshot of {self.url} is read-only; write through a ModelStore")
        try:
            self.group.attrs.put(with_digest(meta))
        except OSError as exc:
            raise write_failure(exc, f"writing the attributes of {self.url}",
                                "The store is unchanged") from exc

    def snapshot(self) -> "ModelStore":
        """A read-only view of the store as it is now: its attributes are read once.

        Every read through the view uses the counts generation and weights version current
        when it was taken, even if a writer commits meanwhile (the replaced data stays for
        `retire_seconds`). A snapshot's snapshot is itself.
        """
        if self._pinned_meta is not None:
            return self
        return self.snapshot_of(self.meta)

    def snapshot_of(self, meta: dict) -> "ModelStore":
        """A read-only view reading by ``meta`` (attributes read once by the caller)."""
        view = ModelStore(self.url, self.storage_options)
        view._pinned_meta = meta
        view._group = self._group
        return view

    # -- creation and compatibility ----------------------------------------------------------
    @classmethod
    def create(cls, url: str, config: CountConfig, tokenizer_text: str, tokenizer_sha256: str,
               bos_token: str, read_options: dict, storage_options: dict | None = None,
               rows_per_block: int = DEFAULT_ROWS_PER_BLOCK) -> "ModelStore":
        """Create an empty store where nothing exists, or in an empty directory.

        Call it holding the store's writer lock. The debris of a creation that was
        interrupted (a streamsolve store without committed counts) is reused. The history
        starts with a ``created`` event.

        Raises
        ------
        StoreError
            If anything else is at ``url`` (files, another Zarr dataset, a streamsolve store
            with counts): it is named, and nothing is changed.
        """
        store = cls(url, storage_options)
        location = creatable_location(url, storage_options)
        if location.kind == "store" and store.exists():
            raise StoreError(f"a streamsolve store already exists at {url}")
        tokenizer = {"sha256": tokenizer_sha256, "bos_token": bos_token,
                     "vocab_size": config.vocab_size}
        created = created_event(config.to_dict(), tokenizer)
        attrs = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": utc_now(),
            "config": config.to_dict(),
            "read_options": read_options,
            "tokenizer": tokenizer,
            "rows_per_block": int(rows_per_block),
            "versions": created["versions"],
            "shards": [],
            "totals": {},
            "history": [created],
        }
        validate_meta(attrs, url)
        attrs = with_digest(attrs)
        store._created_here, store._created_root = True, location.kind == "absent"
        try:
            if location.kind == "store":  # debris of an interrupted creation
                store._group = store._open("r+")
                store._group.attrs.put(attrs)
            else:  # "w-" never clears anything: the location was proven absent or empty
                store._group = store._open("w-", attributes=attrs)
            write_checksummed_array(store._group, "tokenizer",
                                    np.frombuffer(tokenizer_text.encode("utf-8"), dtype=np.uint8))
        except BaseException:
            store.discard_uncommitted()
            raise
        return store

    @property
    def config(self) -> CountConfig:
        """The store's count configuration."""
        return CountConfig(**self.meta["config"])

    def tokenizer_text(self) -> str:
        """The tokenizer JSON stored with the counts (verified against its recorded sha256)."""
        raw = self._read_single("tokenizer")
        text = bytes(raw).decode("utf-8", errors="replace")
        recorded = self.meta.get("tokenizer", {}).get("sha256")
        self._check_digest("tokenizer", recorded,
                           lambda: hashlib.sha256(bytes(raw)).hexdigest())
        return text

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
        if stored.get("ngram", 0) != config.ngram:  # issue 24: n-gram blocks of every shard
            problems.append(f"ngram: store has {stored.get('ngram', 0)!r}, this run has "
                            f"{config.ngram!r} (--ngram must match the store's)")
        stored_read = meta.get("read_options", {})
        for name in ("documents", "text_field") if read_options else ():
            if name in stored_read and stored_read[name] != read_options.get(name):
                problems.append(f"{name}: store has {stored_read[name]!r}, this run has "
                                f"{read_options.get(name)!r}")
        if problems:
            raise StoreMismatchError(f"store {self.url} was built differently; refusing to mix "
                                     "counts:\n  " + "\n  ".join(problems))

    # -- writing ---------------------------------------------------------------------------
    def counts_transaction(self, lock: StoreLock | None) -> CountsTransaction:
        """The write of a new counts generation (a context manager; see
        `streamsolve.store.transaction`). ``lock`` must be the store's held `StoreLock`."""
        return CountsTransaction(self, lock)

    def commit_counts(self, counts: Counts, new_shards: list[dict], totals: dict,
                      lock: StoreLock | None):
        """Write ``counts`` (the store's complete new counts) as a new generation and switch
        to it, in one transaction under ``lock``."""
        config = counts.config
        V = config.vocab_size
        with self.counts_transaction(lock) as txn:
            for r in range(config.n_blocks):
                for k, (start, stop) in enumerate(row_blocks(V, self.meta["rows_per_block"])):
                    txn.write_block(r, k, *csr_of_rows(counts.keys[r], counts.values[r], V,
                                                       start, stop))
            txn.commit(counts.unigram, counts.nnz, new_shards, totals)

    def commit_attributes(self, meta: dict):
        """Write ``meta`` (one atomic write: every commit), retiring what it no longer uses;
        then delete what has been retired for longer than the grace period."""
        live = live_paths(meta)
        now = utc_now("milliseconds")
        retired = {path: stamp for path, stamp in meta.get("retired", {}).items()
                   if path not in live}
        for path in self._node_paths():
            if path not in live:
                retired.setdefault(path, now)
        grace = retire_seconds()
        expired = sorted(path for path, stamp in retired.items() if age_seconds(stamp) >= grace)
        meta["retired"] = {path: stamp for path, stamp in retired.items() if path not in expired}
        self._set_meta(meta)
        for path in expired:
            try:
                if path in self.group:
                    del self.group[path]
            except Exception:  # best effort: the next commit retires and removes it again
                logger.warning("could not remove retired %s/%s", self.url, path)

    def _node_paths(self) -> list[str]:
        """Every counts generation, weights version and weight block present in the store."""
        paths = [f"counts/{name}" for name in self.group_names("counts")]
        paths += [f"weights/{name}" for name in self.group_names("weights") if name != "blocks"]
        paths += [f"weights/blocks/{name}" for name in self.group_names("weights/blocks")]
        return paths

    def group_names(self, path: str) -> list[str]:
        """Names of the subgroups of the group at ``path`` (empty when it does not exist)."""
        if path not in self.group:
            return []
        return [name for name, _ in self.group[path].groups()]

    def discard_uncommitted(self):
        """After a failed first write: remove the store if this object created it and it
        never got committed counts.

        Only what `create` wrote is removed (and its directory, if `create` made it and it
        is left empty); anything else at the path is never touched. A store with committed
        counts is left as it is: the failed `CountsTransaction` removed its own generation,
        and nothing else is deleted on a failure path (hand-edited or damaged attributes
        must never make real counts look like debris).
        """
        try:
            previous = self.meta.get("counts")
        except StoreError:
            if self._created_here:
                self._discard_created_store()
            return
        if previous is None:
            self._discard_created_store()

    def _discard_created_store(self):
        if not self._created_here:
            logger.warning("leaving the unfinished store %s in place: this run did not create "
                           "it (the next count reuses it)", self.url)
            return
        self._group = None
        try:
            remove_entries(self.url, self.storage_options, STORE_ENTRIES)
            if self._created_root and is_local(self.url):
                os.rmdir(zarr_location(self.url))  # only succeeds when it is empty
        except Exception:  # best effort: an uncommitted store is never read anyway
            logger.warning("could not remove the unfinished store %s", self.url)

    # -- reading counts --------------------------------------------------------------------
    def committed_generation(self) -> int:
        """The committed counts generation (of this snapshot, if it is one)."""
        meta = self.meta
        if "counts" not in meta:
            raise StoreError(f"store {self.url} has no counts yet: run `streamsolve count` first")
        return int(meta["counts"]["generation"])

    def read_count_block_csr(self, generation: int, r: int, k: int):
        """Raw CSR arrays ``(indptr, indices, data)`` of one row block of a generation, verified.

        Raises
        ------
        StoreCorruptError
            If the block is missing, fails its checksum, its digest differs from the one
            recorded when it was written, or it lacks the digest its generation requires.
        """
        path = count_block_path(generation, r, k)
        node, (indptr, indices, data) = self._read_arrays(path, ("indptr", "indices", "data"))
        self._check_csr(path, indptr, indices, data)
        self._check_count_digest(path, node, generation,
                                 lambda: block_digest(indptr, indices, data))
        return indptr, indices, data

    def read_unigram(self, generation: int | None = None) -> np.ndarray:
        """The unigram counts of the committed generation (or of ``generation``), verified."""
        if generation is None:
            generation = self.snapshot().committed_generation()
        return self._read_single(f"counts/g{generation}/unigram")

    def iter_count_blocks(self, r: int) -> Iterator[tuple[int, int, tuple]]:
        """Yield ``(start, stop, (indptr, indices, data))`` row blocks of count block ``r`` (0-based).

        All blocks come from the generation committed when the iteration starts (verified).
        """
        view = self.snapshot()
        generation = view.committed_generation()
        V = view.config.vocab_size
        for k, (start, stop) in enumerate(row_blocks(V, view.meta["rows_per_block"])):
            yield start, stop, view.read_count_block_csr(generation, r, k)

    def read_count_block(self, r: int):
        """Count block ``r`` (0-based) as a ``scipy.sparse.csr_array`` (V x V, int64)."""
        view = self.snapshot()
        V = view.config.vocab_size
        return stack_row_blocks([csr for _, _, csr in view.iter_count_blocks(r)], V, np.int64)

    def read_counts(self) -> Counts:
        """All counts of the store as a `Counts` (sorted keys), with the manifest (one snapshot)."""
        view = self.snapshot()
        config = view.config
        V = config.vocab_size
        keys, values = [], []
        for r in range(config.n_blocks):
            csr = view.read_count_block(r)
            rows = np.repeat(np.arange(V, dtype=np.int64), np.diff(csr.indptr))
            keys.append(rows * V + csr.indices.astype(np.int64))
            values.append(csr.data.astype(np.int64))
        meta = view.meta
        return Counts(config, keys, values, view.read_unigram(), dict(meta.get("totals", {})),
                      manifest_entries(meta))

    def verify(self) -> dict:
        """Check every committed block and the current weights (see
        `streamsolve.store.integrity.verify_store`)."""
        return verify_store(self)

"""The write of a counts generation as one transaction: begin, write row blocks, commit.

::

    with StoreLock(url) as lock, store.counts_transaction(lock) as txn:
        for r, k, csr in blocks:
            txn.write_block(r, k, *csr)
        txn.commit(unigram, nnz, new_shards, totals)

Entering requires the store's writer lock, held by the calling thread (`StoreLock`), and
creates an empty generation that no reader sees, numbered past every generation present,
after proving that the committed one is there (`prove_generation`): a store whose recorded
generation is missing is refused, and nothing is deleted on entering (generations left by
crashed writers are retired by the next commit and removed after the grace period, like
replaced ones). Row blocks are written one writer per block, from this process or from Dask
workers (`write_count_block`, given ``txn.generation``). `CountsTransaction.commit` checks
that every row block was written, writes the unigram and switches the store's attributes to
the generation in one atomic write that also appends the ``ingest`` event to the store's
history and records ``counts.digests`` (every block of the generation carries a digest, so
one without is damage). Leaving without a commit (an exception, or no call) removes the
generation: the store is as it was.
"""

from __future__ import annotations

import logging
import uuid

import numpy as np

from ..core.counting import CountConfig
from .history import ingest_event, with_event
from .integrity import block_digest, write_checksummed_array
from .layout import StoreError, count_block_path, row_blocks, utc_now
from .locking import StoreLock
from .manifest import with_manifest_entries

logger = logging.getLogger(__name__)


def write_count_block(store, generation: int, r: int, k: int, indptr: np.ndarray,
                      indices: np.ndarray, data: np.ndarray):
    """Write row block ``k`` of count block ``r`` (0-based) into an uncommitted generation.

    The only writer of that block. Called by `CountsTransaction.write_block`, and by the
    tasks that write blocks for a transaction opened elsewhere (with its ``generation``).
    """
    block = store.group[count_block_path(generation, r, k)]
    write_checksummed_array(block, "indptr", np.asarray(indptr, dtype=np.int64))
    write_checksummed_array(block, "indices", np.asarray(indices, dtype=np.int32))
    write_checksummed_array(block, "data", np.asarray(data, dtype=np.int64))
    block.attrs.put({"digest": block_digest(indptr, indices, data)})


class CountsTransaction:
    """Begin, write and commit one counts generation (a context manager).

    Parameters
    ----------
    store : ModelStore
        The store written (not a snapshot).
    lock : StoreLock
        The store's writer lock, held by the calling thread.

    Attributes
    ----------
    generation : int
        The generation being written (set on entering).
    committed : bool
        Whether `commit` has switched the store to it.

    Raises
    ------
    StoreError
        On entering without the store's held writer lock; nothing is changed.
    """

    def __init__(self, store, lock: StoreLock | None):
        self.store = store
        self.lock = lock
        self.generation: int | None = None
        self.committed = False

    def __enter__(self) -> "CountsTransaction":
        if not isinstance(self.lock, StoreLock) or not self.lock.covers(
                self.store.url, self.store.storage_options):
            raise StoreError(f"refusing to write counts to {self.store.url} without holding "
                             "its writer lock: take `StoreLock(store)` first (the command line "
                             "and `streamsolve.count` do)")
        try:
            self._begin()
        except BaseException:  # e.g. a full disk while creating its groups
            if self.generation is not None:
                self.discard()
            raise
        return self

    def _begin(self):
        """Create an empty, uncommitted generation past every one present (deleting none),
        once the committed one is proven there; sets `generation` before writing."""
        store = self.store
        meta = store.meta
        previous = meta.get("counts")
        current = previous["generation"] if previous else 0
        if previous:
            store.snapshot_of(meta).prove_generation(current)
        existing = [int(name[1:]) for name in store.group_names("counts") if name[1:].isdigit()]
        self.generation = max([current, *existing]) + 1
        config = CountConfig(**meta["config"])
        gen_group = store.group.require_group(f"counts/g{self.generation}")
        for r in range(config.n_blocks):
            for k, _ in enumerate(row_blocks(config.vocab_size, meta["rows_per_block"])):
                gen_group.require_group(f"r{r + 1}/b{k}")

    def write_block(self, r: int, k: int, indptr: np.ndarray, indices: np.ndarray,
                    data: np.ndarray):
        """Write row block ``k`` of count block ``r`` (0-based) of this generation."""
        write_count_block(self.store, self.generation, r, k, indptr, indices, data)

    def commit(self, unigram: np.ndarray, nnz: list[int], new_shards: list[dict],
               totals: dict):
        """Make the written generation the store's counts (one atomic attribute write).

        Parameters
        ----------
        unigram : ndarray
            The generation's complete unigram counts.
        nnz : list of int
            Pairs per count block.
        new_shards : list of dict
            Manifest entries of the shards this generation adds.
        totals : dict
            Reading totals of the whole store after this generation.
        """
        store = self.store
        self._check_written()
        gen_group = store.group[f"counts/g{self.generation}"]
        write_checksummed_array(gen_group, "unigram", np.asarray(unigram, dtype=np.int64))
        meta = dict(store.meta)
        tokens = int(np.sum(unigram))
        meta["counts"] = {"generation": self.generation, "id": uuid.uuid4().hex,
                          "nnz": [int(n) for n in nnz], "tokens": tokens,
                          "committed": utc_now(), "digests": True}
        meta = with_manifest_entries(meta, new_shards)
        meta["totals"] = totals
        event = ingest_event(self.generation, new_shards, totals, tokens, nnz)
        meta["versions"] = event["versions"]
        store.commit_attributes(with_event(meta, event))
        self.committed = True
        logger.info("committed counts generation %d to %s (%d tokens, nnz %s)",
                    self.generation, store.url, tokens, meta["counts"]["nnz"])

    def _check_written(self):
        """Refuse to commit a generation one of whose row blocks was not written."""
        meta = self.store.meta
        config = CountConfig(**meta["config"])
        for r in range(config.n_blocks):
            for k, _ in enumerate(row_blocks(config.vocab_size, meta["rows_per_block"])):
                path = count_block_path(self.generation, r, k)
                if "digest" not in self.store.group[path].attrs:
                    raise StoreError(f"row block {path} of store {self.store.url} was not "
                                     "written: nothing was committed; run the same command "
                                     "again")

    def __exit__(self, exc_type, exc, traceback):
        if not self.committed and self.generation is not None:
            self.discard()
        return False

    def discard(self):
        """Remove this uncommitted generation (best effort: it is never read anyway)."""
        path = f"counts/g{self.generation}"
        try:
            if path in self.store.group:
                del self.store.group[path]
        except Exception:
            logger.warning("could not remove uncommitted %s/%s", self.store.url, path)

"""Merging counts under a memory budget: sorted runs spilled to disk and a k-way merge.

What flows through the Dask graph is a `PartialCounts`: the counts a task holds in memory
(a `Counts`: sorted unique keys per block) plus the sorted *runs* it or its inputs spilled.
A run is the keys and the values of one count block, written as two plain ``.npy`` files
of int64 (never pickled) and indexed by the store's row blocks, so the writer of a row
block reads only its slice of each run. The final merge of a row block streams all its
runs and the in-memory part through `iter_merged`, a k-way merge that holds one buffer per
run (KenLM's ``lmplz`` and GloVe's ``cooccur`` do the same); more runs than the fan-in are
first merged in passes into longer runs.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence

import numpy as np

from ..core import native
from ..core.counting import CountConfig, Counts, merge_counts

logger = logging.getLogger(__name__)

PAIR_BYTES = 16  # int64 key + int64 value


# -- run files ------------------------------------------------------------------------------

def _npy_data_offset(path: str) -> tuple[int, int]:
    """(byte offset of the data, number of items) of a 1-d int64 ``.npy`` file."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
        if dtype != np.dtype("<i8") or len(shape) != 1 or fortran:
            raise ValueError(f"not a spill run of int64: {path}")
        return handle.tell(), int(shape[0])


def _read_slice(path: str, offset: int, start: int, stop: int) -> np.ndarray:
    """Items ``start:stop`` of an int64 ``.npy`` file (plain reads, no memory map)."""
    if stop <= start:
        return np.zeros(0, dtype=np.int64)
    with open(path, "rb") as handle:
        handle.seek(offset + 8 * start)
        data = np.fromfile(handle, dtype="<i8", count=stop - start)
    if data.size != stop - start:
        raise OSError(f"spill run truncated: {path} (wanted {stop - start} items, got {data.size})")
    return data


@dataclasses.dataclass(frozen=True)
class RunFile:
    """One spilled run of one count block: sorted unique keys and their counts on disk.

    ``offsets[k]:offsets[k + 1]`` is the slice of row block ``k``.
    """

    keys_path: str
    values_path: str
    offsets: tuple
    data_offset: int

    @property
    def length(self) -> int:
        return int(self.offsets[-1])

    @property
    def nbytes(self) -> int:
        return PAIR_BYTES * self.length

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        return (_read_slice(self.keys_path, self.data_offset, start, stop),
                _read_slice(self.values_path, self.data_offset, start, stop))


def _block_offsets(keys: np.ndarray, vocab_size: int, rows_per_block: int) -> tuple:
    starts = np.arange(0, vocab_size, rows_per_block, dtype=np.int64) * vocab_size
    offsets = np.searchsorted(keys, starts).tolist() + [int(keys.size)]
    return tuple(int(o) for o in offsets)


def write_run(spill_dir: str, keys: np.ndarray, values: np.ndarray, vocab_size: int,
              rows_per_block: int) -> RunFile:
    """Spill sorted unique ``keys`` and their ``values`` as two ``.npy`` files."""
    os.makedirs(spill_dir, exist_ok=True)
    stem = os.path.join(spill_dir, f"run-{uuid.uuid4().hex}")
    keys_path, values_path = stem + ".keys.npy", stem + ".values.npy"
    np.save(keys_path, np.ascontiguousarray(keys, dtype="<i8"), allow_pickle=False)
    np.save(values_path, np.ascontiguousarray(values, dtype="<i8"), allow_pickle=False)
    offset, n = _npy_data_offset(keys_path)
    assert n == keys.size
    return RunFile(keys_path, values_path, _block_offsets(keys, vocab_size, rows_per_block), offset)


def _write_run_stream(spill_dir: str, chunks: Iterator[tuple[np.ndarray, np.ndarray]],
                      vocab_size: int, rows_per_block: int) -> RunFile:
    """Write a run from sorted chunks of unknown total length (a pass of the k-way merge)."""
    os.makedirs(spill_dir, exist_ok=True)
    stem = os.path.join(spill_dir, f"run-{uuid.uuid4().hex}")
    n = 0
    n_blocks = -(-vocab_size // rows_per_block)
    counts_per_block = np.zeros(n_blocks, dtype=np.int64)
    raw = [stem + ".keys.raw", stem + ".values.raw"]
    with open(raw[0], "wb") as fk, open(raw[1], "wb") as fv:
        for keys, values in chunks:
            fk.write(np.ascontiguousarray(keys, dtype="<i8").tobytes())
            fv.write(np.ascontiguousarray(values, dtype="<i8").tobytes())
            counts_per_block += np.bincount(keys // (vocab_size * rows_per_block),
                                            minlength=n_blocks)[:n_blocks]
            n += keys.size
    paths = []
    for raw_path, suffix in zip(raw, (".keys.npy", ".values.npy")):
        path = stem + suffix
        with open(path, "wb") as out, open(raw_path, "rb") as src:
            np.lib.format.write_array_header_1_0(
                out, {"descr": "<i8", "fortran_order": False, "shape": (n,)})
            shutil.copyfileobj(src, out, 8 << 20)
        os.remove(raw_path)
        paths.append(path)
    offset, _ = _npy_data_offset(paths[0])
    offsets = (0,) + tuple(int(x) for x in np.cumsum(counts_per_block))
    return RunFile(paths[0], paths[1], offsets, offset)


class SpillDirectory:
    """A run's own spill directory under a root: created on first use, removed by `cleanup`.

    Also removed at interpreter exit if still there (a failed run leaves no debris).
    """

    def __init__(self, root: str):
        self.path = os.path.join(os.path.abspath(root), f"streamsolve-spill-{uuid.uuid4().hex[:12]}")
        atexit.register(self.cleanup)

    def cleanup(self):
        shutil.rmtree(self.path, ignore_errors=True)

    def usage(self) -> tuple[int, int]:
        """(files, bytes) currently in the directory."""
        if not os.path.isdir(self.path):
            return 0, 0
        files = [os.path.join(self.path, f) for f in os.listdir(self.path)]
        return len(files), sum(os.path.getsize(f) for f in files if os.path.isfile(f))


# -- k-way merge ----------------------------------------------------------------------------

class _ArraySource:
    def __init__(self, keys: np.ndarray, values: np.ndarray):
        self.keys, self.values, self.n = keys, values, int(keys.size)

    def read(self, start: int, stop: int):
        return self.keys[start:stop], self.values[start:stop]


class _RunSource:
    def __init__(self, run: RunFile, start: int, stop: int):
        self.run, self.start, self.n = run, start, stop - start

    def read(self, start: int, stop: int):
        return self.run.read(self.start + start, self.start + stop)


def iter_merged(sources: Sequence, chunk_items: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """k-way merge of sorted unique (keys, values) sources, adding counts of equal keys.

    Each source has ``n`` and ``read(start, stop)``; at most ``chunk_items`` items of each are
    in memory at a time. Yields chunks of sorted unique keys, increasing across chunks.
    """
    chunk_items = max(1, int(chunk_items))
    active = []  # [source, next position, keys buffer, values buffer]
    for source in sources:
        if source.n:
            keys, values = source.read(0, min(source.n, chunk_items))
            active.append([source, keys.size, keys, values])
    while active:
        if len(active) == 1:
            source, position, keys, values = active[0]
            if keys.size:
                yield keys, values
            while position < source.n:
                stop = min(source.n, position + chunk_items)
                yield source.read(position, stop)
                position = stop
            return
        bound = min(state[2][-1] for state in active)
        key_parts, value_parts = [], []
        for state in active:
            cut = int(np.searchsorted(state[2], bound, side="right"))
            if cut:
                key_parts.append(state[2][:cut])
                value_parts.append(state[3][:cut])
                state[2], state[3] = state[2][cut:], state[3][cut:]
        yield native.merge_runs(key_parts, value_parts)
        still = []
        for state in active:
            if not state[2].size:
                source, position = state[0], state[1]
                if position >= source.n:
                    continue
                stop = min(source.n, position + chunk_items)
                state[2], state[3] = source.read(position, stop)
                state[1] = stop
            still.append(state)
        active = still


def collect(chunks: Iterator[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate merged chunks into one (keys, values) pair."""
    keys, values = [], []
    for k, v in chunks:
        keys.append(k)
        values.append(v)
    if not keys:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(keys), np.concatenate(values)


# -- partial counts ------------------------------------------------------------------------

@dataclasses.dataclass
class PartialCounts:
    """Counts of some shards: an in-memory part plus sorted runs spilled to disk.

    Attributes
    ----------
    memory : Counts
        The in-memory part (it also carries the unigram, statistics and manifest).
    runs : list of list of RunFile
        Per count block, the spilled runs.
    rows_per_block : int
        Row-block size the runs are indexed by.
    spilled_runs, spilled_bytes : int
        How many runs (and bytes) were spilled to build these counts (all inputs included).
    """

    memory: Counts
    runs: list
    rows_per_block: int
    spilled_runs: int = 0
    spilled_bytes: int = 0
    #: Set by `count_corpus` on the final result: the run's `SpillDirectory` and the read
    #: buffer budget of each row block's k-way merge.
    spill_directory: object = dataclasses.field(default=None, repr=False, compare=False)
    merge_bytes: int | None = None

    @classmethod
    def of(cls, counts: Counts, rows_per_block: int) -> "PartialCounts":
        return cls(counts, [[] for _ in range(counts.config.n_blocks)], rows_per_block)

    # Counts-like accessors (what a caller needs before the counts are written).
    @property
    def config(self) -> CountConfig:
        return self.memory.config

    @property
    def unigram(self) -> np.ndarray:
        return self.memory.unigram

    @property
    def tokens(self) -> int:
        return self.memory.tokens

    @property
    def stats(self) -> dict:
        return self.memory.stats

    @property
    def shards(self) -> list:
        return self.memory.shards

    @property
    def nbytes(self) -> int:
        """Bytes of keys and values held in memory."""
        return PAIR_BYTES * sum(k.size for k in self.memory.keys)

    @property
    def n_runs(self) -> int:
        return sum(len(r) for r in self.runs)

    def spill(self, spill_dir: str) -> "PartialCounts":
        """Write the in-memory pairs as one run per block; returns counts holding none in memory."""
        config = self.config
        runs = [list(r) for r in self.runs]
        added, nbytes = 0, 0
        for b, (keys, values) in enumerate(zip(self.memory.keys, self.memory.values)):
            if keys.size:
                run = write_run(spill_dir, keys, values, config.vocab_size, self.rows_per_block)
                runs[b].append(run)
                added += 1
                nbytes += run.nbytes
        zero = np.zeros(0, dtype=np.int64)
        memory = dataclasses.replace(self.memory, keys=[zero] * config.n_blocks,
                                     values=[zero] * config.n_blocks)
        logger.debug("spilled %d run(s), %d bytes, to %s", added, nbytes, spill_dir)
        return PartialCounts(memory, runs, self.rows_per_block, self.spilled_runs + added,
                             self.spilled_bytes + nbytes)

    def sources(self, block: int, start_row: int | None = None, stop_row: int | None = None,
                row_block: int | None = None) -> list:
        """Sorted sources of count block ``block`` (whole, or row block ``row_block``)."""
        keys, values = self.memory.keys[block], self.memory.values[block]
        V = self.config.vocab_size
        if row_block is not None:
            start_row = row_block * self.rows_per_block
            stop_row = min(V, start_row + self.rows_per_block)
            lo, hi = np.searchsorted(keys, [start_row * V, stop_row * V])
            out = [_ArraySource(keys[lo:hi], values[lo:hi])]
            for run in self.runs[block]:
                out.append(_RunSource(run, run.offsets[row_block], run.offsets[row_block + 1]))
            return out
        return [_ArraySource(keys, values)] + [_RunSource(run, 0, run.length)
                                               for run in self.runs[block]]

    def to_counts(self, memory_bytes: int = 256 << 20, spill_dir: str | None = None) -> Counts:
        """All counts in memory as a `Counts` (k-way merging the runs)."""
        if not self.n_runs:
            return self.memory
        keys, values = [], []
        for b in range(self.config.n_blocks):
            k, v = collect(merge_sources(self.sources(b), memory_bytes, spill_dir,
                                         self.config.vocab_size, self.rows_per_block))
            keys.append(k)
            values.append(v)
        return dataclasses.replace(self.memory, keys=keys, values=values)


def merge_sources(sources: list, memory_bytes: int, spill_dir: str | None, vocab_size: int,
                  rows_per_block: int, fan_in: int = 64) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """k-way merge of sources within ``memory_bytes`` of read buffers, in passes of ``fan_in``."""
    sources = [s for s in sources if s.n]
    while len(sources) > fan_in and spill_dir is not None:
        group, sources = sources[:fan_in], sources[fan_in:]
        chunk = max(1024, memory_bytes // (3 * PAIR_BYTES * len(group)))
        run = _write_run_stream(spill_dir, iter_merged(group, chunk), vocab_size, rows_per_block)
        sources.append(_RunSource(run, 0, run.length))
    chunk = max(1024, memory_bytes // (3 * PAIR_BYTES * max(1, len(sources))))
    return iter_merged(sources, chunk)


def merge_partials(parts: Sequence[PartialCounts], task_bytes: int | None,
                   spill_dir: str | None) -> PartialCounts:
    """Add partial counts (a node of the tree merge), spilling when over ``task_bytes``.

    When the inputs' in-memory parts together exceed the cap, each is spilled as it is
    (already sorted: no merging needed); otherwise they are merged in memory.
    """
    parts = list(parts)
    rows = parts[0].rows_per_block
    over = (task_bytes is not None and spill_dir is not None
            and sum(p.nbytes for p in parts) > task_bytes)
    if over:
        parts = [p.spill(spill_dir) if p.nbytes else p for p in parts]
    memory = merge_counts(*(p.memory for p in parts))
    runs = [[run for p in parts for run in p.runs[b]] for b in range(memory.config.n_blocks)]
    out = PartialCounts(memory, runs, rows, sum(p.spilled_runs for p in parts),
                        sum(p.spilled_bytes for p in parts))
    if task_bytes is not None and spill_dir is not None and out.nbytes > task_bytes:
        out = out.spill(spill_dir)
    return out

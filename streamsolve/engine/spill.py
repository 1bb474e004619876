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
import contextlib
import dataclasses
import logging
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence

import numpy as np

from ..core import native
from ..core.counting import CountConfig, Counts, merge_counts
from ..store.layout import DiskFullError, is_disk_full

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


def _create_private_file(path: str):
    """A new file open for writing that only this user can read (mode 0600)."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")


def _run_stem(spill_dir: str) -> str:
    """The path stem of a new run in ``spill_dir``.

    A run's own `SpillDirectory` must still exist (it is gone once the run was stopped: a
    late task must not create it again); any other directory is created, mode 0700.
    """
    if not os.path.isdir(spill_dir):
        if SpillOwner.parse(os.path.basename(spill_dir)) is not None:
            raise FileNotFoundError(
                f"spill directory {spill_dir} does not exist: the run was stopped (its "
                "directory is removed), or --tmp is not a directory every Dask worker sees")
        os.makedirs(spill_dir, mode=0o700, exist_ok=True)
    return os.path.join(spill_dir, f"run-{uuid.uuid4().hex}")


@contextlib.contextmanager
def _removed_on_failure(spill_dir: str, paths: list[str]):
    """Within: a failed write removes the run's files; a full disk becomes `DiskFullError`."""
    try:
        yield
    except BaseException as exc:
        for path in paths:
            with contextlib.suppress(OSError):
                os.remove(path)
        if is_disk_full(exc):
            raise DiskFullError(f"spilling counts to {spill_dir} failed: the disk is full; "
                                "free space there or give --tmp DIR on a file system with "
                                "room (nothing was written to the store)") from exc
        raise


def write_run(spill_dir: str, keys: np.ndarray, values: np.ndarray, vocab_size: int,
              rows_per_block: int) -> RunFile:
    """Spill sorted unique ``keys`` and their ``values`` as two ``.npy`` files (mode 0600)."""
    stem = _run_stem(spill_dir)
    keys_path, values_path = stem + ".keys.npy", stem + ".values.npy"
    with _removed_on_failure(spill_dir, [keys_path, values_path]):
        for path, data in ((keys_path, keys), (values_path, values)):
            with _create_private_file(path) as handle:
                np.save(handle, np.ascontiguousarray(data, dtype="<i8"), allow_pickle=False)
    offset, n = _npy_data_offset(keys_path)
    assert n == keys.size
    return RunFile(keys_path, values_path, _block_offsets(keys, vocab_size, rows_per_block), offset)


def _write_run_stream(spill_dir: str, chunks: Iterator[tuple[np.ndarray, np.ndarray]],
                      vocab_size: int, rows_per_block: int) -> RunFile:
    """Write a run from sorted chunks of unknown total length (a pass of the k-way merge)."""
    stem = _run_stem(spill_dir)
    n = 0
    n_blocks = -(-vocab_size // rows_per_block)
    counts_per_block = np.zeros(n_blocks, dtype=np.int64)
    raw = [stem + ".keys.raw", stem + ".values.raw"]
    paths = [stem + ".keys.npy", stem + ".values.npy"]
    with _removed_on_failure(spill_dir, raw + paths):
        with _create_private_file(raw[0]) as fk, _create_private_file(raw[1]) as fv:
            for keys, values in chunks:
                fk.write(np.ascontiguousarray(keys, dtype="<i8").tobytes())
                fv.write(np.ascontiguousarray(values, dtype="<i8").tobytes())
                counts_per_block += np.bincount(keys // (vocab_size * rows_per_block),
                                                minlength=n_blocks)[:n_blocks]
                n += keys.size
        for raw_path, path in zip(raw, paths):
            with _create_private_file(path) as out, open(raw_path, "rb") as src:
                np.lib.format.write_array_header_1_0(
                    out, {"descr": "<i8", "fortran_order": False, "shape": (n,)})
                shutil.copyfileobj(src, out, 8 << 20)
            os.remove(raw_path)
    offset, _ = _npy_data_offset(paths[0])
    offsets = (0,) + tuple(int(x) for x in np.cumsum(counts_per_block))
    return RunFile(paths[0], paths[1], offsets, offset)


#: Name prefix of spill directories; the rest of the name records the owner (`SpillOwner`).
SPILL_PREFIX = "streamsolve-spill-"


def _host_label() -> str:
    """This machine's host name, reduced to characters that are safe in a file name."""
    import re
    import socket

    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:64] or "localhost"


@dataclasses.dataclass(frozen=True)
class SpillOwner:
    """The process that owns a spill directory: host, pid and process start time.

    The start time (in 1/100 s since the epoch, as ``psutil`` reports it) tells a live owner
    from another process that reuses its pid; the host keeps a run on one machine from
    judging the processes of another that shares the spill root.
    """

    host: str
    pid: int
    started: int

    @classmethod
    def of_process(cls, pid: int | None = None) -> "SpillOwner":
        """The owner record of process ``pid`` (default: this process) on this host."""
        import psutil

        pid = os.getpid() if pid is None else int(pid)
        return cls(_host_label(), pid, round(psutil.Process(pid).create_time() * 100))

    @classmethod
    def parse(cls, name: str) -> "SpillOwner | None":
        """The owner recorded in a spill directory's name (None: not such a name)."""
        if not name.startswith(SPILL_PREFIX):
            return None
        parts = name[len(SPILL_PREFIX):].rsplit("-", 3)
        if len(parts) != 4 or not (parts[1].isdigit() and parts[2].isdigit()):
            return None
        return cls(parts[0], int(parts[1]), int(parts[2]))

    def directory_name(self, tag: str) -> str:
        """``streamsolve-spill-HOST-PID-STARTED-TAG`` (``tag``: letters and digits)."""
        if not tag.isalnum():
            raise ValueError(f"a spill directory tag is letters and digits, got {tag!r}")
        return f"{SPILL_PREFIX}{self.host}-{self.pid}-{self.started}-{tag}"

    def is_alive(self) -> bool:
        """Whether the owner still runs: same pid and start time, and not a zombie.

        Owners on another host are always taken as alive (they cannot be checked from here),
        and so is a process that cannot be inspected.
        """
        import psutil

        if self.host != _host_label():
            return True
        try:
            process = psutil.Process(self.pid)
            if round(process.create_time() * 100) != self.started:
                return False  # the pid was reused by another process
            return process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
        except psutil.Error:
            return True


def reclaim_orphaned_spill_directories(root: str) -> list[str]:
    """Remove the spill directories under ``root`` whose owner process is dead; their paths.

    Only directories named by `SpillOwner`, owned by this user, on this host and whose
    owner is gone (killed with SIGKILL, out of memory, a power cut) are removed; any other
    entry, and the directory of every live run, is left alone.
    """
    import stat

    removed = []
    try:
        names = os.listdir(root)
    except OSError:
        return removed
    for name in names:
        owner = SpillOwner.parse(name)
        if owner is None:
            continue
        path = os.path.join(root, name)
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or owner.is_alive():
            continue
        shutil.rmtree(path, ignore_errors=True)
        logger.info("removed spill directory %s left by a run that died (pid %d)", path, owner.pid)
        removed.append(path)
    return removed


class SpillDirectory:
    """A run's own spill directory under a root, readable by this user only (mode 0700).

    Created right away (its name records the owning process, see `SpillOwner`), after the
    directories of dead runs under the same root are removed. Removed by `cleanup`, and
    also when the object is garbage collected or the interpreter exits (a failed run leaves
    no debris); a run killed outright (SIGKILL) leaves it to the next run to remove.
    Files in it are created mode 0600 (`write_run`).
    """

    def __init__(self, root: str):
        import weakref

        root = os.path.abspath(root)
        if os.path.exists(root) and not os.path.isdir(root):
            raise ValueError(f"spill directory {root} (--tmp) is not a directory: give a "
                             "directory (created if missing)")
        try:
            os.makedirs(root, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"cannot create the spill directory {root} (--tmp): "
                             f"{exc.strerror or exc}") from None
        reclaim_orphaned_spill_directories(root)
        self.owner = SpillOwner.of_process()
        self.path = os.path.join(root, self.owner.directory_name(uuid.uuid4().hex[:12]))
        os.mkdir(self.path, 0o700)
        os.chmod(self.path, 0o700)  # whatever the umask
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.path, ignore_errors=True)

    def cleanup(self):
        """Remove the directory (again at exit if a task still writing left a file behind)."""
        shutil.rmtree(self.path, ignore_errors=True)
        if os.path.exists(self.path):
            atexit.register(shutil.rmtree, self.path, True)

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

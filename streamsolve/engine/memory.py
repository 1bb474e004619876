"""One memory budget for a whole run, split across its stages (as KenLM's ``lmplz -S``).

The budget is given with units (``2GB``, ``512MiB``, ``1.5G``) or as a share of the
machine's RAM (``80%``). `MemoryPlan` turns it into the caps the pipeline obeys:

- the read block size (text decoded, tokenized and counted at a time by each worker);
- the in-memory counts one task may hold (a shard task, or a node of the tree merge):
  above it, counts are spilled to the spill directory as sorted runs and merged k-way at
  the end (as GloVe's ``cooccur`` and KenLM's builder do);
- the read buffers of the final k-way merge.

The plan also gives an up-front estimate of peak memory and spill disk, logged before the
run starts.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import sys
from collections.abc import Sequence

from ..text.reading import DEFAULT_MAX_LINE_BYTES
from ..text.tokenizer import MAX_VOCAB_SIZE

logger = logging.getLogger(__name__)

#: Resident memory of one worker before it counts anything (Python, NumPy, Dask, Zarr and
#: a tokenizer loaded): measured about 150-250 MB; the plan reserves this much.
PROCESS_BASE_BYTES = 256 << 20
#: Budget per worker below which worker threads tokenize one batch at a time. Concurrent
#: ``encode_batch_fast`` calls interleave many small allocations in the same heap arenas;
#: measured at 2x the bench corpus, 2 workers, 2 GB budget: peak 1.27 GB and 832k tokens/s
#: concurrent, 0.92 GB and 692k tokens/s serialized.
SERIAL_TOKENIZER_BELOW = 1 << 30
#: Block counts a shard task holds before it merges them (`streamsolve.engine.tasks`).
PENDING_BLOCKS = 8
#: Smallest in-memory counts cap (a tiny budget still runs, spilling nearly everything).
MIN_TASK_BYTES = 64 << 10
#: Smallest and largest read block.
MIN_BLOCK_BYTES = 64 << 10
MAX_BLOCK_BYTES = 8 << 20
#: Distinct (context, target) pairs per offset grow with the tokens ``T`` as a Heaps-like
#: law, at most ``HEAPS_PAIRS * T ** HEAPS_EXPONENT`` (and at most ``T``, and ``V**2``).
#: Fitted (issue 16) with the bench tokenizer (V = 8192, R = 3), distinct pairs summed over
#: offsets / (3 T^0.7): 11.5 (one Bible, 258k tokens), 13.9 (three Bibles, 751k), 16.2 (five
#: mixed shards, 7.6M), 12.4 (the whole bench corpus, 51.9M); copies of the same text add
#: none. 16 is the largest of them, so the bound is rarely below the truth.
HEAPS_PAIRS = 16.0
HEAPS_EXPONENT = 0.7
#: The factor of `HEAPS_PAIRS` the up-front estimate takes: a central value of the fits
#: (11.5-16.2), not their largest, so the estimate is near the measured figures rather than
#: above them; tested against measured spill (issue 22): the whole bench corpus at 2 and
#: 4 GB, six shards at 1 GB and 8x the corpus at 2 GB.
HEAPS_PAIRS_TYPICAL = 14.0
#: Share of the largest merge's counts (`simulate_counts`: its inputs and result) the peak
#: estimate adds to the process base and the read blocks. Fitted (issue 22) on five runs
#: (R = 3, 2 workers, tree peak measured): the 3 quick Bible shards at 1 and 2 GB (339, 359
#: MB), six gcide/wordnet shards at 1 GB (384 MB), the whole bench corpus at 2 and 4 GB (572,
#: 790 MB) (the old term, twice all counts up to every task's cap, gave 1.6-1.9x at 1-4 GB).
COUNTS_HELD_SHARE = 0.5
#: Resident memory of a count process before its blocks and counts, as the peak estimate
#: takes it: measured 130-250 MB (the plan reserves `PROCESS_BASE_BYTES`, with a margin);
#: this value keeps the seven measured runs of tests/engine/test_sizes.py (141 MB to 790
#: MB) within 1.25x.
PROCESS_BASE_TYPICAL = 160 << 20
#: Default budget when none is given.
DEFAULT_MEMORY = "50%"
#: Resident bytes the tokenizer holds per byte of one input while it encodes it (its
#: per-token objects): measured 130-175 with a byte-level BPE, so a 30 MB line cost 5.5 GB.
TOKENIZER_BYTES_PER_BYTE = 200
#: Smallest and largest bound on the bytes of a line read whole (longer lines are cut): the
#: largest is about one tokenizer batch (``streamsolve.text.encoding.ENCODE_BATCH_CHARS``).
MIN_LINE_BYTES = 64 << 10
MAX_LINE_BYTES = DEFAULT_MAX_LINE_BYTES  # the reader's default: 1 MiB
#: Share of the budget the plan spends: the rest is a margin for what it does not model
#: (allocator slack, the tokenizer's transient objects, the sampler's own lag). Measured
#: (issue 16): a 1 GB budget planned in full peaked at 98% of itself; planned to 85%,
#: the measured peak stays under the budget.
PLAN_SHARE = 0.85
#: Bytes per token id of the tokenizer itself over a count run (its tables, JSON text and
#: the copies each worker and the store writes make). Measured: a 2M-id WordLevel tokenizer
#: (56 MB of JSON), 4 small shards, 2 workers, ``--memory 4GB``: peak RSS 1.33 GB in stage 1
#: and 2.59 GB in stage 3, against 0.15 GB with 20k ids: 1.22 kB per id in all, of which
#: the unigram counts (`vocab_bytes`) are 264 bytes.
TOKENIZER_BYTES_PER_ID = 1000
#: Share of the planned budget that memory per token id may take (`max_vocab_size`).
VOCAB_SHARE = 0.5
#: Token ids every budget allows: 2**16 = 65,536 (a 64K vocabulary such as GPT-2's: about
#: 80 MB with two workers, inside the reserve for a process).
MIN_VOCAB_LIMIT = 1 << 16
#: Share of each Dask worker's memory limit a run on a cluster takes as its budget by
#: default: dask.distributed pauses a worker at 80% of its limit
#: (``distributed.worker.memory.pause``) and the plan keeps `PLAN_SHARE` of that.
CLUSTER_WORKER_SHARE = 0.8


def total_ram() -> int:
    """Physical memory of this machine in bytes."""
    import psutil

    return int(psutil.virtual_memory().total)


def parse_memory(value: str | int | float | None, default: str = DEFAULT_MEMORY,
                 total: int | None = None) -> int:
    """Bytes of a memory setting: ``2GB``, ``512MiB``, ``1.5G``, ``80%`` (of ``total``,
    default this machine's RAM) or a number.

    Raises
    ------
    ValueError
        With the accepted forms, if the setting cannot be read.
    """
    if value is None:
        value = default
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError(f"memory budget must be positive, got {value}")
        return int(value)
    text = str(value).strip()
    if text.endswith("%"):
        try:
            number = float(text[:-1])
        except ValueError:
            number = math.nan
        if not 0 < number <= 100:  # also refuses nan
            raise ValueError(f"memory share must be in (0, 100]%, got {value!r}")
        return int((total or total_ram()) * number / 100)
    from dask.utils import parse_bytes

    try:
        result = parse_bytes(text)
    except (ValueError, TypeError, OverflowError):
        raise ValueError(f"cannot read memory budget {value!r}: use e.g. 2GB, 512MiB, 1.5G "
                         "or 80%") from None
    if not (isinstance(result, int) and result > 0):
        raise ValueError(f"memory budget must be positive, got {value!r}")
    return result


def check_memory(memory, force: bool = False, worker_limits: Sequence[int] = (),
                 remote: bool = False) -> None:
    """Refuse a memory setting nobody means, in one line naming ``--force-memory``.

    Too much: more than the machines hold (this host's RAM; on a Dask cluster,
    ``worker_limits``, the workers' memory limits together; not checked when ``remote``,
    a command run on hosts not known here, or when the workers have no limit). Too little:
    below `PROCESS_BASE_BYTES`, the memory of one process before it counts anything (the
    plan would be all margin and the measured peak many times the budget). ``force`` accepts
    any budget that parses (e.g. a tiny one to make the spill paths run).

    Raises
    ------
    ValueError
        Naming the setting, the bound and the fix (also when ``memory`` cannot be read).
    """
    if memory is None:
        return
    limits = [int(x) for x in worker_limits if int(x or 0) > 0]
    ceiling, where = None, ""
    if limits:
        n, smallest = len(worker_limits), min(limits)
        ceiling = n * smallest
        where = (f"the {n} Dask workers' memory limits ({n} x {format_bytes(smallest)}, "
                 "the smallest)")
    elif not (remote or worker_limits):
        ceiling, where = total_ram(), f"this host's RAM ({format_bytes(total_ram())})"
    budget = parse_memory(memory, total=ceiling)
    if force:
        return
    if ceiling is not None and budget > ceiling:
        raise ValueError(f"--memory {memory} ({format_bytes(budget)}) is more than {where}: "
                         f"give at most {format_bytes(ceiling)} (e.g. --memory 80%), or "
                         "--force-memory if you mean it")
    if budget < PROCESS_BASE_BYTES:
        raise ValueError(f"--memory {memory} ({format_bytes(budget)}) is below the "
                         f"{format_bytes(PROCESS_BASE_BYTES)} one streamsolve process holds "
                         "before it counts anything: give at least 256MiB, or --force-memory "
                         "if you mean it (counts then spill to --tmp almost at once)")


def run_budget(memory=None, worker_limits: Sequence[int] = ()) -> tuple[int, str]:
    """The budget of a run in bytes (all workers together) and where it came from.

    On a dask.distributed cluster (``worker_limits``: each worker's memory limit, 0 for none)
    the default is, for each of the N workers, `CLUSTER_WORKER_SHARE` of the smallest limit
    (the client host's RAM says nothing about the workers'); a share (``50%``) is of N times
    the smallest limit. Locally, and on a cluster whose workers have no limit, a share is of
    this machine's RAM. An explicit size is the budget as given (a warning says when it is
    more than the workers may hold).
    """
    limits = [int(x) for x in worker_limits if int(x or 0) > 0]
    on_cluster = bool(limits)
    if worker_limits and not limits:
        logger.warning("the Dask workers have no memory limit: planning from this host's RAM "
                       "(give --memory, the budget of all workers together)")
    if on_cluster:
        n, smallest = len(worker_limits), min(limits)
        cluster_total = n * smallest
        if memory is None:
            budget = int(cluster_total * CLUSTER_WORKER_SHARE)
            return budget, (f"{CLUSTER_WORKER_SHARE:.0%} of the workers' memory limit "
                            f"({n} x {format_bytes(smallest)}, the smallest)")
        budget = parse_memory(memory, total=cluster_total)
        if str(memory).strip().endswith("%"):
            return budget, (f"--memory {memory} of the workers' memory limit "
                            f"({n} x {format_bytes(smallest)}, the smallest)")
        if budget > cluster_total:
            logger.warning("--memory %s is more than the %d Dask worker(s) may hold (%d x %s)",
                           format_bytes(budget), n, n, format_bytes(smallest))
        return budget, f"--memory {memory}"
    budget = parse_memory(memory)
    if memory is None:
        return budget, f"{DEFAULT_MEMORY} of this host's RAM ({format_bytes(total_ram())})"
    return budget, f"--memory {memory}"


def line_bytes_for(budget: int, workers: int = 1) -> int:
    """Longest line read and tokenized whole under ``budget`` bytes shared by ``workers``.

    Rule: a line may take half of a worker's share of the budget left after the process
    base (`PROCESS_BASE_BYTES`) while the tokenizer encodes it (`TOKENIZER_BYTES_PER_BYTE`
    per byte), clamped to [`MIN_LINE_BYTES`, `MAX_LINE_BYTES`] (64 KiB to 1 MiB). Longer
    lines are cut into pieces of at most this size (see `streamsolve.text.reading`).
    """
    share = (int(budget) - PROCESS_BASE_BYTES) // (2 * max(1, int(workers)) * TOKENIZER_BYTES_PER_BYTE)
    return int(min(MAX_LINE_BYTES, max(MIN_LINE_BYTES, share)))


def vocab_bytes(vocab_size: int, workers: int = 1, split_every: int = 4) -> int:
    """Bytes a count run may hold per token id, times ``vocab_size``.

    The tokenizer's own (`TOKENIZER_BYTES_PER_ID`), and the unigram counts (V int64) of
    every in-memory counts: per worker the block being counted, `PENDING_BLOCKS` pending
    ones, the shard's merged counts and ``split_every`` + 2 results of the tree merge;
    plus the final result.
    """
    holders = max(1, int(workers)) * (PENDING_BLOCKS + 2 + split_every + 2) + 1
    return int(vocab_size) * (TOKENIZER_BYTES_PER_ID + 8 * holders)


def max_vocab_size(budget: int, workers: int = 1, split_every: int = 4) -> int:
    """Most token ids a count run under ``budget`` bytes may have: their memory
    (`vocab_bytes`) takes at most `VOCAB_SHARE` of the planned budget; at least
    `MIN_VOCAB_LIMIT`, at most `MAX_VOCAB_SIZE` (2**24)."""
    fits = int(budget * PLAN_SHARE * VOCAB_SHARE) // vocab_bytes(1, workers, split_every)
    return int(min(MAX_VOCAB_SIZE, max(MIN_VOCAB_LIMIT, fits)))


def check_vocab_fits(vocab_size: int, what: str, memory=None, worker_limits: Sequence[int] = (),
                     workers: int = 1) -> None:
    """Refuse a vocabulary of ``vocab_size`` ids above `max_vocab_size` of the run's budget
    (`run_budget` of ``memory`` and ``worker_limits``), before anything is allocated.

    Raises
    ------
    ValueError
        One line naming ``what`` (``--vocab-size N``, a tokenizer file) and the budget.
    """
    budget, source = run_budget(memory, worker_limits)
    limit = max_vocab_size(budget, workers)
    if vocab_size > limit:
        raise ValueError(
            f"{what} needs ~{format_bytes(vocab_bytes(vocab_size, workers))} of memory per "
            f"token id, more than the {source} budget allows (at most {limit} token ids "
            f"with {workers} worker(s)): use a smaller vocabulary or raise --memory")


def format_bytes(n: float) -> str:
    """``1.00 GB``-style text in the units `parse_memory` reads (``GB`` = 10**9 bytes, as
    `dask.utils.parse_bytes`), so ``--memory 1GB`` is logged as ``1.00 GB``."""
    n = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"  # pragma: no cover


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """How a memory budget is split; sent to every task (small and picklable).

    Attributes
    ----------
    budget : int
        Bytes for the whole run (all workers together).
    workers : int
        Tasks running at the same time.
    block_bytes : int
        Read block size (counts do not depend on it).
    task_bytes : int
        In-memory counts a task may hold before spilling (keys + values, 16 bytes a pair).
    spill_dir : str or None
        Directory of this run's spill files (created on first spill, removed at the end);
        None: never spill (no budget given).
    rows_per_block : int
        Row-block size of the store: spilled runs are indexed by it.
    merge_fan_in : int
        Most runs merged in one pass of the k-way merge.
    serial_tokenizer : bool
        Tokenize one batch at a time per process (budgets under ``SERIAL_TOKENIZER_BELOW``
        per worker): lower peak memory, about 15% slower with two workers.
    trim_above : int
        Resident memory of one process above which a task gives freed heap pages back to
        the OS after each tokenizer batch (`release_free_memory`): half the process's share
        of the budget. Trimming always costs ~15% of throughput (pages are faulted in again),
        so it is done only when memory is getting tight.
    """

    budget: int
    workers: int
    block_bytes: int
    task_bytes: int
    spill_dir: str | None
    rows_per_block: int
    merge_fan_in: int = 64
    serial_tokenizer: bool = False
    trim_above: int = 0
    estimated_peak_bytes: int = 0
    estimated_spill_bytes: int = 0
    budget_source: str = ""

    @classmethod
    def build(cls, budget: int, workers: int, n_blocks: int, rows_per_block: int,
              spill_dir: str | None, split_every: int = 4,
              block_bytes: int = MAX_BLOCK_BYTES, processes: int = 1) -> "MemoryPlan":
        """Split ``budget`` bytes for ``workers`` concurrent tasks counting ``n_blocks`` blocks.

        The tasks run in ``processes`` processes (1 for the threaded scheduler).

        A read block of B bytes of text costs about ``B * (12 + 8 * n_blocks)`` bytes while it
        is tokenized and counted (lines, ids, one key array per block and a sort buffer); the
        counts pool left after the per-process base and the read blocks is shared by the
        tasks that may hold counts at once (each worker's running task, plus up to
        ``split_every`` results waiting for each merge). Only `PLAN_SHARE` of the budget is
        planned (the rest is a margin), and each process running tasks has its own base.
        """
        workers = max(1, int(workers))
        per_byte = 12 + 8 * n_blocks
        planned = int(budget * PLAN_SHARE)
        available = planned - max(1, min(int(processes), workers)) * PROCESS_BASE_BYTES
        block = min(block_bytes, max(MIN_BLOCK_BYTES, available // (4 * workers * per_byte)))
        pool = available - workers * block * per_byte
        holders = workers * (split_every + 2) + 1
        task = max(MIN_TASK_BYTES, pool // holders)
        return cls(int(budget), workers, int(block), int(task), spill_dir, int(rows_per_block),
                   serial_tokenizer=workers > 1 and budget < workers * SERIAL_TOKENIZER_BELOW,
                   trim_above=int(budget // (2 * max(1, min(int(processes), workers)))))

    def trim_heap(self) -> bool:
        """Give freed heap pages back to the OS if this process holds more than
        ``trim_above`` (called after each tokenizer batch; see `release_free_memory`)."""
        return release_free_memory(self.trim_above)

    def estimate(self, input_bytes: int, n_blocks: int, compressed_ratio: float = 1.0,
                 vocab_size: int | None = None, shard_bytes: Sequence[float] | None = None,
                 split_every: int = 4) -> dict:
        """Up-front estimate of peak memory and spill disk from the corpus, V and R.

        ``input_bytes`` are the shards' sizes on disk, ``compressed_ratio`` their expected
        expansion (about 3.5 for gzip text), ``shard_bytes`` each shard's text in bytes
        (default: one shard of all of it). Tokens are taken as 1 per 3.5 bytes of text, and
        the counts of T tokens as ``16 * n_blocks * distinct_pairs(T)`` bytes (Heaps' law
        with `HEAPS_PAIRS_TYPICAL`). Spill is what `simulate_counts` finds the shard tasks
        and the tree merge write (they spill when their inputs together pass `task_bytes`).
        Memory is the process base (`PROCESS_BASE_TYPICAL`), the read blocks being
        tokenized (no larger than a shard) and `COUNTS_HELD_SHARE` of the largest merge's
        counts.
        """
        text = input_bytes * compressed_ratio
        shard_text = [float(b) for b in shard_bytes] if shard_bytes else [float(text)]
        tokens = text / 3.5
        pairs = distinct_pairs(tokens, vocab_size, HEAPS_PAIRS_TYPICAL)
        counts = 16.0 * n_blocks * pairs
        cap = self.task_bytes if self.spill_dir else math.inf
        counted = simulate_counts([b / 3.5 for b in shard_text], n_blocks, cap,
                                  self.block_bytes / 3.5, split_every, vocab_size)
        reading = self.workers * min(self.block_bytes, max(shard_text)) * (12 + 8 * n_blocks)
        peak = PROCESS_BASE_TYPICAL + reading + COUNTS_HELD_SHARE * counted["largest_bytes"]
        return {"text_bytes": int(text), "tokens": int(tokens), "counts_bytes": int(counts),
                "peak_bytes": int(peak), "spill_bytes": int(counted["spill_bytes"])}


def simulate_counts(shard_tokens: Sequence[float], n_blocks: int, task_bytes: float,
                    block_tokens: float, split_every: int = 4,
                    vocab_size: int | None = None) -> dict:
    """Follow a count run's in-memory counts and spills on estimated sizes (no data).

    Each shard task counts blocks of ``block_tokens`` tokens, merges every `PENDING_BLOCKS`
    (or at half of ``task_bytes``) into its counts, and spills both to sorted runs when
    together they pass ``task_bytes``; the tree merge (``split_every`` inputs a node) spills
    a node's inputs when together they pass it, as `streamsolve.engine.spill.merge_partials`
    does. Counts of T tokens: ``16 * n_blocks * distinct_pairs(T)`` bytes.

    Returns ``{"spill_bytes", "largest_bytes"}``: the bytes of sorted runs written, and the
    most counts one task held in memory at once (a merge's inputs, and its result).
    """
    def size(tokens: float) -> float:
        return 16.0 * n_blocks * distinct_pairs(tokens, vocab_size, HEAPS_PAIRS_TYPICAL)

    spill, largest = 0.0, 0.0

    def merge(held: tuple[float, float], parts: list[tuple[float, float]]):
        nonlocal spill, largest
        together = held[1] + sum(b for _, b in parts)
        if together > task_bytes:  # every input spilled as it is
            largest = max(largest, together)
            spill += together
            return 0.0, 0.0
        tokens = held[0] + sum(t for t, _ in parts)
        merged = min(together, size(tokens))
        largest = max(largest, together + merged)  # the inputs and their sum
        if merged > task_bytes:
            spill += merged
            return 0.0, 0.0
        return tokens, merged

    nodes = []
    for total in shard_tokens:
        held, left = (0.0, 0.0), float(total)
        while left > 0:
            pending, pending_bytes, n = 0.0, 0.0, 0
            while left > 0 and n < PENDING_BLOCKS and pending_bytes <= task_bytes / 2:
                block = min(block_tokens, left)
                left, pending, n = left - block, pending + block, n + 1
                pending_bytes += size(block)
            held = merge(held, [(pending, min(pending_bytes, size(pending)))])
        nodes.append(held)
    while len(nodes) > 1:
        nodes = [merge((0.0, 0.0), nodes[i:i + split_every])
                 for i in range(0, len(nodes), split_every)]
    return {"spill_bytes": spill, "largest_bytes": largest}


def distinct_pairs(tokens: float, vocab_size: int | None = None,
                   factor: float = HEAPS_PAIRS) -> float:
    """Estimated distinct pairs of one offset after ``tokens`` tokens:
    ``min(T, factor * T ** HEAPS_EXPONENT, V**2)`` (default: the bound, `HEAPS_PAIRS`)."""
    tokens = float(tokens)
    pairs = min(tokens, factor * tokens ** HEAPS_EXPONENT)
    return min(pairs, float(vocab_size) ** 2) if vocab_size else pairs


def default_spill_root(tmp: str | None) -> str:
    """The directory spill subdirectories go in: ``tmp``, ``$STREAMSOLVE_TMP`` or the system temp."""
    import tempfile

    root = tmp or os.environ.get("STREAMSOLVE_TMP") or tempfile.gettempdir()
    if "://" in root:
        raise ValueError(f"--tmp must be a local (or shared, mounted) directory, got {root!r}")
    return root


_ALLOCATOR_TUNED = False


@functools.lru_cache(maxsize=1)
def _glibc():
    """The C library when it is glibc (has ``mallopt`` and ``malloc_trim``), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 - AttributeError when not glibc
        return libc
    except (OSError, AttributeError):
        return None


def tune_allocator(mmap_threshold: int = 1 << 20, arenas: int = 2) -> bool:
    """Keep glibc's heap from holding freed count arrays (once per process; Linux only).

    Counting allocates and frees many arrays of a few MB from several threads. By default
    glibc raises its mmap threshold after each large free (up to 32 MB) and gives each
    thread its own arena, so freed arrays stay in fragmented heaps and the resident size
    creeps up with the number of blocks counted (measured: 763 MiB instead of 421 MiB
    for 8x the quick bench corpus). A fixed 1 MB threshold returns big arrays to the OS
    on free; two arenas bound the per-thread heaps. Same as ``MALLOC_MMAP_THRESHOLD_`` and
    ``MALLOC_ARENA_MAX`` in the environment.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    _ALLOCATOR_TUNED = True
    libc = _glibc()
    if libc is None:
        return False
    m_mmap_threshold, m_arena_max = -3, -8
    ok = bool(libc.mallopt(m_mmap_threshold, int(mmap_threshold)))
    ok &= bool(libc.mallopt(m_arena_max, int(arenas)))
    return ok


def release_free_memory(above: int = 0) -> bool:
    """Give the pages of freed heap memory back to the OS (glibc ``malloc_trim``; else no-op).

    Only when this process's resident memory exceeds ``above`` bytes (0: always). Returns
    whether it trimmed. The tokenizer's threads allocate many small objects (below the
    mmap threshold) per batch and free them all at the end; glibc keeps those pages resident
    in its arenas (measured: 110-230 MB per tokenized 6 MB block, varying from block to block,
    so the run's peak grew with the number of blocks). Trimming releases them, but the
    pages are faulted in again by the next batch: ~15% slower when done after every batch.
    """
    libc = _glibc()
    if libc is None or (above and _resident_bytes() <= above):
        return False
    libc.malloc_trim(0)
    return True


def _resident_bytes() -> int:
    """Resident memory of this process (Linux ``/proc/self/statm``; 0 when unknown)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def shard_text_bytes(paths: Sequence[str], storage_options: dict | None) -> list[tuple[int, float]]:
    """Each shard's bytes on disk and expected expansion (for the up-front estimate)."""
    import fsspec

    sizes = []
    for path in paths:
        try:
            if "://" in path and not path.startswith("file://"):
                fs, _, (root,) = fsspec.get_fs_token_paths(path, storage_options=storage_options or {})
                size = fs.size(root)
            else:
                size = os.path.getsize(path)
        except Exception:  # noqa: BLE001 - only an estimate
            size = 0
        compressed = path.endswith((".gz", ".bz2", ".xz", ".zst"))
        sizes.append((int(size or 0), 3.5 if compressed else 1.0))
    return sizes


def input_bytes(paths: Sequence[str], storage_options: dict | None) -> tuple[int, float]:
    """Bytes of the shards on disk and their expected expansion (for the up-front estimate)."""
    sizes = shard_text_bytes(paths, storage_options)
    total = sum(size for size, _ in sizes)
    expanded = sum(size * ratio for size, ratio in sizes)
    return total, (expanded / total if total else 1.0)


def make_plan(paths: Sequence[str], n_blocks: int, read_block_bytes: int,
              storage_options: dict | None = None, *, memory=None, tmp: str | None = None,
              workers: int = 1, processes: int = 1, rows_per_block: int | None = None,
              split_every: int = 4, vocab_size: int | None = None,
              worker_limits: Sequence[int] = ()):
    """The run's `MemoryPlan` and spill directory, logging the up-front estimate.

    ``worker_limits`` are the memory limits of a cluster's workers (see `run_budget`).

    Returns ``(plan, spill)``; ``spill`` is the run's `SpillDirectory` (created on first
    spill, removed by the caller at the end).
    """
    from ..store.layout import DEFAULT_ROWS_PER_BLOCK
    from .spill import SpillDirectory

    budget, source = run_budget(memory, worker_limits)
    spill = SpillDirectory(default_spill_root(tmp))
    plan = MemoryPlan.build(budget, workers, n_blocks, rows_per_block or DEFAULT_ROWS_PER_BLOCK,
                            spill.path, split_every, read_block_bytes, processes)
    shards = shard_text_bytes(paths, storage_options)
    size = sum(disk for disk, _ in shards)
    ratio = sum(disk * r for disk, r in shards) / size if size else 1.0
    estimate = plan.estimate(size, n_blocks, ratio, vocab_size,
                             [disk * r for disk, r in shards], split_every)
    plan = dataclasses.replace(plan, estimated_peak_bytes=estimate["peak_bytes"],
                               estimated_spill_bytes=estimate["spill_bytes"],
                               budget_source=source)
    logger.info("memory budget %s (%s), %.0f%% of it planned, for %d worker(s): read blocks "
                "of %s, counts spill to %s above %s per task%s", format_bytes(budget), source,
                100 * PLAN_SHARE, plan.workers, format_bytes(plan.block_bytes), spill.path,
                format_bytes(plan.task_bytes),
                "; one tokenizer batch at a time (tight budget)" if plan.serial_tokenizer else "")
    logger.info("estimate: %d shard(s), %s on disk, ~%s of text, ~%s tokens; peak memory ~%s; "
                "spill disk ~%s", len(paths), format_bytes(size),
                format_bytes(estimate["text_bytes"]), f"{estimate['tokens']:,}",
                format_bytes(estimate["peak_bytes"]), format_bytes(estimate["spill_bytes"]))
    return plan, spill

"""The Dask tasks of an ingest: count one shard, add shard results, write one row block.

Each task is a pure function of explicit arguments (no environment reads, no allocator
calls: the memory plan and the `Runtime` own those), and the graph builders here give each
task a key that hashes its inputs. `count_shard` is the unit of parallel work:

    read blocks -> split hold-out -> encode -> count -> merge (spilling over the plan's cap)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Sequence

import numpy as np

from ..core.counting import ContextCarry, CountConfig, Counts, count_flat, merge_counts
from ..store.layout import StoreCorruptError, csr_of_rows, merge_csr_block, row_blocks
from ..store.model_store import ModelStore
from ..store import transaction as store_transaction
from ..text.encoding import LineEncoder
from ..text.holdout import HoldOut, RunSplitter
from ..text.reading import BinaryShardError, CorpusError, ReadOptions, ReadStats, iter_document_pieces
from ..text.tokenizer import TokenizerError
from .memory import PENDING_BLOCKS, MemoryPlan
from .ngram_tasks import ShardNgrams, merge_ngrams  # n-gram blocks (issue 24)
from .runtime import delayed, tokenize_key, tree_reduce
from .spill import PartialCounts, collect, merge_partials, merge_sources

logger = logging.getLogger(__name__)

@dataclasses.dataclass
class ShardResult:
    """What one shard task returns: its counts, and its held-out documents as token ids."""

    counts: Counts
    heldout: list  # list of np.ndarray (int32 token ids), one per held-out document
    heldout_bytes: int = 0  # UTF-8 bytes of the returned held-out documents
    memory: dict | None = None  # the run's memory plan, estimate and measured figures
    ngram: object = None  # NgramCounts with --ngram (issue 24), else None


class _BlockCounts:
    """A shard's counts, block by block: merged every `PENDING_BLOCKS` blocks (or at half the
    plan's cap), spilled to sorted runs above the cap."""

    def __init__(self, config: CountConfig, plan: MemoryPlan | None):
        self.rows_per_block = plan.rows_per_block if plan is not None else 1 << 62
        self.cap = plan.task_bytes if plan is not None and plan.spill_dir else None
        self.spill_dir = plan.spill_dir if plan is not None else None
        self.merged = PartialCounts.of(Counts.empty(config), self.rows_per_block)
        self.pending: list[Counts] = []
        self.pending_bytes = 0

    def add(self, block: Counts) -> None:
        self.pending.append(block)
        self.pending_bytes += 16 * sum(k.size for k in block.keys)
        if len(self.pending) >= PENDING_BLOCKS or (self.cap is not None
                                                   and self.pending_bytes > self.cap // 2):
            self.flush()

    def flush(self) -> PartialCounts:
        if self.pending:
            block = PartialCounts.of(merge_counts(*self.pending), self.rows_per_block)
            self.merged = merge_partials([self.merged, block], self.cap, self.spill_dir)
            self.pending, self.pending_bytes = [], 0
        return self.merged

    def discard(self) -> None:
        """Drop everything counted so far, spilled runs included (a shard skipped late)."""
        for runs in self.merged.runs:
            for run in runs:
                for path in (run.keys_path, run.values_path):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(path)
        self.merged = PartialCounts.of(Counts.empty(self.merged.config), self.rows_per_block)
        self.pending, self.pending_bytes = [], 0


class _HeldOutDocuments:
    """Held-out documents as token ids, up to ``max_tokens`` of them."""

    def __init__(self, max_tokens: int):
        self.max_tokens = max_tokens
        self.documents: list[np.ndarray] = []
        self.tokens = 0
        self.bytes = 0

    @property
    def full(self) -> bool:
        return self.tokens >= self.max_tokens

    def add(self, pieces, encoded) -> None:
        for (lines, _), (ids, _) in zip(pieces, encoded):
            if not self.full and ids.size:
                self.documents.append(ids.astype(np.int32))
                self.tokens += ids.size
                self.bytes += sum(len(line.encode("utf-8")) for line in lines)


def _read_options_under(plan: MemoryPlan | None, read_options: ReadOptions) -> ReadOptions:
    """The read options with the plan's (smaller) block size; the line bound is the store's."""
    if plan is not None and plan.block_bytes < read_options.block_bytes:
        return dataclasses.replace(read_options, block_bytes=plan.block_bytes)
    return read_options


def count_shard(path: str, tokenizer_text: str, config: CountConfig,
                read_options: ReadOptions, holdout: HoldOut = HoldOut(),
                plan: MemoryPlan | None = None, shard_delay: float = 0.0) -> ShardResult:
    """Read, tokenize and count one shard (a pure function; the unit of parallel work).

    Parameters
    ----------
    path : str
        Local path or fsspec URL of the shard.
    tokenizer_text : str
        The tokenizer's JSON (workers build and cache the tokenizer from it).
    config : CountConfig
    read_options : ReadOptions
        Its ``max_line_bytes`` is the store's line bound (longer lines are cut).
    holdout : HoldOut
    plan : MemoryPlan, optional
        Memory caps. With a plan the counts are a `PartialCounts` (spilled to sorted runs
        whenever they exceed ``plan.task_bytes``), the read block size is the plan's, and
        the tokenizer runs as the plan says (`MemoryPlan.serial_tokenizer`,
        `MemoryPlan.trim_heap`); without one, an in-memory `Counts`.
    shard_delay : float
        Seconds to sleep first (tests use it to stop a worker while tasks run).

    Returns
    -------
    ShardResult
        Counts with one manifest entry for the shard (``skipped`` set for binary, not-text
        and empty ones; ``sha256`` the hash of exactly the stored bytes read, None for a
        binary or not-text shard). A shard found binary or not text late is not counted
        at all: what was counted of it is dropped.
    """
    started = time.perf_counter()
    if shard_delay:
        time.sleep(shard_delay)
    read_options = _read_options_under(plan, read_options)
    encoder = LineEncoder(tokenizer_text, config.bos_id,
                          serial=plan is not None and plan.serial_tokenizer,
                          after_batch=plan.trim_heap if plan is not None else None)
    splitter = RunSplitter(holdout, path)
    counts = _BlockCounts(config, plan)
    held = _HeldOutDocuments(holdout.max_tokens_per_shard)
    carry = ContextCarry(config)
    ngrams = ShardNgrams(config)  # issue 24: n-gram blocks beside the offsets (no-op without)
    stats, hasher = ReadStats(), hashlib.sha256()
    skipped = None
    try:
        for pieces in iter_document_pieces(path, read_options, stats, hasher):
            train, held_pieces, ends_held = splitter.split(pieces)
            if train:
                flat, lengths = encoder.encode_pieces(train)
                ngrams.add(flat, lengths, not train[0][1])
                counts.add(count_flat(flat, lengths, not train[0][1], config, carry))
            if held_pieces and not held.full:
                held.add(held_pieces, encoder.encode_documents(held_pieces))
            if ends_held:
                carry.reset()
                ngrams.reset()
    except BinaryShardError as exc:  # also late in the shard: nothing of it is counted
        logger.warning("%s", exc)
        skipped = exc.reason
        counts.discard()
        ngrams.discard()
        held = _HeldOutDocuments(holdout.max_tokens_per_shard)
        stats = ReadStats()
    except UnicodeDecodeError as exc:  # pragma: no cover - decode_counting replaces
        raise CorpusError(f"{path}: {exc}") from exc
    except TokenizerError as exc:  # a panic of the tokenizer: say on which shard
        raise TokenizerError(f"shard {path}: {exc}") from None
    merged = counts.flush()
    if skipped is None and merged.tokens == 0 and held.tokens == 0:
        logger.warning("shard has no text, skipped: %s", path)
        skipped = "empty"
    _describe_shard(merged.memory, path, stats, held.tokens, skipped,
                    None if skipped not in (None, "empty") else hasher.hexdigest(),
                    time.perf_counter() - started)
    logger.debug("counted %s: %d tokens (%d runs spilled)", path, merged.tokens,
                 merged.spilled_runs)
    return ShardResult(merged.to_counts() if plan is None else merged, held.documents, held.bytes,
                       ngram=ngrams.flush())


def heldout_of_shard(path: str, tokenizer_text: str, config: CountConfig,
                     read_options: ReadOptions, holdout: HoldOut) -> tuple[list, int, str]:
    """The held-out documents of one shard again, as `count_shard` returned them (no counting).

    Returns
    -------
    (list of np.ndarray, int, str)
        Held-out documents as token ids, their UTF-8 bytes, and the sha256 of the shard's
        stored bytes (the caller compares it with the manifest's to know the split is the
        one held out of counting).
    """
    encoder = LineEncoder(tokenizer_text, config.bos_id)
    splitter = RunSplitter(holdout, path)
    held = _HeldOutDocuments(holdout.max_tokens_per_shard)
    stats, hasher = ReadStats(), hashlib.sha256()
    for pieces in iter_document_pieces(path, read_options, stats, hasher):
        _, held_pieces, _ = splitter.split(pieces)
        if held_pieces and not held.full:
            held.add(held_pieces, encoder.encode_documents(held_pieces))
    return held.documents, held.bytes, hasher.hexdigest()


def _describe_shard(counts: Counts, path: str, stats: ReadStats, heldout_tokens: int,
                    skipped: str | None, sha256: str | None, seconds: float) -> None:
    """Attach the shard's read statistics and its manifest entry to its counts."""
    stats_dict = dataclasses.asdict(stats)
    stats_dict["tokens"] = counts.tokens
    stats_dict["heldout_tokens"] = int(heldout_tokens)
    counts.stats = stats_dict
    counts.shards = [{
        "path": path,
        "bytes": stats.bytes,
        "tokens": counts.tokens,
        "documents": stats.documents,
        "invalid_bytes": stats.invalid_bytes,
        "bad_records": stats.bad_records,
        "split_lines": stats.split_lines,
        "skipped": skipped,
        "sha256": sha256,
        "seconds": round(seconds, 3),
    }]


def merge_results(*results: ShardResult, plan: MemoryPlan | None = None) -> ShardResult:
    """Add shard results (one node of the tree reduction), spilling over the plan's cap."""
    heldout = [doc for r in results for doc in r.heldout]
    heldout_bytes = sum(r.heldout_bytes for r in results)
    if isinstance(results[0].counts, PartialCounts):
        cap = plan.task_bytes if plan is not None and plan.spill_dir else None
        counts = merge_partials([r.counts for r in results], cap,
                                plan.spill_dir if plan is not None else None)
    else:
        counts = merge_counts(*(r.counts for r in results))
    return ShardResult(counts, heldout, heldout_bytes, ngram=merge_ngrams(results))


def count_graph(paths: Sequence[str], tokenizer_text: str, config: CountConfig,
                read_options: ReadOptions, holdout: HoldOut, plan: MemoryPlan | None,
                split_every: int = 4, shard_delay: float = 0.0):
    """The Dask graph of a corpus's counts: one `count_shard` task per shard, a tree merge."""
    extra = {"plan": plan} if plan is not None else {}
    if shard_delay:
        extra["shard_delay"] = shard_delay
    tasks = [
        delayed(count_shard)(path, tokenizer_text, config, read_options, holdout, **extra,
                             dask_key_name=f"count-{i}-{tokenize_key([path, config, read_options, holdout, tokenizer_text, plan])}")
        for i, path in enumerate(paths)
    ]
    return tree_reduce(tasks, merge_results, split_every,
                       **({"plan": plan} if plan is not None else {}))


# -- writing counts to a store: one task per row block ------------------------------------------

def write_row_block(store_url: str, storage_options: dict | None, generation: int,
                    base_generation: int | None, r: int, k: int, start: int, stop: int,
                    sources: list, vocab_size: int, memory_bytes: int, spill_dir: str | None,
                    rows_per_block: int) -> int | Exception:
    """k-way merge the sources of row block ``k`` of count block ``r`` (plus the base
    generation's block, for an existing store) and write it; returns its nnz.

    The only writer of that row block (one task per block: no two tasks share a Zarr chunk).
    A damaged base block (`StoreCorruptError`) or a failed write (``OSError``: a full disk,
    a file-size limit) is returned, not raised, so that every other task finishes before the
    writer stage raises it and discards the generation (a task still running would write
    into it after the discard).
    """
    keys, values = collect(merge_sources(sources, memory_bytes, spill_dir, vocab_size,
                                         rows_per_block))
    csr = csr_of_rows(keys, values, vocab_size, start, stop)
    del keys, values
    store = ModelStore(store_url, storage_options)
    if base_generation is not None:
        try:
            base = store.read_count_block_csr(base_generation, r, k)  # verified
        except StoreCorruptError as exc:
            return exc
        csr = merge_csr_block(base, csr)
    try:
        store_transaction.write_count_block(store, generation, r, k, *csr)
    except OSError as exc:
        return exc
    return int(csr[1].size)


def write_graph(store, generation: int, base: int | None, partial: PartialCounts, runtime,
                spill_dir: str | None) -> tuple[list, list[int]]:
    """One `write_row_block` task per row block of each count block of ``partial``.

    Returns ``(tasks, block)``: the tasks, and the count block each one writes.
    """
    config = partial.config
    V, rows = config.vocab_size, partial.rows_per_block
    memory_bytes = partial.merge_bytes or (64 << 20)
    tasks, index = [], []
    for r in range(config.n_blocks):
        for k, (start, stop) in enumerate(row_blocks(V, rows)):
            sources = partial.sources(r, row_block=k)
            if not any(s.n for s in sources) and base is None:
                sources = []
            if sources:
                sources = runtime.scatter(sources)
            tasks.append(delayed(write_row_block)(
                store.url, store.storage_options, generation, base, r, k, start, stop,
                sources, V, memory_bytes, spill_dir, rows,
                dask_key_name=f"write-r{r}-b{k}-g{generation}-{tokenize_key([store.url, generation])}"))
            index.append(r)
    return tasks, index

"""The ingest: a corpus into a store's counts, in five numbered stages (as KenLM's lmplz).

=====  ==========================================  ==========================================
stage  what                                        function
=====  ==========================================  ==========================================
1/5    configuration + tokenizer                   `configure`
2/5    hash the shards, skip those already counted `hash_shards`
3/5    read + tokenize + count + tree merge        `count_corpus` (Dask: `engine.tasks`)
4/5    k-way merge + row-block writes              `write_row_blocks` (Dask: one task a block)
5/5    commit                                      `commit`
=====  ==========================================  ==========================================

`run` chains them under the store's held writer lock; `streamsolve.api.count` validates its
arguments, takes the lock and calls it. The store's counts change in one atomic step (stage
5) or not at all.

The longest line read whole (longer lines are cut into pieces, see
`streamsolve.text.reading`) is fixed when the store is created, from the memory budget of
that run (`streamsolve.engine.memory.line_bytes_for`), and recorded in the store's
``read_options`` as ``max_line_bytes``: every later ingest into the store uses it, so counts
never depend on a later run's ``--memory`` or worker count.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence

from .core.counting import CountConfig
from .engine.ngram_tasks import write_ngram_generation  # issue 24 hook
from .engine.memory import (PLAN_SHARE, check_memory, check_vocab_fits, format_bytes,
                             line_bytes_for,
                             make_plan, run_budget, tune_allocator)
from .engine.progress import PeakMemory, Stage
from .engine.runtime import Runtime, delayed
from .engine.spill import PartialCounts
from .engine.tasks import ShardResult, count_graph, write_graph
from .store.layout import MAX_RADIUS, StoreCorruptError, StoreError, write_failure
from .store.location import creatable_location
from .store.manifest import IngestPlan, manifest_entries, plan_ingest, record_aliases  # noqa: F401
from .store.model_store import ModelStore
from .text.holdout import HoldOut
from .text.reading import DEFAULT_MAX_LINE_BYTES, CorpusError, ReadOptions, read_sample
from .text.shards import expand_shards, file_digests, hash_batches, shard_sizes
from .text.tokenizer import (check_vocab_size, find_bos, load_tokenizer, tokenizer_from_json,
                             tokenizer_hash, tokenizer_json, vocab_size_of)
from .text.training_process import train_bpe_in_subprocess

logger = logging.getLogger(__name__)

DEFAULT_VOCAB_SIZE = 8192
DEFAULT_RADIUS = 3
TOKENIZER_SAMPLE_BYTES = 16 << 20
STAGES = 5


@dataclasses.dataclass(frozen=True)
class IngestOptions:
    """How to count a corpus (the keyword arguments of `streamsolve.api.count`)."""

    tokenizer: str | None = None
    vocab_size: int | None = None  # None: DEFAULT_VOCAB_SIZE for a new store
    radius: int | None = None
    aggregation: str | None = None
    documents: str = "blank-line"
    text_field: str = "text"
    bos_token: str | None = None
    heldout_fraction: float = 0.0
    heldout_group_bytes: int = HoldOut.group_bytes
    scheduler: str | None = None
    workers: int | None = None
    storage_options: dict | None = None
    block_bytes: int | None = None
    rows_per_block: int | None = None
    allow_changed: bool = False
    memory: str | int | None = None
    tmp: str | None = None
    force_memory: bool = False  # accept a budget above the machines' memory or below a process's
    ngram: int | None = None  # issue 24: largest suffix n-gram order (None: the store's, or 0)


@dataclasses.dataclass
class CountResult:
    """What `streamsolve.api.count` did."""

    store: str
    shards: list
    tokens: int
    new_tokens: int
    nnz: list
    seconds: float
    heldout: list = dataclasses.field(default_factory=list, repr=False)
    heldout_bytes: int = 0
    skipped: list = dataclasses.field(default_factory=list)
    invalid_bytes: int = 0
    already: list = dataclasses.field(default_factory=list)
    changed: list = dataclasses.field(default_factory=list)
    split_lines: int = 0
    skipped_reasons: dict = dataclasses.field(default_factory=dict)
    memory: dict = dataclasses.field(default_factory=dict)

    def summary(self) -> dict:
        """The JSON-able summary printed by ``streamsolve count``."""
        return {"store": self.store, "shards": len(self.shards), "tokens": self.tokens,
                "already_ingested": [a["path"] for a in self.already],
                "changed_added": [c["path"] for c in self.changed],
                "new_tokens": self.new_tokens, "distinct_pairs": self.nnz,
                "seconds": round(self.seconds, 3),
                "tokens_per_second": round(self.new_tokens / self.seconds) if self.seconds else None,
                "skipped_shards": self.skipped, "skipped_reasons": self.skipped_reasons,
                "invalid_bytes": self.invalid_bytes, "split_lines": self.split_lines,
                "memory": self.memory or None}


@dataclasses.dataclass
class IngestSetup:
    """What stage 1 fixes: the shards, the store, the count configuration and the tokenizer."""

    paths: list
    special: list  # manifest entries of shards skipped before reading (FIFOs, devices, ...)
    store: ModelStore
    existing: bool
    config: CountConfig
    tokenizer_text: str
    tokenizer_sha256: str
    bos: str
    read_options: ReadOptions
    read_meta: dict  # the store's read_options (documents, text_field, max_line_bytes)
    rows_per_block: int | None


def run(corpus: Sequence[str] | str, store: str, options: IngestOptions, lock) -> CountResult:
    """Count ``corpus`` into ``store`` (created if absent), holding its writer ``lock``."""
    started = time.perf_counter()
    # Before the tokenizer trainer's and the scheduler's threads exist: glibc gives a thread
    # its own heap arena on its first malloc.
    tune_allocator()
    with Runtime(options.scheduler, options.workers, worker_setup=tune_allocator) as runtime:
        if runtime.client is not None:  # the ceiling is the workers' limits, known from here
            check_memory(options.memory, options.force_memory, runtime.worker_memory_limits())
        # the Runtime first: on a cluster the line bound comes from the workers' limits
        setup = configure(corpus, store, options, runtime.worker_memory_limits(),
                          runtime.worker_threads if runtime.client is not None else None)
        return _run_configured(setup, options, lock, runtime, started)


def _run_configured(setup: IngestSetup, options: IngestOptions, lock, runtime: Runtime,
                    started: float) -> CountResult:
    """Stages 2-5 of `run` on its Runtime."""
    store = setup.store.url
    with PeakMemory(interval=0.5) as run_peak:
        runtime.reset_worker_peaks()
        plan, digests = hash_shards(setup, runtime, options.allow_changed)
        already, changed = plan.already, plan.changed
        if not plan.to_count:
            logger.info("nothing new to count: every shard was already ingested")
            if plan.aliases:
                record_aliases(setup.store, plan.aliases, lock)
            meta = setup.store.meta
            return CountResult(store, [], meta["counts"]["tokens"], 0, meta["counts"]["nnz"],
                               time.perf_counter() - started, already=already, changed=changed,
                               skipped=[e["path"] for e in setup.special],
                               skipped_reasons={e["path"]: e["skipped"] for e in setup.special})
        result = count_corpus(plan.to_count, setup.tokenizer_text, setup.config, setup.read_options,
                              HoldOut(options.heldout_fraction, group_bytes=options.heldout_group_bytes), runtime=runtime,
                              memory=options.memory, tmp=options.tmp, keep_partial=True,
                              rows_per_block=setup.rows_per_block)
        new = result.counts
        check_counted_bytes(new, dict(zip(setup.paths, digests)))
        skipped_entries = setup.special + [s for s in new.shards if s["skipped"]]
        if new.tokens == 0 and not result.heldout:
            _remove_spill(new)
            raise CorpusError("no text found in the corpus (all shards empty, binary or not text): "
                              + ", ".join(setup.paths))
        model_store = _write_generation(setup, new, plan.aliases, lock, runtime, ngram=result.ngram)
        worker_peaks = runtime.worker_peaks()
    memory = measured_memory(result.memory, run_peak.peak, worker_peaks)
    meta = model_store.meta
    return CountResult(store, new.shards, meta["counts"]["tokens"], new.tokens,
                       meta["counts"]["nnz"], time.perf_counter() - started,
                       result.heldout, result.heldout_bytes,
                       [s["path"] for s in skipped_entries],
                       int(new.stats.get("invalid_bytes", 0)), already=already, changed=changed,
                       split_lines=int(new.stats.get("split_lines", 0)),
                       skipped_reasons={s["path"]: s["skipped"] for s in skipped_entries},
                       memory=memory)


def measured_memory(planned: dict | None, peak: int, worker_peaks: list[int]) -> dict:
    """The run's memory figures: the plan's (`count_corpus`) with the peaks measured over
    stages 2-5 (this process tree; and each worker of a cluster), logged as estimate vs
    measured."""
    memory = dict(planned or {})
    memory["peak_measured_bytes"] = int(peak) or None
    if worker_peaks:
        memory["worker_peak_bytes"] = [int(p) for p in worker_peaks]
    if planned:
        # on a cluster the budget is the workers': compare it with the sum of their peaks
        measured = sum(worker_peaks) if worker_peaks else peak
        where = (f"the workers' peaks {', '.join(format_bytes(p) for p in worker_peaks)}"
                 if worker_peaks else "this process tree")
        logger.info("estimate vs measured: peak memory ~%s estimated, %s measured (%s, stages "
                    "2-5: %.0f%% of the %s budget); spill disk ~%s estimated, %s written",
                    format_bytes(memory["peak_estimated_bytes"]), format_bytes(measured), where,
                    100.0 * measured / memory["budget_bytes"],
                    format_bytes(memory["budget_bytes"]),
                    format_bytes(memory["spill_estimated_bytes"]),
                    format_bytes(memory["spill_written_bytes"]))
    return memory


# -- 1/5 configuration + tokenizer ----------------------------------------------------------------

def configure(corpus, store: str, options: IngestOptions, worker_limits: Sequence[int] = (),
              workers: int | None = None) -> IngestSetup:
    """Stage 1/5: expand the corpus, read or check the store's configuration, get the tokenizer.

    Arguments are checked (shards named, radius, vocabulary size, the store's location)
    before the stage's banner: a mistake fails with its one-line message only.
    ``worker_limits`` and ``workers`` (a cluster's memory limits and threads, see
    `store_line_bytes`) size the line bound of a new store and its largest vocabulary
    (`check_vocab_fits`, also for a tokenizer file once loaded).
    """
    storage_options = options.storage_options
    paths, special = expand_shards(corpus, storage_options, exclude=[store])
    model_store = ModelStore(store, storage_options)
    existing = model_store.exists()
    radius, aggregation = options.radius, options.aggregation
    if existing:
        stored = model_store.config
        radius = stored.radius if radius is None else radius
        if options.vocab_size is not None and options.tokenizer is None:
            logger.warning("--vocab-size %d is ignored: the store at %s keeps its tokenizer "
                           "(V=%d)", options.vocab_size, store, stored.vocab_size)
        aggregation = stored.aggregation if aggregation is None else aggregation
    else:
        creatable_location(store, storage_options)  # refuse a foreign path before counting
    radius = DEFAULT_RADIUS if radius is None else radius
    aggregation = aggregation or "cat"
    if not isinstance(radius, int) or not 1 <= radius <= MAX_RADIUS:
        raise ValueError(f"radius must be an integer >= 1 and <= {MAX_RADIUS}, got {radius!r}")
    fits = dict(memory=options.memory, worker_limits=worker_limits,
                workers=workers or options.workers or os.cpu_count() or 1)
    if not existing and options.tokenizer is None and options.vocab_size is not None:
        check_vocab_size(options.vocab_size, "--vocab-size")
        check_vocab_fits(options.vocab_size, f"--vocab-size {options.vocab_size}", **fits)
    read_meta = {"documents": options.documents, "text_field": options.text_field,
                 "max_line_bytes": store_line_bytes(model_store if existing else None,
                                                    options, worker_limits, workers)}
    read_options = ReadOptions(storage_options=storage_options, **read_meta,
                               **({"block_bytes": options.block_bytes}
                                  if options.block_bytes else {}))
    with Stage("configuration + tokenizer", 1, STAGES):
        tok, bos, bos_id = resolve_tokenizer(paths, model_store if existing else None,
                                             options.tokenizer, options.vocab_size, read_options,
                                             options.bos_token)
        V = vocab_size_of(tok)
        if options.tokenizer is not None:
            check_vocab_fits(V, f"the tokenizer {options.tokenizer} ({V} token ids)", **fits)
        text = (tokenizer_json(tok) if not existing or options.tokenizer is not None
                else model_store.tokenizer_text())
        sha = tokenizer_hash(text)
        # a BOS reserved past the vocabulary (bos None) is one more id: V + 1
        ngram = options.ngram if options.ngram is not None else (  # issue 24 hook
            model_store.config.ngram if existing else 0)
        config = CountConfig(V + (bos is None), radius, aggregation, bos_id, ngram)
        if existing:
            model_store.check_compatible(config, sha, read_meta)
        rows = model_store.meta["rows_per_block"] if existing else options.rows_per_block
        logger.info("%d shard(s): V=%d, radius=%d, aggregation=%s, lines cut above %d bytes",
                    len(paths), config.vocab_size, radius, aggregation,
                    read_meta["max_line_bytes"])
    return IngestSetup(paths, special, model_store, existing, config, text, sha, bos,
                       read_options, read_meta, rows)


def store_line_bytes(existing: ModelStore | None, options: IngestOptions,
                     worker_limits: Sequence[int] = (), workers: int | None = None) -> int:
    """The longest line read whole: the store's recorded bound (the reader's default for a
    store without one), or for a new store the bound of this run's memory budget
    (`run_budget`: on a cluster, from the workers' memory limits ``worker_limits``, shared
    by its ``workers`` threads; locally from this host's RAM and ``--workers``)."""
    if existing is not None:
        return int(existing.meta.get("read_options", {}).get("max_line_bytes",
                                                             DEFAULT_MAX_LINE_BYTES))
    budget, _ = run_budget(options.memory, worker_limits)
    return line_bytes_for(budget, workers or options.workers or os.cpu_count() or 1)


def resolve_tokenizer(paths: Sequence[str], store: ModelStore | None, tokenizer: str | None,
                      vocab_size: int | None, read_options: ReadOptions,
                      bos_token: str | None, sample_bytes: int = TOKENIZER_SAMPLE_BYTES):
    """The tokenizer for a count run: the store's, a given file, or a BPE trained on a sample.

    Returns ``(tokenizer, bos token, bos id)``.
    """
    if tokenizer is not None:
        tok = load_tokenizer(tokenizer, read_options.storage_options)
    elif store is not None and store.exists():
        tok = tokenizer_from_json(store.tokenizer_text())
    else:
        vocab_size = DEFAULT_VOCAB_SIZE if vocab_size is None else vocab_size
        logger.info("training a byte-level BPE tokenizer (vocab-size %d) on a %d MB sample",
                    vocab_size, sample_bytes >> 20)
        tok = train_bpe_in_subprocess(read_sample(paths, sample_bytes, read_options), vocab_size)
    bos, bos_id = find_bos(tok, bos_token)
    return tok, bos, bos_id


# -- 2/5 hash --------------------------------------------------------------------------------

def hash_shards(setup: IngestSetup, runtime: Runtime, allow_changed: bool = False):
    """Stage 2/5: hash every shard; returns ``(plan, digests)`` (an `IngestPlan`).

    Raises
    ------
    StoreError
        When a path already ingested has other bytes now, unless ``allow_changed``.
    """
    with Stage("hash shards", 2, STAGES) as stage:
        digests = shard_digests(setup.paths, setup.read_options.storage_options, runtime)
        manifest = manifest_entries(setup.store.meta) if setup.existing else []
        plan = plan_ingest(setup.paths, digests, manifest, allow_changed)
        stage.detail = f"{len(setup.paths)} shard(s), {len(plan.to_count)} to count"
    for entry in plan.already:
        logger.info("skipping %s: already ingested (same bytes as %s)", entry["path"],
                    entry["same_as"])
    if plan.changed and not allow_changed:
        raise StoreError(
            "shard(s) already ingested with different content: "
            + ", ".join(f"{c['path']} (was sha256 {c['old_sha256'][:12]}..., now "
                        f"{c['sha256'][:12]}...)" for c in plan.changed)
            + ". Nothing was added. Pass --allow-changed to add the new content as well "
              "(the old content's counts stay), or use a new store.")
    return plan, digests


#: Shards a hashing task takes at most this many bytes of (see `hash_batches`).
HASH_BATCH_BYTES = 256 << 20
#: The size assumed for a shard whose size cannot be known before it is read.
HASH_UNKNOWN_BYTES = 8 << 20


def shard_digests(paths: Sequence[str], storage_options, runtime: Runtime) -> list[str]:
    """SHA-256 of every shard's bytes, computed where the shards are read: one Dask task per
    batch of shards (`hash_batches`; at least four batches per worker thread when there are
    enough shards), so many small files cost one task per batch, not one each."""
    sizes = shard_sizes(paths, storage_options, unknown=HASH_UNKNOWN_BYTES)
    share = max(1, sum(sizes) // (4 * max(1, runtime.worker_threads)))
    batches = hash_batches(sizes, min(HASH_BATCH_BYTES, share))
    results = runtime.compute([delayed(file_digests)([paths[i] for i in batch], storage_options)
                               for batch in batches], progress=False)
    digests = [""] * len(paths)
    for batch, batch_digests in zip(batches, results):
        for i, digest in zip(batch, batch_digests):
            digests[i] = digest
    return digests


# -- 3/5 read + tokenize + count + tree merge ----------------------------------------------------

def count_corpus(paths: Sequence[str], tokenizer_text: str, config: CountConfig,
                 read_options: ReadOptions, holdout: HoldOut = HoldOut(), *,
                 runtime: Runtime | None = None, scheduler: str | None = None,
                 workers: int | None = None, client=None, split_every: int = 4,
                 progress: bool = True, memory=None, tmp: str | None = None,
                 rows_per_block: int | None = None, keep_partial: bool = False,
                 shard_delay: float = 0.0) -> ShardResult:
    """Stage 3/5: count a corpus with Dask: one task per shard, then a tree merge.

    Parameters
    ----------
    paths : sequence of str
        Shard paths or URLs (already expanded).
    tokenizer_text : str
        Tokenizer JSON, sent to every task.
    config, read_options, holdout
        See `CountConfig`, `ReadOptions`, `HoldOut`.
    runtime : Runtime, optional
        Where the graph runs; default: one made of ``scheduler``, ``workers``, ``client``
        (see `Runtime`) and closed at the end.
    split_every : int
        Fan-in of the tree reduction.
    memory : str or int, optional
        Memory budget of the whole run (``2GB``, ``80%``); default: in-memory counts
        without a cap, unless ``keep_partial``.
    tmp : str, optional
        Directory for spill files (default: the system temp directory).
    rows_per_block : int, optional
        Row-block size of the store the counts go to (spilled runs are indexed by it).
    keep_partial : bool
        Return `PartialCounts` (in-memory part + spilled runs, to be written by
        `write_counts`, which removes the spill files) instead of a `Counts`.
    shard_delay : float
        Seconds each shard task sleeps first (tests).

    Returns
    -------
    ShardResult
    """
    if not paths:
        raise CorpusError("no shards to count")
    if runtime is None:
        with Runtime(scheduler, workers, client=client, progress=progress,
                     worker_setup=tune_allocator) as own:
            return count_corpus(paths, tokenizer_text, config, read_options, holdout,
                                runtime=own, split_every=split_every, memory=memory, tmp=tmp,
                                rows_per_block=rows_per_block, keep_partial=keep_partial,
                                shard_delay=shard_delay)
    plan = spill = None
    if memory is not None or tmp is not None or keep_partial:
        plan, spill = make_plan(paths, config.n_blocks, read_options.block_bytes,
                                read_options.storage_options, memory=memory, tmp=tmp,
                                workers=runtime.worker_threads,
                                processes=runtime.worker_processes,
                                rows_per_block=rows_per_block, split_every=split_every,
                                vocab_size=config.vocab_size,
                                worker_limits=runtime.worker_memory_limits())
    graph = count_graph(paths, tokenizer_text, config, read_options, holdout, plan, split_every,
                        shard_delay)
    logger.info("counting %d shard(s) on the %s", len(paths), runtime.describe())
    try:
        with Stage("read + tokenize + count + tree merge", 3, STAGES,
                   measure=plan is not None) as stage:
            result = runtime.compute(graph)
            stage.tokens = result.counts.tokens
            if isinstance(result.counts, PartialCounts) and result.counts.spilled_runs:
                stage.detail = (f"{result.counts.spilled_runs} run(s) spilled "
                                f"({format_bytes(result.counts.spilled_bytes)})")
        if plan is not None:
            spilled = (result.counts.spilled_bytes
                       if isinstance(result.counts, PartialCounts) else 0)
            result = dataclasses.replace(result, memory={
                "budget_bytes": plan.budget, "budget_source": plan.budget_source,
                "planned_share": PLAN_SHARE, "peak_estimated_bytes": plan.estimated_peak_bytes,
                "peak_measured_bytes": stage.peak_rss or None,
                "spill_estimated_bytes": plan.estimated_spill_bytes,
                "spill_written_bytes": int(spilled)})
        if isinstance(result.counts, PartialCounts):
            result.counts.spill_directory = spill
            result.counts.merge_bytes = plan.task_bytes
            if not keep_partial:
                counts = result.counts.to_counts(plan.task_bytes, plan.spill_dir)
                result = ShardResult(counts, result.heldout, result.heldout_bytes,
                                     result.memory, ngram=result.ngram)
    except BaseException:
        if spill is not None:
            spill.cleanup()
        raise
    if spill is not None and not keep_partial:
        spill.cleanup()
    return result


def check_counted_bytes(counts, planned: dict) -> None:
    """Make each manifest entry's sha256 the hash of exactly the bytes counted.

    The ingest is planned on one hash of every shard (stage 2) and counted in a second pass
    that hashes the bytes it reads. A shard whose bytes differ between the two passes (it
    grew, or was replaced, meanwhile) fails the run naming it, before anything is written.
    """
    moved = []
    for entry in counts.shards:
        counted = entry.get("sha256")
        if counted is not None and counted != planned[entry["path"]]:
            moved.append(entry["path"])
        entry["sha256"] = planned[entry["path"]]
    if moved:
        _remove_spill(counts)
        raise StoreError("shard(s) changed while being ingested (the bytes counted are not "
                         "the bytes hashed when the ingest was planned): " + ", ".join(moved)
                         + ". Nothing was added; run the command again once they no longer "
                           "change.")


def _remove_spill(counts) -> None:
    if getattr(counts, "spill_directory", None) is not None:
        counts.spill_directory.cleanup()


# -- 4/5 k-way merge + row-block writes, 5/5 commit ----------------------------------------------

def _write_generation(setup: IngestSetup, new, aliases: list, lock,
                      runtime: Runtime, ngram=None) -> ModelStore:
    """Stages 4 and 5 into the store (created now if new), the counted shards and the
    ``aliases`` added to its manifest; a failed write leaves it unchanged."""
    model_store = setup.store
    new_stats = {k: int(v) for k, v in new.stats.items()}
    try:
        if setup.existing:
            totals = dict(model_store.meta.get("totals", {}))
            for key, value in new_stats.items():
                totals[key] = int(totals.get(key, 0)) + value
        else:
            totals = new_stats
            model_store = ModelStore.create(
                model_store.url, setup.config, setup.tokenizer_text, setup.tokenizer_sha256,
                setup.bos, setup.read_meta, setup.read_options.storage_options,
                **({"rows_per_block": setup.rows_per_block} if setup.rows_per_block else {}))
        write_counts(model_store, new, new.shards + aliases, totals, add=setup.existing,
                     lock=lock, runtime=runtime, ngram=ngram)
    except StoreCorruptError:
        model_store.discard_uncommitted()  # damaged counts: nothing is built on top of them
        raise
    except OSError as exc:
        model_store.discard_uncommitted()
        raise write_failure(exc, f"writing the counts to {model_store.url}",
                            "The store is unchanged (partial data is never read, and is removed "
                            "now or by the next ingest)") from exc
    return model_store


def write_counts(store: ModelStore, counts, new_shards: list, totals: dict, *, add: bool,
                 lock, runtime: Runtime | None = None, scheduler: str | None = None,
                 workers: int | None = None, client=None, progress: bool = True,
                 ngram=None) -> list[int]:
    """Stages 4 and 5: write counts into a store as a new generation (adding the committed
    one if ``add``) in one counts transaction under ``lock`` (the store's held `StoreLock`).

    ``counts`` is a `PartialCounts` (from ``count_corpus(..., keep_partial=True)``) or a
    `Counts`. The spill files are removed at the end, whatever happens. Returns the nnz per
    count block.
    """
    if runtime is None:
        with Runtime(scheduler, workers, client=client, progress=progress,
                     worker_setup=tune_allocator) as own:
            return write_counts(store, counts, new_shards, totals, add=add, lock=lock,
                                runtime=own, ngram=ngram)
    partial = counts if isinstance(counts, PartialCounts) else PartialCounts.of(
        counts, store.meta["rows_per_block"])
    try:
        rows = store.meta["rows_per_block"]
        if partial.n_runs and rows != partial.rows_per_block:
            raise ValueError(f"counts were spilled in row blocks of {partial.rows_per_block} "
                             f"but the store {store.url} has {rows}")
        if partial.n_runs == 0:
            partial.rows_per_block = rows
        base = store.meta["counts"]["generation"] if add else None
        with store.counts_transaction(lock) as transaction:
            nnz = write_row_blocks(transaction, partial, base, runtime)
            write_ngram_generation(store, transaction.generation, base, ngram)  # issue 24
            commit(transaction, partial, base, nnz, new_shards, totals)
            return nnz
    finally:
        _remove_spill(partial)


def write_row_blocks(transaction, partial: PartialCounts, base: int | None,
                     runtime: Runtime) -> list[int]:
    """Stage 4/5: k-way merge and write every row block (one Dask task each); nnz per block.

    Raises
    ------
    StoreCorruptError
        When a block of the base generation is damaged (after every task has finished).
    OSError
        When a row block could not be written (after every task has finished).
    """
    spill = partial.spill_directory
    with Stage("k-way merge + write row blocks", 4, STAGES) as stage:
        tasks, index = write_graph(transaction.store, transaction.generation, base, partial,
                                   runtime, spill.path if spill is not None else None)
        nnz_blocks = runtime.compute(tasks)
        stage.detail = f"{len(tasks)} row block(s)"
    damaged = [n for n in nnz_blocks if isinstance(n, Exception)]
    if damaged:
        raise damaged[0]
    nnz = [0] * partial.config.n_blocks
    for r, n in zip(index, nnz_blocks):
        nnz[r] += n
    return nnz


def commit(transaction, partial: PartialCounts, base: int | None, nnz: list[int],
           new_shards: list, totals: dict) -> None:
    """Stage 5/5: switch the store to the written generation (one attribute write)."""
    with Stage("commit", 5, STAGES):
        unigram = partial.unigram
        if base is not None:
            unigram = transaction.store.read_unigram(base) + unigram  # verified
        transaction.commit(unigram, nnz, new_shards, totals)

"""The Dask pipeline: shards -> read + tokenize + count (one task per shard) -> tree merge.

Each shard task is a pure function of (shard, tokenizer JSON, configuration): it reads the
shard in bounded blocks, tokenizes each block with ``encode_batch_fast``, counts it
vectorised, and merges the block counts. Shard counts are then added by a tree reduction
(``split_every`` at a time), never a sequential chain. The same graph runs on the threaded
scheduler, local processes, or a ``dask.distributed`` cluster.

A deterministic part of the text can be held out (for calibration and evaluation): lines are
grouped in runs of `HoldOut.group_lines` non-blank lines, and a run is held out when a
keyed hash of (shard name, run index) falls below the fraction. Held-out runs start fresh
documents, and so does the training text after them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import itertools
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence

import numpy as np

from ..core.counting import ContextCarry, CountConfig, Counts, count_flat, merge_counts
from .memory import MemoryPlan, release_free_memory, tune_allocator
from .runtime import tokenize_key, tree_reduce
from .spill import PartialCounts, merge_partials
from ..text.reading import BinaryShardError, CorpusError, ReadOptions, ReadStats, iter_document_pieces
from ..text.tokenizer import tokenizer_from_json

logger = logging.getLogger(__name__)

# Merge block counts inside a shard task once this many blocks are pending.
_PENDING_BLOCKS = 8


@dataclasses.dataclass(frozen=True)
class HoldOut:
    """Which runs of lines are held out of counting.

    Parameters
    ----------
    fraction : float
        Expected fraction of runs held out (0 holds out nothing).
    group_lines : int
        Non-blank lines per run.
    max_tokens_per_shard : int
        Held-out token ids returned per shard at most (the rest are still held out of
        counting, but not returned).
    """

    fraction: float = 0.0
    group_lines: int = 64
    max_tokens_per_shard: int = 200_000

    def __post_init__(self):
        if not 0.0 <= self.fraction < 1.0:
            raise ValueError(f"held-out fraction must be in [0, 1), got {self.fraction}")

    def is_heldout(self, shard_key: str, group: int) -> bool:
        if self.fraction <= 0:
            return False
        digest = hashlib.blake2b(f"{shard_key}\0{group}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") / 2.0**64 < self.fraction


@dataclasses.dataclass
class ShardResult:
    """What one shard task returns: its counts, and its held-out documents as token ids."""

    counts: Counts
    heldout: list  # list of np.ndarray (int32 token ids), one per held-out document
    heldout_bytes: int = 0  # UTF-8 bytes of the returned held-out documents


def shard_key(path: str) -> str:
    """The name of a shard used for hold-out hashing (its base name: stable across mounts)."""
    return os.path.basename(path.rstrip("/")) or path


def _split_heldout(pieces, holdout: HoldOut, key: str, line_counter: list[int]):
    """Split pieces into training and held-out pieces at run boundaries.

    Returns ``(train, held, ends_held)``; ``ends_held`` says whether the block's last line
    was held out (the next block's training text must then start a fresh document).
    """
    if holdout.fraction <= 0:
        return list(pieces), [], False
    train, held = [], []
    run_held = False
    for lines, starts in pieces:
        run: list[str] = []
        run_held = None
        run_starts = starts
        for line in lines:
            group = line_counter[0] // holdout.group_lines
            line_counter[0] += 1
            held_now = holdout.is_heldout(key, group)
            if run_held is not None and held_now != run_held:
                (held if run_held else train).append((run, run_starts))
                run, run_starts = [], True  # a switch starts a fresh document
            run_held = held_now
            run.append(line)
        if run:
            (held if run_held else train).append((run, run_starts))
    return train, held, bool(run_held)


#: Lines of one piece joined into one tokenizer input (per-input overhead halves throughput
#: when every line is its own input).
CHUNK_LINES = 256
#: Characters per joined input at most (a long line still goes alone).
CHUNK_CHARS = 1 << 13

_LINE_SPLIT = {"type": "Split", "pattern": {"String": "\n"}, "behavior": "MergedWithPrevious",
               "invert": False}
_SAFE_NORMALIZERS = {"NFC", "NFD", "NFKC", "NFKD", "Lowercase", "BertNormalizer",
                     "StripAccents", "Nmt"}


def _normalizer_is_per_character(node) -> bool:
    if node is None:
        return True
    kind = node.get("type")
    if kind == "Sequence":
        return all(_normalizer_is_per_character(n) for n in node.get("normalizers", []))
    if kind == "Replace":
        pattern = node.get("pattern", {})
        return "String" in pattern and "\n" not in pattern["String"]
    return kind in _SAFE_NORMALIZERS


def _pre_tokenizer_is_per_split(node) -> bool:
    if node is None:
        return True
    kind = node.get("type")
    if kind == "Sequence":
        return all(_pre_tokenizer_is_per_split(n) for n in node.get("pretokenizers", []))
    if kind == "Metaspace":
        return node.get("prepend_scheme", "always") != "first"
    return kind in ("ByteLevel", "Whitespace", "WhitespaceSplit", "BertPreTokenizer",
                    "Punctuation", "Digits", "Split", "UnicodeScripts", "CharDelimiterSplit")


@functools.lru_cache(maxsize=8)
def line_tokenizer(tokenizer_text: str):
    """``(tokenizer, joinable)``: a tokenizer that never lets a token cross a line end.

    When the tokenizer's normalizer works character by character and its pre-tokenizer
    splits each piece on its own (byte-level BPE, WordPiece, ... — not SentencePiece's
    "prepend to the first piece only"), a first pre-tokenizer step that cuts after every
    newline makes the ids of several joined lines exactly the ids of each line tokenized on
    its own. Lines can then be joined into large tokenizer inputs (about twice as fast)
    without changing a single count. Otherwise ``joinable`` is False and each line stays
    its own input.
    """
    spec = json.loads(tokenizer_text)
    joinable = (_normalizer_is_per_character(spec.get("normalizer"))
                and _pre_tokenizer_is_per_split(spec.get("pre_tokenizer"))
                and not any("\n" in t.get("content", "")[:-1] for t in spec.get("added_tokens") or []))
    if not joinable:
        return tokenizer_from_json(tokenizer_text), False
    pre = spec.get("pre_tokenizer")
    spec["pre_tokenizer"] = {"type": "Sequence",
                             "pretokenizers": [_LINE_SPLIT] + ([pre] if pre else [])}
    from tokenizers import Tokenizer

    return Tokenizer.from_str(json.dumps(spec)), True


def _tokenizer_inputs(pieces, joinable: bool) -> tuple[list[str], np.ndarray]:
    """Tokenizer inputs of a block's pieces, and how many inputs each piece has."""
    inputs: list[str] = []
    per_piece = np.zeros(len(pieces), dtype=np.int64)
    for p, (lines, _) in enumerate(pieces):
        if not joinable:
            inputs.extend(lines)
            per_piece[p] = len(lines)
            continue
        before = len(inputs)
        chunk: list[str] = []
        size = 0
        for line in lines:
            if chunk and (len(chunk) >= CHUNK_LINES or size + len(line) > CHUNK_CHARS):
                inputs.append("".join(chunk))
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
            if not line.endswith("\n"):  # a piece of a cut long line is tokenized on its own
                inputs.append("".join(chunk))
                chunk, size = [], 0
        if chunk:
            inputs.append("".join(chunk))
        per_piece[p] = len(inputs) - before
    return inputs, per_piece


@functools.lru_cache(maxsize=8)
def piece_marker(tokenizer_text: str, bos_id: int) -> tuple[str, int] | None:
    """``(text, id)`` of a special added token that can separate pieces in one input.

    Added special tokens are cut out of the text before normalization and
    pre-tokenization, so a marker between two pieces never changes their ids; the BOS token
    (when it is a special added token) is used, its id found back in the output.
    """
    spec = json.loads(tokenizer_text)
    for token in spec.get("added_tokens") or []:
        if token.get("id") == bos_id and token.get("special") and token.get("content"):
            return token["content"], int(bos_id)
    return None


#: Characters of text given to the tokenizer at a time: its per-token objects (about 150 bytes
#: a token while they live) stay small, and are returned to the OS after each batch.
ENCODE_BATCH_CHARS = 1 << 20
#: Taken around each batch when a tight memory plan serializes tokenization (one batch at a
#: time per process; see `MemoryPlan.serial_tokenizer`).
_ENCODE_LOCK = threading.Lock()


def _encode(tokenizer, inputs: list[str],
            plan: MemoryPlan | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Ids of all inputs concatenated (int64) and the number of ids of each input.

    Inputs are encoded ``ENCODE_BATCH_CHARS`` at a time with ``encode_batch_fast`` (parallel
    over inputs), each batch's `Encoding` objects turned into ids and dropped before the next.
    Under a ``plan``, one batch at a time runs in this process if it says
    ``serial_tokenizer``, and freed heap pages go back to the OS after a batch when the
    process holds more than its ``trim_above``.
    """
    serial = plan is not None and plan.serial_tokenizer
    flats, lengths = [], []
    start = 0
    while start < len(inputs):
        stop, size = start, 0
        while stop < len(inputs) and (stop == start or size + len(inputs[stop]) <= ENCODE_BATCH_CHARS):
            size += len(inputs[stop])
            stop += 1
        with _ENCODE_LOCK if serial else contextlib.nullcontext():
            encodings = tokenizer.encode_batch_fast(inputs[start:stop], add_special_tokens=False)
        per_input = np.fromiter((len(e) for e in encodings), dtype=np.int64, count=len(encodings))
        flats.append(np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings),
                                 dtype=np.int64, count=int(per_input.sum())))
        lengths.append(per_input)
        del encodings
        if plan is not None:
            release_free_memory(plan.trim_above)
        start = stop
    if not flats:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(flats), np.concatenate(lengths)


def _tokenize_joined(tokenizer, pieces, marker,
                     plan: MemoryPlan | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """Ids of many pieces per tokenizer input, separated by ``marker``; None if unsafe."""
    text, marker_id = marker
    inputs: list[str] = []
    chunk: list[str] = []
    size = 0
    for p, (lines, _) in enumerate(pieces):
        if p:
            chunk.append(text)
        for line in lines:
            chunk.append(line)
            size += len(line)
            if size >= CHUNK_CHARS or not line.endswith("\n"):  # pieces of cut lines: alone
                inputs.append("".join(chunk))
                chunk, size = [], 0
    if chunk:
        inputs.append("".join(chunk))
    if sum(i.count(text) for i in inputs) != len(pieces) - 1:
        return None  # the text itself contains the marker
    flat, _ = _encode(tokenizer, inputs, plan)
    cuts = np.flatnonzero(flat == marker_id)
    if cuts.size != len(pieces) - 1:
        return None
    bounds = np.concatenate([[-1], cuts, [flat.size]])
    lengths = np.diff(bounds) - 1
    return np.delete(flat, cuts), lengths


def _tokenize_flat(tokenizer_text: str, pieces, bos_id: int | None = None,
                   plan: MemoryPlan | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All ids of a block's pieces concatenated (int64), and the number of ids per piece.

    The ids are those of each line tokenized on its own, newline included (each piece of a
    line cut by the reader, see `streamsolve.text.reading`, is such a line). With ``bos_id``
    (a special added token), many pieces share one tokenizer input (fastest).
    """
    tokenizer, joinable = line_tokenizer(tokenizer_text)
    if joinable and bos_id is not None and len(pieces) > 1:
        marker = piece_marker(tokenizer_text, bos_id)
        if marker is not None:
            out = _tokenize_joined(tokenizer, pieces, marker, plan)
            if out is not None:
                return out
    inputs, per_piece = _tokenizer_inputs(pieces, joinable)
    if not inputs:
        return np.zeros(0, np.int64), np.zeros(len(pieces), np.int64)
    flat, per_input = _encode(tokenizer, inputs, plan)
    bounds = np.concatenate([[0], np.cumsum(per_piece)])
    cumulative = np.concatenate([[0], np.cumsum(per_input)])
    lengths = cumulative[bounds[1:]] - cumulative[bounds[:-1]]
    return flat, lengths


def _tokenize(tokenizer_text: str, pieces, bos_id: int | None = None) -> list[tuple[np.ndarray, bool]]:
    """Ids of each piece (and whether it starts a document)."""
    flat, lengths = _tokenize_flat(tokenizer_text, pieces, bos_id)
    ends = np.cumsum(lengths)
    return [(flat[end - n:end], starts) for (_, starts), n, end in zip(pieces, lengths, ends)]


def count_shard(path: str, tokenizer_text: str, config: CountConfig,
                read_options: ReadOptions, holdout: HoldOut = HoldOut(),
                plan: MemoryPlan | None = None) -> ShardResult:
    """Read, tokenize and count one shard (a pure function; the unit of parallel work).

    Parameters
    ----------
    path : str
        Local path or fsspec URL of the shard.
    tokenizer_text : str
        The tokenizer's JSON (workers build and cache the tokenizer from it).
    config : CountConfig
    read_options : ReadOptions
    holdout : HoldOut
    plan : MemoryPlan, optional
        Memory caps. With a plan the counts are a `PartialCounts` (spilled to sorted runs
        whenever they exceed ``plan.task_bytes``) and the read block size is the plan's;
        without one, an in-memory `Counts`.

    Returns
    -------
    ShardResult
        Counts with one manifest entry for the shard (``skipped`` set for binary/empty ones;
        ``sha256`` the hash of exactly the stored bytes read, None for a binary shard).
    """
    started = time.perf_counter()
    tune_allocator()
    _test_delay()
    if plan is not None and plan.block_bytes < read_options.block_bytes:
        read_options = dataclasses.replace(read_options, block_bytes=plan.block_bytes)
    if plan is not None and plan.line_bytes < read_options.max_line_bytes:
        read_options = dataclasses.replace(read_options, max_line_bytes=plan.line_bytes)
    hasher = hashlib.sha256()
    rows_per_block = plan.rows_per_block if plan is not None else 1 << 62
    stats = ReadStats()
    key = shard_key(path)
    carry = ContextCarry(config)
    pending: list[Counts] = []
    pending_bytes = 0
    merged = PartialCounts.of(Counts.empty(config), rows_per_block)
    heldout: list[np.ndarray] = []
    heldout_tokens = 0
    heldout_bytes = 0
    line_counter = [0]
    skipped = None
    cap = plan.task_bytes if plan is not None and plan.spill_dir else None
    spill_dir = plan.spill_dir if plan is not None else None

    def flush(merged, pending):
        if pending:
            merged = merge_partials([merged, PartialCounts.of(merge_counts(*pending), rows_per_block)],
                                    cap, spill_dir)
        return merged

    try:
        for pieces in iter_document_pieces(path, read_options, stats, hasher):
            train, held, ends_held = _split_heldout(pieces, holdout, key, line_counter)
            if train:
                flat, lengths = _tokenize_flat(tokenizer_text, train, config.bos_id, plan)
                block = count_flat(flat, lengths, not train[0][1], config, carry)
                pending.append(block)
                pending_bytes += 16 * sum(k.size for k in block.keys)
                if len(pending) >= _PENDING_BLOCKS or (cap is not None and pending_bytes > cap // 2):
                    merged = flush(merged, pending)
                    pending, pending_bytes = [], 0
            if held and heldout_tokens < holdout.max_tokens_per_shard:
                for (lines, _), (ids, _) in zip(held, _tokenize(tokenizer_text, held, config.bos_id)):
                    if heldout_tokens < holdout.max_tokens_per_shard and ids.size:
                        heldout.append(ids.astype(np.int32))
                        heldout_tokens += ids.size
                        heldout_bytes += sum(len(line.encode("utf-8")) for line in lines)
            if ends_held:
                carry.reset()
    except BinaryShardError as exc:
        logger.warning("%s", exc)
        skipped = "binary"
    except UnicodeDecodeError as exc:  # pragma: no cover - decode_counting replaces
        raise CorpusError(f"{path}: {exc}") from exc
    merged = flush(merged, pending)
    counts = merged.memory
    if skipped is None and counts.tokens == 0 and heldout_tokens == 0:
        logger.warning("shard has no text, skipped: %s", path)
        skipped = "empty"
    seconds = time.perf_counter() - started
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
        "sha256": None if skipped == "binary" else hasher.hexdigest(),
        "seconds": round(seconds, 3),
    }]
    logger.debug("counted %s: %d tokens in %.2fs (%d runs spilled)", path, counts.tokens,
                 seconds, merged.spilled_runs)
    if plan is None:
        return ShardResult(merged.to_counts(), heldout, heldout_bytes)
    return ShardResult(merged, heldout, heldout_bytes)


def _test_delay():
    """Slow shard tasks down (``STREAMSOLVE_TEST_SHARD_DELAY`` seconds): tests use it to
    kill a worker while tasks are running."""
    delay = os.environ.get("STREAMSOLVE_TEST_SHARD_DELAY")
    if delay:
        time.sleep(float(delay))


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
    return ShardResult(counts, heldout, heldout_bytes)


def _input_bytes(paths: Sequence[str], storage_options: dict | None) -> tuple[int, float]:
    """Bytes of the shards on disk and their expected expansion (for the up-front estimate)."""
    import fsspec

    total, expanded = 0, 0.0
    for path in paths:
        try:
            if "://" in path and not path.startswith("file://"):
                fs, _, (root,) = fsspec.get_fs_token_paths(path, storage_options=storage_options or {})
                size = fs.size(root)
            else:
                size = os.path.getsize(path)
        except Exception:  # noqa: BLE001 - only an estimate
            size = 0
        ratio = 3.5 if path.endswith((".gz", ".bz2", ".xz", ".zst")) else 1.0
        total += size or 0
        expanded += (size or 0) * ratio
    return total, (expanded / total if total else 1.0)


def make_plan(paths: Sequence[str], config: CountConfig, read_options: ReadOptions, *,
              memory=None, tmp: str | None = None, workers: int = 1, processes: int = 1,
              rows_per_block: int | None = None, split_every: int = 4):
    """The run's `MemoryPlan` and spill directory, logging the up-front estimate.

    Returns ``(plan, spill)``; ``spill`` is a `SpillDirectory` (None when no budget is given
    and nothing may spill).
    """
    from .memory import default_spill_root, format_bytes, parse_memory
    from .spill import SpillDirectory
    from ..store.layout import DEFAULT_ROWS_PER_BLOCK

    budget = parse_memory(memory)
    spill = SpillDirectory(default_spill_root(tmp))
    plan = MemoryPlan.build(budget, workers, config.n_blocks, rows_per_block or DEFAULT_ROWS_PER_BLOCK,
                            spill.path, split_every, read_options.block_bytes, processes)
    size, ratio = _input_bytes(paths, read_options.storage_options)
    estimate = plan.estimate(size, config.n_blocks, ratio)
    logger.info("memory budget %s for %d worker(s): read blocks of %s, counts spill to %s above "
                "%s per task%s", format_bytes(budget), plan.workers, format_bytes(plan.block_bytes),
                spill.path, format_bytes(plan.task_bytes),
                "; one tokenizer batch at a time (tight budget)" if plan.serial_tokenizer else "")
    logger.info("estimate: %d shard(s), %s on disk, ~%s of text, ~%s tokens; peak memory ~%s; "
                "spill disk at most ~%s", len(paths), format_bytes(size),
                format_bytes(estimate["text_bytes"]), f"{estimate['tokens']:,}",
                format_bytes(estimate["peak_bytes"]), format_bytes(estimate["spill_bytes_max"]))
    return plan, spill


def _cluster_workers(client) -> tuple[int, int]:
    """Worker threads and worker processes of a ``dask.distributed`` cluster (1, 1 if unknown)."""
    try:
        workers = client.scheduler_info()["workers"].values()
        return max(1, sum(w.get("nthreads", 1) for w in workers)), max(1, len(workers))
    except Exception:  # noqa: BLE001
        return 1, 1


def _compute(obj, *, scheduler, workers, client, progress: bool):
    """Compute a Dask object on the local scheduler or the cluster (with a progress display)."""
    import dask

    if client is not None:
        future = client.compute(obj)
        return future.result()
    scheduler = scheduler or "threads"
    kwargs = {"scheduler": scheduler}
    if scheduler in ("threads", "processes"):
        kwargs["num_workers"] = workers or os.cpu_count() or 1
    if progress and logger.isEnabledFor(logging.INFO):
        from .progress import TaskProgress

        with TaskProgress(sys.stderr):
            (result,) = dask.compute(obj, **kwargs)
    else:
        (result,) = dask.compute(obj, **kwargs)
    return result


def count_corpus(paths: Sequence[str], tokenizer_text: str, config: CountConfig,
                 read_options: ReadOptions, holdout: HoldOut = HoldOut(), *,
                 scheduler: str | None = None, workers: int | None = None,
                 split_every: int = 4, client=None, progress: bool = True,
                 memory=None, tmp: str | None = None, rows_per_block: int | None = None,
                 keep_partial: bool = False) -> ShardResult:
    """Count a whole corpus with Dask: one task per shard, then a tree merge.

    Parameters
    ----------
    paths : sequence of str
        Shard paths or URLs (already expanded).
    tokenizer_text : str
        Tokenizer JSON, sent to every task.
    config, read_options, holdout
        See `CountConfig`, `ReadOptions`, `HoldOut`.
    scheduler : {"threads", "processes", "sync"} or None
        Local Dask scheduler (ignored when ``client`` is given). Default: threads.
    workers : int or None
        Number of local workers (default: the number of cores).
    split_every : int
        Fan-in of the tree reduction.
    client : distributed.Client or None
        Run on this cluster instead.
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

    Returns
    -------
    ShardResult
    """
    from .progress import Stage

    if not paths:
        raise CorpusError("no shards to count")
    tune_allocator()  # before the scheduler's threads make their first allocations
    if client is not None:
        n_workers, n_processes = _cluster_workers(client)
    elif (scheduler or "threads") == "sync":
        n_workers = n_processes = 1
    else:
        n_workers = workers or os.cpu_count() or 1
        n_processes = n_workers if scheduler == "processes" else 1
    plan = spill = None
    if memory is not None or tmp is not None or keep_partial:
        plan, spill = make_plan(paths, config, read_options, memory=memory, tmp=tmp,
                                workers=n_workers, processes=n_processes,
                                rows_per_block=rows_per_block,
                                split_every=split_every)
    extra = {"plan": plan} if plan is not None else {}
    tasks = [
        dask_delayed(count_shard)(path, tokenizer_text, config, read_options, holdout, **extra,
                                  dask_key_name=f"count-{i}-{tokenize_key([path, config, read_options, holdout, tokenizer_text, plan])}")
        for i, path in enumerate(paths)
    ]
    total = tree_reduce(tasks, merge_results, split_every, **extra)
    if client is not None and progress:
        logger.info("running on a dask.distributed cluster (%d worker threads); dashboard: %s",
                    n_workers, client.dashboard_link)
    try:
        with Stage("read + tokenize + count + tree merge", 1, 3 if keep_partial else 1) as stage:
            result = _compute(total, scheduler=scheduler, workers=workers, client=client,
                              progress=progress)
            stage.tokens = result.counts.tokens
            if isinstance(result.counts, PartialCounts) and result.counts.spilled_runs:
                stage.detail = (f"{result.counts.spilled_runs} run(s) spilled "
                                f"({result.counts.spilled_bytes / 2**20:.1f} MB)")
        if isinstance(result.counts, PartialCounts):
            result.counts.spill_directory = spill
            result.counts.merge_bytes = plan.task_bytes
            if not keep_partial:
                counts = result.counts.to_counts(plan.task_bytes, plan.spill_dir)
                result = ShardResult(counts, result.heldout, result.heldout_bytes)
    except BaseException:
        if spill is not None:
            spill.cleanup()
        raise
    if spill is not None and not keep_partial:
        spill.cleanup()
    return result


def dask_delayed(function):
    import dask

    return dask.delayed(function, pure=True)


# -- writing counts to a store: one task per row block ------------------------------------------

def write_row_block(store_url: str, storage_options: dict | None, generation: int,
                    base_generation: int | None, r: int, k: int, start: int, stop: int,
                    sources: list, vocab_size: int, memory_bytes: int, spill_dir: str | None,
                    rows_per_block: int) -> int | Exception:
    """k-way merge the sources of row block ``k`` of count block ``r`` (plus the base
    generation's block, for an existing store) and write it; returns its nnz.

    The only writer of that row block (one task per block: no two tasks share a Zarr chunk).
    A damaged base block is returned as its `StoreCorruptError`, not raised, so that every
    other task finishes before `write_counts_with` raises it and discards the generation.
    """
    from .spill import collect, merge_sources
    from ..store.layout import StoreCorruptError, csr_of_rows, merge_csr_block
    from ..store.model_store import ModelStore
    from ..store.transaction import write_count_block

    tune_allocator()
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
    write_count_block(store, generation, r, k, *csr)
    return int(csr[1].size)


def write_counts(store, counts, new_shards: list, totals: dict, *, add: bool,
                 scheduler: str | None = None, workers: int | None = None, client=None,
                 progress: bool = True, lock=None) -> list[int]:
    """Write counts into a store as a new generation (adding the committed one if ``add``).

    ``scheduler`` may be a ``dask.distributed`` address (``tcp://...``): the row blocks are
    then merged and written on that cluster. See `write_counts_with`.
    """
    if client is None and scheduler and "://" in scheduler:
        from distributed import Client

        with Client(scheduler, timeout=10) as own:
            return write_counts_with(store, counts, new_shards, totals, add=add, workers=workers,
                                     client=own, progress=progress, lock=lock)
    return write_counts_with(store, counts, new_shards, totals, add=add, scheduler=scheduler,
                             workers=workers, client=client, progress=progress, lock=lock)


def write_counts_with(store, counts, new_shards: list, totals: dict, *, add: bool,
                      scheduler: str | None = None, workers: int | None = None, client=None,
                      progress: bool = True, lock=None) -> list[int]:
    """Write counts into a store as a new generation (adding the committed one if ``add``).

    ``counts`` is a `PartialCounts` (from ``count_corpus(..., keep_partial=True)``) or a
    `Counts`. Each row block of each count block is merged and written by exactly one Dask
    task, in one counts transaction (``lock``: the store's held `StoreLock`, by default the
    one the calling thread holds); the generation is committed once all are written, and the
    spill files removed. Returns the nnz per count block.
    """
    from .progress import Stage
    from ..store.layout import row_blocks
    from ..store.locking import held_lock

    partial = counts if isinstance(counts, PartialCounts) else PartialCounts.of(
        counts, store.meta["rows_per_block"])
    spill = getattr(partial, "spill_directory", None)
    try:
        meta = store.meta
        rows = meta["rows_per_block"]
        if partial.n_runs and rows != partial.rows_per_block:
            raise ValueError(f"counts were spilled in row blocks of {partial.rows_per_block} "
                             f"but the store {store.url} has {rows}")
        if partial.n_runs == 0:
            partial.rows_per_block = rows
        base = meta["counts"]["generation"] if add else None
        config = partial.config
        V = config.vocab_size
        memory_bytes = partial.merge_bytes or (64 << 20)
        lock = lock or held_lock(store.url, store.storage_options)
        with store.counts_transaction(lock) as transaction:
            generation = transaction.generation
            tasks, index = [], []
            for r in range(config.n_blocks):
                for k, (start, stop) in enumerate(row_blocks(V, rows)):
                    sources = partial.sources(r, row_block=k)
                    if not any(s.n for s in sources) and base is None:
                        sources = []
                    if client is not None and sources:
                        sources = client.scatter([sources], hash=False)[0]
                    tasks.append(dask_delayed(write_row_block)(
                        store.url, store.storage_options, generation, base, r, k, start, stop,
                        sources, V, memory_bytes, spill.path if spill is not None else None, rows,
                        dask_key_name=f"write-r{r}-b{k}-g{generation}-{tokenize_key([store.url, generation])}"))
                    index.append(r)
            import dask

            with Stage("k-way merge + write row blocks", 2, 3) as stage:
                nnz_blocks = _compute(dask.delayed(list)(tasks), scheduler=scheduler, workers=workers,
                                      client=client, progress=progress)
                stage.detail = f"{len(tasks)} row block(s)"
            damaged = [n for n in nnz_blocks if isinstance(n, Exception)]
            if damaged:
                raise damaged[0]
            nnz = [0] * config.n_blocks
            for r, n in zip(index, nnz_blocks):
                nnz[r] += n
            unigram = partial.unigram
            if base is not None:
                unigram = store.read_unigram(base) + unigram  # verified, like every merged block
            with Stage("commit", 3, 3):
                transaction.commit(unigram, nnz, new_shards, totals)
            return nnz
    finally:
        if spill is not None:
            files, nbytes = spill.usage()
            logger.debug("removing spill directory %s (%d files, %d bytes)", spill.path, files, nbytes)
            spill.cleanup()

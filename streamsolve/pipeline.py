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

import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Sequence

import numpy as np

from .counting import ContextCarry, CountConfig, Counts, merge_counts, count_sequences
from .reading import BinaryShardError, CorpusError, ReadOptions, ReadStats, iter_document_pieces
from .tokenizer import tokenizer_from_json

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


def _tokenize(tokenizer, pieces) -> list[tuple[np.ndarray, bool]]:
    lines = [line for piece_lines, _ in pieces for line in piece_lines]
    if not lines:
        return []
    encodings = tokenizer.encode_batch_fast(lines, add_special_tokens=False)
    out, position = [], 0
    for piece_lines, starts in pieces:
        chunk = encodings[position:position + len(piece_lines)]
        position += len(piece_lines)
        ids = [i for enc in chunk for i in enc.ids]
        out.append((np.asarray(ids, dtype=np.int64), starts))
    return out


def count_shard(path: str, tokenizer_text: str, config: CountConfig,
                read_options: ReadOptions, holdout: HoldOut = HoldOut()) -> ShardResult:
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

    Returns
    -------
    ShardResult
        Counts with one manifest entry for the shard (``skipped`` set for binary/empty ones).
    """
    started = time.perf_counter()
    tokenizer = tokenizer_from_json(tokenizer_text)
    stats = ReadStats()
    hasher = hashlib.sha256()
    key = shard_key(path)
    carry = ContextCarry(config)
    pending: list[Counts] = []
    merged = Counts.empty(config)
    heldout: list[np.ndarray] = []
    heldout_tokens = 0
    heldout_bytes = 0
    line_counter = [0]
    skipped = None
    try:
        for pieces in iter_document_pieces(path, read_options, stats, hasher):
            train, held, ends_held = _split_heldout(pieces, holdout, key, line_counter)
            if train:
                pending.append(count_sequences(_tokenize(tokenizer, train), config, carry))
                if len(pending) >= _PENDING_BLOCKS:
                    merged = merge_counts(merged, *pending)
                    pending = []
            if held and heldout_tokens < holdout.max_tokens_per_shard:
                for (lines, _), (ids, _) in zip(held, _tokenize(tokenizer, held)):
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
    if pending:
        merged = merge_counts(merged, *pending)
    if skipped is None and merged.tokens == 0 and heldout_tokens == 0:
        logger.warning("shard has no text, skipped: %s", path)
        skipped = "empty"
    seconds = time.perf_counter() - started
    stats_dict = dataclasses.asdict(stats)
    stats_dict["tokens"] = merged.tokens
    stats_dict["heldout_tokens"] = int(heldout_tokens)
    merged.stats = stats_dict
    merged.shards = [{
        "path": path,
        "sha256": hasher.hexdigest() if skipped != "binary" else None,
        "bytes": stats.bytes,
        "tokens": merged.tokens,
        "documents": stats.documents,
        "invalid_bytes": stats.invalid_bytes,
        "bad_records": stats.bad_records,
        "skipped": skipped,
        "seconds": round(seconds, 3),
    }]
    logger.debug("counted %s: %d tokens in %.2fs", path, merged.tokens, seconds)
    return ShardResult(merged, heldout, heldout_bytes)


def merge_results(*results: ShardResult) -> ShardResult:
    """Add shard results (one node of the tree reduction)."""
    counts = merge_counts(*(r.counts for r in results))
    heldout = [doc for r in results for doc in r.heldout]
    return ShardResult(counts, heldout, sum(r.heldout_bytes for r in results))


def tree_reduce(tasks: list, combine, split_every: int = 4):
    """Reduce a list of Dask delayed objects with a tree of ``combine`` nodes."""
    import dask

    if not tasks:
        raise ValueError("nothing to reduce")
    level = list(tasks)
    depth = 0
    while len(level) > 1:
        depth += 1
        level = [
            dask.delayed(combine, pure=True)(*level[i:i + split_every],
                                             dask_key_name=f"merge-{depth}-{i // split_every}-{tokenize_key(level[i:i + split_every])}")
            for i in range(0, len(level), split_every)
        ]
    return level[0]


def tokenize_key(objs) -> str:
    from dask.base import tokenize

    return tokenize(*[getattr(o, "key", o) for o in objs])


def count_corpus(paths: Sequence[str], tokenizer_text: str, config: CountConfig,
                 read_options: ReadOptions, holdout: HoldOut = HoldOut(), *,
                 scheduler: str | None = None, workers: int | None = None,
                 split_every: int = 4, client=None, progress: bool = True) -> ShardResult:
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

    Returns
    -------
    ShardResult
    """
    import dask

    if not paths:
        raise CorpusError("no shards to count")
    tasks = [
        dask.delayed(count_shard, pure=True)(path, tokenizer_text, config, read_options, holdout,
                                             dask_key_name=f"count-{i}-{tokenize_key([path, config, read_options, holdout, tokenizer_text])}")
        for i, path in enumerate(paths)
    ]
    total = tree_reduce(tasks, merge_results, split_every)
    if client is not None:
        future = client.compute(total)
        if progress:
            logger.info("running on cluster; dashboard: %s", client.dashboard_link)
        return future.result()
    scheduler = scheduler or "threads"
    kwargs = {"scheduler": scheduler}
    if scheduler in ("threads", "processes"):
        kwargs["num_workers"] = workers or os.cpu_count() or 1
    if progress and logger.isEnabledFor(logging.INFO):
        from dask.diagnostics import ProgressBar

        with ProgressBar(minimum=2.0, dt=1.0):
            (result,) = dask.compute(total, **kwargs)
    else:
        (result,) = dask.compute(total, **kwargs)
    return result

"""Benchmark 1b: counting and merging cost per token, C kernels vs NumPy, side by side.

The bench text is tokenized once (its CPU time is shown for scale); then each read block is counted
(`count_flat`) and the counts merged the way a shard task flushes them (`merge_counts` +
`merge_partials`), in one thread, with the C kernels and with NumPy. These are the
costs that compete with the tokenizer for the cores in benchmark 1.
"""

from __future__ import annotations

import time

from . import common

FULL_SHARDS = 8
PENDING = 4


def _count_and_merge(blocks, config) -> tuple[float, float]:
    """Seconds spent counting and merging ``blocks`` of (ids, lengths)."""
    from streamsolve.core.counting import ContextCarry, Counts, count_flat, merge_counts
    from streamsolve.engine.spill import PartialCounts, merge_partials

    rows = 1 << 62
    merged = PartialCounts.of(Counts.empty(config), rows)
    pending, counting, merging = [], 0.0, 0.0
    for index, (flat, lengths) in enumerate(blocks):
        started = time.perf_counter()
        pending.append(count_flat(flat, lengths, False, config, ContextCarry(config)))
        counting += time.perf_counter() - started
        if len(pending) == PENDING or index == len(blocks) - 1:
            started = time.perf_counter()
            merged = merge_partials([merged, PartialCounts.of(merge_counts(*pending), rows)],
                                    None, None)
            merging += time.perf_counter() - started
            pending = []
    return counting, merging


def run(full: bool) -> str:
    from streamsolve.core import native
    from streamsolve.core.counting import CountConfig
    from streamsolve.text.encoding import LineEncoder
    from streamsolve.text.reading import ReadOptions, ReadStats, iter_document_pieces

    if not native.available():
        raise common.Skip("C kernels not built (or STREAMSOLVE_NATIVE=0)")
    paths = common.shards()[:FULL_SHARDS] if full else common.shards(common.QUICK_SHARDS[:2])
    tokenizer_text = common.bench_tokenizer(8192).read_text(encoding="utf-8")
    cpu_started = time.process_time()
    encoder = LineEncoder(tokenizer_text, 0)
    blocks = [encoder.encode_pieces(pieces)
              for path in paths
              for pieces in iter_document_pieces(path, ReadOptions(block_bytes=8 << 20),
                                                 ReadStats())]
    tokenize_cpu = time.process_time() - cpu_started  # all threads of the tokenizer
    tokens = sum(flat.size for flat, _ in blocks)
    kernels = native._kernel, native._merge_kernel
    rows = []
    for radius in (1, 5):
        config = CountConfig(8192, radius)
        figures = {}
        for name in ("NumPy", "C kernels"):
            if name == "NumPy":
                native._kernel = native._merge_kernel = lambda: None
            try:
                figures[name] = _count_and_merge(blocks, config)
            finally:
                native._kernel, native._merge_kernel = kernels
            count_s, merge_s = figures[name]
            rows.append([radius, name, f"{1e9 * count_s / tokens:.0f}",
                         f"{1e9 * merge_s / tokens:.0f}",
                         f"{1e9 * (count_s + merge_s) / tokens:.0f}", ""])
        rows[-1][-1] = f"**{sum(figures['NumPy']) / sum(figures['C kernels']):.1f}x**"
    notes = [
        f"text: {len(paths)} bench shards, {tokens:,} tokens (BPE 8192), {len(blocks)} read "
        f"blocks of 8 MB; counts merged every {PENDING} blocks, as a shard task flushes them",
        "one thread; ns per token of text; for scale, reading + tokenizing the same text cost "
        f"{1e9 * tokenize_cpu / tokens:,.0f} ns of CPU per token (all threads)",
        f"machine: {common.machine()}",
    ]
    return common.table("1b. Counting and merging: C kernels vs NumPy",
                        ["R", "counting with", "count ns/token", "merge ns/token",
                         "total ns/token", "speed-up"], rows, notes)
